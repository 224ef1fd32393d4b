//! The scenario format: serde types, and loading a file with errors that say where.
//!
//! A scenario is one JSON document: the server name, the plugin chain, and the steps. Each step
//! is an object with an `op`, the op's fields, an optional `expect` and an optional `note`.
//! Unknown fields are refused everywhere, so a typo is an error instead of a silently ignored
//! expectation. See `cli/README.md` for the format.

use std::{collections::BTreeMap, fmt, path::Path};

use mxpolicy_host::{
    FailurePolicy, HistoryVisibility, Hook, InstanceMode, UserKind,
    ruma::{OwnedMxcUri, OwnedRoomId, OwnedServerName, OwnedUserId},
};
use serde::{
    Deserialize, Deserializer,
    de::{SeqAccess, Visitor},
};
use serde_json::{Map, Value};

use crate::expect::Expect;

/// Largest scenario file `replay` reads: 64 MiB. A scenario of 100,000 short sends is about
/// 10 MiB; the cap only stops a path like `/dev/zero`, or a runaway file, from exhausting
/// memory.
/// Anything but a regular file (a device, a FIFO, a socket, a directory) is refused too.
pub const MAX_SCENARIO_BYTES: u64 = 64 << 20;

/// A whole scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Free text: what the scenario shows.
    #[serde(default)]
    pub description: Option<String>,
    /// The simulated homeserver's name. Default `hs.example`.
    #[serde(default = "default_server_name")]
    pub server_name: OwnedServerName,
    /// The plugin chain, in order.
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
    /// The steps, run in order.
    pub steps: Steps,
    /// Line and column of each step in the file (filled by [`load`]).
    #[serde(skip)]
    pub positions: Vec<(usize, usize)>,
}

impl Scenario {
    /// Line and column of step `index` in the file, `(0, 0)` if unknown.
    pub fn position(&self, index: usize) -> (usize, usize) {
        self.positions.get(index).copied().unwrap_or((0, 0))
    }
}

fn default_server_name() -> OwnedServerName {
    mxpolicy_host::ruma::owned_server_name!("hs.example")
}

/// One plugin of the chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// The name the plugin must report (checked at load). Optional when `path` is given.
    #[serde(default)]
    pub name: Option<String>,
    /// The component: relative to the scenario file, else to the built plugins directory; a
    /// bare name means `<plugins dir>/<name>.wasm`. Default: the `name`.
    #[serde(default)]
    pub path: Option<String>,
    /// The configuration handed to `init`. Default `{}`.
    #[serde(default)]
    pub config: Option<Value>,
    /// Deadline of each hook call in milliseconds. Default 1000 (generous: replay is about
    /// decisions, not latency).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Failure policy per hook, e.g. `{"on-send": "open"}`.
    #[serde(default)]
    pub failure_policy: BTreeMap<Hook, FailurePolicy>,
    /// `fresh` (default) or `reuse`.
    #[serde(default)]
    pub instance_mode: Option<InstanceMode>,
}

/// One step: the operation, what to expect, and a note for the reader.
#[derive(Debug)]
pub struct Step {
    /// The operation and its fields.
    pub op: Op,
    /// The expectations, if any.
    pub expect: Option<Expect>,
    /// Free text.
    pub note: Option<String>,
}

/// Every op name, in documentation order.
pub const OPS: &[&str] = &[
    "clock",
    "advance",
    "register",
    "create_room",
    "join",
    "leave",
    "invite",
    "consent",
    "send",
    "deactivate",
    "reactivate",
    "upload",
    "fetch_media",
    "client_serve",
    "federation_serve",
    "http",
    "run_timers",
    "swap",
    "admin",
    "inspect",
];

