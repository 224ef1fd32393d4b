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
use serde::{Deserialize, de::IgnoredAny};
use serde_json::{Map, Value, value::RawValue};
use serde_path_to_error::Segment;

use crate::expect::Expect;

/// Largest scenario file `replay` reads: 64 MiB. A scenario of 100,000 short sends is about
/// 10 MiB; the cap only stops a path like `/dev/zero`, or a runaway file, from exhausting
/// memory.
/// Anything but a regular file (a device, a FIFO, a socket, a directory) is refused too.
pub const MAX_SCENARIO_BYTES: u64 = 64 << 20;

/// A whole scenario file, as [`parse`] (or [`load`]) reads it.
#[derive(Debug)]
pub struct Scenario {
    /// Free text: what the scenario shows.
    pub description: Option<String>,
    /// The simulated homeserver's name. Default `hs.example`.
    pub server_name: OwnedServerName,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginEntry>,
    /// The steps, run in order.
    pub steps: Vec<Step>,
    /// Line and column (1-based) of each step in the file.
    pub positions: Vec<(usize, usize)>,
}

impl Scenario {
    /// Line and column of step `index` in the file, `(0, 0)` if unknown.
    pub fn position(&self, index: usize) -> (usize, usize) {
        self.positions.get(index).copied().unwrap_or((0, 0))
    }
}

/// The document as serde reads it: every step is kept as its raw text (a slice of the file),
/// parsed afterwards one by one, so that an error names the step, and so that the step's
/// line and column come from where serde_json found it in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document<'a> {
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "default_server_name")]
    server_name: OwnedServerName,
    #[serde(default)]
    plugins: Vec<PluginEntry>,
    #[serde(borrow)]
    steps: Vec<&'a RawValue>,
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

/// Every op name as written in scenarios, in documentation order (the order of [`Op`]'s
/// variants, from which it is derived: an op cannot be missing from this list). The unknown-op
/// error lists them, and `mxpolicy replay --list-ops` prints them.
pub const OPS: &[&str] = <Op as strum::VariantNames>::VARIANTS;

/// An operation.
///
/// Its serde form is external tagging, `{"send": {"room": ..., ...}}`, not the scenario's
/// `{"op": "send", "room": ..., ...}`: a step is parsed by this module, which moves the `op`
/// key outside. The reason is the error messages: `serde_path_to_error` can only follow the
/// fields of an externally tagged enum (an internally tagged one is buffered before its
/// fields are read, so an error in them has no path), and with it a type error names the
/// field (`` `ms`: invalid type ``). The names of the ops, for serde and for [`OPS`] and
/// [`Op::name`] (strum), both come from the variant names in snake_case.
#[derive(Debug, Deserialize, strum::IntoStaticStr, strum::VariantNames)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
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
    /// Fire every timer due now. (A struct variant without fields, so that unknown fields are
    /// refused as for every other op.)
    RunTimers {},
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
        self.into()
    }
}

impl Step {
    /// Parse one step object; errors name the step, its op, and the path of the offending key.
    fn from_value(index: usize, value: Value) -> Result<Step, String> {
        let Value::Object(mut raw) = value else {
            return Err(format!(
                "step {index}: a step is a JSON object with an `op`, not {value}"
            ));
        };
        let op = match raw.remove("op") {
            Some(Value::String(op)) => op,
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
                    serde_path_to_error::deserialize(v).map_err(|e| {
                        match path_text(e.path().iter()) {
                            Some(path) => format!("{at}: `expect.{path}`: {}", e.inner()),
                            None => format!("{at}: expect: {}", e.inner()),
                        }
                    })?;
                e.check_applies_to(&op).map_err(|e| format!("{at}: {e}"))?;
                Some(e)
            }
        };
        if let Some(bad) = bad_id(&raw) {
            return Err(format!("{at}: {bad}"));
        }
        let tagged = Value::Object(Map::from_iter([(op, Value::Object(raw))]));
        let op: Op = serde_path_to_error::deserialize(tagged).map_err(|e| {
            // The first segment is the variant (the op), already named by `at`.
            match path_text(e.path().iter().skip(1)) {
                Some(path) => format!("{at}: `{path}`: {}", e.inner()),
                None => format!("{at}: {}", e.inner()),
            }
        })?;
        Ok(Step { op, expect, note })
    }
}

