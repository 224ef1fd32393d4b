//! State encoding across builds (issue 11, item 7), through the real host with real compiled
//! plugins. Typed state is JSON, so after a rollback the older build reads what the newer one
//! wrote, and the newer build reads the older build's records; a value a build cannot decode
//! reaches the policy as a typed error, which it answers (here: fail closed), never as a trap.
//!
//! The two builds: scripted-b is the newer build of the `note` record (`text`, `tags` added
//! with a default), scripted-a the older one (`text`). Each test loads them in turn as the
//! instance `x`, whose state they share (state is keyed by the instance name), the way an
//! operator swaps builds of one plugin.

use mxpolicy_host::{
    Changes, Deactivation, Error, MediaFetch, MediaUpload, Quota, Requester, StateStore,
    Transaction, Verdict,
    ruma::{OwnedMxcUri, owned_user_id},
};
use serde_json::{Value, json};

use crate::support::{T0, TestHost, spec, test_host};

const ALICE: &str = "@alice:hs.example";

/// Load `build` as the instance `x`, checking it is the build asked for.
fn load_x(t: &TestHost, build: &str) {
    let report = t.host.load(spec(build).instance("x")).expect("load");
    assert_eq!(
        (report.instance.as_str(), report.info.name.as_str()),
        ("x", build)
    );
}

/// Swap the build behind `x`: unload the running one, load `build` on the same state.
fn roll_to(t: &TestHost, build: &str) {
    t.host.unload("x").expect("unload");
    load_x(t, build);
}

