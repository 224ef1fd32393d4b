//! Wire format v1 of `mxpolicy serve` (`/_mxpolicy/v1/...`).
//!
//! One naming rule, the host API's own (see `mxpolicy_host`'s types): keys are snake_case,
//! enum values are the WIT's kebab-case names (`on-send`, `send-server-notice`, `out-of-memory`).
//! A breaking change gets a new path prefix (`/v2/`); v1 only ever gains optional keys.
//!
//! - Hook request: `{"context": <the hook's context>, "facts": {...}}` (`facts` optional; see
//!   `facts`), where the context is the host type of the hook: `SendEvent` for on-send,
//!   `Deactivation`, `Reactivation`, `MediaUpload`, `MediaFetch`, or `{"viewer", "events"}`
//!   for the two serve hooks.
//! - Hook response (200): the host's `Decision` (`outcome`, `actions`, `failures`,
//!   `decided_by`, `outbox`) plus `generation` (the chain that decided) and `unanswered`.
//!   A deny is a 200 carrying `outcome.verdict = "deny"` and the Matrix error to return.
//! - Errors: `{"errcode", "error", "field"?}` with 400 (the JSON path of the bad field in
//!   `field`), 401 (no or wrong secret), 404 (unknown hook or plugin), 413 (body over the
//!   limit), 503 (no chain loaded).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use mxpolicy_host::{Decision, ServeEvent, Viewer};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::facts::{Facts, Unanswered};

/// A hook request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRequest<T> {
    /// The hook's context, in the host API's type.
    pub context: T,
    /// Answers to the homeserver questions plugins may ask.
    #[serde(default)]
    pub facts: Facts,
}

/// The context of on-client-serve and on-federation-serve.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeContext {
    /// Who the events are served to.
    pub viewer: Viewer,
    /// The events, in order.
    pub events: Vec<ServeEvent>,
}

/// A hook response.
#[derive(Debug, Serialize)]
pub struct HookResponse<T: Serialize> {
    /// The chain generation that decided.
    pub generation: u64,
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision<T>,
    /// Questions the request's facts did not answer.
    pub unanswered: Vec<Unanswered>,
}

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// A Matrix-style error code (`M_BAD_JSON`, `M_UNAUTHORIZED`, `M_NOT_FOUND`,
    /// `M_TOO_LARGE`, `M_UNAVAILABLE`, `M_UNKNOWN`).
    pub errcode: &'static str,
    /// What is wrong.
    pub error: String,
    /// The JSON path of the offending field, for a 400.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, errcode: &'static str, error: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            error: error.into(),
            field: None,
        }
    }

    /// 404.
    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", error)
    }

    /// 400 naming `field`.
    pub fn bad_field(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", error)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                axum::http::HeaderValue::from_static("nosniff"),
            )],
            Json(&self),
        )
            .into_response()
    }
}

/// Parse a JSON body into `T`; a 400 naming the field's path otherwise.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." { String::new() } else { path };
        // serde's messages quote what they could not parse: keep them short.
        let message: String = inner.to_string().chars().take(512).collect();
        let field: String = field.chars().take(256).collect();
        ApiError::bad_field(field, message)
    })?;
    de.end()
        .map_err(|e| ApiError::bad_field("", format!("trailing data: {e}")))?;
    Ok(value)
}
