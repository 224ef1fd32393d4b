//! How verdicts of a chain compose: first deny wins for allow/deny hooks, the most restrictive
//! verdict wins per event for serve hooks, actions are concatenated in chain order, and the host
//! applies redaction and pseudonymization itself.

use mxpolicy_host::{
    Action, HistoryVisibility, Hook, MediaUpload, ServeEvent, ServeVerdict, Verdict, Viewer,
    ruma::{RoomVersionId, canonical_json::redact, owned_mxc_uri, owned_user_id},
};
use serde_json::{Value, json};

use crate::{
    end_to_end::message,
    support::{spec, test_host},
};

/// One `m.room.message` per sender, in a version-10 room, with server-side keys to redact.
pub fn serve_events(senders: &[&str]) -> Vec<ServeEvent> {
    senders
        .iter()
        .enumerate()
        .map(|(i, sender)| ServeEvent {
            event: json!({
                "event_id": format!("$e{i}"),
                "room_id": "!room:hs.example",
                "sender": sender,
                "type": "m.room.message",
                "origin_server_ts": 1000 + i as u64,
                "content": {"msgtype": "m.text", "body": format!("message {i}")},
                "depth": 3 + i as u64,
                "prev_events": [],
                "auth_events": [],
                "hashes": {"sha256": "abc"},
                "signatures": {},
                "unsigned": {"age": 12},
            }),
            room_version: RoomVersionId::V10,
            history_visibility: HistoryVisibility::Shared,
            viewer_joined: false,
        })
        .collect()
}

fn calls(t: &crate::support::TestHost, plugin: &str) -> Value {
    t.host.admin(plugin, "calls", &Value::Null).unwrap()["calls"].clone()
}

#[test]
fn first_deny_wins_and_stops_the_chain() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({
            "label": "a",
            "actions": [{"kind": "delete-profile", "user": "@a:hs.example"}],
        })))
        .unwrap();
    t.host
        .load(spec("keyword-filter").config(json!({"keywords": ["spam"]})))
        .unwrap();
    t.host
        .load(spec("scripted-b").config(json!({"label": "b", "deny": "M_FORBIDDEN"})))
        .unwrap();

    let d = t.host.on_send(&message("@a:hs.example", "spam"));
    assert_eq!(d.decided_by.as_deref(), Some("keyword-filter"));
    // Actions of plugins before the deny are kept, in order.
    assert_eq!(
        d.actions,
        vec![Action::DeleteProfile {
            user: owned_user_id!("@a:hs.example")
        }]
    );
    // scripted-b was never asked.
    assert_eq!(calls(&t, "scripted-b").get("on-send"), None);

    let d = t.host.on_send(&message("@a:hs.example", "fine"));
    let Verdict::Deny(err) = d.outcome else {
        panic!()
    };
    assert_eq!(err.message, "denied by b");
    assert_eq!(err.fields["label"], "b");
    assert_eq!(calls(&t, "scripted-b")["on-send"], 1);
}

#[test]
fn actions_concatenate_in_chain_order() {
    let t = test_host();
    for (name, mxc) in [
        ("scripted-a", "mxc://hs.example/a"),
        ("scripted-b", "mxc://hs.example/b"),
    ] {
        t.host
            .load(spec(name).config(json!({"actions": [{"kind": "delete-media", "mxc": mxc}]})))
            .unwrap();
    }
    let d = t.host.on_media_upload(&MediaUpload {
        mxc: owned_mxc_uri!("mxc://hs.example/new"),
        uploader: owned_user_id!("@a:hs.example"),
        size: 10,
        content_type: None,
    });
    assert_eq!(
        d.actions,
        vec![
            Action::DeleteMedia {
                mxc: owned_mxc_uri!("mxc://hs.example/a")
            },
            Action::DeleteMedia {
                mxc: owned_mxc_uri!("mxc://hs.example/b")
            },
        ]
    );
}