fn admin(t: &TestHost, command: &str, args: Value) -> Value {
    t.host
        .admin("x", command, &args)
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

/// The stored value of `key` of `plugin`, as JSON.
fn stored_json(t: &TestHost, plugin: &str, key: &str) -> Value {
    let bytes = t.host.read_state(plugin, key).unwrap().expect("stored");
    serde_json::from_slice(&bytes).expect("state values are JSON")
}

/// Write `value` under `key` of `plugin` directly in the store, as another build of the
/// plugin would have.
fn store_raw(t: &TestHost, plugin: &str, key: &str, value: &[u8]) {
    let mut changes = Changes::default();
    changes.kv.insert(key.into(), Some(value.to_vec()));
    t.store
        .commit(plugin, &Transaction::writes(changes), &Quota::UNLIMITED)
        .unwrap();
}

#[test]
fn an_older_build_reads_what_a_newer_build_wrote() {
    let t = test_host();
    load_x(&t, "scripted-b");
    let note = json!({"text": "hello", "tags": ["gdpr", "audit"]});
    assert_eq!(
        admin(&t, "note-write", note.clone()),
        json!({"written": note})
    );
    // Stored as JSON: readable without the plugin's types (auditors, `state export`).
    assert_eq!(stored_json(&t, "x", "note"), note);

    // Rolled back: the older build reads the record, ignoring the field it does not know.
    roll_to(&t, "scripted-a");
    assert_eq!(
        admin(&t, "note-read", Value::Null),
        json!({"note": {"text": "hello"}})
    );
    // Its other state is as the newer build left it.
    assert_eq!(admin(&t, "calls", Value::Null)["calls"]["on-admin"], 3);
}

#[test]
fn a_newer_build_reads_what_an_older_build_wrote_with_the_default() {
    let t = test_host();
    load_x(&t, "scripted-a");
    admin(&t, "note-write", json!({"text": "before the upgrade"}));
    assert_eq!(
        stored_json(&t, "x", "note"),
        json!({"text": "before the upgrade"})
    );

    roll_to(&t, "scripted-b");
    assert_eq!(
        admin(&t, "note-read", Value::Null),
        json!({"note": {"text": "before the upgrade", "tags": []}})
    );
    // And back again: the newer build's rewrite still reads in the older build.
    admin(&t, "note-write", json!({"text": "after", "tags": ["new"]}));
    roll_to(&t, "scripted-a");
    assert_eq!(
        admin(&t, "note-read", Value::Null),
        json!({"note": {"text": "after"}})
    );
}

#[test]
fn an_undecodable_value_is_a_typed_error_not_a_trap() {
    let t = test_host();
    load_x(&t, "scripted-a");
    // Not JSON at all: what an older build's postcard encoding, or damage, leaves behind.
    admin(&t, "note-write-raw", json!("\u{1}\u{5}hello"));
    let read = admin(&t, "note-read", Value::Null);
    let error = &read["error"];
    assert_eq!(error["key"], "note", "{read}");
    assert_eq!(error["type"], "scripted_a::Note", "{read}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("state `note` does not decode as scripted_a::Note: "),
        "{read}"
    );

    // JSON of another shape (a newer build that changed the field's type): the error names
    // the field.
    roll_to(&t, "scripted-b");
    admin(
        &t,
        "note-write-raw",
        json!(r#"{"text": "hi", "tags": "one"}"#),
    );
    let read = admin(&t, "note-read", Value::Null);
    assert!(
        read["error"]["cause"]
            .as_str()
            .unwrap()
            .starts_with("tags: invalid type: string \"one\", expected a sequence"),
        "{read}"
    );
    // Every call succeeded (its writes, the call counter, were committed): no trap.
    assert_eq!(admin(&t, "calls", Value::Null)["calls"]["on-admin"], 5);
}

#[test]
fn erasure_reads_a_newer_builds_record_and_fails_closed_on_one_it_cannot_decode() {
    let t = test_host();
    t.host.load(spec("erasure")).unwrap();
    let key = format!("erasure/{ALICE}");
    // A newer build's record, with fields this build does not know.
    store_raw(
        &t,
        "erasure",
        &key,
        json!({
            "pending": {"requested_at_ms": T0, "final_at_ms": T0 + 1, "rooms": [],
                        "reason": "user request"},
            "completed": null,
            "audit_id": 42,
        })
        .to_string()
        .as_bytes(),
    );
    let status = t
        .host
        .admin("erasure", "erasure-status", &json!({"user": ALICE}))
        .unwrap();
    assert_eq!(status["status"], "pending");

    // A record this build cannot decode: the erasure request is refused (deny, not a trap),
    // and the record is kept for a build that reads it.
    let foreign = br#"{"pending": {"requested_at_ms": "yesterday"}}"#;
    store_raw(&t, "erasure", &key, foreign);
    let d = t.host.on_deactivate(&Deactivation {
        user: owned_user_id!("@alice:hs.example"),
        erase: true,
        by_admin: true,
        second_factor: false,
    });
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    let Verdict::Deny(error) = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(error.errcode, "M_UNKNOWN");
    assert!(d.actions.is_empty(), "{d:?}");
    assert_eq!(
        t.host.read_state("erasure", &key).unwrap().as_deref(),
        Some(&foreign[..])
    );
    let refused = t
        .host
        .admin("erasure", "erasure-status", &json!({"user": ALICE}));
    let Err(Error::AdminRefused { message, .. }) = refused else {
        panic!("{refused:?}")
    };
    assert!(
        message.starts_with(&format!("state `{key}` does not decode as ")),
        "{message}"
    );
}

#[test]
fn media_ownership_refuses_media_whose_record_it_cannot_decode() {
    let t = test_host();
    t.host.load(spec("media-ownership")).unwrap();
    let mxc = "mxc://hs.example/cat";
    let d = t.host.on_media_upload(&MediaUpload {
        mxc: OwnedMxcUri::from(mxc),
        uploader: owned_user_id!("@alice:hs.example"),
        size: 10,
        content_type: Some("image/png".into()),
    });
    assert_eq!(d.outcome, Verdict::Allow);
    let fetch = |t: &TestHost| {
        let d = t.host.on_media_fetch(&MediaFetch {
            mxc: OwnedMxcUri::from(mxc),
            requester: Requester::Anonymous,
        });
        assert!(d.failures.is_empty(), "{:?}", d.failures);
        d.outcome
    };
    assert_eq!(fetch(&t), Verdict::Allow);
    assert_eq!(
        stored_json(&t, "media-ownership", &format!("media/{mxc}"))["uploader"],
        ALICE
    );
    store_raw(&t, "media-ownership", &format!("media/{mxc}"), b"\x01\x02");
    let Verdict::Deny(error) = fetch(&t) else {
        panic!("refused")
    };
    assert_eq!(
        (error.errcode.as_str(), error.message.as_str()),
        ("M_NOT_FOUND", "Not found")
    );
}
