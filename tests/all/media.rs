//! The media-ownership policy (policies/media-ownership), built to wasm, through the host: media
//! of users who asked for erasure is refused to every requester (with the same answer as media
//! that never existed), optionally still served to the members of the rooms it was shared in
//! during the grace period, deleted when the erasure becomes final, and restored by a
//! reactivation in time. Upload limits, the admin API and hot swaps too.

use mxpolicy_host::{
    Action, Deactivation, Error, Hook, MatrixError, MediaFetch, MediaUpload, Reactivation,
    Requester, SendEvent, UserKind, Verdict,
    ruma::{OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomVersionId, owned_room_id},
};
use serde_json::{Value, json};

use crate::support::{T0, TestHost, spec, test_host};

const ALICE: &str = "@alice:hs.example";
const BOB: &str = "@bob:hs.example";
const CAROL: &str = "@carol:hs.example";
const REMOTE_USER: &str = "@rita:remote.example";
const A_MEDIA: &str = "mxc://hs.example/alice-cat";
const A_MEDIA_2: &str = "mxc://hs.example/alice-dog";
const B_MEDIA: &str = "mxc://hs.example/bob-bird";
const NEVER_UPLOADED: &str = "mxc://hs.example/never-uploaded";
const DAY: u64 = 24 * 60 * 60 * 1000;
const GRACE: u64 = 7 * DAY;

fn uid(u: &str) -> OwnedUserId {
    u.try_into().expect("user id")
}

fn room() -> OwnedRoomId {
    owned_room_id!("!shared:hs.example")
}

fn media_ownership(config: Value) -> TestHost {
    let t = test_host();
    let report = t
        .host
        .load(spec("media-ownership").config(config))
        .expect("load media-ownership");
    assert_eq!(report.info.name, "media-ownership");
    t
}

fn upload(t: &TestHost, user: &str, mxc: &str, size: u64, content_type: &str) -> Verdict {
    let d = t.host.on_media_upload(&MediaUpload {
        mxc: OwnedMxcUri::from(mxc),
        uploader: uid(user),
        size,
        content_type: Some(content_type.into()),
    });
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    d.outcome
}

fn fetch(t: &TestHost, mxc: &str, requester: Requester) -> Verdict {
    let d = t.host.on_media_fetch(&MediaFetch {
        mxc: OwnedMxcUri::from(mxc),
        requester,
    });
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    d.outcome
}

/// An image message referencing `mxc` (a forward, when the sender is not the uploader).
fn send_image(t: &TestHost, sender: &str, mxc: &str) {
    let d = t.host.on_send(&SendEvent {
        sender: uid(sender),
        sender_kind: UserKind::Regular,
        room_id: room(),
        room_version: RoomVersionId::V11,
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.image", "body": "look", "url": mxc,
                        "info": {"mimetype": "image/png"}}),
        origin_server_ts: T0,
        is_server_notices_room: false,
    });
    assert_eq!(d.outcome, Verdict::Allow, "sends are never refused");
    assert!(d.failures.is_empty(), "{:?}", d.failures);
}

fn erase(t: &TestHost, user: &str) {
    let d = t.host.on_deactivate(&Deactivation {
        user: uid(user),
        erase: true,
        by_admin: false,
        second_factor: false,
    });
    assert_eq!(d.outcome, Verdict::Allow, "never vetoes");
    assert!(d.actions.is_empty(), "the erasure plugin returns those");
    assert!(d.failures.is_empty(), "{:?}", d.failures);
}

fn requesters() -> Vec<Requester> {
    vec![
        Requester::User(uid(ALICE)),
        Requester::User(uid(BOB)),
        Requester::User(uid(CAROL)),
        Requester::User(uid(REMOTE_USER)),
        Requester::Server("remote.example".try_into().expect("server name")),
        Requester::Anonymous,
    ]
}

