//! The host's capabilities, typed: state, timers, log and homeserver queries.
//!
//! In a wasm build these call the component's imports. In a native build (a policy's own
//! `cargo test`) they use the thread-local in-memory host of [`testing`](crate::testing), so the
//! same policy source runs in both.

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imports;
#[cfg(target_arch = "wasm32")]
use crate::wit::mxpolicy::policy as imports;

/// Per-plugin key-value state, values encoded with postcard.
///
/// Writes become visible to later reads of the same call at once, and are committed when the
/// hook returns; if the hook fails (panic, timeout, ...), none of its writes are kept.
pub mod state {
    use serde::{Serialize, de::DeserializeOwned};

    use super::imports::state as raw;

    /// The value under `key`. Panics (trapping the call, so the host's failure policy applies)
    /// if the stored bytes do not decode as `T`: a policy must not act on state it cannot read.
    /// Use [`try_get`] to handle that case yourself.
    pub fn get<T: DeserializeOwned>(key: &str) -> Option<T> {
        match try_get(key) {
            Ok(v) => v,
            Err(e) => panic!("state key `{key}` does not decode: {e}"),
        }
    }

    /// The value under `key`, or the decoding error.
    pub fn try_get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, postcard::Error> {
        raw::get(key)
            .map(|bytes| postcard::from_bytes(&bytes))
            .transpose()
    }

    /// Store `value` under `key`.
    pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) {
        let bytes = postcard::to_allocvec(value).expect("postcard encoding into a Vec cannot fail");
        raw::set(key, &bytes);
    }

    /// The raw bytes under `key`.
    pub fn get_raw(key: &str) -> Option<Vec<u8>> {
        raw::get(key)
    }

    /// Store raw bytes under `key`.
    pub fn set_raw(key: &str, value: &[u8]) {
        raw::set(key, value);
    }

    /// Remove `key`.
    pub fn delete(key: &str) {
        raw::delete(key);
    }

    /// Keys starting with `prefix`, ascending.
    pub fn keys(prefix: &str) -> Vec<String> {
        raw::keys(prefix)
    }
}

/// Durable timers that fire the `on_timer` hook.
pub mod timers {
    use serde::Serialize;

    use super::imports::timers as raw;

    /// Schedule (or reschedule) timer `id` at `at_ms` with a postcard-encoded payload.
    pub fn schedule<T: Serialize + ?Sized>(id: &str, at_ms: u64, payload: &T) {
        let bytes =
            postcard::to_allocvec(payload).expect("postcard encoding into a Vec cannot fail");
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
