//! The host API's types, in homeserver terms: ruma's typed ids, `serde_json` values for event
//! JSON. They are independent of the WIT bindings (see `convert.rs`), so a new WIT version does
//! not ripple through the homeserver's code (the approach of Zed's extension host).
//!
//! Why ruma ids rather than strings: the homeserver already holds them, and the host validates
//! every id a plugin hands back (an action naming `@not-an-id` is a plugin failure, not a
//! surprise for the homeserver). Why `serde_json::Value` for events rather than ruma's event
//! types: serve hooks must return the event exactly as the homeserver would have served it,
//! including unknown keys, and redaction works on canonical JSON anyway.
//!
//! # JSON naming (the wire format of every serialized host type)
//! One rule, for every type of this crate and for the service's wire format built on them:
//! **keys are snake_case** (`room_version`, `decided_by`, as Matrix spells its own keys) and
//! **enum values are kebab-case, the case names of the WIT** (`on-send`, `leave-all-rooms`,
//! `server-notices`, `world-readable`, `out-of-memory`), so a value reads the same in the
//! WIT, in logs, in URLs (`/hooks/on-send`) and in JSON. Where Matrix itself spells a value
//! with an underscore (`world_readable`, Synapse's `server_notices`), that spelling is also
//! accepted on input, so a homeserver can pass its own strings through.

use std::fmt;

use ruma::{OwnedMxcUri, OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The hooks of the `mxpolicy:policy` world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// A local user's event before it is accepted.
    OnSend,
    /// Events about to be served to a client.
    OnClientServe,
    /// Events about to be served to another server.
    OnFederationServe,
    /// An account is being deactivated.
    OnDeactivate,
    /// An account is being reactivated.
    OnReactivate,
    /// Media is being stored.
    OnMediaUpload,
    /// Media is being served.
    OnMediaFetch,
    /// A request to a plugin's web endpoint.
    OnHttp,
    /// A durable timer fired.
    OnTimer,
    /// A command from the homeserver.
    OnAdmin,
}

impl Hook {
    /// The hook's WIT name (`on-send`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::OnSend => "on-send",
            Hook::OnClientServe => "on-client-serve",
            Hook::OnFederationServe => "on-federation-serve",
            Hook::OnDeactivate => "on-deactivate",
            Hook::OnReactivate => "on-reactivate",
            Hook::OnMediaUpload => "on-media-upload",
            Hook::OnMediaFetch => "on-media-fetch",
            Hook::OnHttp => "on-http",
            Hook::OnTimer => "on-timer",
            Hook::OnAdmin => "on-admin",
        }
    }

    /// The failure policy that applies when the plugin does not configure one. Closed for
    /// every hook that guards data or accounts (a broken erasure policy must never leak an
    /// erased user's events); open only where closing has no meaning: `on-http` answers 500
    /// either way, a failed `on-timer` stays due and is retried, and a failed `on-admin` is an
    /// error returned to the caller.
    pub fn default_failure_policy(self) -> FailurePolicy {
        match self {
            Hook::OnHttp | Hook::OnTimer | Hook::OnAdmin => FailurePolicy::Open,
            _ => FailurePolicy::Closed,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the host does when a plugin fails (trap, timeout, out of memory, bad output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Refuse: deny the send or media request (`M_UNKNOWN`, or `M_NOT_FOUND` for media
    /// fetches), withhold every served event, veto the (de)activation.
    Closed,
    /// Ignore the plugin for this call, as if it had allowed/served everything.
    Open,
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailurePolicy::Closed => "closed",
            FailurePolicy::Open => "open",
        })
    }
}

/// What kind of account a user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UserKind {
    /// An ordinary user.
    #[default]
    Regular,
    /// A guest.
    Guest,
    /// An application-service user.
    Appservice,
    /// The server-notices user.
    #[serde(alias = "server_notices")]
    ServerNotices,
    /// A bot account.
    Bot,
    /// A support account.
    Support,
}

/// A Matrix error: `{"errcode": ..., "error": ..., <fields>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixError {
    /// `M_FORBIDDEN`, `M_CONSENT_NOT_GIVEN`, ...
    pub errcode: String,
    /// The human-readable message (the `error` key).
    pub message: String,
    /// Extra keys merged into the body (e.g. `consent_uri`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

impl MatrixError {
    /// An error without extra fields.
    pub fn new(errcode: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            errcode: errcode.into(),
            message: message.into(),
            fields: Map::new(),
        }
    }

    /// The JSON body a homeserver returns to the client. `errcode` and `error` cannot be
    /// overridden by the extra fields.
    pub fn to_body(&self) -> Value {
        let mut body = self.fields.clone();
        body.insert("errcode".into(), Value::String(self.errcode.clone()));
        body.insert("error".into(), Value::String(self.message.clone()));
        Value::Object(body)
    }
}

/// Allow, or deny with a Matrix error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refuse with this error.
    Deny(MatrixError),
}

