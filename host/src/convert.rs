//! Conversions between the host API's types (`types.rs`) and the WIT bindings, with the
//! validation of everything a plugin returns: a plugin's output is untrusted input.

use ruma::{OwnedMxcUri, OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value};

use crate::{
    bindings::wit,
    error::FailureCause,
    types::{
        Action, Deactivation, HistoryVisibility, Hook, HttpRequest, HttpResponse, MatrixError,
        MediaFetch, MediaUpload, PluginInfo, Reactivation, Requester, SendEvent, ServeEvent,
        UserKind, Verdict, Viewer,
    },
};

fn invalid(msg: impl Into<String>) -> FailureCause {
    FailureCause::InvalidOutput(msg.into())
}

/// The host's copy of a plain WIT enum, with both conversions generated from one list of
/// cases. The host keeps its own enums because the WIT bindings are private (a new WIT
/// version must not change the host's API); the exhaustive matches make a WIT change that
/// adds a case a compile error here rather than a silent gap.
macro_rules! same_enum {
    ($host:ident, $wit:ident { $($case:ident),+ $(,)? }) => {
        impl From<wit::$wit> for $host {
            fn from(v: wit::$wit) -> Self {
                match v {
                    $(wit::$wit::$case => $host::$case),+
                }
            }
        }

        impl From<$host> for wit::$wit {
            fn from(v: $host) -> Self {
                match v {
                    $($host::$case => wit::$wit::$case),+
                }
            }
        }
    };
}

same_enum!(
    Hook,
    Hook {
        OnSend,
        OnClientServe,
        OnFederationServe,
        OnDeactivate,
        OnReactivate,
        OnMediaUpload,
        OnMediaFetch,
        OnHttp,
        OnTimer,
        OnAdmin,
    }
);
same_enum!(
    UserKind,
    UserKind {
        Regular,
        Guest,
        Appservice,
        ServerNotices,
        Bot,
        Support,
    }
);
same_enum!(
    HistoryVisibility,
    HistoryVisibility {
        WorldReadable,
        Shared,
        Invited,
        Joined,
    }
);

pub(crate) fn info_from_wit(info: wit::PluginInfo) -> PluginInfo {
    let mut hooks: Vec<Hook> = info.hooks.into_iter().map(Hook::from).collect();
    hooks.sort();
    hooks.dedup();
    PluginInfo {
        name: info.name,
        version: info.version,
        hooks,
    }
}

pub(crate) fn send_to_wit(e: &SendEvent, now_ms: u64) -> wit::SendContext {
    wit::SendContext {
        now_ms,
        sender: e.sender.to_string(),
        sender_kind: e.sender_kind.into(),
        room_id: e.room_id.to_string(),
        room_version: e.room_version.to_string(),
        event_type: e.event_type.clone(),
        state_key: e.state_key.clone(),
        content_json: e.content.to_string(),
        origin_server_ts: e.origin_server_ts,
        is_server_notices_room: e.is_server_notices_room,
    }
}

pub(crate) fn viewer_to_wit(v: &Viewer) -> wit::Viewer {
    match v {
        Viewer::User(u) => wit::Viewer::User(u.to_string()),
        Viewer::Server(s) => wit::Viewer::Server(s.to_string()),
        Viewer::Anonymous => wit::Viewer::Anonymous,
    }
}

/// Extract the facts of one event. Errors name the missing key.
pub(crate) fn serve_event_to_wit(e: &ServeEvent) -> Result<wit::ServeEvent, String> {
    let obj = e.event.as_object().ok_or("event is not a JSON object")?;
    let str_key = |k: &str| -> Result<String, String> {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("event lacks string `{k}`"))
    };
    Ok(wit::ServeEvent {
        event_id: str_key("event_id")?,
        room_id: str_key("room_id")?,
        sender: str_key("sender")?,
        event_type: str_key("type")?,
        state_key: obj
            .get("state_key")
            .and_then(Value::as_str)
            .map(str::to_owned),
        origin_server_ts: obj
            .get("origin_server_ts")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        room_version: e.room_version.to_string(),
        history_visibility: e.history_visibility.into(),
        viewer_joined: e.viewer_joined,
    })
}

