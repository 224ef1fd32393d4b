//! The service's HTTP endpoints (axum): hooks, the plugins' web endpoints, admin, metrics and
//! health. Hook calls run on tokio's blocking pool, never on the async executor.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use mxpolicy_host::{
    Deactivation, Decision, Error, Host, HttpRequest, MediaFetch, MediaUpload, Reactivation,
    Reload, SendEvent, Watcher,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    config::ServiceConfig,
    facts,
    wire::{ApiError, HookRequest, HookResponse, ServeContext, parse},
};

/// What every handler shares.
pub struct AppState {
    /// The policy host.
    pub host: Arc<Host>,
    /// The policy-set watcher (reload).
    pub watcher: Arc<Watcher>,
    /// SHA-256 of the API secret (compared in constant time with the token's).
    pub secret_hash: [u8; 32],
    /// The service settings.
    pub config: ServiceConfig,
    /// Permits for web requests (no secret): when none is free, 503 at once.
    pub web_permits: Arc<tokio::sync::Semaphore>,
}

type Shared = State<Arc<AppState>>;

/// axum's `Path`, answering a JSON 400 instead of axum's plain-text rejection (a path segment
/// that is not UTF-8, say).
pub struct Segments<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for Segments<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Segments(value)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "M_UNRECOGNIZED",
                sanitize_long(&e.body_text()),
            )),
        }
    }
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_mxpolicy/v1/hooks/{hook}", post(hook))
        .route("/_mxpolicy/v1/admin/chain", get(chain))
        .route("/_mxpolicy/v1/admin/reload", post(reload))
        .route("/_mxpolicy/v1/admin/rollback", post(rollback))
        .route(
            "/_mxpolicy/v1/admin/plugins/{instance}/commands/{command}",
            post(admin_command),
        )
        .route("/_mxpolicy/v1/admin/outbox/claim", post(claim))
        .route("/_mxpolicy/v1/admin/outbox/ack", post(ack))
        .route("/_mxpolicy/{instance}/", any(web_root))
        .route("/_mxpolicy/{instance}/{*path}", any(web))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "M_UNRECOGNIZED",
                "method not allowed on this endpoint",
            )
        })
        .with_state(state)
}

impl AppState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110).
                let (scheme, token) = v.trim_start().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "M_MISSING_TOKEN",
                    "an `Authorization: Bearer <api secret>` header is required",
                )
            })?;
        let hash: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        if bool::from(hash.ct_eq(&self.secret_hash)) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "M_UNKNOWN_TOKEN",
                "wrong API secret",
            ))
        }
    }
}

/// Read at most `limit` bytes of `body` within the configured body timeout: 413 beyond the
/// limit (at once when the declared length is over it), 408 when the client is too slow.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let timeout = std::time::Duration::from_secs(state.config.body_timeout_s);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "M_UNKNOWN",
            format!("the body did not arrive within {timeout:?}"),
        )),
    }
}

/// Run `call` on the blocking pool.
async fn blocking<R: Send + 'static>(
    call: impl FnOnce() -> R + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(call).await.map_err(|e| {
        tracing::error!("a hook call panicked: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "internal error",
        )
    })
}

/// A host error as an HTTP answer.
fn host_error(e: Error) -> ApiError {
    match e {
        Error::NoSuchPlugin(name) => {
            ApiError::not_found(format!("no plugin instance `{}`", sanitize(&name)))
        }
        Error::BadInput { .. } => ApiError::bad_field("context", e.to_string()),
        Error::AdminRefused { message, .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            sanitize_long(&message),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            other.to_string(),
        ),
    }
}