impl Verdict {
    /// Whether this is `Allow`.
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// Something the homeserver must carry out for a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// Make the user leave and forget every room.
    LeaveAllRooms {
        /// The user.
        user: OwnedUserId,
    },
    /// Remove the user from the user directory.
    RemoveFromUserDirectory {
        /// The user.
        user: OwnedUserId,
    },
    /// Unbind and delete the user's third-party ids.
    UnbindThreepids {
        /// The user.
        user: OwnedUserId,
    },
    /// Delete the user's profile.
    DeleteProfile {
        /// The user.
        user: OwnedUserId,
    },
    /// Purge the room's history from the database.
    PurgeRoomHistory {
        /// The room.
        room: OwnedRoomId,
    },
    /// Delete media from the media repository.
    DeleteMedia {
        /// The media.
        mxc: OwnedMxcUri,
    },
    /// Send a server notice (`m.room.message`, `msgtype: m.server_notice`).
    SendServerNotice {
        /// The recipient.
        user: OwnedUserId,
        /// The notice's full content: `msgtype`, `body` and any extra keys.
        content: Map<String, Value>,
    },
    /// Announce that the user is erased, so bots, bridges and servers apply erasure semantics.
    AnnounceErasure {
        /// The user.
        user: OwnedUserId,
    },
}

/// A local user's event before the homeserver accepts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendEvent {
    /// The sender.
    pub sender: OwnedUserId,
    /// The sender's account kind.
    #[serde(default)]
    pub sender_kind: UserKind,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The room's version.
    pub room_version: RoomVersionId,
    /// The event type.
    pub event_type: String,
    /// The state key, for state events.
    #[serde(default)]
    pub state_key: Option<String>,
    /// The content.
    pub content: Value,
    /// The event's `origin_server_ts`.
    pub origin_server_ts: u64,
    /// Whether the room is the sender's server-notices room.
    #[serde(default)]
    pub is_server_notices_room: bool,
}

/// `m.room.history_visibility` at an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryVisibility {
    /// Anyone.
    #[serde(alias = "world_readable")]
    WorldReadable,
    /// Members, all history.
    #[default]
    Shared,
    /// Members, since their invite.
    Invited,
    /// Members, since their join.
    Joined,
}

/// Who events are served to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Viewer {
    /// A user.
    User(OwnedUserId),
    /// A remote server.
    Server(OwnedServerName),
    /// The anonymous public.
    Anonymous,
}

/// One event to serve, with the facts a policy needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeEvent {
    /// The event as the homeserver would serve it (client format or PDU). It must hold
    /// `event_id`, `room_id`, `sender`, `type` and `origin_server_ts`.
    pub event: Value,
    /// The room's version (decides what redaction keeps).
    pub room_version: RoomVersionId,
    /// History visibility at the event.
    #[serde(default)]
    pub history_visibility: HistoryVisibility,
    /// Clients: was the viewer joined at this event? Federation: did the requesting server
    /// have a user joined at this event?
    #[serde(default)]
    pub viewer_joined: bool,
}

/// What happened to one served event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServeVerdict {
    /// Served unchanged.
    Serve,
    /// Served redacted.
    Redact,
    /// Served redacted with a pseudonymous sender (clients only).
    Pseudonymize,
    /// Not served.
    Withhold,
}

/// One event after the serve hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedEvent {
    /// The combined verdict.
    pub verdict: ServeVerdict,
    /// The event to serve (unchanged, redacted or pseudonymized), `None` when withheld.
    pub event: Option<Value>,
}

/// A media upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaUpload {
    /// The `mxc://` URI the media gets.
    pub mxc: OwnedMxcUri,
    /// The uploader.
    pub uploader: OwnedUserId,
    /// Size in bytes.
    pub size: u64,
    /// The declared content type.
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Who asks for media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requester {
    /// A user.
    User(OwnedUserId),
    /// A remote server.
    Server(OwnedServerName),
    /// An unauthenticated request.
    Anonymous,
}

/// A media fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaFetch {
    /// The media.
    pub mxc: OwnedMxcUri,
    /// Who asks.
    pub requester: Requester,
}

/// An account deactivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deactivation {
    /// The account.
    pub user: OwnedUserId,
    /// Whether GDPR erasure was requested.
    #[serde(default)]
    pub erase: bool,
    /// Whether an admin made the request.
    #[serde(default)]
    pub by_admin: bool,
    /// Whether the request passed a second factor.
    #[serde(default)]
    pub second_factor: bool,
}

/// An account reactivation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reactivation {
    /// The account.
    pub user: OwnedUserId,
    /// Whether an admin made the request.
    #[serde(default)]
    pub by_admin: bool,
}

/// An HTTP request to a plugin's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path below the plugin's mount point, starting with `/`.
    pub path: String,
    /// The raw query string without `?`.
    #[serde(default)]
    pub query: String,
    /// Headers (names lowercase).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The body.
    #[serde(default)]
    pub body: Vec<u8>,
}

/// A plugin's HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// The plugin's name (state and web endpoints are keyed by it).
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The hooks it implements.
    pub hooks: Vec<Hook>,
}