/// An operation.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Set the clock.
    Clock {
        /// Milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Move the clock forward.
    Advance {
        /// Milliseconds.
        ms: u64,
    },
    /// Register a local user.
    Register {
        /// The user.
        user: OwnedUserId,
        /// The account kind. Default `regular`.
        #[serde(default)]
        kind: UserKind,
    },
    /// Create a room; the creator joins it.
    CreateRoom {
        /// The room.
        room: OwnedRoomId,
        /// The creator.
        creator: OwnedUserId,
        /// The room version. Default `"10"`.
        #[serde(default = "default_room_version")]
        room_version: String,
        /// The history visibility. Default `shared`.
        #[serde(default)]
        history_visibility: HistoryVisibility,
        /// The id of the `m.room.create` event (default `$create-<step>`).
        #[serde(default)]
        event_id: Option<String>,
        /// Make this the server-notices room of this user.
        #[serde(default)]
        server_notices_for: Option<OwnedUserId>,
    },
    /// A user joins a room.
    Join {
        /// The room.
        room: OwnedRoomId,
        /// The user (remote users allowed).
        user: OwnedUserId,
        /// The membership event's id (default `$join-<step>`).
        #[serde(default)]
        event_id: Option<String>,
    },
    /// A user leaves a room.
    Leave {
        /// The room.
        room: OwnedRoomId,
        /// The user (remote users allowed).
        user: OwnedUserId,
        /// The membership event's id (default `$leave-<step>`).
        #[serde(default)]
        event_id: Option<String>,
    },
    /// A member invites a user.
    Invite {
        /// The room.
        room: OwnedRoomId,
        /// The invited user.
        user: OwnedUserId,
        /// The inviting member.
        by: OwnedUserId,
        /// The membership event's id (default `$invite-<step>`).
        #[serde(default)]
        event_id: Option<String>,
    },
    /// Record a user's consent, as the consent page would.
    Consent {
        /// The user.
        user: OwnedUserId,
        /// The policy version consented to.
        version: String,
        /// The consent plugin's name. Default `consent`.
        #[serde(default = "default_consent_plugin")]
        plugin: String,
    },
    /// A user sends an event.
    Send {
        /// The room.
        room: OwnedRoomId,
        /// The sender.
        sender: OwnedUserId,
        /// The event id (default `$send-<step>`).
        #[serde(default)]
        event_id: Option<String>,
        /// The event type. Default `m.room.message`.
        #[serde(rename = "type", default = "default_event_type")]
        event_type: String,
        /// The state key, for state events.
        #[serde(default)]
        state_key: Option<String>,
        /// The content. Default `{}`.
        #[serde(default = "empty_object")]
        content: Value,
    },
    /// Deactivate an account.
    Deactivate {
        /// The account.
        user: OwnedUserId,
        /// GDPR erasure requested.
        #[serde(default)]
        erase: bool,
        /// Requested by an admin.
        #[serde(default)]
        by_admin: bool,
        /// Passed a second factor.
        #[serde(default)]
        second_factor: bool,
    },
    /// Reactivate an account.
    Reactivate {
        /// The account.
        user: OwnedUserId,
        /// Requested by an admin.
        #[serde(default)]
        by_admin: bool,
    },
    /// Upload media.
    Upload {
        /// The uploader.
        user: OwnedUserId,
        /// The media's URI.
        mxc: OwnedMxcUri,
        /// Size in bytes.
        #[serde(default)]
        size: u64,
        /// The declared content type.
        #[serde(default)]
        content_type: Option<String>,
    },
    /// Fetch media.
    FetchMedia {
        /// The media's URI.
        mxc: OwnedMxcUri,
        /// `@user:server`, `server:<name>`, or null for anonymous.
        #[serde(default)]
        requester: Option<String>,
    },
    /// Serve events to a client.
    ClientServe {
        /// The viewing user, or null for the anonymous public.
        #[serde(default)]
        viewer: Option<OwnedUserId>,
        /// The events, in order.
        event_ids: Vec<String>,
    },
    /// Serve events to a server.
    FederationServe {
        /// The requesting server.
        server: OwnedServerName,
        /// The events, in order.
        event_ids: Vec<String>,
    },
    /// A request to a plugin's web endpoint.
    Http {
        /// The plugin.
        plugin: String,
        /// The method. Default `GET`.
        #[serde(default = "default_method")]
        method: String,
        /// The path below the plugin's prefix.
        path: String,
        /// The raw query string.
        #[serde(default)]
        query: String,
        /// The body, as text.
        #[serde(default)]
        body: String,
        /// Request headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    /// Fire every timer due now.
    RunTimers,
    /// Hot-swap a plugin (new build and/or new configuration).
    Swap {
        /// The plugin's name.
        plugin: String,
        /// The new component (default: the current one).
        #[serde(default)]
        path: Option<String>,
        /// The new configuration (default: the current one).
        #[serde(default)]
        config: Option<Value>,
        /// New deadline (default: the current one).
        #[serde(default)]
        deadline_ms: Option<u64>,
    },
    /// An admin command to a plugin.
    Admin {
        /// The plugin.
        plugin: String,
        /// The command.
        command: String,
        /// Its arguments. Default `{}`.
        #[serde(default = "empty_object")]
        args: Value,
    },
    /// Report what the simulated homeserver knows about a user, room or media.
    Inspect {
        /// A user.
        #[serde(default)]
        user: Option<OwnedUserId>,
        /// A room.
        #[serde(default)]
        room: Option<OwnedRoomId>,
        /// A media URI.
        #[serde(default)]
        mxc: Option<OwnedMxcUri>,
    },
}

fn default_room_version() -> String {
    "10".into()
}
fn default_consent_plugin() -> String {
    "consent".into()
}
fn default_event_type() -> String {
    "m.room.message".into()
}
fn default_method() -> String {
    "GET".into()
}
fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Op {
    /// The op's name as written in scenarios.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Clock { .. } => "clock",
            Op::Advance { .. } => "advance",
            Op::Register { .. } => "register",
            Op::CreateRoom { .. } => "create_room",
            Op::Join { .. } => "join",
            Op::Leave { .. } => "leave",
            Op::Invite { .. } => "invite",
            Op::Consent { .. } => "consent",
            Op::Send { .. } => "send",
            Op::Deactivate { .. } => "deactivate",
            Op::Reactivate { .. } => "reactivate",
            Op::Upload { .. } => "upload",
            Op::FetchMedia { .. } => "fetch_media",
            Op::ClientServe { .. } => "client_serve",
            Op::FederationServe { .. } => "federation_serve",
            Op::Http { .. } => "http",
            Op::RunTimers => "run_timers",
            Op::Swap { .. } => "swap",
            Op::Admin { .. } => "admin",
            Op::Inspect { .. } => "inspect",
        }
    }
}

