//! Native unit tests: the hooks called directly with the SDK's in-memory host.

use mime::Mime;
use mxpolicy_guest::{
    DeclaredHooks, Hook, MatrixError, Requester, ServerName, UserId, Verdict,
    gdpr::DEFAULT_GRACE_PERIOD_MS, state, testing,
};
use serde_json::json;

use super::*;
use crate::{
    records::reference_keys,
    upload::{content_type_matches, upload_type},
};

const A: &str = "@alice:hs.example";
const B: &str = "@bob:hs.example";
const C: &str = "@carol:hs.example";
const ROOM: &str = "!room:hs.example";
const T0: u64 = 1_000_000;
const DAY: u64 = 24 * 60 * 60 * 1000;

fn policy(config: Value) -> MediaOwnership {
    testing::reset("hs.example");
    let config: Config = serde_json::from_value(config).expect("config parses");
    MediaOwnership::new(config).expect("config is valid")
}

fn upload(p: &MediaOwnership, now: u64, user: &str, mxc: &str, size: u64, ty: &str) -> Outcome {
    p.on_media_upload(&MediaUploadContext {
        now_ms: now,
        mxc: mxc.into(),
        uploader: user.into(),
        size,
        content_type: Some(ty.into()),
    })
}

fn fetch(p: &MediaOwnership, now: u64, mxc: &str, requester: Requester) -> Outcome {
    p.on_media_fetch(&MediaFetchContext {
        now_ms: now,
        mxc: mxc.into(),
        requester,
    })
}

fn user(u: &str) -> Requester {
    Requester::User(UserId::from(u))
}

fn everyone() -> Vec<Requester> {
    vec![
        user(A),
        user(B),
        user(C),
        user("@eve:remote.example"),
        Requester::Server(ServerName::from("remote.example")),
        Requester::Anonymous,
    ]
}

fn send_image(p: &MediaOwnership, now: u64, sender: &str, mxc: &str) -> Outcome {
    let mut ctx = SendContext::new(
        sender,
        ROOM,
        "m.room.message",
        json!({"msgtype": "m.image", "body": "pic", "url": mxc}),
    );
    ctx.now_ms = now;
    ctx.origin_server_ts = now;
    p.on_send(&ctx)
}

fn erase(p: &MediaOwnership, now: u64, u: &str) -> Outcome {
    p.on_deactivate(&DeactivateContext {
        now_ms: now,
        user: u.into(),
        erase: true,
        by_admin: false,
        second_factor: false,
    })
}

fn reactivate(p: &MediaOwnership, now: u64, u: &str) -> Outcome {
    p.on_reactivate(&ReactivateContext {
        now_ms: now,
        user: u.into(),
        by_admin: true,
    })
}

/// Fire the due timers as the host would, returning the actions.
fn run_timers(p: &MediaOwnership, now: u64) -> Vec<Action> {
    testing::take_due_timers(now)
        .into_iter()
        .flat_map(|(id, due_ms, payload)| {
            p.on_timer(&TimerContext {
                now_ms: now,
                id,
                due_ms,
                payload,
            })
        })
        .collect()
}

fn admin(p: &MediaOwnership, now: u64, command: &str, args: Value) -> Result<Value, String> {
    p.on_admin(&AdminRequest {
        now_ms: now,
        command: command.into(),
        args,
    })
}

fn is_not_found(o: &Outcome) -> bool {
    o.verdict
        == Verdict::Deny(MatrixError {
            errcode: "M_NOT_FOUND".into(),
            message: "Not found".into(),
            fields: Default::default(),
        })
}