/// A path into the JSON document as text (`plugins[0].deadline_ms`), or `None` when empty.
/// (`serde_path_to_error::Path` prints an empty path as `.`, and a path cannot be sliced.) A
/// key that is not a string (an error in a map key typed as an enum, such as a hook name) is
/// `?` inside the path and left out at its end, where the message names it.
fn path_text<'a>(segments: impl Iterator<Item = &'a Segment>) -> Option<String> {
    let mut segments: Vec<&Segment> = segments.collect();
    while segments
        .last()
        .is_some_and(|s| matches!(s, Segment::Unknown))
    {
        segments.pop();
    }
    let mut out = String::new();
    for segment in segments {
        let key = match segment {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                continue;
            }
            Segment::Map { key } | Segment::Enum { variant: key } => key.as_str(),
            _ => "?",
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    }
    (!out.is_empty()).then_some(out)
}

/// The first id field of a step that does not parse, explained with the field's name, the
/// value and the form expected (ruma's own errors give only the reason, e.g. "invalid leading
/// sigil").
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

/// Why a scenario text is refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// Line (1-based) of the error, or of the bad step.
    pub line: usize,
    /// Column (1-based).
    pub column: usize,
    /// What is wrong, naming the step (index and op) and the path of the key when it can.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ScenarioError {}

/// Parse a scenario. Malformed JSON is reported as such with serde_json's line and column;
/// a key of the wrong type, an unknown key or a missing one with the path of the key
/// (`serde_path_to_error`) at serde_json's position; a bad step with the step's index, op,
/// and line and column.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    // Syntax first, so that malformed JSON is reported as such even past a bad key.
    if let Err(e) = serde_json::from_str::<IgnoredAny>(text) {
        return Err(ScenarioError {
            line: e.line(),
            column: e.column(),
            message: format!(
                "malformed JSON: {} (line {}, column {})",
                strip_position(&e),
                e.line(),
                e.column()
            ),
        });
    }
    if !text.trim_start().starts_with('{') {
        return Err(ScenarioError {
            line: 1,
            column: 1,
            message: "a scenario is a JSON object with `server_name`, `plugins` and `steps`".into(),
        });
    }
    let document: Document<'_> = serde_path_to_error::deserialize(
        &mut serde_json::Deserializer::from_str(text),
    )
    .map_err(|e| {
        let path = path_text(e.path().iter());
        let inner = e.into_inner();
        ScenarioError {
            line: inner.line(),
            column: inner.column(),
            message: match path {
                Some(path) => format!("`{path}`: {}", strip_position(&inner)),
                None => strip_position(&inner),
            },
        }
    })?;
    let mut positions = Positions::new(text);
    let mut scenario = Scenario {
        description: document.description,
        server_name: document.server_name,
        plugins: document.plugins,
        steps: Vec::with_capacity(document.steps.len()),
        positions: Vec::with_capacity(document.steps.len()),
    };
    for (index, raw) in document.steps.into_iter().enumerate() {
        let (line, column) = positions.of(raw.get());
        scenario.positions.push((line, column));
        // The step's text is a slice of valid JSON: it parses.
        let value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let step = Step::from_value(index, value).map_err(|message| ScenarioError {
            line,
            column,
            message,
        })?;
        scenario.steps.push(step);
    }
    Ok(scenario)
}

/// Read and parse a scenario file. Errors say which file, and where (see [`parse`]). A file
/// that is not a regular file, or is larger than [`MAX_SCENARIO_BYTES`], is refused before it
/// is read.
pub fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text = mxpolicy_host::read_bounded_to_string(path, MAX_SCENARIO_BYTES)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

