//! The hook contexts and results a policy works with: Rust types with id newtypes and
//! `serde_json` values, converted from and to the raw WIT bindings by the SDK.

use serde_json::{Map, Value};

use crate::{
    ids::{EventId, MxcUri, RoomId, ServerName, UserId},
    wit::mxpolicy::policy::types as wit,
};

pub use wit::{HistoryVisibility, Hook, UserKind};

/// A Matrix error: `{"errcode": ..., "error": ..., <fields>}`.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixError {
    /// `M_FORBIDDEN`, `M_CONSENT_NOT_GIVEN`, ...
    pub errcode: String,
    /// The human-readable `error` text.
    pub message: String,
    /// Extra keys merged into the error body.
    pub fields: Map<String, Value>,
}

/// Allow, or deny with a Matrix error.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go ahead (or abstain).
    Allow,
    /// Refuse.
    Deny(MatrixError),
}

/// Something for the homeserver to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Leave and forget every room.
    LeaveAllRooms(UserId),
    /// Remove from the user directory.
    RemoveFromUserDirectory(UserId),
    /// Unbind third-party ids.
    UnbindThreepids(UserId),
    /// Delete the profile.
    DeleteProfile(UserId),
    /// Purge a room's history.
    PurgeRoomHistory(RoomId),
    /// Delete media.
    DeleteMedia(MxcUri),
    /// Send a server notice with this body and extra content keys.
    SendServerNotice {
        /// The recipient.
        user: UserId,
        /// The notice's `body`.
        body: String,
        /// Extra content keys (`format`, `formatted_body`, ...).
        content: Map<String, Value>,
    },
    /// Announce the user's erasure.
    AnnounceErasure(UserId),
}

/// A verdict with actions: the result of on-send, deactivate, reactivate and media hooks.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Actions, in order.
    pub actions: Vec<Action>,
}

impl Outcome {
    /// Allow, no actions.
    pub fn allow() -> Self {
        Self {
            verdict: Verdict::Allow,
            actions: Vec::new(),
        }
    }

    /// Deny with `errcode` and `message`.
    pub fn deny(errcode: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Deny(MatrixError {
                errcode: errcode.into(),
                message: message.into(),
                fields: Map::new(),
            }),
            actions: Vec::new(),
        }
    }

    /// Add a key to the error body (no effect on `Allow`).
    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        if let Verdict::Deny(e) = &mut self.verdict {
            e.fields.insert(key.into(), value.into());
        }
        self
    }

    /// Append an action.
    pub fn with_action(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }

    /// Whether the verdict is `Allow`.
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// The errcode, if denied.
    pub fn errcode(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::Allow => None,
            Verdict::Deny(e) => Some(&e.errcode),
        }
    }
}

/// A local user's event before it is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct SendContext {
    /// Current time.
    pub now_ms: u64,
    /// Sender.
    pub sender: UserId,
    /// Sender's account kind.
    pub sender_kind: UserKind,
    /// Room.
    pub room_id: RoomId,
    /// Room version.
    pub room_version: String,
    /// Event type.
    pub event_type: String,
    /// State key, for state events.
    pub state_key: Option<String>,
    /// Content.
    pub content: Value,
    /// `origin_server_ts`.
    pub origin_server_ts: u64,
    /// Whether the room is the sender's server-notices room.
    pub is_server_notices_room: bool,
}

impl SendContext {
    /// A regular user's event in a version-11 room, for tests.
    pub fn new(sender: &str, room: &str, event_type: &str, content: Value) -> Self {
        Self {
            now_ms: 0,
            sender: sender.into(),
            sender_kind: UserKind::Regular,
            room_id: room.into(),
            room_version: "11".into(),
            event_type: event_type.into(),
            state_key: None,
            content,
            origin_server_ts: 0,
            is_server_notices_room: false,
        }
    }
}

/// Who events are served to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// A user.
    User(UserId),
    /// A remote server.
    Server(ServerName),
    /// The anonymous public.
    Anonymous,
}