/// Alice and Bob share a room; each uploads media; Bob forwards Alice's picture and Alice
/// forwards Bob's. Carol joins only afterwards.
fn scene(t: &TestHost) {
    t.homeserver.join(&room(), &uid(ALICE));
    t.homeserver.join(&room(), &uid(BOB));
    t.homeserver.join(&room(), &uid(REMOTE_USER));
    assert_eq!(upload(t, ALICE, A_MEDIA, 1000, "image/png"), Verdict::Allow);
    assert_eq!(
        upload(t, ALICE, A_MEDIA_2, 2000, "image/jpeg"),
        Verdict::Allow
    );
    assert_eq!(upload(t, BOB, B_MEDIA, 3000, "image/png"), Verdict::Allow);
    send_image(t, ALICE, A_MEDIA);
    send_image(t, BOB, A_MEDIA);
    send_image(t, ALICE, B_MEDIA);
    t.homeserver.join(&room(), &uid(CAROL));
}

/// The host's own answer for media that does not exist: what a fail-closed media-fetch
/// failure produces, taken from a real host (a fixture plugin that panics while fetching an
/// mxc that was never uploaded anywhere).
fn hosts_missing_media_answer() -> MatrixError {
    let t = test_host();
    t.host
        .load(
            spec("scripted-a")
                .config(json!({"misbehave": {"hook": "on-media-fetch", "how": "panic"}})),
        )
        .expect("load scripted-a");
    let d = t.host.on_media_fetch(&MediaFetch {
        mxc: OwnedMxcUri::from(NEVER_UPLOADED),
        requester: Requester::Anonymous,
    });
    assert_eq!(d.failures.len(), 1);
    match d.outcome {
        Verdict::Deny(e) => e,
        Verdict::Allow => panic!("a failing media fetch must fail closed"),
    }
}

#[test]
fn describes_itself() {
    let t = media_ownership(json!({}));
    let report = &t.host.plugins()[0];
    assert_eq!(
        report.info.hooks,
        vec![
            Hook::OnSend,
            Hook::OnDeactivate,
            Hook::OnReactivate,
            Hook::OnMediaUpload,
            Hook::OnMediaFetch,
            Hook::OnTimer,
            Hook::OnAdmin,
        ]
    );
}

#[test]
fn erased_uploaders_media_is_refused_to_every_requester_like_missing_media() {
    let t = media_ownership(json!({"grace_period_ms": GRACE}));
    scene(&t);
    for r in requesters() {
        assert_eq!(
            fetch(&t, A_MEDIA, r),
            Verdict::Allow,
            "served before erasure"
        );
    }
    erase(&t, ALICE);

    let missing = hosts_missing_media_answer();
    assert_eq!(
        missing.to_body(),
        json!({"errcode": "M_NOT_FOUND", "error": "Not found"})
    );
    for r in requesters() {
        for mxc in [A_MEDIA, A_MEDIA_2] {
            let Verdict::Deny(err) = fetch(&t, mxc, r.clone()) else {
                panic!("{mxc} served to {r:?} after its uploader asked for erasure")
            };
            // Identical in every part to the answer for media that does not exist.
            assert_eq!(err, missing, "{r:?}");
            assert_eq!(err.errcode, "M_NOT_FOUND");
            assert_eq!(err.message, "Not found");
            assert!(err.fields.is_empty());
            assert_eq!(err.to_body(), missing.to_body());
        }
        // Bob is not erased: his media is served, though the erased Alice forwarded it.
        assert_eq!(fetch(&t, B_MEDIA, r.clone()), Verdict::Allow, "{r:?}");
        // Never uploaded here: not this plugin's to judge; the homeserver answers 404 itself.
        assert_eq!(fetch(&t, NEVER_UPLOADED, r.clone()), Verdict::Allow);
        assert_eq!(
            fetch(&t, "mxc://remote.example/theirs", r),
            Verdict::Allow,
            "remote media"
        );
    }
    let d = t.host.on_media_fetch(&MediaFetch {
        mxc: OwnedMxcUri::from(A_MEDIA),
        requester: Requester::Anonymous,
    });
    assert_eq!(d.decided_by.as_deref(), Some("media-ownership"));
}