#[test]
fn erased_uploaders_media_is_refused_to_everyone_others_untouched() {
    let p = policy(json!({}));
    testing::join(ROOM, A);
    testing::join(ROOM, B);
    assert!(upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png").is_allow());
    assert!(upload(&p, T0, B, "mxc://hs.example/b1", 10, "image/png").is_allow());
    // B forwards A's image, A forwards B's.
    send_image(&p, T0 + 1, A, "mxc://hs.example/a1");
    send_image(&p, T0 + 2, B, "mxc://hs.example/a1");
    send_image(&p, T0 + 3, A, "mxc://hs.example/b1");
    for r in everyone() {
        assert!(fetch(&p, T0 + 4, "mxc://hs.example/a1", r).is_allow());
    }
    let out = erase(&p, T0 + 10, A);
    assert!(out.is_allow());
    assert!(out.actions.is_empty(), "no deactivation actions of its own");
    for r in everyone() {
        let refused = fetch(&p, T0 + 11, "mxc://hs.example/a1", r.clone());
        assert!(is_not_found(&refused), "{r:?}: {refused:?}");
        // B's media is served, whoever forwarded it.
        assert!(fetch(&p, T0 + 11, "mxc://hs.example/b1", r.clone()).is_allow());
        // Media never uploaded here is not this plugin's business.
        assert!(fetch(&p, T0 + 11, "mxc://remote.example/x", r).is_allow());
    }
}

#[test]
fn deactivation_without_erasure_changes_nothing() {
    let p = policy(json!({}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    let out = p.on_deactivate(&DeactivateContext {
        now_ms: T0,
        user: A.into(),
        erase: false,
        by_admin: false,
        second_factor: false,
    });
    assert!(out.is_allow() && out.actions.is_empty());
    assert!(fetch(&p, T0, "mxc://hs.example/a1", Requester::Anonymous).is_allow());
    assert!(testing::timers().is_empty());
}

#[test]
fn email_model_exception_only_for_members_at_send_time_and_only_in_grace() {
    let p = policy(json!({"email_model_exception": true, "grace_period_ms": DAY}));
    testing::join(ROOM, A);
    testing::join(ROOM, B);
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    upload(&p, T0, A, "mxc://hs.example/never-sent", 10, "image/png");
    send_image(&p, T0 + 1, B, "mxc://hs.example/a1");
    // Carol joins after the referencing event.
    testing::join(ROOM, C);
    erase(&p, T0 + 10, A);
    let grace = T0 + 11;
    assert!(fetch(&p, grace, "mxc://hs.example/a1", user(B)).is_allow());
    assert!(is_not_found(&fetch(
        &p,
        grace,
        "mxc://hs.example/a1",
        user(C)
    )));
    assert!(is_not_found(&fetch(
        &p,
        grace,
        "mxc://hs.example/a1",
        Requester::Server("hs.example".into())
    )));
    assert!(is_not_found(&fetch(
        &p,
        grace,
        "mxc://hs.example/a1",
        Requester::Anonymous
    )));
    // Media never referenced in an event: nobody has an exception.
    assert!(is_not_found(&fetch(
        &p,
        grace,
        "mxc://hs.example/never-sent",
        user(B)
    )));
    // A later event referencing it gives Carol (now joined) the exception.
    send_image(&p, T0 + 12, C, "mxc://hs.example/a1");
    assert!(fetch(&p, T0 + 13, "mxc://hs.example/a1", user(C)).is_allow());
    // Once the erasure is final (even before the timer ran), no exception.
    let after = T0 + 10 + DAY;
    assert!(is_not_found(&fetch(
        &p,
        after,
        "mxc://hs.example/a1",
        user(B)
    )));
}

#[test]
fn without_the_exception_members_are_refused_and_membership_is_not_recorded() {
    let p = policy(json!({}));
    testing::join(ROOM, A);
    testing::join(ROOM, B);
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    send_image(&p, T0 + 1, B, "mxc://hs.example/a1");
    assert!(
        !testing::state_keys()
            .iter()
            .any(|k| k.starts_with("members")),
        "membership is personal data: recorded only when the exception is on"
    );
    erase(&p, T0 + 10, A);
    assert!(is_not_found(&fetch(
        &p,
        T0 + 11,
        "mxc://hs.example/a1",
        user(B)
    )));
}

#[test]
fn deletion_at_grace_end_and_not_before() {
    let p = policy(json!({"grace_period_ms": DAY, "email_model_exception": true}));
    testing::join(ROOM, A);
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    upload(&p, T0, A, "mxc://hs.example/a2", 20, "image/png");
    upload(&p, T0, B, "mxc://hs.example/b1", 30, "image/png");
    send_image(&p, T0 + 1, A, "mxc://hs.example/a1");
    send_image(&p, T0 + 1, A, "mxc://hs.example/b1");
    erase(&p, T0 + 10, A);
    assert_eq!(
        testing::timers(),
        vec![("erasure/@alice:hs.example".to_owned(), T0 + 10 + DAY)]
    );
    assert!(run_timers(&p, T0 + 10 + DAY - 1).is_empty());
    assert!(state::get_raw("media/mxc://hs.example/a1").is_some());
    let actions = run_timers(&p, T0 + 10 + DAY);
    assert_eq!(
        actions,
        vec![
            Action::DeleteMedia("mxc://hs.example/a1".into()),
            Action::DeleteMedia("mxc://hs.example/a2".into()),
        ]
    );
    // A's state is cleaned: records, index, references, usage, membership snapshots.
    let keys = testing::state_keys();
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("/a1") && !k.starts_with("gone/")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.starts_with("by-user/@alice")));
    assert!(!keys.iter().any(|k| k.starts_with("usage/@alice")));
    // B's media and its reference (and the snapshot it points at) remain.
    assert!(state::get_raw("media/mxc://hs.example/b1").is_some());
    assert_eq!(state::get::<u64>("usage/@bob:hs.example"), Ok(Some(30)));
    assert_eq!(reference_keys("mxc://hs.example/b1").len(), 1);
    assert_eq!(keys.iter().filter(|k| k.starts_with("members/")).count(), 1);
    // Deleted media stays refused even if the homeserver still has a copy.
    assert!(is_not_found(&fetch(
        &p,
        T0 + 2 * DAY,
        "mxc://hs.example/a1",
        Requester::Anonymous
    )));
    assert!(
        fetch(
            &p,
            T0 + 2 * DAY,
            "mxc://hs.example/b1",
            Requester::Anonymous
        )
        .is_allow()
    );
    assert!(testing::timers().is_empty());
    let info = admin(&p, T0 + 2 * DAY, "media-of-user", json!({"user": A})).expect("present");
    assert_eq!(info["media"], json!([]));
    assert_eq!(info["erasure"]["state"], "final");
}

#[test]
fn deletion_runs_in_batches() {
    let p = policy(json!({"grace_period_ms": DAY, "deletion_batch_size": 2}));
    for i in 0..5 {
        upload(&p, T0, A, &format!("mxc://hs.example/a{i}"), 1, "image/png");
    }
    erase(&p, T0, A);
    let mut deleted = Vec::new();
    let mut runs = 0;
    let mut now = T0 + DAY;
    while !testing::timers().is_empty() {
        let actions = run_timers(&p, now);
        assert!(actions.len() <= 2);
        deleted.extend(actions);
        runs += 1;
        now += 1;
        assert!(runs < 10, "deletion does not terminate");
    }
    assert_eq!(runs, 3);
    assert_eq!(deleted.len(), 5);
    assert!(
        testing::state_keys()
            .iter()
            .all(|k| !k.starts_with("media/"))
    );
}

#[test]
fn reactivation_inside_grace_restores_after_grace_nothing_comes_back() {
    let p = policy(json!({"grace_period_ms": DAY}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    erase(&p, T0, A);
    assert!(is_not_found(&fetch(
        &p,
        T0 + 1,
        "mxc://hs.example/a1",
        user(B)
    )));
    assert!(reactivate(&p, T0 + DAY - 1, A).is_allow());
    assert!(fetch(&p, T0 + DAY, "mxc://hs.example/a1", user(B)).is_allow());
    assert!(testing::timers().is_empty(), "the deletion is cancelled");
    assert!(run_timers(&p, T0 + 10 * DAY).is_empty());

    // A second erasure, this time let run past the grace period.
    erase(&p, T0 + 2 * DAY, A);
    let actions = run_timers(&p, T0 + 3 * DAY);
    assert_eq!(actions.len(), 1);
    assert!(reactivate(&p, T0 + 4 * DAY, A).is_allow());
    assert!(is_not_found(&fetch(
        &p,
        T0 + 4 * DAY,
        "mxc://hs.example/a1",
        user(B)
    )));
    // Media uploaded after the reactivation is not covered by the old erasure.
    upload(
        &p,
        T0 + 5 * DAY,
        A,
        "mxc://hs.example/a-new",
        10,
        "image/png",
    );
    assert!(fetch(&p, T0 + 5 * DAY, "mxc://hs.example/a-new", user(B)).is_allow());
}

#[test]
fn reactivation_after_grace_but_before_the_timer_keeps_the_deletion() {
    let p = policy(json!({"grace_period_ms": DAY}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    erase(&p, T0, A);
    reactivate(&p, T0 + DAY, A);
    assert!(is_not_found(&fetch(
        &p,
        T0 + DAY,
        "mxc://hs.example/a1",
        user(B)
    )));
    assert_eq!(run_timers(&p, T0 + DAY).len(), 1);
}

#[test]
fn repeated_erasure_request_does_not_extend_the_grace_period() {
    let p = policy(json!({"grace_period_ms": DAY}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    erase(&p, T0, A);
    erase(&p, T0 + DAY / 2, A);
    assert_eq!(testing::timers()[0].1, T0 + DAY);
    assert_eq!(run_timers(&p, T0 + DAY).len(), 1);
}

#[test]
fn upload_limits() {
    let p = policy(json!({
        "max_upload_bytes": 100,
        "allowed_content_types": ["image/*", "Application/PDF"],
        "quota_bytes": 150,
    }));
    let too_large = upload(&p, T0, A, "mxc://hs.example/big", 101, "image/png");
    assert_eq!(too_large.errcode(), Some("M_TOO_LARGE"));
    let Verdict::Deny(e) = &too_large.verdict else {
        unreachable!()
    };
    assert_eq!(
        e.message,
        "This upload is 101 bytes; the largest upload allowed is 100 bytes"
    );
    assert!(upload(&p, T0, A, "mxc://hs.example/ok", 100, "image/png").is_allow());
    assert!(
        upload(
            &p,
            T0,
            B,
            "mxc://hs.example/pdf",
            10,
            "application/pdf; x=y"
        )
        .is_allow()
    );
    let wrong = upload(
        &p,
        T0,
        B,
        "mxc://hs.example/exe",
        10,
        "application/x-msdownload",
    );
    assert_eq!(wrong.errcode(), Some("M_FORBIDDEN"));
    let untyped = p.on_media_upload(&MediaUploadContext {
        now_ms: T0,
        mxc: "mxc://hs.example/untyped".into(),
        uploader: B.into(),
        size: 1,
        content_type: None,
    });
    assert_eq!(untyped.errcode(), Some("M_FORBIDDEN"));
    // Quota: A stores 100 of 150 bytes.
    let over = upload(&p, T0, A, "mxc://hs.example/more", 51, "image/png");
    assert_eq!(over.errcode(), Some("M_FORBIDDEN"));
    let Verdict::Deny(e) = &over.verdict else {
        unreachable!()
    };
    assert!(e.message.contains("quota"), "{}", e.message);
    assert!(upload(&p, T0, A, "mxc://hs.example/more", 50, "image/png").is_allow());
    // Content uploaded again for the same URI replaces it rather than adding to it.
    assert!(upload(&p, T0, A, "mxc://hs.example/more", 50, "image/png").is_allow());
    assert_eq!(state::get::<u64>("usage/@alice:hs.example"), Ok(Some(150)));
    // Refused uploads are not recorded.
    assert!(state::get_raw("media/mxc://hs.example/big").is_none());
    // Deleting media frees quota.
    erase(&p, T0, B);
    assert_eq!(run_timers(&p, T0 + DEFAULT_GRACE_PERIOD_MS).len(), 1);
    assert!(state::get_raw("usage/@bob:hs.example").is_none());
}

#[test]
fn quota_errcode_is_configurable() {
    let p = policy(json!({"quota_bytes": 10, "quota_errcode": "M_RESOURCE_LIMIT_EXCEEDED"}));
    let out = upload(&p, T0, A, "mxc://hs.example/x", 11, "image/png");
    assert_eq!(out.errcode(), Some("M_RESOURCE_LIMIT_EXCEEDED"));
}

#[test]
fn bad_config_names_the_key() {
    let bad = [
        (json!({"quota_errcode": "FORBIDDEN"}), "quota_errcode"),
        (json!({"deletion_batch_size": 0}), "deletion_batch_size"),
        (json!({"deletion_batch_size": 5001}), "deletion_batch_size"),
        (
            json!({"allowed_content_types": ["image/png", "png"]}),
            "allowed_content_types.1",
        ),
        (
            json!({"allowed_content_types": ["*/png"]}),
            "allowed_content_types.0",
        ),
        (
            json!({"allowed_content_types": ["image/*", "image/"]}),
            "allowed_content_types.1",
        ),
        (
            json!({"allowed_content_types": ["text/plain; charset=utf-8"]}),
            "allowed_content_types.0",
        ),
        (
            json!({"allowed_content_types": ["image/png/x"]}),
            "allowed_content_types.0",
        ),
    ];
    for (config, key) in bad {
        let config: Config = serde_json::from_value(config).expect("present");
        assert_eq!(MediaOwnership::new(config).expect_err("refused").key, key);
    }
    assert!(serde_json::from_value::<Config>(json!({"grace_period": 1})).is_err());
}

#[test]
fn content_type_patterns() {
    let matches = |pattern: &str, upload: &str| {
        let pattern: Mime = pattern.parse().expect("a pattern");
        content_type_matches(&pattern, upload_type(Some(upload)).as_ref().ok())
    };
    assert!(matches("image/*", "image/png"));
    assert!(!matches("image/*", "imagex/png"));
    assert!(matches("*/*", "application/octet-stream"));
    assert!(matches("application/pdf", "application/pdf"));
    assert!(matches("application/pdf", "Application/PDF; x=y"));
    assert!(!matches("application/pdf", "application/pdfx"));
    assert_eq!(
        upload_type(Some(" Text/Plain ; charset=utf-8")),
        Ok(mime::TEXT_PLAIN)
    );
    assert_eq!(upload_type(Some("")), Ok(mime::APPLICATION_OCTET_STREAM));
    assert_eq!(upload_type(None), Ok(mime::APPLICATION_OCTET_STREAM));
    // A type that does not parse is named as given, and only `*/*` lets it through.
    assert_eq!(
        upload_type(Some("Not A Type")),
        Err("not a type".to_owned())
    );
    assert!(matches("*/*", "not a type"));
    assert!(!matches("image/*", "image/png garbage"));
}

#[test]
fn unparsable_upload_types_are_refused_and_named() {
    let p = policy(json!({"allowed_content_types": ["image/*"]}));
    let out = upload(&p, T0, A, "mxc://hs.example/odd", 1, "Image/PNG garbage");
    let Verdict::Deny(e) = &out.verdict else {
        panic!("an unparsable type passed an `image/*` filter")
    };
    assert_eq!(
        e.message,
        "Media of type image/png garbage may not be uploaded here; allowed types: image/*"
    );
    let any = policy(json!({"allowed_content_types": ["*/*"]}));
    assert!(upload(&any, T0, A, "mxc://hs.example/odd", 1, "garbage").is_allow());
}

#[test]
fn references_only_for_known_media_and_admin_api() {
    let p = policy(json!({"email_model_exception": true}));
    testing::join(ROOM, A);
    testing::join(ROOM, B);
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    // An encrypted attachment and a sticker referencing A's media, a remote URI.
    let mut enc = SendContext::new(
        B,
        ROOM,
        "m.room.message",
        json!({"msgtype": "m.file", "file": {"url": "mxc://hs.example/a1"},
               "info": {"thumbnail_file": {"url": "mxc://remote.example/t"}}}),
    );
    enc.origin_server_ts = T0 + 5;
    assert!(p.on_send(&enc).is_allow());
    let sticker = SendContext::new(
        A,
        ROOM,
        "m.sticker",
        json!({"body": "s", "url": "mxc://hs.example/a1"}),
    );
    let mut sticker = sticker;
    sticker.now_ms = T0 + 6;
    assert!(p.on_send(&sticker).is_allow());
    assert!(state::keys("ref/mxc://remote.example").is_empty());

    let info = admin(&p, T0, "media-info", json!({"mxc": "mxc://hs.example/a1"})).expect("present");
    assert_eq!(info["uploader"], A);
    assert_eq!(info["size"], 10);
    assert_eq!(info["uploader_erasure"], Value::Null);
    let refs = info["references"].as_array().expect("present");
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0]["sender"], B);
    assert_eq!(refs[0]["sent_at_ms"], T0 + 5);
    assert_eq!(refs[0]["joined_at_send"], json!([A, B]));
    assert_eq!(refs[1]["event_type"], "m.sticker");
    assert_eq!(
        refs[1]["sent_at_ms"],
        T0 + 6,
        "no origin_server_ts: hook time"
    );
    // Both references share one membership snapshot, counted twice.
    let snaps: Vec<String> = state::keys("members-rc/");
    assert_eq!(snaps.len(), 1);
    assert_eq!(state::get::<u64>(&snaps[0]), Ok(Some(2)));

    let of_user = admin(&p, T0, "media-of-user", json!({"user": A})).expect("present");
    assert_eq!(
        of_user["media"],
        json!([{"mxc": "mxc://hs.example/a1", "size": 10, "content_type": "image/png",
                "uploaded_at_ms": T0}])
    );
    assert_eq!(of_user["total_bytes"], 10);
    assert_eq!(of_user["erasure"], Value::Null);
    erase(&p, T0 + 10, A);
    let info = admin(
        &p,
        T0 + 11,
        "media-info",
        json!({"mxc": "mxc://hs.example/a1"}),
    )
    .expect("present");
    assert_eq!(info["uploader_erasure"]["state"], "grace");

    assert!(
        admin(
            &p,
            T0,
            "media-info",
            json!({"mxc": "mxc://hs.example/none"})
        )
        .is_err()
    );
    assert!(admin(&p, T0, "media-info", json!({})).is_err());
    assert!(admin(&p, T0, "media-of-user", json!({"user": 3})).is_err());
    assert!(admin(&p, T0, "nope", json!({})).is_err());
}

#[test]
fn member_avatar_and_room_avatar_are_references() {
    let p = policy(json!({}));
    upload(&p, T0, A, "mxc://hs.example/face", 10, "image/png");
    let mut member = SendContext::new(
        A,
        ROOM,
        "m.room.member",
        json!({"membership": "join", "avatar_url": "mxc://hs.example/face"}),
    );
    member.state_key = Some(A.into());
    p.on_send(&member);
    let mut avatar = SendContext::new(
        B,
        ROOM,
        "m.room.avatar",
        json!({"url": "mxc://hs.example/face"}),
    );
    avatar.state_key = Some(String::new());
    p.on_send(&avatar);
    assert_eq!(reference_keys("mxc://hs.example/face").len(), 2);
    // A look-alike URI extending this one does not mix in.
    upload(
        &p,
        T0,
        A,
        "mxc://hs.example/face/0000000000000001",
        1,
        "image/png",
    );
    send_image(&p, T0, A, "mxc://hs.example/face/0000000000000001");
    assert_eq!(reference_keys("mxc://hs.example/face").len(), 2);
}

#[test]
fn overlong_media_ids_are_refused_not_trapped() {
    let p = policy(json!({}));
    let mxc = format!("mxc://hs.example/{}", "x".repeat(1100));
    let out = upload(&p, T0, A, &mxc, 1, "image/png");
    assert_eq!(out.errcode(), Some("M_FORBIDDEN"));
    assert!(send_image(&p, T0, A, &mxc).is_allow());
    assert!(testing::state_keys().is_empty());
}

#[test]
fn unknown_timers_are_ignored() {
    let p = policy(json!({}));
    let actions = p.on_timer(&TimerContext {
        now_ms: T0,
        id: "something-else".into(),
        due_ms: T0,
        payload: vec![],
    });
    assert!(actions.is_empty());
    let actions = p.on_timer(&TimerContext {
        now_ms: T0,
        id: "erasure/@nobody:hs.example".into(),
        due_ms: T0,
        payload: vec![],
    });
    assert!(actions.is_empty());
}

#[test]
fn unknown_admin_commands_list_the_known_ones() {
    let p = policy(json!({}));
    assert_eq!(
        admin(&p, T0, "media-of-users", json!({})),
        Err("unknown command `media-of-users`; known: media-of-user, media-info".to_owned())
    );
}

#[test]
fn describes_its_hooks() {
    assert_eq!(MediaOwnership::NAME, "media-ownership");
    assert!(MediaOwnership::HOOKS.contains(&Hook::OnMediaFetch));
    assert!(!MediaOwnership::HOOKS.contains(&Hook::OnClientServe));
}

#[test]
fn turning_the_exception_off_ends_it() {
    let on = policy(json!({"email_model_exception": true}));
    testing::join(ROOM, A);
    testing::join(ROOM, B);
    upload(&on, T0, A, "mxc://hs.example/a1", 10, "image/png");
    send_image(&on, T0 + 1, B, "mxc://hs.example/a1");
    erase(&on, T0 + 2, A);
    assert!(fetch(&on, T0 + 3, "mxc://hs.example/a1", user(B)).is_allow());
    // Same state, new configuration without the exception.
    let off = MediaOwnership::new(Config::default()).expect("default config");
    assert!(is_not_found(&fetch(
        &off,
        T0 + 3,
        "mxc://hs.example/a1",
        user(B)
    )));
}

// ---- records this build cannot decode (written by another build, or damaged) ----

/// Replace a value with bytes no build decodes; returns them.
fn damage(key: &str) -> Vec<u8> {
    let bytes = b"\x00 not json".to_vec();
    state::set_raw(key, &bytes);
    bytes
}

#[test]
fn undecodable_media_or_erasure_records_refuse_the_media() {
    let p = policy(json!({}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    upload(&p, T0, B, "mxc://hs.example/b1", 10, "image/png");
    let kept = damage("media/mxc://hs.example/a1");
    // Bob's erasure record, as a newer build might write it (a field changed type).
    state::set_raw(
        "erasure/@bob:hs.example",
        br#"{"requested_at_ms": 1, "final_at_ms": 2, "finalized": "partly"}"#,
    );
    for who in everyone() {
        assert!(is_not_found(&fetch(
            &p,
            T0 + 1,
            "mxc://hs.example/a1",
            who.clone()
        )));
        assert!(is_not_found(&fetch(&p, T0 + 1, "mxc://hs.example/b1", who)));
    }
    assert_eq!(state::get_raw("media/mxc://hs.example/a1"), Some(kept));
    // The admin commands name the record instead of leaving it out.
    let e = admin(&p, T0, "media-info", json!({"mxc": "mxc://hs.example/a1"})).unwrap_err();
    assert!(
        e.starts_with("state `media/mxc://hs.example/a1` does not decode as "),
        "{e}"
    );
    assert!(admin(&p, T0, "media-of-user", json!({"user": A})).is_err());
    let e = admin(&p, T0, "media-of-user", json!({"user": B})).unwrap_err();
    assert!(e.contains("finalized"), "{e}");
    assert!(
        testing::logs()
            .iter()
            .any(|l| l.contains("; the media is refused"))
    );
}

#[test]
fn undecodable_references_or_snapshots_give_no_exception() {
    let p = policy(json!({"email_model_exception": true, "grace_period_ms": DAY}));
    testing::join(ROOM, A);
    testing::join(ROOM, B);
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    send_image(&p, T0 + 1, B, "mxc://hs.example/a1");
    erase(&p, T0 + 10, A);
    assert!(fetch(&p, T0 + 11, "mxc://hs.example/a1", user(B)).is_allow());
    let snapshot = testing::state_keys()
        .into_iter()
        .find(|k| k.starts_with("members/"))
        .unwrap();
    let members = state::get_raw(&snapshot).unwrap();
    damage(&snapshot);
    assert!(is_not_found(&fetch(
        &p,
        T0 + 11,
        "mxc://hs.example/a1",
        user(B)
    )));
    state::set_raw(&snapshot, &members);
    damage(&reference_keys("mxc://hs.example/a1")[0]);
    assert!(is_not_found(&fetch(
        &p,
        T0 + 11,
        "mxc://hs.example/a1",
        user(B)
    )));
}

#[test]
fn an_upload_that_would_overwrite_an_undecodable_record_is_refused_before_any_write() {
    let p = policy(json!({}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    let usage = damage("usage/@alice:hs.example");
    let out = upload(&p, T0, A, "mxc://hs.example/a2", 5, "image/png");
    assert_eq!(out.errcode(), Some(UNREADABLE_ERRCODE));
    assert!(state::get_raw("media/mxc://hs.example/a2").is_none());
    assert!(state::get_raw("by-user/@alice:hs.example/mxc://hs.example/a2").is_none());
    assert_eq!(state::get_raw("usage/@alice:hs.example"), Some(usage));
    // With a quota, the quota check refuses it first.
    let quota = policy(json!({"quota_bytes": 100}));
    damage("usage/@alice:hs.example");
    let out = upload(&quota, T0, A, "mxc://hs.example/a2", 5, "image/png");
    assert_eq!(out.errcode(), Some(UNREADABLE_ERRCODE));

    // Content uploaded again for a URI whose record does not decode.
    let p = policy(json!({}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    let record = damage("media/mxc://hs.example/a1");
    let out = upload(&p, T0 + 1, B, "mxc://hs.example/a1", 7, "image/png");
    assert_eq!(out.errcode(), Some(UNREADABLE_ERRCODE));
    assert_eq!(state::get_raw("media/mxc://hs.example/a1"), Some(record));
    assert_eq!(state::get::<u64>("usage/@alice:hs.example"), Ok(Some(10)));
    assert!(state::get_raw("usage/@bob:hs.example").is_none());
}

#[test]
fn an_undecodable_erasure_deletes_nothing_and_its_timer_waits() {
    let p = policy(json!({"grace_period_ms": DAY}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    erase(&p, T0, A);
    let readable = state::get_raw("erasure/@alice:hs.example").unwrap();
    let kept = damage("erasure/@alice:hs.example");

    // The timer deletes nothing and comes back a day later; the media stays refused.
    assert!(run_timers(&p, T0 + DAY).is_empty());
    assert_eq!(
        testing::timers(),
        vec![(
            "erasure/@alice:hs.example".to_owned(),
            T0 + DAY + UNREADABLE_RETRY_MS
        )]
    );
    assert!(state::get_raw("media/mxc://hs.example/a1").is_some());
    assert!(is_not_found(&fetch(
        &p,
        T0 + DAY,
        "mxc://hs.example/a1",
        user(B)
    )));
    // Neither a reactivation nor a new request (never vetoed) overwrites or cancels it; a new
    // request sets the timer so that the record is looked at again.
    assert!(reactivate(&p, T0 + DAY, A).is_allow());
    assert!(erase(&p, T0 + DAY, A).is_allow());
    assert_eq!(state::get_raw("erasure/@alice:hs.example"), Some(kept));
    assert_eq!(
        testing::timers(),
        vec![("erasure/@alice:hs.example".to_owned(), T0 + 2 * DAY)]
    );

    // A build that reads the record is back: the deletion runs.
    state::set_raw("erasure/@alice:hs.example", &readable);
    assert_eq!(
        run_timers(&p, T0 + 2 * DAY),
        vec![Action::DeleteMedia("mxc://hs.example/a1".into())]
    );
}

#[test]
fn an_undecodable_media_record_is_not_deleted_and_is_looked_at_again() {
    let p = policy(json!({"grace_period_ms": DAY}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    upload(&p, T0, A, "mxc://hs.example/a2", 20, "image/png");
    erase(&p, T0, A);
    let kept = damage("media/mxc://hs.example/a2");
    assert_eq!(
        run_timers(&p, T0 + DAY),
        vec![Action::DeleteMedia("mxc://hs.example/a1".into())]
    );
    assert_eq!(state::get_raw("media/mxc://hs.example/a2"), Some(kept));
    assert!(state::get_raw("by-user/@alice:hs.example/mxc://hs.example/a2").is_some());
    assert_eq!(
        testing::timers(),
        vec![(
            "erasure/@alice:hs.example".to_owned(),
            T0 + DAY + UNREADABLE_RETRY_MS
        )]
    );
    assert!(is_not_found(&fetch(
        &p,
        T0 + DAY,
        "mxc://hs.example/a2",
        user(B)
    )));
    // Still unreadable a day later: nothing more is deleted, and it waits again.
    assert!(run_timers(&p, T0 + DAY + UNREADABLE_RETRY_MS).is_empty());
    assert_eq!(testing::timers().len(), 1);
}

#[test]
fn an_undecodable_reference_counter_records_no_reference_and_allows_the_send() {
    let p = policy(json!({}));
    upload(&p, T0, A, "mxc://hs.example/a1", 10, "image/png");
    let seq = damage("ref-seq");
    assert!(send_image(&p, T0 + 1, B, "mxc://hs.example/a1").is_allow());
    assert!(reference_keys("mxc://hs.example/a1").is_empty());
    assert_eq!(state::get_raw("ref-seq"), Some(seq));
}