/// The facts of one event to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeEvent {
    /// Event id.
    pub event_id: EventId,
    /// Room.
    pub room_id: RoomId,
    /// Sender.
    pub sender: UserId,
    /// Event type.
    pub event_type: String,
    /// State key.
    pub state_key: Option<String>,
    /// `origin_server_ts`.
    pub origin_server_ts: u64,
    /// Room version.
    pub room_version: String,
    /// History visibility at the event.
    pub history_visibility: HistoryVisibility,
    /// Clients: viewer joined at the event. Federation: server had a user joined at it.
    pub viewer_joined: bool,
}

/// Events about to be served.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeContext {
    /// Current time.
    pub now_ms: u64,
    /// Who they are for.
    pub viewer: Viewer,
    /// The events.
    pub events: Vec<ServeEvent>,
}

/// What to do with one served event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeVerdict {
    /// Serve unchanged.
    Serve,
    /// Serve redacted.
    Redact,
    /// Clients: serve redacted with this pseudonym (a user id) as sender.
    Pseudonymize(UserId),
    /// Do not serve.
    Withhold,
}

/// One verdict per event, plus actions.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeOutcome {
    /// One per event, in order.
    pub verdicts: Vec<ServeVerdict>,
    /// Actions.
    pub actions: Vec<Action>,
}

impl ServeOutcome {
    /// Serve every event of `ctx` unchanged.
    pub fn serve_all(ctx: &ServeContext) -> Self {
        Self {
            verdicts: vec![ServeVerdict::Serve; ctx.events.len()],
            actions: Vec::new(),
        }
    }
}

/// An account deactivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeactivateContext {
    /// Current time.
    pub now_ms: u64,
    /// The account.
    pub user: UserId,
    /// Erasure requested.
    pub erase: bool,
    /// Requested by an admin.
    pub by_admin: bool,
    /// Passed a second factor.
    pub second_factor: bool,
}

/// An account reactivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactivateContext {
    /// Current time.
    pub now_ms: u64,
    /// The account.
    pub user: UserId,
    /// Requested by an admin.
    pub by_admin: bool,
}

/// A media upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaUploadContext {
    /// Current time.
    pub now_ms: u64,
    /// The media's URI.
    pub mxc: MxcUri,
    /// The uploader.
    pub uploader: UserId,
    /// Size in bytes.
    pub size: u64,
    /// Declared content type.
    pub content_type: Option<String>,
}

/// Who asks for media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// A user.
    User(UserId),
    /// A remote server.
    Server(ServerName),
    /// Unauthenticated.
    Anonymous,
}

/// A media fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFetchContext {
    /// Current time.
    pub now_ms: u64,
    /// The media.
    pub mxc: MxcUri,
    /// Who asks.
    pub requester: Requester,
}

/// An HTTP request to the plugin's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    /// Current time.
    pub now_ms: u64,
    /// Method.
    pub method: String,
    /// Path below the plugin's prefix.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        crate::http::form_value(&self.query, name)
    }

    /// The first value of form field `name` in an `application/x-www-form-urlencoded` body.
    pub fn form_param(&self, name: &str) -> Option<String> {
        crate::http::form_value(std::str::from_utf8(&self.body).ok()?, name)
    }
}

/// The plugin's HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Actions.
    pub actions: Vec<Action>,
}

impl HttpResponse {
    /// A `text/html` page.
    pub fn html(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: body.into().into_bytes(),
            actions: Vec::new(),
        }
    }

    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
            actions: Vec::new(),
        }
    }

    /// 404.
    pub fn not_found() -> Self {
        Self::text(404, "Not found")
    }
}

/// A fired timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerContext {
    /// Current time.
    pub now_ms: u64,
    /// The timer's id.
    pub id: String,
    /// When it was due.
    pub due_ms: u64,
    /// Its payload (see [`timers::schedule`](crate::timers::schedule)).
    pub payload: Vec<u8>,
}