#[test]
fn email_model_exception_only_where_configured() {
    // Configured: during the grace period, users joined when a referencing event was sent.
    let t = media_ownership(json!({"grace_period_ms": GRACE, "email_model_exception": true}));
    scene(&t);
    erase(&t, ALICE);
    t.clock.advance(GRACE - 1);
    assert_eq!(
        fetch(&t, A_MEDIA, Requester::User(uid(BOB))),
        Verdict::Allow
    );
    assert_eq!(
        fetch(&t, A_MEDIA, Requester::User(uid(REMOTE_USER))),
        Verdict::Allow,
        "a remote user who was joined"
    );
    let refused = |r: Requester| matches!(fetch(&t, A_MEDIA, r), Verdict::Deny(e) if e.errcode == "M_NOT_FOUND");
    assert!(
        refused(Requester::User(uid(CAROL))),
        "Carol joined after the events"
    );
    assert!(refused(Requester::Server(
        "remote.example".try_into().expect("server name")
    )));
    assert!(refused(Requester::Anonymous));
    // A_MEDIA_2 was never shared in an event: nobody keeps access to it.
    assert!(matches!(
        fetch(&t, A_MEDIA_2, Requester::User(uid(BOB))),
        Verdict::Deny(_)
    ));
    // The grace period is over: no exception any more, even before the deletion ran.
    t.clock.advance(1);
    assert!(refused(Requester::User(uid(BOB))));
    assert!(refused(Requester::User(uid(REMOTE_USER))));

    // Not configured (the default): members at the time are refused like everyone else.
    let t = media_ownership(json!({"grace_period_ms": GRACE}));
    scene(&t);
    erase(&t, ALICE);
    t.clock.advance(1);
    assert!(matches!(
        fetch(&t, A_MEDIA, Requester::User(uid(BOB))),
        Verdict::Deny(e) if e.errcode == "M_NOT_FOUND"
    ));
}

fn deleted_media(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::DeleteMedia { mxc } => mxc.to_string(),
            other => panic!("unexpected action {other:?}"),
        })
        .collect()
}

#[test]
fn deletion_actions_at_grace_end_and_not_before() {
    let t = media_ownership(json!({"grace_period_ms": GRACE}));
    scene(&t);
    t.clock.advance(DAY);
    erase(&t, ALICE);

    t.clock.advance(GRACE - 1);
    let early = t.host.run_timers().expect("run timers");
    assert!(early.outcome.is_empty(), "{:?}", early.outcome);
    assert!(early.actions.is_empty());
    let listed = t
        .host
        .admin("media-ownership", "media-of-user", &json!({"user": ALICE}))
        .expect("media-of-user");
    assert_eq!(listed["media"].as_array().map(Vec::len), Some(2));
    assert_eq!(listed["erasure"]["state"], "grace");

    t.clock.advance(1);
    let fired = t.host.run_timers().expect("run timers");
    assert_eq!(fired.outcome.len(), 1);
    assert!(fired.outcome[0].ok);
    assert_eq!(fired.outcome[0].plugin, "media-ownership");
    assert!(fired.failures.is_empty());
    let mut deleted = deleted_media(&fired.actions);
    deleted.sort();
    assert_eq!(
        deleted,
        vec![A_MEDIA, A_MEDIA_2],
        "all of Alice's, none of Bob's"
    );

    // Nothing fires twice; the state about Alice's media is gone.
    t.clock.advance(GRACE);
    let again = t.host.run_timers().expect("run timers");
    assert!(again.actions.is_empty() && again.outcome.is_empty());
    let listed = t
        .host
        .admin("media-ownership", "media-of-user", &json!({"user": ALICE}))
        .expect("media-of-user");
    assert_eq!(listed["media"], json!([]));
    assert_eq!(listed["total_bytes"], 0);
    assert_eq!(listed["erasure"]["state"], "final");
    assert!(
        t.host
            .list_state("media-ownership", &format!("ref/{A_MEDIA}/"))
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        fetch(&t, B_MEDIA, Requester::Anonymous),
        Verdict::Allow,
        "Bob's media stays"
    );
    assert!(matches!(
        fetch(&t, A_MEDIA, Requester::Anonymous),
        Verdict::Deny(_)
    ));
}

