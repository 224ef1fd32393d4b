//! A native, in-memory stand-in for the host, so a policy's unit tests call its hooks directly
//! with `cargo test` (no wasm, no wasmtime).
//!
//! Everything is thread-local: each test thread has its own state, timers, rooms and log.
//! Unlike the real host, writes are not transactional (a panicking hook keeps what it wrote
//! before panicking); the host's transactional behaviour is tested through the real host.
//!
//! ```
//! use mxpolicy_guest::{state, testing};
//! testing::reset("hs.example");
//! state::set("k", &42u32);
//! assert_eq!(state::get::<u32>("k"), Ok(Some(42)));
//! assert_eq!(state::get_raw("k"), Some(b"42".to_vec())); // JSON, as the host stores it
//! ```

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
};

#[derive(Default)]
struct Mock {
    server_name: String,
    kv: BTreeMap<String, Vec<u8>>,
    timers: BTreeMap<String, (u64, Vec<u8>)>,
    joined: BTreeMap<String, BTreeSet<String>>,
    ever: BTreeMap<String, BTreeSet<String>>,
    logs: Vec<String>,
}

thread_local! {
    static MOCK: RefCell<Mock> = RefCell::new(Mock {
        server_name: "localhost".into(),
        ..Mock::default()
    });
}

fn with<R>(f: impl FnOnce(&mut Mock) -> R) -> R {
    MOCK.with(|m| f(&mut m.borrow_mut()))
}

/// Clear state, timers, rooms and logs; set the server name.
pub fn reset(server_name: &str) {
    with(|m| {
        *m = Mock {
            server_name: server_name.into(),
            ..Mock::default()
        };
    });
}

/// Record that `user` joined `room`.
pub fn join(room: &str, user: &str) {
    with(|m| {
        m.joined.entry(room.into()).or_default().insert(user.into());
        m.ever.entry(room.into()).or_default().insert(user.into());
    });
}

/// Record that `user` left `room`.
pub fn leave(room: &str, user: &str) {
    with(|m| {
        if let Some(r) = m.joined.get_mut(room) {
            r.remove(user);
        }
    });
}

/// Scheduled timers: `(id, due_ms)`.
pub fn timers() -> Vec<(String, u64)> {
    with(|m| {
        m.timers
            .iter()
            .map(|(id, (at, _))| (id.clone(), *at))
            .collect()
    })
}

/// Timers due at `now_ms`, removed from the schedule as the host would after firing them:
/// `(id, due_ms, payload)`. Pass each to the policy's `on_timer`.
pub fn take_due_timers(now_ms: u64) -> Vec<(String, u64, Vec<u8>)> {
    with(|m| {
        let due: Vec<String> = m
            .timers
            .iter()
            .filter(|(_, (at, _))| *at <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        due.into_iter()
            .filter_map(|id| m.timers.remove(&id).map(|(at, p)| (id, at, p)))
            .collect()
    })
}

/// Every state key.
pub fn state_keys() -> Vec<String> {
    with(|m| m.kv.keys().cloned().collect())
}

/// Log lines so far, as `LEVEL message`.
pub fn logs() -> Vec<String> {
    with(|m| m.logs.clone())
}

/// Native implementations with the same signatures as the WIT imports.
#[doc(hidden)]
pub mod native {
    pub mod state {
        use super::super::with;

        pub fn get(key: &str) -> Option<Vec<u8>> {
            with(|m| m.kv.get(key).cloned())
        }
        pub fn set(key: &str, value: &[u8]) {
            with(|m| m.kv.insert(key.into(), value.to_vec()));
        }
        pub fn delete(key: &str) {
            with(|m| m.kv.remove(key));
        }
        pub fn keys(prefix: &str) -> Vec<String> {
            with(|m| {
                m.kv.keys()
                    .filter(|k| k.starts_with(prefix))
                    .cloned()
                    .collect()
            })
        }
        pub fn keys_page(prefix: &str, after: Option<&str>, limit: u32) -> Vec<String> {
            with(|m| {
                m.kv.keys()
                    .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
                    .take(limit as usize)
                    .cloned()
                    .collect()
            })
        }
    }

    pub mod timers {
        use super::super::with;

        pub fn schedule(id: &str, at_ms: u64, payload: &[u8]) {
            with(|m| m.timers.insert(id.into(), (at_ms, payload.to_vec())));
        }
        pub fn cancel(id: &str) -> bool {
            with(|m| m.timers.remove(id).is_some())
        }
    }

    pub mod log {
        use super::super::with;
        pub use crate::wit::mxpolicy::policy::log::Level;

        pub fn log(level: Level, message: &str) {
            with(|m| m.logs.push(format!("{level:?} {message}")));
        }
    }

    pub mod homeserver {
        use super::super::with;

        pub fn server_name() -> String {
            with(|m| m.server_name.clone())
        }
        pub fn rooms_of_user(user: &str) -> Vec<String> {
            with(|m| {
                m.joined
                    .iter()
                    .filter(|(_, u)| u.contains(user))
                    .map(|(r, _)| r.clone())
                    .collect()
            })
        }
        pub fn members_of_room(room: &str) -> Vec<String> {
            with(|m| {
                m.joined
                    .get(room)
                    .map(|u| u.iter().cloned().collect())
                    .unwrap_or_default()
            })
        }
        pub fn ever_joined_members(room: &str) -> Vec<String> {
            with(|m| {
                m.ever
                    .get(room)
                    .map(|u| u.iter().cloned().collect())
                    .unwrap_or_default()
            })
        }
        pub fn is_local_user(user: &str) -> bool {
            with(|m| {
                user.split_once(':')
                    .is_some_and(|(_, s)| s == m.server_name)
            })
        }
    }
}
