//! The example policy (policies/keyword-filter), built to wasm, through the host for every
//! hook it declares.

use mxpolicy_host::{
    Error, Hook, HttpRequest, PluginSpec, SendEvent, UserKind, Verdict,
    ruma::{RoomVersionId, owned_room_id},
};
use serde_json::json;

use crate::support::{spec, test_host};

pub fn message(sender: &str, body: &str) -> SendEvent {
    SendEvent {
        sender: sender.try_into().expect("user id"),
        sender_kind: UserKind::Regular,
        room_id: owned_room_id!("!room:hs.example"),
        room_version: RoomVersionId::V11,
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": body}),
        origin_server_ts: 1,
        is_server_notices_room: false,
    }
}

fn keyword_filter() -> PluginSpec {
    spec("keyword-filter").config(json!({
        "keywords": ["buy now"],
        "blocked_users": ["@spammer:evil.example"],
    }))
}

#[test]
fn describes_itself() {
    let t = test_host();
    let report = t.host.load(keyword_filter()).unwrap();
    assert_eq!(report.info.name, "keyword-filter");
    assert_eq!(report.info.hooks, vec![Hook::OnSend, Hook::OnHttp]);
    assert_eq!(report.sha256.len(), 64);
    assert!(
        report
            .imports
            .iter()
            .all(|i| i.starts_with("mxpolicy:policy/"))
    );
}

#[test]
fn on_send_allows_and_denies_with_fields() {
    let t = test_host();
    t.host.load(keyword_filter()).unwrap();
    let ok = t.host.on_send(&message("@alice:hs.example", "hello"));
    assert_eq!(ok.outcome, Verdict::Allow);
    assert!(ok.failures.is_empty());

    let denied = t
        .host
        .on_send(&message("@alice:hs.example", "BUY NOW, cheap"));
    let Verdict::Deny(err) = &denied.outcome else {
        panic!("expected deny, got {denied:?}")
    };
    assert_eq!(
        err.to_body(),
        json!({
            "errcode": "M_FORBIDDEN",
            "error": "This message contains a blocked keyword",
            "org.mxpolicy.keyword": "buy now",
            "org.mxpolicy.denials": 1,
        })
    );
    assert_eq!(denied.decided_by.as_deref(), Some("keyword-filter"));

    let blocked = t.host.on_send(&message("@spammer:evil.example", "hi"));
    assert!(!blocked.outcome.is_allow());
    // The counter lives in plugin state, committed after each successful call.
    let again = t.host.on_send(&message("@alice:hs.example", "buy now"));
    let Verdict::Deny(err) = again.outcome else {
        panic!()
    };
    assert_eq!(err.fields["org.mxpolicy.denials"], 2);
}

#[test]
fn on_http_serves_the_stats_page() {
    let t = test_host();
    t.host.load(keyword_filter()).unwrap();
    t.host.on_send(&message("@alice:hs.example", "buy now"));
    let page = t
        .host
        .on_http(
            "keyword-filter",
            &HttpRequest {
                method: "GET".into(),
                path: "/stats".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page.outcome.status, 200);
    let body = String::from_utf8(page.outcome.body).unwrap();
    assert!(
        body.contains("<td>@alice:hs.example</td><td>1</td>"),
        "{body}"
    );
    let missing = t
        .host
        .on_http(
            "keyword-filter",
            &HttpRequest {
                method: "GET".into(),
                path: "/nope".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(missing.outcome.status, 404);
    assert!(matches!(
        t.host.on_http("nobody", &HttpRequest::default()),
        Err(Error::NoSuchPlugin(_))
    ));
}

#[test]
fn bad_config_is_refused_naming_plugin_and_key() {
    let t = test_host();
    let err = t
        .host
        .load(spec("keyword-filter").config(json!({"keywords": ["ok", ""]})))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin `keyword-filter`: invalid config at `keywords.1`: keywords must not be empty"
    );
    let err = t
        .host
        .load(spec("keyword-filter").config(json!({"keywordz": []})))
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown field `keywordz`"),
        "{err}"
    );
    let err = t
        .host
        .load(spec("keyword-filter").config(json!({"keywords": "x"})))
        .unwrap_err();
    // A type error names its key (not only a missing field).
    let Error::Config { key, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(key, "keywords", "{err}");
    let err = t
        .host
        .load(spec("keyword-filter").config(json!({"keywords": ["ok", 7]})))
        .unwrap_err();
    let Error::Config { key, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(key, "keywords[1]", "{err}");
    assert!(t.host.plugins().is_empty());
}

#[test]
fn sender_kinds_are_exempt() {
    let t = test_host();
    t.host.load(keyword_filter()).unwrap();
    let mut ev = message("@notices:hs.example", "buy now");
    ev.sender_kind = UserKind::ServerNotices;
    assert!(t.host.on_send(&ev).outcome.is_allow());
}