impl TimerContext {
    /// Decode the payload stored by [`timers::schedule`](crate::timers::schedule) (JSON), or
    /// the error naming the timer and the cause: a payload another build wrote may not decode.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::state::DecodeError> {
        crate::host::decode_payload(&self.id, &self.payload)
    }
}

/// A command from the homeserver (see the host's `Host::admin`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminRequest {
    /// Current time.
    pub now_ms: u64,
    /// The command.
    pub command: String,
    /// Its arguments.
    pub args: Value,
}

impl TryFrom<wit::AdminRequest> for AdminRequest {
    type Error = String;

    /// Arguments that do not parse are an error answered to the caller, never `null`.
    fn try_from(r: wit::AdminRequest) -> Result<Self, String> {
        let args = serde_json::from_str(&r.args_json).map_err(|e| {
            format!(
                "the arguments of `{}` are not readable JSON: {e}",
                r.command
            )
        })?;
        Ok(Self {
            now_ms: r.now_ms,
            command: r.command,
            args,
        })
    }
}

/// Event content the SDK could not parse: nested deeper than `serde_json`'s limit (127
/// levels below the content object), or not JSON at all. The policy sees it through
/// [`Policy::on_unreadable_content`](crate::Policy::on_unreadable_content), never as empty
/// content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentError {
    /// The parser's message.
    pub message: String,
}

impl std::fmt::Display for ContentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ContentError {}

/// The typed send context, and the content's parse error if it has one (the content is then
/// `null`, and the adapter does not call `on_send`).
pub(crate) fn send_context(c: wit::SendContext) -> (SendContext, Option<ContentError>) {
    let (content, error) = match serde_json::from_str(&c.content_json) {
        Ok(content) => (content, None),
        Err(e) => (
            Value::Null,
            Some(ContentError {
                message: e.to_string(),
            }),
        ),
    };
    let ctx = SendContext {
        now_ms: c.now_ms,
        sender: c.sender.into(),
        sender_kind: c.sender_kind,
        room_id: c.room_id.into(),
        room_version: c.room_version,
        event_type: c.event_type,
        state_key: c.state_key,
        content,
        origin_server_ts: c.origin_server_ts,
        is_server_notices_room: c.is_server_notices_room,
    };
    (ctx, error)
}

/// A configuration the policy refuses: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, as a dotted path; empty for the whole document.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

// ---- conversions from the WIT types (host → plugin) ----

fn viewer(v: wit::Viewer) -> Viewer {
    match v {
        wit::Viewer::User(u) => Viewer::User(u.into()),
        wit::Viewer::Server(s) => Viewer::Server(s.into()),
        wit::Viewer::Anonymous => Viewer::Anonymous,
    }
}

impl From<wit::ServeContext> for ServeContext {
    fn from(c: wit::ServeContext) -> Self {
        Self {
            now_ms: c.now_ms,
            viewer: viewer(c.viewer),
            events: c
                .events
                .into_iter()
                .map(|e| ServeEvent {
                    event_id: e.event_id.into(),
                    room_id: e.room_id.into(),
                    sender: e.sender.into(),
                    event_type: e.event_type,
                    state_key: e.state_key,
                    origin_server_ts: e.origin_server_ts,
                    room_version: e.room_version,
                    history_visibility: e.history_visibility,
                    viewer_joined: e.viewer_joined,
                })
                .collect(),
        }
    }
}

impl From<wit::DeactivateContext> for DeactivateContext {
    fn from(c: wit::DeactivateContext) -> Self {
        Self {
            now_ms: c.now_ms,
            user: c.user.into(),
            erase: c.erase,
            by_admin: c.by_admin,
            second_factor: c.second_factor,
        }
    }
}

impl From<wit::ReactivateContext> for ReactivateContext {
    fn from(c: wit::ReactivateContext) -> Self {
        Self {
            now_ms: c.now_ms,
            user: c.user.into(),
            by_admin: c.by_admin,
        }
    }
}