#[test]
fn reactivation_inside_grace_restores_access() {
    let t = media_ownership(json!({"grace_period_ms": GRACE}));
    scene(&t);
    erase(&t, ALICE);
    t.clock.advance(GRACE - 1);
    assert!(matches!(
        fetch(&t, A_MEDIA, Requester::User(uid(BOB))),
        Verdict::Deny(_)
    ));
    let d = t.host.on_reactivate(&Reactivation {
        user: uid(ALICE),
        by_admin: true,
    });
    assert_eq!(d.outcome, Verdict::Allow);
    assert!(d.actions.is_empty());
    for r in requesters() {
        assert_eq!(fetch(&t, A_MEDIA, r), Verdict::Allow);
    }
    // The deletion was cancelled.
    t.clock.advance(10 * GRACE);
    let later = t.host.run_timers().expect("run timers");
    assert!(later.actions.is_empty() && later.outcome.is_empty());
    assert_eq!(fetch(&t, A_MEDIA, Requester::Anonymous), Verdict::Allow);
}

#[test]
fn reactivation_after_grace_brings_nothing_back() {
    let t = media_ownership(json!({"grace_period_ms": GRACE}));
    scene(&t);
    erase(&t, ALICE);
    t.clock.advance(GRACE);
    let fired = t.host.run_timers().expect("run timers");
    assert_eq!(deleted_media(&fired.actions).len(), 2);
    t.host.on_reactivate(&Reactivation {
        user: uid(ALICE),
        by_admin: true,
    });
    assert!(matches!(
        fetch(&t, A_MEDIA, Requester::User(uid(BOB))),
        Verdict::Deny(_)
    ));
}

#[test]
fn uploads_over_limits_are_refused_with_the_right_errcode() {
    let t = media_ownership(json!({
        "max_upload_bytes": 1000,
        "allowed_content_types": ["image/*", "application/pdf"],
        "quota_bytes": 1500,
    }));
    let denied = |v: Verdict| match v {
        Verdict::Deny(e) => e,
        Verdict::Allow => panic!("upload accepted"),
    };
    let e = denied(upload(
        &t,
        ALICE,
        "mxc://hs.example/huge",
        1001,
        "image/png",
    ));
    assert_eq!(
        e.to_body(),
        json!({"errcode": "M_TOO_LARGE",
               "error": "This upload is 1001 bytes; the largest upload allowed is 1000 bytes"})
    );
    let e = denied(upload(
        &t,
        ALICE,
        "mxc://hs.example/exe",
        10,
        "application/x-msdownload",
    ));
    assert_eq!(e.errcode, "M_FORBIDDEN");
    assert_eq!(
        e.message,
        "Media of type application/x-msdownload may not be uploaded here; allowed types: \
         image/*, application/pdf"
    );
    assert_eq!(
        upload(&t, ALICE, "mxc://hs.example/one", 1000, "image/webp"),
        Verdict::Allow
    );
    assert_eq!(
        upload(&t, ALICE, "mxc://hs.example/doc", 400, "application/pdf"),
        Verdict::Allow
    );
    let e = denied(upload(&t, ALICE, "mxc://hs.example/two", 101, "image/png"));
    assert_eq!(
        e.to_body(),
        json!({"errcode": "M_FORBIDDEN",
               "error": "Media upload quota exceeded: you store 1400 of 1500 bytes, and this \
                         upload is 101 bytes"})
    );
    // The quota is per user.
    assert_eq!(
        upload(&t, BOB, "mxc://hs.example/bobs", 1000, "image/png"),
        Verdict::Allow
    );
    assert_eq!(
        upload(&t, ALICE, "mxc://hs.example/two", 100, "image/png"),
        Verdict::Allow
    );
    let d = t.host.on_media_upload(&MediaUpload {
        mxc: OwnedMxcUri::from("mxc://hs.example/three"),
        uploader: uid(ALICE),
        size: 1,
        content_type: Some("image/png".into()),
    });
    assert_eq!(d.decided_by.as_deref(), Some("media-ownership"));
    // Refused uploads were not recorded.
    let listed = t
        .host
        .admin("media-ownership", "media-of-user", &json!({"user": ALICE}))
        .expect("media-of-user");
    assert_eq!(listed["total_bytes"], 1500);
    assert_eq!(listed["media"].as_array().map(Vec::len), Some(3));
}

