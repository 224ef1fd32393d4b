//! The host's capabilities, typed: state, timers, log and homeserver queries.
//!
//! In a wasm build these call the component's imports. In a native build (a policy's own
//! `cargo test`) they use the thread-local in-memory host of [`testing`](crate::testing), so the
//! same policy source runs in both.
//!
//! Typed state values and timer payloads are JSON: [`state`] says why, and how decoding
//! failures reach the policy.

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imports;
#[cfg(target_arch = "wasm32")]
use crate::wit::mxpolicy::policy as imports;

use serde::{Serialize, de::DeserializeOwned};

/// Encode a state value or timer payload as JSON (see [`state`]). Panics if the value has no
/// JSON form (a map whose keys are neither strings nor numbers, or a `Serialize` impl
/// that fails): a bug in the policy's types, the same for every value, that its first unit
/// test finds.
fn encode<T: Serialize + ?Sized>(what: &dyn std::fmt::Display, value: &T) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("{what} cannot be encoded as JSON: {e}"),
    }
}

/// Decode a state value or timer payload, naming the field path in the error's cause.
fn decode<T: DeserializeOwned>(
    subject: state::Subject,
    key: &str,
    bytes: &[u8],
) -> Result<T, state::DecodeError> {
    let fail = |cause: String| state::DecodeError {
        subject,
        key: key.to_owned(),
        type_name: std::any::type_name::<T>(),
        cause,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| fail(e.to_string()))?;
    de.end().map_err(|e| fail(e.to_string()))?;
    Ok(value)
}

/// Decode a timer payload (for [`TimerContext::payload`](crate::TimerContext::payload)).
pub(crate) fn decode_payload<T: DeserializeOwned>(
    id: &str,
    bytes: &[u8],
) -> Result<T, state::DecodeError> {
    decode(state::Subject::TimerPayload, id, bytes)
}

