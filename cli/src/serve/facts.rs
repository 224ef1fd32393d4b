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
//! Timers fired by the service's scheduler have no request. With `service.facts_url` set,
//! their questions are asked of the homeserver, one HTTP request each (`GET
//! <facts_url>?question=..&subject=..`, the API secret as bearer token, at most
//! [`CALLBACK_TIMEOUT`], an answer of at most [`MAX_CALLBACK_ANSWER`]): a timer is background
//! work nobody waits on, and the host gives `on-timer` calls at least 2 s. Only timer passes
//! ask ([`for_timers`]); a request's call never waits on the homeserver. An answer that does
//! not come, or does not parse, fails the timer call (`Homeserver::take_failure`): its
//! writes are dropped and the timer is retried with backoff (10 s, 40 s, ...), so a
//! homeserver that is restarting delays an erasure's room purge instead of cancelling it.
//! Without `facts_url` a timer's questions get empty answers, which the policies read
//! conservatively (a room with no known members is never purged).
//!
//! The facts of a call are kept in a thread-local for the duration of the call: hook calls
//! are synchronous and run on the thread that called the host.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    time::Duration,
};

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

/// Longest wait for one answer of the homeserver's facts endpoint.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_millis(1500);

/// Largest answer of the facts endpoint, in bytes.
pub const MAX_CALLBACK_ANSWER: u64 = 1 << 20;

/// Most ids in one answer of the facts endpoint.
const MAX_CALLBACK_IDS: usize = 100_000;

thread_local! {
    static CURRENT: RefCell<Option<Call>> = const { RefCell::new(None) };
    static IN_TIMERS: Cell<bool> = const { Cell::new(false) };
    /// Why the homeserver did not answer a question of the current timer call, if it did not.
    static FAILED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Run `f` (a timer pass) with the homeserver asked back for the facts its calls need.
pub fn for_timers<R>(f: impl FnOnce() -> R) -> R {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            IN_TIMERS.with(|t| t.set(false));
        }
    }
    IN_TIMERS.with(|t| t.set(true));
    let _clear = Clear;
    f()
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

/// The service's [`Homeserver`]: the server name, the facts of the current call, and the
/// homeserver's facts endpoint for timer passes.
pub struct ServiceHomeserver {
    server_name: OwnedServerName,
    callback: Option<Callback>,
}

/// The homeserver's facts endpoint.
struct Callback {
    url: url::Url,
    secret: String,
    agent: ureq::Agent,
}

impl ServiceHomeserver {
    /// For the homeserver named `server_name`.
    pub fn new(server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            callback: None,
        }
    }

    /// Timer passes ([`for_timers`]) ask `url` for their facts, with `secret` as bearer token.
    pub fn with_facts_url(mut self, url: url::Url, secret: &[u8]) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(CALLBACK_TIMEOUT))
            .build()
            .into();
        self.callback = Some(Callback {
            url,
            secret: String::from_utf8_lossy(secret).into_owned(),
            agent,
        });
        self
    }

    /// Ask the homeserver (timer passes only); `None` outside a timer pass, without a
    /// callback, or when the answer did not come or does not parse (logged).
    fn ask<V: TryFrom<String>>(&self, question: &'static str, subject: &str) -> Option<Vec<V>> {
        let callback = self.callback.as_ref()?;
        if !IN_TIMERS.with(Cell::get) {
            return None;
        }
        match callback.ask(question, subject) {
            Ok(ids) => Some(
                ids.into_iter()
                    .filter_map(|id| V::try_from(id).ok())
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(
                    question,
                    subject,
                    "the homeserver's facts endpoint did not answer ({e}); the timer is retried"
                );
                FAILED.with(|f| {
                    f.borrow_mut()
                        .get_or_insert_with(|| format!("{question} of {subject}: {e}"));
                });
                None
            }
        }
    }
}