#[test]
fn admin_api_lists_media_and_references() {
    let t = media_ownership(json!({"email_model_exception": true}));
    scene(&t);
    let info = t
        .host
        .admin("media-ownership", "media-info", &json!({"mxc": A_MEDIA}))
        .expect("media-info");
    assert_eq!(info["uploader"], ALICE);
    assert_eq!(info["size"], 1000);
    assert_eq!(info["content_type"], "image/png");
    assert_eq!(info["uploaded_at_ms"], T0);
    let refs = info["references"].as_array().expect("references");
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[1]["sender"], BOB);
    assert_eq!(refs[1]["room_id"], "!shared:hs.example");
    assert_eq!(refs[1]["joined_at_send"], json!([ALICE, BOB, REMOTE_USER]));
    let listed = t
        .host
        .admin("media-ownership", "media-of-user", &json!({"user": BOB}))
        .expect("media-of-user");
    assert_eq!(
        listed,
        json!({"user": BOB, "total_bytes": 3000, "erasure": null,
               "media": [{"mxc": B_MEDIA, "size": 3000, "content_type": "image/png",
                          "uploaded_at_ms": T0}]})
    );
    let err = t
        .host
        .admin(
            "media-ownership",
            "media-info",
            &json!({"mxc": NEVER_UPLOADED}),
        )
        .expect_err("refused");
    assert!(matches!(err, Error::AdminRefused { .. }), "{err}");
    let err = t
        .host
        .admin("media-ownership", "purge-everything", &json!({}))
        .expect_err("refused");
    assert!(matches!(err, Error::AdminRefused { .. }), "{err}");
}

#[test]
fn state_survives_a_hot_swap() {
    // Default grace period (30 days, as the erasure plugin's), email-model exception on.
    let t = media_ownership(json!({"email_model_exception": true}));
    scene(&t);
    erase(&t, ALICE);
    assert_eq!(
        fetch(&t, A_MEDIA, Requester::User(uid(BOB))),
        Verdict::Allow,
        "Bob keeps the exception before the swap"
    );
    let before = t.host.generation();
    t.host
        .replace(
            "media-ownership",
            spec("media-ownership").config(json!({"max_upload_bytes": 10_000})),
        )
        .expect("replace");
    assert_eq!(t.host.generation(), before + 1);
    // The erasure, the uploads and the references carried over; the new configuration has no
    // exception, so Bob is refused too.
    for r in requesters() {
        assert!(matches!(fetch(&t, A_MEDIA, r.clone()), Verdict::Deny(_)));
        assert_eq!(fetch(&t, B_MEDIA, r), Verdict::Allow);
    }
    let info = t
        .host
        .admin("media-ownership", "media-info", &json!({"mxc": A_MEDIA}))
        .expect("media-info");
    assert_eq!(info["references"].as_array().map(Vec::len), Some(2));
    assert_eq!(info["uploader_erasure"]["state"], "grace");
    assert!(matches!(
        upload(&t, BOB, "mxc://hs.example/big", 10_001, "image/png"),
        Verdict::Deny(e) if e.errcode == "M_TOO_LARGE"
    ));
    // The durable timer fires on the new build at the end of the default grace period.
    t.clock.advance(30 * DAY - 1);
    assert!(t.host.run_timers().expect("run timers").actions.is_empty());
    t.clock.advance(1);
    let fired = t.host.run_timers().expect("run timers");
    let mut deleted = deleted_media(&fired.actions);
    deleted.sort();
    assert_eq!(deleted, vec![A_MEDIA, A_MEDIA_2]);
}

#[test]
fn the_deletion_timer_is_idempotent_when_delivered_again() {
    // Timers fire at least once: a second delivery deletes nothing again.
    let t = media_ownership(json!({"grace_period_ms": GRACE}));
    scene(&t);
    erase(&t, ALICE);
    t.clock.advance(GRACE);
    let fired = t.host.run_timers().expect("run timers");
    assert_eq!(deleted_media(&fired.actions).len(), 2);
    crate::support::redeliver_timer(
        &t,
        "media-ownership",
        &format!("erasure/{ALICE}"),
        &json!(ALICE),
    );
    let again = t.host.run_timers().expect("run timers");
    assert_eq!(again.outcome.len(), 1, "delivered");
    assert!(again.outcome[0].ok);
    assert!(
        deleted_media(&again.actions).is_empty(),
        "{:?}",
        again.actions
    );
}