pub(crate) fn deactivate_to_wit(d: &Deactivation, now_ms: u64) -> wit::DeactivateContext {
    wit::DeactivateContext {
        now_ms,
        user: d.user.to_string(),
        erase: d.erase,
        by_admin: d.by_admin,
        second_factor: d.second_factor,
    }
}

pub(crate) fn reactivate_to_wit(r: &Reactivation, now_ms: u64) -> wit::ReactivateContext {
    wit::ReactivateContext {
        now_ms,
        user: r.user.to_string(),
        by_admin: r.by_admin,
    }
}

pub(crate) fn upload_to_wit(u: &MediaUpload, now_ms: u64) -> wit::MediaUploadContext {
    wit::MediaUploadContext {
        now_ms,
        mxc: u.mxc.to_string(),
        uploader: u.uploader.to_string(),
        size: u.size,
        content_type: u.content_type.clone(),
    }
}

pub(crate) fn fetch_to_wit(f: &MediaFetch, now_ms: u64) -> wit::MediaFetchContext {
    wit::MediaFetchContext {
        now_ms,
        mxc: f.mxc.to_string(),
        requester: match &f.requester {
            Requester::User(u) => wit::Requester::User(u.to_string()),
            Requester::Server(s) => wit::Requester::Server(s.to_string()),
            Requester::Anonymous => wit::Requester::Anonymous,
        },
    }
}

pub(crate) fn http_to_wit(r: &HttpRequest, now_ms: u64) -> wit::HttpRequest {
    wit::HttpRequest {
        now_ms,
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
    }
}

fn json_object(text: &str, what: &str) -> Result<Map<String, Value>, FailureCause> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid(format!("{what} is not a JSON object"))),
        Err(e) => Err(invalid(format!("{what} is not valid JSON: {e}"))),
    }
}

pub(crate) fn verdict_from_wit(v: wit::Verdict) -> Result<Verdict, FailureCause> {
    Ok(match v {
        wit::Verdict::Allow => Verdict::Allow,
        wit::Verdict::Deny(e) => {
            if e.errcode.is_empty() {
                return Err(invalid("deny with an empty errcode"));
            }
            Verdict::Deny(MatrixError {
                fields: json_object(&e.fields_json, "error fields-json")?,
                errcode: e.errcode,
                message: e.message,
            })
        }
    })
}

fn user(s: String) -> Result<OwnedUserId, FailureCause> {
    OwnedUserId::try_from(s.as_str()).map_err(|e| invalid(format!("invalid user id `{s}`: {e}")))
}

pub(crate) fn actions_from_wit(actions: Vec<wit::Action>) -> Result<Vec<Action>, FailureCause> {
    actions
        .into_iter()
        .map(|a| {
            Ok(match a {
                wit::Action::LeaveAllRooms(u) => Action::LeaveAllRooms { user: user(u)? },
                wit::Action::RemoveFromUserDirectory(u) => {
                    Action::RemoveFromUserDirectory { user: user(u)? }
                }
                wit::Action::UnbindThreepids(u) => Action::UnbindThreepids { user: user(u)? },
                wit::Action::DeleteProfile(u) => Action::DeleteProfile { user: user(u)? },
                wit::Action::AnnounceErasure(u) => Action::AnnounceErasure { user: user(u)? },
                wit::Action::PurgeRoomHistory(r) => Action::PurgeRoomHistory {
                    room: OwnedRoomId::try_from(r.as_str())
                        .map_err(|e| invalid(format!("invalid room id `{r}`: {e}")))?,
                },
                wit::Action::DeleteMedia(m) => {
                    let mxc = OwnedMxcUri::from(m.as_str());
                    if !mxc.is_valid() {
                        return Err(invalid(format!("invalid mxc URI `{m}`")));
                    }
                    Action::DeleteMedia { mxc }
                }
                wit::Action::SendServerNotice(n) => {
                    let mut content = json_object(&n.content_json, "server notice content-json")?;
                    content.insert("msgtype".into(), Value::String("m.server_notice".into()));
                    content.insert("body".into(), Value::String(n.body));
                    Action::SendServerNotice {
                        user: user(n.user)?,
                        content,
                    }
                }
            })
        })
        .collect()
}

