//! Homeserver questions in service mode: the caller sends the facts with the request.
//!
//! A plugin may ask the homeserver, mid-call, for the rooms of a user, the members of a room
//! and the users ever joined to a room. Embedded, the homeserver answers from memory. Across
//! a process boundary an answer would be a network round trip inside a call with a 10 ms
//! deadline, so wire format v1 makes the caller send the facts with the request (`facts`),
//! and the service answers the plugins from them, without waiting on anything. A question
//! the request did not answer gets an empty answer, and the response lists it in
//! `unanswered`, so an integration sees what it must add. The policies read an empty answer
//! conservatively: a room with no known members is never purged.
//!
//! Timers fired by the service's scheduler have no request, so they get no facts in v1.
//!
//! The facts of a call are kept in a thread-local for the duration of the call: hook calls
//! are synchronous and run on the thread that called the host.

use std::{cell::RefCell, collections::BTreeMap};

use mxpolicy_host::{
    Homeserver,
    ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId},
};
use serde::{Deserialize, Serialize};

/// What the homeserver knows that the plugins may ask, sent with a hook request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// Rooms each user is joined to.
    #[serde(default)]
    pub rooms_of_user: BTreeMap<OwnedUserId, Vec<OwnedRoomId>>,
    /// Users joined to each room.
    #[serde(default)]
    pub members_of_room: BTreeMap<OwnedRoomId, Vec<OwnedUserId>>,
    /// Users ever joined to each room, including those who left.
    #[serde(default)]
    pub ever_joined_members: BTreeMap<OwnedRoomId, Vec<OwnedUserId>>,
}

/// A question a plugin asked that the request's facts did not answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Unanswered {
    /// `rooms_of_user`, `members_of_room` or `ever_joined_members` (the `facts` key).
    pub question: &'static str,
    /// The user or room asked about.
    pub subject: String,
}

struct Call {
    facts: Facts,
    unanswered: Vec<Unanswered>,
}

/// Most distinct unanswered questions reported per call.
const MAX_UNANSWERED: usize = 64;

thread_local! {
    static CURRENT: RefCell<Option<Call>> = const { RefCell::new(None) };
}

/// Run `f` (a hook call) with `facts` answering the plugins' questions; returns its result and
/// the questions left unanswered, sorted, without duplicates.
pub fn with<R>(facts: Facts, f: impl FnOnce() -> R) -> (R, Vec<Unanswered>) {
    /// Clears the thread's facts even if the call panics, so the next call on this thread
    /// (another request's, or a timer pass) never sees them.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            CURRENT.with(|c| c.borrow_mut().take());
        }
    }
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Call {
            facts,
            unanswered: Vec::new(),
        })
    });
    let clear = Clear;
    let result = f();
    let mut unanswered = CURRENT
        .with(|c| c.borrow_mut().take())
        .map(|call| call.unanswered)
        .unwrap_or_default();
    drop(clear);
    unanswered.sort();
    unanswered.dedup();
    (result, unanswered)
}

/// The service's [`Homeserver`]: the server name, and the facts of the current call.
pub struct ServiceHomeserver {
    server_name: OwnedServerName,
}

impl ServiceHomeserver {
    /// For the homeserver named `server_name`.
    pub fn new(server_name: OwnedServerName) -> Self {
        Self { server_name }
    }
}

fn answer<K: Ord + ToString + ?Sized, V: Clone>(
    question: &'static str,
    key: &K,
    pick: impl Fn(&Facts) -> Option<&Vec<V>>,
) -> Vec<V> {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let Some(call) = c.as_mut() else {
            return Vec::new();
        };
        if let Some(found) = pick(&call.facts) {
            return found.clone();
        }
        if call.unanswered.len() < MAX_UNANSWERED {
            call.unanswered.push(Unanswered {
                question,
                subject: key.to_string(),
            });
        }
        Vec::new()
    })
}

impl Homeserver for ServiceHomeserver {
    fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    fn rooms_of_user(&self, user: &UserId) -> Vec<OwnedRoomId> {
        answer("rooms_of_user", user, |f| f.rooms_of_user.get(user))
    }

    fn members_of_room(&self, room: &RoomId) -> Vec<OwnedUserId> {
        answer("members_of_room", room, |f| f.members_of_room.get(room))
    }

    fn ever_joined_members(&self, room: &RoomId) -> Vec<OwnedUserId> {
        answer("ever_joined_members", room, |f| {
            f.ever_joined_members.get(room)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxpolicy_host::ruma::{owned_room_id, owned_server_name, room_id, user_id};

    #[test]
    fn answers_come_from_the_call_and_gaps_are_reported_once() {
        let hs = ServiceHomeserver::new(owned_server_name!("hs.example"));
        let mut facts = Facts::default();
        facts.rooms_of_user.insert(
            user_id!("@a:hs.example").to_owned(),
            vec![owned_room_id!("!r:hs.example")],
        );
        let (rooms, unanswered) = with(facts, || {
            let rooms = hs.rooms_of_user(user_id!("@a:hs.example"));
            hs.members_of_room(room_id!("!r:hs.example"));
            hs.members_of_room(room_id!("!r:hs.example"));
            rooms
        });
        assert_eq!(rooms, [owned_room_id!("!r:hs.example")]);
        assert_eq!(
            unanswered,
            [Unanswered {
                question: "members_of_room",
                subject: "!r:hs.example".into()
            }]
        );
        // Outside a call nothing is known, and nothing leaks from the last call.
        assert!(hs.rooms_of_user(user_id!("@a:hs.example")).is_empty());
    }
}