/// Line and column of slices of a text, for slices asked in increasing order (each step once:
/// linear in the text, however many steps). serde_json finds each step (its `RawValue` is a
/// slice of the text) but reports positions only in its errors, so counting the lines up to
/// the slice is left to this small counter.
struct Positions<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
    column: usize,
}

impl<'a> Positions<'a> {
    fn new(text: &'a str) -> Self {
        Positions {
            text,
            offset: 0,
            line: 1,
            column: 1,
        }
    }

    /// Line and column (1-based, in characters) where `slice`, a part of the text (serde_json
    /// borrows each raw step from it), starts; `(0, 0)` if it is not a part of the text.
    fn of(&mut self, slice: &str) -> (usize, usize) {
        let start = slice
            .as_ptr()
            .addr()
            .wrapping_sub(self.text.as_ptr().addr());
        let Some(skipped) = self.text.get(self.offset..start) else {
            return (0, 0);
        };
        for c in skipped.chars() {
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        self.offset = start;
        (self.line, self.column)
    }
}

/// serde_json's message without its trailing " at line L column C" (serde_json has no accessor
/// for the bare message; the position is reported in front, as `file:line:column:`).
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

    /// The error's text, position included.
    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn step_positions_point_at_each_step() {
        let text = "{\"description\": \"[\\\" {\",\n \"steps\": [\n  {\"op\": \"clock\", \"now_ms\": 1},\n  {\"op\": \"run_timers\", \"note\": \"é\"},   {\"op\": \"run_timers\"}\n]}";
        let s = parse(text).unwrap();
        assert_eq!(s.positions, vec![(3, 3), (4, 3), (4, 40)]);
        assert_eq!(s.position(2), (4, 40), "columns count characters");
        assert_eq!(s.position(3), (0, 0));
        // A bad step is reported at its position.
        let e =
            parse("{\"steps\": [\n {\"op\": \"clock\", \"now_ms\": 1},\n    {\"op\": \"sned\"}]}")
                .unwrap_err();
        assert_eq!((e.line, e.column), (3, 5), "{e}");
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
        assert_eq!(s.steps.len(), 6);
        assert!(matches!(s.steps[4].op, Op::RunTimers {}));
        assert_eq!(s.steps[4].note.as_deref(), Some("nothing due"));
        let Op::Send {
            event_type,
            content,
            ..
        } = &s.steps[3].op
        else {
            panic!()
        };
        assert_eq!(event_type, "m.room.message");
        assert_eq!(content, &serde_json::json!({}));
    }