/// Per-plugin key-value state: typed values (JSON) and raw bytes.
///
/// Writes become visible to later reads of the same call at once, and are committed when the
/// hook returns; if the hook fails (panic, timeout, ...), none of its writes are kept.
///
/// # Encoding: JSON
///
/// Typed state values ([`state::set`]) and timer payloads ([`timers::schedule`]) are stored
/// as JSON (`serde_json`), chosen over a compact binary format (postcard, bincode) for three
/// reasons:
///
/// - **Rollback and roll-forward.** JSON is self-describing: a record names its fields. A build
///   that does not know a field ignores it (unless its type says `deny_unknown_fields`), and a
///   field a newer build adds with `#[serde(default)]` (or as an `Option`) reads old records.
///   So after an upgrade that added a field, rolling back to the older build still reads every
///   record the newer build wrote, and the newer build reads the older build's records. A
///   positional format reads another build's bytes as garbage, or worse, as other values.
/// - **Auditors.** Consent records, erasure requests and media lists are legal records: an
///   admin reads them with `Host::read_state`, and `mxpolicy state export` prints a plugin's
///   records as JSON for auditors and data-portability requests, without the plugin's types.
/// - **One format** for every policy: no per-policy encoding, no schema registry.
///
/// The price is size (a `u64` counter is its decimal digits; a struct repeats its field names),
/// which the state quota counts; records here are small.
///
/// # Decoding can fail, and the policy decides
///
/// A record can still fail to decode: a newer build changed a field's type or added an enum
/// variant, the value was written raw ([`state::set_raw`]) by another format, or it is simply
/// damaged. [`state::get`] and [`TimerContext::payload`](crate::TimerContext::payload) never
/// panic on such a value: they return a [`DecodeError`](state::DecodeError) naming the key (or
/// timer) and the cause, and the policy chooses its answer. Where the record guards data, the
/// answer fails closed: deny, withhold, keep the record as it is. An undecodable consent or
/// erasure record is never "absent", which would let a send through or overwrite a legal record
/// with an empty one.
///
/// Rules for records that must survive a rollback:
/// - add fields with `#[serde(default)]` (or as `Option`), never rename or retype one;
/// - do not put `#[serde(deny_unknown_fields)]` on a stored type;
/// - an older build that reads, changes and writes back a record drops the fields it does not
///   know; a type that must keep them can carry
///   `#[serde(flatten)] rest: serde_json::Map<String, serde_json::Value>`;
/// - a change no older build can read (a new meaning for an old field) needs a new key or a
///   version field the older build checks.
///
/// ```
/// use mxpolicy_guest::{state, testing};
/// # testing::reset("hs.example");
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Note {
///     text: String,
///     #[serde(default)] // added later: records written before it read as `[]`
///     tags: Vec<String>,
/// }
///
/// state::set_raw("note", br#"{"text": "old", "written_by": "a newer build"}"#);
/// let note = state::get::<Note>("note").unwrap();
/// assert_eq!(note, Some(Note { text: "old".into(), tags: vec![] }));
///
/// state::set_raw("note", b"\x01\x02");
/// let error = state::get::<Note>("note").unwrap_err();
/// assert_eq!(error.key(), "note");
/// assert!(error.to_string().starts_with("state `note` does not decode as "));
/// ```
pub mod state {
    use std::fmt;

    use serde::{Serialize, de::DeserializeOwned};

    use super::imports::state as raw;

    /// What a [`DecodeError`] is about.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum Subject {
        /// A state value; [`DecodeError::key`] is its key.
        State,
        /// A timer's payload; [`DecodeError::key`] is the timer's id.
        TimerPayload,
    }

    /// A state value or timer payload that does not decode as the type asked for: written by
    /// a build whose type differs, written raw in another format, or damaged. It names the key
    /// (or timer id), the type and the cause (with the path of the field that failed).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DecodeError {
        pub(super) subject: Subject,
        pub(super) key: String,
        pub(super) type_name: &'static str,
        pub(super) cause: String,
    }

    impl DecodeError {
        /// Whether a state value or a timer payload failed.
        pub fn subject(&self) -> Subject {
            self.subject
        }

        /// The state key, or the timer's id.
        pub fn key(&self) -> &str {
            &self.key
        }

        /// The Rust type the value was decoded as.
        pub fn type_name(&self) -> &'static str {
            self.type_name
        }

        /// Why it failed: the JSON error, prefixed with the field's path when known
        /// (``pending.rooms[0]: invalid type: integer `1`, expected a string``).
        pub fn cause(&self) -> &str {
            &self.cause
        }
    }

    impl fmt::Display for DecodeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.subject {
                Subject::State => write!(f, "state `{}`", self.key)?,
                Subject::TimerPayload => write!(f, "the payload of timer `{}`", self.key)?,
            }
            write!(f, " does not decode as {}: {}", self.type_name, self.cause)
        }
    }

    impl std::error::Error for DecodeError {}

    /// The value under `key`: `Ok(None)` if there is none, `Err` if the stored bytes do not
    /// decode as `T` (never a panic). Decide what an undecodable value means for your policy;
    /// where it guards data, fail closed (deny, withhold, leave the record as it is) rather
    /// than treat it as absent.
    pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, DecodeError> {
        raw::get(key)
            .map(|bytes| super::decode(Subject::State, key, &bytes))
            .transpose()
    }

    /// Store `value` under `key`, as JSON. Panics if `T` has no JSON form (a map keyed by
    /// structs, a failing `Serialize` impl): a bug in the policy's types, not in its data.
    pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) {
        let bytes = super::encode(&format_args!("state `{key}`"), value);
        raw::set(key, &bytes);
    }

    /// The raw bytes under `key`, whatever their encoding.
    pub fn get_raw(key: &str) -> Option<Vec<u8>> {
        raw::get(key)
    }

    /// Store raw bytes under `key` (markers, or a format of the policy's own). [`get`] of such
    /// a value fails unless the bytes are JSON.
    pub fn set_raw(key: &str, value: &[u8]) {
        raw::set(key, value);
    }

    /// Remove `key`.
    pub fn delete(key: &str) {
        raw::delete(key);
    }

    /// Keys starting with `prefix`, ascending. The host refuses (the call fails) a prefix with
    /// more than 10,000 keys rather than cut the list: use [`keys_iter`] for prefixes that
    /// grow with the server (every user's records, every medium of a user).
    pub fn keys(prefix: &str) -> Vec<String> {
        raw::keys(prefix)
    }

    /// At most `limit` keys starting with `prefix` and sorting after `after`, ascending: one
    /// page. An empty page is the end.
    pub fn keys_page(prefix: &str, after: Option<&str>, limit: u32) -> Vec<String> {
        raw::keys_page(prefix, after, limit)
    }

    /// Every key starting with `prefix`, ascending, fetched a page of [`PAGE`] at a time:
    /// for prefixes of any size.
    pub fn keys_iter(prefix: &str) -> impl Iterator<Item = String> + '_ {
        let mut page: std::vec::IntoIter<String> = Vec::new().into_iter();
        let mut last: Option<String> = None;
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some(key) = page.next() {
                    last = Some(key.clone());
                    return Some(key);
                }
                if done {
                    return None;
                }
                let next = keys_page(prefix, last.as_deref(), PAGE);
                done = next.len() < PAGE as usize;
                if next.is_empty() {
                    return None;
                }
                page = next.into_iter();
            }
        })
    }

    /// The page size of [`keys_iter`].
    pub const PAGE: u32 = 1000;
}

/// Durable timers that fire the `on_timer` hook. Payloads are JSON, like state values; the
/// hook reads them with [`TimerContext::payload`](crate::TimerContext::payload), which returns
/// a [`DecodeError`](crate::state::DecodeError) rather than panic.
pub mod timers {
    use serde::Serialize;

    use super::imports::timers as raw;

    /// Schedule (or reschedule) timer `id` at `at_ms` with a payload, stored as JSON. Panics
    /// if `T` has no JSON form, as [`state::set`](crate::state::set) does.
    pub fn schedule<T: Serialize + ?Sized>(id: &str, at_ms: u64, payload: &T) {
        let bytes = super::encode(&format_args!("the payload of timer `{id}`"), payload);
        raw::schedule(id, at_ms, &bytes);
    }