impl Callback {
    fn ask(&self, question: &str, subject: &str) -> Result<Vec<String>, String> {
        #[derive(Deserialize)]
        struct Answer {
            answer: Vec<String>,
        }
        let mut response = self
            .agent
            .get(self.url.as_str())
            .query("question", question)
            .query("subject", subject)
            .header("Authorization", &format!("Bearer {}", self.secret))
            .call()
            .map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        let answer: Answer = response
            .body_mut()
            .with_config()
            .limit(MAX_CALLBACK_ANSWER)
            .read_json()
            .map_err(|e| e.to_string())?;
        if answer.answer.len() > MAX_CALLBACK_IDS {
            return Err(format!(
                "{} ids, more than {MAX_CALLBACK_IDS}",
                answer.answer.len()
            ));
        }
        Ok(answer.answer)
    }
}

fn answer<K: Ord + ToString + ?Sized, V: Clone + TryFrom<String>>(
    homeserver: &ServiceHomeserver,
    question: &'static str,
    key: &K,
    pick: impl Fn(&Facts) -> Option<&Vec<V>>,
) -> Vec<V> {
    let from_call = CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let call = c.as_mut()?;
        if let Some(found) = pick(&call.facts) {
            return Some(found.clone());
        }
        if call.unanswered.len() < MAX_UNANSWERED {
            call.unanswered.push(Unanswered {
                question,
                subject: key.to_string(),
            });
        }
        Some(Vec::new())
    });
    from_call
        .or_else(|| homeserver.ask(question, &key.to_string()))
        .unwrap_or_default()
}

impl Homeserver for ServiceHomeserver {
    fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    fn rooms_of_user(&self, user: &UserId) -> Vec<OwnedRoomId> {
        answer(self, "rooms_of_user", user, |f| f.rooms_of_user.get(user))
    }

    fn members_of_room(&self, room: &RoomId) -> Vec<OwnedUserId> {
        answer(self, "members_of_room", room, |f| {
            f.members_of_room.get(room)
        })
    }

    fn ever_joined_members(&self, room: &RoomId) -> Vec<OwnedUserId> {
        answer(self, "ever_joined_members", room, |f| {
            f.ever_joined_members.get(room)
        })
    }

    fn take_failure(&self) -> Option<String> {
        FAILED.with(|f| f.borrow_mut().take())
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

    /// A one-shot HTTP server on loopback answering every request with `body`: its URL.
    fn answering(body: Vec<u8>) -> url::Url {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/facts", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        url.parse().unwrap()
    }

    #[test]
    fn a_hostile_facts_answer_fails_the_timer_call_instead_of_being_believed() {
        let room = room_id!("!r:hs.example");
        let id = |n: usize| format!("\"@u{n}:hs.example\"");
        let cases: [(&str, Vec<u8>); 4] = [
            ("not JSON", b"<html>".to_vec()),
            ("over the size cap", {
                let ids: Vec<String> = (0..60_000).map(id).collect();
                format!("{{\"answer\": [{}]}}", ids.join(",")).into_bytes()
            }),
            ("over the id cap", {
                let ids: Vec<String> = (0..MAX_CALLBACK_IDS + 1).map(|_| "\"\"".into()).collect();
                format!("{{\"answer\": [{}]}}", ids.join(",")).into_bytes()
            }),
            ("the wrong shape", b"{\"answer\": {\"a\": 1}}".to_vec()),
        ];
        for (what, body) in cases {
            let hs = ServiceHomeserver::new(owned_server_name!("hs.example"))
                .with_facts_url(answering(body), b"0123456789abcdef");
            let members = for_timers(|| hs.ever_joined_members(room));
            assert!(members.is_empty(), "{what}: {members:?}");
            let failure = hs.take_failure();
            assert!(failure.is_some(), "{what}: not reported as a failure");
        }
        // A good answer is believed, and leaves no failure behind.
        let hs = ServiceHomeserver::new(owned_server_name!("hs.example")).with_facts_url(
            answering(format!("{{\"answer\": [{}]}}", id(1)).into_bytes()),
            b"0123456789abcdef",
        );
        let members = for_timers(|| hs.ever_joined_members(room));
        assert_eq!(members, [user_id!("@u1:hs.example").to_owned()]);
        assert_eq!(hs.take_failure(), None);
    }
}