#[test]
fn most_restrictive_serve_verdict_wins_per_event() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"serve": {
            "@x:hs.example": "redact",
            "@y:hs.example": "redact",
        }})))
        .unwrap();
    t.host
        .load(spec("scripted-b").config(json!({"serve": {
            "@x:hs.example": "pseudonymize:@anon:hs.example",
            "@y:hs.example": "withhold",
        }})))
        .unwrap();
    let events = serve_events(&["@x:hs.example", "@y:hs.example", "@z:hs.example"]);
    let original_z = events[2].event.clone();
    let viewer = Viewer::User(owned_user_id!("@viewer:hs.example"));
    let d = t.host.on_client_serve(&viewer, events.clone()).unwrap();
    let verdicts: Vec<_> = d.outcome.iter().map(|e| e.verdict).collect();
    assert_eq!(
        verdicts,
        vec![
            ServeVerdict::Pseudonymize,
            ServeVerdict::Withhold,
            ServeVerdict::Serve
        ]
    );
    let x = d.outcome[0].event.as_ref().unwrap();
    assert_eq!(x["sender"], "@anon:hs.example");
    assert_eq!(x["content"], json!({}));
    assert!(d.outcome[1].event.is_none());
    assert_eq!(d.outcome[2].event.as_ref().unwrap(), &original_z);

    // Over federation a pseudonym would break signatures: it becomes a plain redaction, equal
    // to ruma's.
    let server = Viewer::Server("other.example".try_into().unwrap());
    let d = t.host.on_federation_serve(&server, events.clone()).unwrap();
    assert_eq!(d.outcome[0].verdict, ServeVerdict::Redact);
    let mut obj: mxpolicy_host::ruma::CanonicalJsonObject =
        serde_json::from_value(events[0].event.clone()).unwrap();
    obj.remove("unsigned");
    let expected = redact(obj, &RoomVersionId::V10.rules().unwrap().redaction, None).unwrap();
    assert_eq!(
        d.outcome[0].event.as_ref().unwrap(),
        &serde_json::to_value(expected).unwrap()
    );
}

#[test]
fn hooks_are_only_called_on_plugins_that_declare_them() {
    let t = test_host();
    t.host
        .load(spec("keyword-filter").config(json!({"keywords": ["x"]})))
        .unwrap();
    let report = &t.host.plugins()[0];
    assert!(!report.info.hooks.contains(&Hook::OnClientServe));
    // No plugin declares the serve hooks: events pass untouched, nothing was called.
    let events = serve_events(&["@a:hs.example"]);
    let d = t
        .host
        .on_client_serve(&Viewer::Anonymous, events.clone())
        .unwrap();
    assert_eq!(d.outcome[0].event.as_ref(), Some(&events[0].event));
    assert!(d.failures.is_empty() && d.decided_by.is_none());
}

#[test]
fn bad_serve_input_is_an_error_not_a_panic() {
    let t = test_host();
    t.host.load(spec("scripted-a")).unwrap();
    let mut events = serve_events(&["@a:hs.example"]);
    events[0].event = json!({"type": "m.room.message"});
    let err = t
        .host
        .on_client_serve(&Viewer::Anonymous, events)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input for on-client-serve: event #0: event lacks string `event_id`"
    );
}

#[test]
fn unredactable_events_are_withheld_not_leaked() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"serve": {"@x:hs.example": "redact"}})))
        .unwrap();
    let mut events = serve_events(&["@x:hs.example", "@x:hs.example"]);
    events[0].room_version = RoomVersionId::try_from("org.example.unknown").unwrap();
    events[1].event["content"]["ratio"] = json!(0.5); // not canonical JSON
    let d = t.host.on_client_serve(&Viewer::Anonymous, events).unwrap();
    assert!(
        d.outcome
            .iter()
            .all(|e| e.verdict == ServeVerdict::Withhold && e.event.is_none())
    );
}