/// The steps, parsed one by one so that an error names the step. Parsing goes on past a bad
/// step only to keep serde's own checks of the rest of the document; the first bad step is kept
/// in `error` and reported by [`load`] with the step's line and column.
#[derive(Debug)]
pub struct Steps(pub Vec<Step>, pub Option<(usize, String)>);

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepsVisitor;
        impl<'de> Visitor<'de> for StepsVisitor {
            type Value = Steps;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of steps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Steps, A::Error> {
                let mut steps = Vec::new();
                let mut error = None;
                let mut index = 0;
                while let Some(raw) = seq.next_element::<Map<String, Value>>()? {
                    if error.is_none() {
                        match Step::from_raw(index, raw) {
                            Ok(step) => steps.push(step),
                            Err(e) => error = Some((index, e)),
                        }
                    }
                    index += 1;
                }
                Ok(Steps(steps, error))
            }
        }
        deserializer.deserialize_seq(StepsVisitor)
    }
}

impl Step {
    /// Parse one step object; errors name the step and its op.
    fn from_raw(index: usize, mut raw: Map<String, Value>) -> Result<Step, String> {
        let op = match raw.get("op") {
            Some(Value::String(op)) => op.clone(),
            Some(other) => return Err(format!("step {index}: `op` must be a string, not {other}")),
            None => {
                return Err(format!(
                    "step {index}: missing `op` (one of: {})",
                    OPS.join(", ")
                ));
            }
        };
        if !OPS.contains(&op.as_str()) {
            return Err(format!(
                "step {index}: unknown op `{op}` (valid ops: {})",
                OPS.join(", ")
            ));
        }
        let at = format!("step {index} ({op})");
        let note = match raw.remove("note") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => return Err(format!("{at}: `note` must be a string, not {other}")),
        };
        let expect = match raw.remove("expect") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let e: Expect =
                    serde_json::from_value(v).map_err(|e| format!("{at}: expect: {e}"))?;
                e.check_applies_to(&op).map_err(|e| format!("{at}: {e}"))?;
                Some(e)
            }
        };
        if let Some(bad) = bad_id(&raw) {
            return Err(format!("{at}: {bad}"));
        }
        let op: Op =
            serde_json::from_value(Value::Object(raw)).map_err(|e| format!("{at}: {e}"))?;
        Ok(Step { op, expect, note })
    }
}

/// The first id field of a step that does not parse, explained with the field's name (ruma's
/// own errors do not name the field).
fn bad_id(raw: &Map<String, Value>) -> Option<String> {
    use mxpolicy_host::ruma::{MxcUri, RoomId, ServerName, UserId};
    raw.iter().find_map(|(key, value)| {
        let text = value.as_str()?;
        let (what, error) = match key.as_str() {
            "room" => (
                "a room id (!room:server)",
                RoomId::parse(text).err()?.to_string(),
            ),
            "user" | "sender" | "creator" | "by" | "viewer" | "server_notices_for" => (
                "a user id (@user:server)",
                UserId::parse(text).err()?.to_string(),
            ),
            "server" => ("a server name", ServerName::parse(text).err()?.to_string()),
            "mxc" => (
                "an mxc:// URI",
                <&MxcUri>::from(text).validate().err()?.to_string(),
            ),
            _ => return None,
        };
        Some(format!("`{key}`: {text:?} is not {what}: {error}"))
    })
}