/// Parse a hook request, run it with its facts, answer with the decision.
async fn decide<C, T>(
    state: &AppState,
    body: &[u8],
    call: impl FnOnce(&Host, C) -> Result<Decision<T>, ApiError> + Send + 'static,
) -> Result<Response, ApiError>
where
    C: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
{
    let request: HookRequest<C> = parse(body)?;
    let host = state.host.clone();
    let (generation, (decision, unanswered)) = blocking(move || {
        let generation = host.generation();
        (
            generation,
            facts::with(request.facts, || call(&host, request.context)),
        )
    })
    .await?;
    let decision = decision?;
    Ok(Json(HookResponse {
        generation,
        decision,
        unanswered,
    })
    .into_response())
}

async fn hook(
    State(state): Shared,
    Segments(hook): Segments<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let body = read_body(&state, &headers, body, state.config.max_body_bytes).await?;
    let s = &state;
    match hook.as_str() {
        "on-send" => decide(s, &body, |h, e: SendEvent| Ok(h.on_send(&e))).await,
        "on-deactivate" => decide(s, &body, |h, d: Deactivation| Ok(h.on_deactivate(&d))).await,
        "on-reactivate" => decide(s, &body, |h, r: Reactivation| Ok(h.on_reactivate(&r))).await,
        "on-media-upload" => decide(s, &body, |h, u: MediaUpload| Ok(h.on_media_upload(&u))).await,
        "on-media-fetch" => decide(s, &body, |h, f: MediaFetch| Ok(h.on_media_fetch(&f))).await,
        "on-client-serve" | "on-federation-serve" => {
            let max = state.config.max_serve_events;
            let client = hook == "on-client-serve";
            decide(s, &body, move |h, c: ServeContext| {
                if c.events.len() > max {
                    return Err(ApiError::bad_field(
                        "context.events",
                        format!(
                            "{} events; at most {max} per request (service.max_serve_events)",
                            c.events.len()
                        ),
                    ));
                }
                if client {
                    h.on_client_serve(&c.viewer, c.events)
                } else {
                    h.on_federation_serve(&c.viewer, c.events)
                }
                .map_err(host_error)
            })
            .await
        }
        other => Err(ApiError::not_found(format!(
            "no hook `{}`: the hook endpoints are on-send, on-deactivate, on-reactivate, \
             on-media-upload, on-media-fetch, on-client-serve and on-federation-serve (web \
             requests go to /_mxpolicy/<instance>/, admin commands to /_mxpolicy/v1/admin/)",
            sanitize(other)
        ))),
    }
}

/// At most 64 printable characters of something a client sent, for an error message.
fn sanitize(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// At most 512 printable characters (a plugin's own refusal message, a path error).
fn sanitize_long(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(512).collect()
}

#[derive(Serialize)]
struct ChainEntry {
    instance: String,
    component: String,
    version: String,
    sha256: String,
    hooks: Vec<mxpolicy_host::Hook>,
    loaded_at_ms: u64,
}

async fn chain(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let plugins: Vec<ChainEntry> = state
        .host
        .plugins()
        .into_iter()
        .map(|p| ChainEntry {
            instance: p.instance,
            component: p.info.name,
            version: p.info.version,
            sha256: p.sha256,
            hooks: p.info.hooks,
            loaded_at_ms: p.loaded_at_ms,
        })
        .collect();
    Ok(Json(json!({"generation": state.host.generation(), "plugins": plugins})).into_response())
}

async fn reload(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let watcher = state.watcher.clone();
    match blocking(move || watcher.reload()).await? {
        Reload::Applied(applied) => Ok(Json(json!({
            "applied": true,
            "generation": applied.generation,
            "changes": applied.changes,
        }))
        .into_response()),
        Reload::Unchanged => Ok(Json(json!({"applied": false, "changes": []})).into_response()),
        Reload::Refused(problems) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "errcode": "M_INVALID_PARAM",
                "error": "the policy set was refused; the running chain stays",
                "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        )
            .into_response()),
    }
}

async fn rollback(State(state): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let host = state.host.clone();
    match blocking(move || host.rollback()).await? {
        Ok(generation) => Ok(Json(json!({"generation": generation})).into_response()),
        Err(e @ Error::NoPreviousGeneration) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "M_UNKNOWN",
            e.to_string(),
        )),
        Err(e) => Err(host_error(e)),
    }
}