impl From<wit::MediaUploadContext> for MediaUploadContext {
    fn from(c: wit::MediaUploadContext) -> Self {
        Self {
            now_ms: c.now_ms,
            mxc: c.mxc.into(),
            uploader: c.uploader.into(),
            size: c.size,
            content_type: c.content_type,
        }
    }
}

impl From<wit::MediaFetchContext> for MediaFetchContext {
    fn from(c: wit::MediaFetchContext) -> Self {
        Self {
            now_ms: c.now_ms,
            mxc: c.mxc.into(),
            requester: match c.requester {
                wit::Requester::User(u) => Requester::User(u.into()),
                wit::Requester::Server(s) => Requester::Server(s.into()),
                wit::Requester::Anonymous => Requester::Anonymous,
            },
        }
    }
}

impl From<wit::HttpRequest> for HttpRequest {
    fn from(r: wit::HttpRequest) -> Self {
        Self {
            now_ms: r.now_ms,
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<wit::TimerContext> for TimerContext {
    fn from(c: wit::TimerContext) -> Self {
        Self {
            now_ms: c.now_ms,
            id: c.id,
            due_ms: c.due_ms,
            payload: c.payload,
        }
    }
}

// ---- conversions to the WIT types (plugin → host) ----

fn json_text(map: &Map<String, Value>) -> String {
    if map.is_empty() {
        String::new()
    } else {
        Value::Object(map.clone()).to_string()
    }
}

impl From<Action> for wit::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::LeaveAllRooms(u) => wit::Action::LeaveAllRooms(u.into_string()),
            Action::RemoveFromUserDirectory(u) => {
                wit::Action::RemoveFromUserDirectory(u.into_string())
            }
            Action::UnbindThreepids(u) => wit::Action::UnbindThreepids(u.into_string()),
            Action::DeleteProfile(u) => wit::Action::DeleteProfile(u.into_string()),
            Action::PurgeRoomHistory(r) => wit::Action::PurgeRoomHistory(r.into_string()),
            Action::DeleteMedia(m) => wit::Action::DeleteMedia(m.into_string()),
            Action::SendServerNotice {
                user,
                body,
                content,
            } => wit::Action::SendServerNotice(wit::ServerNotice {
                user: user.into_string(),
                body,
                content_json: json_text(&content),
            }),
            Action::AnnounceErasure(u) => wit::Action::AnnounceErasure(u.into_string()),
        }
    }
}

pub(crate) fn actions_to_wit(actions: Vec<Action>) -> Vec<wit::Action> {
    actions.into_iter().map(Into::into).collect()
}

impl From<Outcome> for wit::Outcome {
    fn from(o: Outcome) -> Self {
        wit::Outcome {
            verdict: match o.verdict {
                Verdict::Allow => wit::Verdict::Allow,
                Verdict::Deny(e) => wit::Verdict::Deny(wit::MatrixError {
                    fields_json: json_text(&e.fields),
                    errcode: e.errcode,
                    message: e.message,
                }),
            },
            actions: actions_to_wit(o.actions),
        }
    }
}

impl From<ServeOutcome> for wit::ServeOutcome {
    fn from(o: ServeOutcome) -> Self {
        wit::ServeOutcome {
            verdicts: o
                .verdicts
                .into_iter()
                .map(|v| match v {
                    ServeVerdict::Serve => wit::ServeVerdict::Serve,
                    ServeVerdict::Redact => wit::ServeVerdict::Redact,
                    ServeVerdict::Pseudonymize(p) => {
                        wit::ServeVerdict::Pseudonymize(p.into_string())
                    }
                    ServeVerdict::Withhold => wit::ServeVerdict::Withhold,
                })
                .collect(),
            actions: actions_to_wit(o.actions),
        }
    }
}

impl From<HttpResponse> for wit::HttpResponse {
    fn from(r: HttpResponse) -> Self {
        wit::HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
            actions: actions_to_wit(r.actions),
        }
    }
}

impl From<ConfigError> for wit::ConfigError {
    fn from(e: ConfigError) -> Self {
        wit::ConfigError {
            key: e.key,
            message: e.message,
        }
    }
}
