//! Replacing a plugin while the homeserver runs: calls in flight finish on the old build, later
//! calls use the new one, state carries over, and a bad replacement changes nothing.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use mxpolicy_host::{
    Error, Homeserver, Host, MemoryHomeserver, Verdict,
    ruma::{OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId},
};
use serde_json::json;

use crate::{
    end_to_end::message,
    support::{server_name, spec, test_host},
};

fn deny_message(host: &Host) -> String {
    match host.on_send(&message("@a:hs.example", "hi")).outcome {
        Verdict::Deny(e) => e.message,
        Verdict::Allow => "allow".into(),
    }
}

#[test]
fn replace_swaps_config_and_keeps_state_and_position() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"deny": "M_FORBIDDEN", "label": "v1"})))
        .unwrap();
    t.host
        .load(spec("keyword-filter").config(json!({"keywords": ["x"]})))
        .unwrap();
    assert_eq!(deny_message(&t.host), "denied by v1");
    let before = t.host.generation();

    t.host
        .replace(
            "scripted-a",
            spec("scripted-a").config(json!({"deny": "M_FORBIDDEN", "label": "v2"})),
        )
        .unwrap();
    assert_eq!(t.host.generation(), before + 1);
    assert_eq!(deny_message(&t.host), "denied by v2");
    let names: Vec<_> = t.host.plugins().into_iter().map(|p| p.info.name).collect();
    assert_eq!(names, vec!["scripted-a", "keyword-filter"]);
    // The call counter kept counting across the swap.
    let calls = t.host.admin("scripted-a", "calls", &json!(null)).unwrap();
    assert_eq!(calls["calls"]["on-send"], 2);
}

#[test]
fn a_bad_replacement_leaves_the_old_plugin_serving() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"deny": "M_FORBIDDEN", "label": "good"})))
        .unwrap();
    let generation = t.host.generation();

    let err = t
        .host
        .replace(
            "scripted-a",
            spec("scripted-a").config(json!({"deny": "nope"})),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let err = t
        .host
        .replace("scripted-a", spec("scripted-b"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "replacement for plugin `scripted-a` calls itself `scripted-b`"
    );
    let err = t
        .host
        .replace(
            "scripted-a",
            mxpolicy_host::PluginSpec::bytes("junk", b"junk".to_vec()),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err}");
    // Replacing an instance that is not loaded names it, whatever the new build is.
    let err = t.host.replace("absent", spec("scripted-a")).unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchPlugin(name) if name == "absent"),
        "{err}"
    );

    assert_eq!(t.host.generation(), generation);
    assert_eq!(deny_message(&t.host), "denied by good");
    assert!(matches!(
        t.host.load(spec("scripted-a")),
        Err(Error::Duplicate(_))
    ));
}

/// A homeserver whose `members_of_room` blocks until released, to hold a plugin call in flight
/// deterministically (no sleeps, no timing).
struct Gate {
    inner: MemoryHomeserver,
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Homeserver for Gate {
    fn server_name(&self) -> &ServerName {
        self.inner.server_name()
    }
    fn rooms_of_user(&self, user: &UserId) -> Vec<OwnedRoomId> {
        self.inner.rooms_of_user(user)
    }
    fn members_of_room(&self, room: &RoomId) -> Vec<OwnedUserId> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
        self.inner.members_of_room(room)
    }
    fn ever_joined_members(&self, room: &RoomId) -> Vec<OwnedUserId> {
        self.inner.ever_joined_members(room)
    }
}

#[test]
fn calls_in_flight_finish_on_the_old_build() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        inner: MemoryHomeserver::new(server_name()),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
    let host = Host::builder(gate, Arc::new(mxpolicy_host::MemoryStore::new()))
        .build()
        .unwrap();
    let config = |label: &str, query: bool| {
        let mut c = json!({"deny": "M_FORBIDDEN", "label": label});
        if query {
            c["query_members_of"] = json!("!room:hs.example");
        }
        c
    };
    host.load(
        spec("scripted-a")
            .config(config("old", true))
            .deadline(Duration::from_secs(60)),
    )
    .unwrap();

    std::thread::scope(|s| {
        let in_flight = s.spawn(|| deny_message(&host));
        // The old build is now blocked inside its on-send call.
        entered_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("call entered the plugin");
        host.replace(
            "scripted-a",
            spec("scripted-a").config(config("new", false)),
        )
        .unwrap();
        // New calls see the new build at once, while the old call is still running.
        assert_eq!(deny_message(&host), "denied by new");
        release_tx.send(()).unwrap();
        assert_eq!(in_flight.join().unwrap(), "denied by old");
    });
    assert_eq!(deny_message(&host), "denied by new");
}