    /// Cancel timer `id`; returns whether it was scheduled.
    pub fn cancel(id: &str) -> bool {
        raw::cancel(id)
    }
}

/// Log lines in the homeserver's log, tagged with the plugin's name.
pub mod log {
    use super::imports::log as raw;

    /// Debug detail.
    pub fn debug(message: &str) {
        raw::log(raw::Level::Debug, message);
    }

    /// Normal information.
    pub fn info(message: &str) {
        raw::log(raw::Level::Info, message);
    }

    /// Something looks wrong.
    pub fn warn(message: &str) {
        raw::log(raw::Level::Warn, message);
    }

    /// Something is wrong. The host quotes the last error line in trap reports.
    pub fn error(message: &str) {
        raw::log(raw::Level::Error, message);
    }
}

/// Read-only questions to the homeserver.
pub mod homeserver {
    use super::imports::homeserver as raw;
    use crate::ids::{RoomId, UserId};

    /// The homeserver's name.
    pub fn server_name() -> String {
        raw::server_name()
    }

    /// Rooms the user is joined to.
    pub fn rooms_of_user(user: &UserId) -> Vec<RoomId> {
        raw::rooms_of_user(user.as_str())
            .into_iter()
            .map(RoomId::from)
            .collect()
    }

    /// Users joined to the room.
    pub fn members_of_room(room: &RoomId) -> Vec<UserId> {
        raw::members_of_room(room.as_str())
            .into_iter()
            .map(UserId::from)
            .collect()
    }

    /// Users ever joined to the room.
    pub fn ever_joined_members(room: &RoomId) -> Vec<UserId> {
        raw::ever_joined_members(room.as_str())
            .into_iter()
            .map(UserId::from)
            .collect()
    }

    /// Whether the user belongs to this homeserver.
    pub fn is_local_user(user: &UserId) -> bool {
        raw::is_local_user(user.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{state, timers};
    use crate::{TimerContext, state::Subject, testing};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Old {
        text: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct New {
        text: String,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn values_are_json_and_read_across_builds() {
        testing::reset("hs.example");
        state::set(
            "note",
            &New {
                text: "hi".into(),
                tags: vec!["a".into()],
            },
        );
        assert_eq!(
            state::get_raw("note").as_deref(),
            Some(&br#"{"text":"hi","tags":["a"]}"#[..])
        );
        // The older build ignores the field it does not know.
        assert_eq!(
            state::get::<Old>("note"),
            Ok(Some(Old { text: "hi".into() }))
        );
        // The newer build reads the older build's record with the default.
        state::set("note", &Old { text: "old".into() });
        assert_eq!(
            state::get::<New>("note"),
            Ok(Some(New {
                text: "old".into(),
                tags: vec![]
            }))
        );
        assert_eq!(state::get::<New>("missing"), Ok(None));
    }

    #[test]
    fn undecodable_values_are_errors_naming_key_type_and_field() {
        testing::reset("hs.example");
        state::set_raw("note", br#"{"text": "hi", "tags": [1]}"#);
        let e = state::get::<New>("note").unwrap_err();
        assert_eq!(e.subject(), Subject::State);
        assert_eq!(e.key(), "note");
        assert!(e.type_name().ends_with("::New"), "{}", e.type_name());
        assert!(
            e.cause().starts_with("tags[0]: invalid type: integer `1`"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("state `note` does not decode as "),
            "{e}"
        );

        // Not JSON at all (a postcard value of an older build, or damage).
        state::set_raw("n", &[0x96, 0x01]);
        assert!(state::get::<u64>("n").is_err());
        // JSON followed by anything else is refused too.
        state::set_raw("n", b"1 2");
        assert!(
            state::get::<u64>("n")
                .unwrap_err()
                .cause()
                .contains("trailing")
        );
        // An empty marker written raw is not a typed value.
        state::set_raw("n", b"");
        assert!(state::get::<()>("n").is_err());
    }

    #[test]
    fn timer_payloads_are_json_and_errors_name_the_timer() {
        testing::reset("hs.example");
        timers::schedule("t/1", 5, "@a:hs.example");
        let (id, due_ms, payload) = testing::take_due_timers(5).pop().unwrap();
        assert_eq!(payload, br#""@a:hs.example""#);
        let ctx = TimerContext {
            now_ms: 5,
            id,
            due_ms,
            payload,
        };
        assert_eq!(ctx.payload::<String>().as_deref(), Ok("@a:hs.example"));
        let e = ctx.payload::<u64>().unwrap_err();
        assert_eq!((e.subject(), e.key()), (Subject::TimerPayload, "t/1"));
        assert!(
            e.to_string()
                .starts_with("the payload of timer `t/1` does not decode as u64: "),
            "{e}"
        );
    }

    #[test]
    #[should_panic(expected = "state `k` cannot be encoded as JSON")]
    fn a_type_without_a_json_form_is_a_bug_found_at_once() {
        testing::reset("hs.example");
        let map: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        state::set("k", &map);
    }
}