    #[test]
    fn ops_list_every_variant_under_its_serde_name() {
        assert_eq!(OPS.len(), 20, "{OPS:?}");
        assert_eq!(OPS[0], "clock");
        assert!(OPS.contains(&"run_timers") && OPS.contains(&"fetch_media"));
        for op in OPS {
            // Known to serde under the same name: whatever else is wrong, not the variant.
            let e = serde_json::from_value::<Op>(serde_json::json!({ *op: {} }));
            if let Err(e) = e {
                let e = e.to_string();
                assert!(e.starts_with("missing field"), "{op}: {e}");
            }
        }
        let s = parse(r#"{"steps": [{"op": "run_timers"}, {"op": "advance", "ms": 1}]}"#).unwrap();
        assert_eq!(s.steps[0].op.name(), "run_timers");
        assert_eq!(s.steps[1].op.name(), "advance");
    }

    #[test]
    fn errors_name_the_step() {
        let e = error(r#"{"steps": [{"op": "clock", "now_ms": 1}, {"op": "sned"}]}"#);
        assert!(
            e.contains("step 1: unknown op `sned` (valid ops: clock, advance, "),
            "{e}"
        );
        let e = error(r#"{"steps": [{"op": "send", "room": "!r:hs.example"}]}"#);
        assert!(e.contains("step 0 (send): missing field `sender`"), "{e}");
        let e = error(r#"{"steps": [{"op": "join", "room": "r:hs", "user": "@a:hs"}]}"#);
        assert!(
            e.contains("step 0 (join): `room`: \"r:hs\" is not a room id (!room:server): "),
            "{e}"
        );
        let e = error(r#"{"steps": [{"op": "advance", "ms": 1, "mss": 2}]}"#);
        assert!(e.contains("unknown field `mss`"), "{e}");
        let e = error(r#"{"steps": [{"op": "run_timers", "x": 1}]}"#);
        assert!(
            e.contains("step 0 (run_timers): `x`: unknown field `x`"),
            "{e}"
        );
        let e = error(r#"{"steps": [{"op": "advance", "ms": 1, "expect": {"verdicts": []}}]}"#);
        assert!(e.contains("step 0 (advance): expect.verdicts"), "{e}");
        let e = error(r#"{"steps": [7]}"#);
        assert_eq!(
            e,
            "1:12: step 0: a step is a JSON object with an `op`, not 7"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = error(r#"{"steps": [{"op": "advance", "ms": "x"}]}"#);
        assert_eq!(
            e,
            "1:12: step 0 (advance): `ms`: invalid type: string \"x\", expected u64"
        );
        let e = error(r#"{"steps": [{"op": "client_serve", "event_ids": ["$a", 3]}]}"#);
        assert!(
            e.contains("step 0 (client_serve): `event_ids[1]`: invalid type: integer `3`"),
            "{e}"
        );
        let e = error(
            r#"{"steps": [{"op": "http", "plugin": "p", "path": "/", "headers": {"a": 1}}]}"#,
        );
        assert!(
            e.contains("step 0 (http): `headers.a`: invalid type"),
            "{e}"
        );
        let e = error(
            r#"{"steps": [{"op": "send", "room": "!r:hs.example", "sender": "@a:hs.example",
                           "expect": {"actions": [], "status": "x"}}]}"#,
        );
        assert!(
            e.contains("step 0 (send): `expect.status`: invalid type: string \"x\", expected u16"),
            "{e}"
        );
        let e = error(r#"{"steps": [{"op": "send", "expect": {"verdit": "allow"}}]}"#);
        assert!(
            e.contains("step 0 (send): `expect.verdit`: unknown field `verdit`"),
            "{e}"
        );
        // Outside the steps: the path, at serde_json's position.
        let e = error(
            "{\"plugins\": [{\"name\": \"x\"}, {\"deadline_ms\": \"slow\"}],\n \"steps\": []}",
        );
        assert_eq!(
            e,
            "1:50: `plugins[1].deadline_ms`: invalid type: string \"slow\", expected u64"
        );
        let e = error(r#"{"server_name": 5, "steps": []}"#);
        assert!(
            e.starts_with("1:17: `server_name`: invalid type: integer `5`"),
            "{e}"
        );
        let e = error(r#"{"steps": [], "stepz": []}"#);
        assert!(e.contains("`stepz`: unknown field `stepz`"), "{e}");
        let e = error(r#"{"plugins": [{"failure_policy": {"on-sned": "open"}}], "steps": []}"#);
        assert!(
            e.contains("`plugins[0].failure_policy`: unknown variant `on-sned`"),
            "{e}"
        );
        let e = error(r#"{"plugins": []}"#);
        assert!(e.ends_with(": missing field `steps`"), "{e}");
    }

    #[test]
    fn malformed_json_is_reported_before_bad_keys() {
        let e = error("{\"stepz\": 1,\n \"steps\": [}");
        assert_eq!(
            e,
            "2:12: malformed JSON: expected value (line 2, column 12)"
        );
        let e = error("[1]");
        assert_eq!(
            e,
            "1:1: a scenario is a JSON object with `server_name`, `plugins` and `steps`"
        );
    }
}