/// Most headers a plugin's HTTP response may carry.
pub(crate) const MAX_HTTP_HEADERS: usize = 64;
/// What each header costs against the output cap beyond its name and value (the HPACK
/// per-entry overhead), so a flood of empty headers is not free.
const HEADER_OVERHEAD_BYTES: usize = 32;

/// Check every header with the `http` crate's own parsers: a name must be a valid token and
/// a value must not hold CR, LF, NUL or other control characters (response splitting).
fn check_headers(headers: &[(String, String)]) -> Result<(), FailureCause> {
    if headers.len() > MAX_HTTP_HEADERS {
        return Err(invalid(format!(
            "{} HTTP headers; at most {MAX_HTTP_HEADERS} are allowed",
            headers.len()
        )));
    }
    for (name, value) in headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(format!(
                "invalid HTTP header name {:?}",
                crate::text::sanitize(name, 100)
            )));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(invalid(format!(
                "invalid value for HTTP header `{name}` (control characters are not allowed): \
                 {:?}",
                crate::text::sanitize(value, 100)
            )));
        }
    }
    Ok(())
}

pub(crate) fn http_from_wit(
    r: wit::HttpResponse,
) -> Result<(HttpResponse, Vec<Action>), FailureCause> {
    if !(100..=599).contains(&r.status) {
        return Err(invalid(format!("HTTP status {} out of range", r.status)));
    }
    check_headers(&r.headers)?;
    let actions = actions_from_wit(r.actions)?;
    Ok((
        HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        },
        actions,
    ))
}

/// Bytes a plugin returned, to enforce the output limit.
pub(crate) trait OutputSize {
    fn output_size(&self) -> usize;
}

impl OutputSize for wit::Action {
    fn output_size(&self) -> usize {
        match self {
            wit::Action::LeaveAllRooms(s)
            | wit::Action::RemoveFromUserDirectory(s)
            | wit::Action::UnbindThreepids(s)
            | wit::Action::DeleteProfile(s)
            | wit::Action::PurgeRoomHistory(s)
            | wit::Action::DeleteMedia(s)
            | wit::Action::AnnounceErasure(s) => s.len() + 8,
            wit::Action::SendServerNotice(n) => {
                n.user.len() + n.body.len() + n.content_json.len() + 8
            }
        }
    }
}

impl<T: OutputSize> OutputSize for Vec<T> {
    fn output_size(&self) -> usize {
        self.iter().map(OutputSize::output_size).sum()
    }
}

impl OutputSize for wit::Outcome {
    fn output_size(&self) -> usize {
        let verdict = match &self.verdict {
            wit::Verdict::Allow => 0,
            wit::Verdict::Deny(e) => e.errcode.len() + e.message.len() + e.fields_json.len(),
        };
        verdict + self.actions.output_size()
    }
}

impl OutputSize for wit::ServeVerdict {
    fn output_size(&self) -> usize {
        match self {
            wit::ServeVerdict::Pseudonymize(s) => s.len() + 4,
            _ => 4,
        }
    }
}

impl OutputSize for wit::ServeOutcome {
    fn output_size(&self) -> usize {
        self.verdicts.output_size() + self.actions.output_size()
    }
}

impl OutputSize for Result<String, String> {
    fn output_size(&self) -> usize {
        match self {
            Ok(s) | Err(s) => s.len(),
        }
    }
}

impl OutputSize for wit::HttpResponse {
    fn output_size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD_BYTES)
                .sum::<usize>()
            + self.actions.output_size()
    }
}