/// Read and parse a scenario file. Errors say which file, and where: line and column for
/// malformed JSON, the step index and op for a bad step. A file that is not a regular file,
/// or is larger than [`MAX_SCENARIO_BYTES`], is refused before it is read.
pub fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text = mxpolicy_host::read_bounded_to_string(path, MAX_SCENARIO_BYTES)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    // Syntax first, so malformed JSON is reported as such, with its position.
    match serde_json::from_str::<Value>(&text) {
        Err(e) => anyhow::bail!(
            "{}:{}:{}: malformed JSON: {} (line {}, column {})",
            path.display(),
            e.line(),
            e.column(),
            strip_position(&e),
            e.line(),
            e.column()
        ),
        Ok(Value::Object(_)) => {}
        Ok(_) => anyhow::bail!(
            "{}:1:1: a scenario is a JSON object with `server_name`, `plugins` and `steps`",
            path.display()
        ),
    }
    let mut scenario = serde_json::from_str::<Scenario>(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: {}",
            path.display(),
            e.line(),
            e.column(),
            strip_position(&e)
        )
    })?;
    scenario.positions = step_positions(&text);
    if let Some((index, message)) = &scenario.steps.1 {
        let (line, column) = scenario.position(*index);
        anyhow::bail!("{}:{line}:{column}: {message}", path.display());
    }
    Ok(scenario)
}

/// Line and column (1-based) where each element of the top-level `steps` array starts. The
/// text is known to be valid JSON.
fn step_positions(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut line, mut column) = (1, 0);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string = String::new();
    let mut last_key = String::new();
    let mut in_steps = false;
    let mut expect_element = false;
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            column = 0;
            continue;
        }
        column += 1;
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                if depth == 1 {
                    last_key = std::mem::take(&mut string);
                }
            } else if depth == 1 {
                string.push(c);
            }
            continue;
        }
        if in_steps && depth == 2 && expect_element && !c.is_whitespace() && c != ']' {
            out.push((line, column));
            expect_element = false;
        }
        match c {
            '"' => {
                in_string = true;
                string.clear();
            }
            '{' | '[' => {
                depth += 1;
                if c == '[' && depth == 2 && last_key == "steps" {
                    in_steps = true;
                    expect_element = true;
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth < 2 {
                    in_steps = false;
                }
            }
            ',' if in_steps && depth == 2 => expect_element = true,
            _ => {}
        }
    }
    out
}

/// serde_json's message without its trailing " at line L column C".
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, String> {
        let s = serde_json::from_str::<Scenario>(text).map_err(|e| e.to_string())?;
        match &s.steps.1 {
            Some((_, e)) => Err(e.clone()),
            None => Ok(s),
        }
    }

    #[test]
    fn step_positions_point_at_each_step() {
        let text = "{\"note\": \"[\\\" {\",\n \"steps\": [\n  {\"op\": \"a\", \"x\": [1, {}]},\n  {\"op\": \"b\"}\n]}";
        assert_eq!(step_positions(text), vec![(3, 3), (4, 3)]);
    }

    #[test]
    fn every_op_parses_with_defaults() {
        let s = parse(
            r#"{"steps": [
            {"op": "clock", "now_ms": 5},
            {"op": "register", "user": "@a:hs.example"},
            {"op": "create_room", "room": "!r:hs.example", "creator": "@a:hs.example"},
            {"op": "send", "room": "!r:hs.example", "sender": "@a:hs.example",
             "state_key": null, "expect": {"verdict": "allow"}},
            {"op": "run_timers", "note": "nothing due"},
            {"op": "fetch_media", "mxc": "mxc://hs.example/x", "requester": null}
        ]}"#,
        )
        .unwrap();
        assert_eq!(s.server_name, "hs.example");
        assert_eq!(s.steps.0.len(), 6);
        assert!(matches!(s.steps.0[4].op, Op::RunTimers));
        assert_eq!(s.steps.0[4].note.as_deref(), Some("nothing due"));
        let Op::Send {
            event_type,
            content,
            ..
        } = &s.steps.0[3].op
        else {
            panic!()
        };
        assert_eq!(event_type, "m.room.message");
        assert_eq!(content, &serde_json::json!({}));
    }

    #[test]
    fn errors_name_the_step() {
        let e = parse(r#"{"steps": [{"op": "clock", "now_ms": 1}, {"op": "sned"}]}"#).unwrap_err();
        assert!(
            e.contains("step 1: unknown op `sned` (valid ops: clock"),
            "{e}"
        );
        let e = parse(r#"{"steps": [{"op": "send", "room": "!r:hs.example"}]}"#).unwrap_err();
        assert!(e.contains("step 0 (send): missing field `sender`"), "{e}");
        let e =
            parse(r#"{"steps": [{"op": "join", "room": "r:hs", "user": "@a:hs"}]}"#).unwrap_err();
        assert!(
            e.contains("step 0 (join): `room`: \"r:hs\" is not a room id (!room:server): "),
            "{e}"
        );
        let e = parse(r#"{"steps": [{"op": "advance", "ms": 1, "mss": 2}]}"#).unwrap_err();
        assert!(e.contains("unknown field `mss`"), "{e}");
        let e = parse(r#"{"steps": [{"op": "advance", "ms": 1, "expect": {"verdicts": []}}]}"#)
            .unwrap_err();
        assert!(e.contains("step 0 (advance): expect.verdicts"), "{e}");
    }
}