async fn admin_command(
    State(state): Shared,
    Segments((instance, command)): Segments<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let body = read_body(&state, &headers, body, state.config.max_body_bytes).await?;
    let args: Value = if body.is_empty() {
        json!({})
    } else {
        parse(&body)?
    };
    let host = state.host.clone();
    let answer = blocking(move || host.admin(&instance, &command, &args)).await?;
    Ok(Json(answer.map_err(host_error)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    #[serde(default = "default_claim")]
    limit: usize,
}

fn default_claim() -> usize {
    100
}

async fn claim(State(state): Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let body = read_body(&state, &headers, body, state.config.max_body_bytes).await?;
    let request: ClaimRequest = if body.is_empty() {
        ClaimRequest {
            limit: default_claim(),
        }
    } else {
        parse(&body)?
    };
    if !(1..=1000).contains(&request.limit) {
        return Err(ApiError::bad_field("limit", "must be within 1..=1000"));
    }
    let host = state.host.clone();
    let actions = blocking(move || host.claim_actions(request.limit))
        .await?
        .map_err(host_error)?;
    Ok(Json(json!({"actions": actions})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    ids: Vec<u64>,
}

async fn ack(State(state): Shared, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let body = read_body(&state, &headers, body, state.config.max_body_bytes).await?;
    let request: AckRequest = parse(&body)?;
    if request.ids.len() > 10_000 {
        return Err(ApiError::bad_field("ids", "at most 10000 ids per call"));
    }
    let host = state.host.clone();
    blocking(move || host.ack_actions(&request.ids))
        .await?
        .map_err(host_error)?;
    Ok(Json(json!({})).into_response())
}

async fn web_root(
    state: Shared,
    Segments(instance): Segments<String>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    serve_web(state, instance, String::new(), method, query, headers, body).await
}

async fn web(
    state: Shared,
    Segments((instance, path)): Segments<(String, String)>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    serve_web(state, instance, path, method, query, headers, body).await
}

/// A request to a plugin's web endpoints: no secret (these are the pages users open), the
/// body capped at `max_web_body_bytes`.
async fn serve_web(
    State(state): Shared,
    instance: String,
    path: String,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Pages are served by the same threads as hooks: a flood of them must not starve the
    // homeserver's calls.
    let Ok(_permit) = state.web_permits.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_LIMIT_EXCEEDED",
            "too many page requests at once; try again",
        ));
    };
    let body = read_body(&state, &headers, body, state.config.max_web_body_bytes).await?;
    let request = HttpRequest {
        method: method.as_str().to_owned(),
        path: format!("/{path}"),
        query: query.unwrap_or_default(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
    };
    let host = state.host.clone();
    let decision = blocking(move || host.on_http(&instance, &request))
        .await?
        .map_err(host_error)?;
    let answer = decision.outcome;
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in answer.headers {
        // The host validated every header; anything it let through still has to parse here.
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

async fn metrics(State(state): Shared) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.host.metrics(),
    )
        .into_response()
}

/// Ready once a chain is loaded and the store answers.
async fn health(State(state): Shared) -> Response {
    let host = state.host.clone();
    let probe = blocking(move || {
        let generation = host.generation();
        let store = host.read_state("-health", "-").map(|_| ());
        (generation, host.plugins().len(), store)
    })
    .await;
    match probe {
        Ok((generation, plugins, Ok(()))) if plugins > 0 => Json(json!({
            "status": "ready",
            "generation": generation,
            "plugins": plugins,
        }))
        .into_response(),
        Ok((_, _, Err(e))) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_UNAVAILABLE",
            format!("the store does not answer: {e}"),
        )
        .into_response(),
        Ok(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_UNAVAILABLE",
            "no policy chain is loaded",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}
