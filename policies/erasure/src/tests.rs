//! Unit tests of the policy through its hooks, on the guest SDK's test host.

use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, DeactivateContext, HistoryVisibility, Policy,
    ReactivateContext, SendContext, ServeContext, ServeEvent, ServeVerdict, TimerContext, Verdict,
    Viewer,
    gdpr::{DAY_MS, DEFAULT_GRACE_PERIOD_MS},
    state, testing,
};
use serde_json::{Value, json};

use crate::{
    records::{Status, load, record_key, rooms_under, sent_prefix},
    *,
};

const HS: &str = "hs.example";
const ALICE: &str = "@alice:hs.example";
const BOB: &str = "@bob:hs.example";
const ROOM: &str = "!room:hs.example";
const T0: u64 = 1_767_225_600_000;

fn policy(config: Value) -> Erasure {
    testing::reset(HS);
    build(config)
}

fn build(config: Value) -> Erasure {
    let config: Config = serde_json::from_value(config).unwrap();
    Erasure::new(config).unwrap()
}

fn config_error(config: Value) -> ConfigError {
    let config: Config = serde_json::from_value(config).unwrap();
    Erasure::new(config).err().unwrap()
}

fn deactivate(user: &str, erase: bool, now_ms: u64) -> DeactivateContext {
    DeactivateContext {
        now_ms,
        user: user.into(),
        erase,
        by_admin: false,
        second_factor: false,
    }
}

fn reactivate(user: &str, now_ms: u64) -> ReactivateContext {
    ReactivateContext {
        now_ms,
        user: user.into(),
        by_admin: true,
    }
}

fn event(sender: &str, room: &str, ts: u64, joined: bool) -> ServeEvent {
    ServeEvent {
        event_id: format!("$e{ts}").into(),
        room_id: room.into(),
        sender: sender.into(),
        event_type: "m.room.message".into(),
        state_key: None,
        origin_server_ts: ts,
        room_version: "11".into(),
        history_visibility: HistoryVisibility::Shared,
        viewer_joined: joined,
    }
}

fn serve(viewer: Viewer, events: Vec<ServeEvent>) -> ServeContext {
    ServeContext {
        now_ms: T0,
        viewer,
        events,
    }
}

fn user(u: &str) -> Viewer {
    Viewer::User(u.into())
}

/// Fire every timer due at `now_ms`, as the host would, collecting the actions.
fn run_timers(p: &Erasure, now_ms: u64) -> Vec<Action> {
    testing::take_due_timers(now_ms)
        .into_iter()
        .flat_map(|(id, due_ms, payload)| {
            p.on_timer(&TimerContext {
                now_ms,
                id,
                due_ms,
                payload,
            })
        })
        .collect()
}

fn purges(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PurgeRoomHistory(r) => Some(r.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn config_defaults_and_errors() {
    let p = policy(json!({}));
    assert_eq!(p.grace_period_ms, DEFAULT_GRACE_PERIOD_MS);
    assert_eq!(p.federation, FederationMode::Spec);
    assert!(p.pseudonym_key.is_none());
    assert_eq!(
        build(json!({"grace_period_days": 2})).grace_period_ms,
        2 * DAY_MS
    );
    assert_eq!(build(json!({"grace_period_ms": 5})).grace_period_ms, 5);
    assert_eq!(
        config_error(json!({"grace_period_ms": 1, "grace_period_days": 1})).key,
        "grace_period_days"
    );
    assert_eq!(
        config_error(json!({"grace_period_days": u64::MAX})).key,
        "grace_period_days"
    );
    assert_eq!(
        config_error(json!({"pseudonymize_clients": true})).key,
        "pseudonym_secret"
    );
    assert_eq!(
        config_error(json!({"pseudonymize_clients": true, "pseudonym_secret": "short"})).key,
        "pseudonym_secret"
    );
    let lax = config_error(json!({"federation": "lax"}));
    assert_eq!(lax.key, "federation");
    assert_eq!(
        lax.message,
        "unknown mode `lax`: expected `spec` or `strict`"
    );
    assert_eq!(
        build(json!({"federation": "spec"})).federation,
        FederationMode::Spec
    );
    assert_eq!(
        build(json!({"federation": "strict"})).federation,
        FederationMode::Strict
    );
}

#[test]
fn plain_deactivation_records_nothing() {
    let p = policy(json!({}));
    let out = p.on_deactivate(&deactivate(ALICE, false, T0));
    assert!(out.is_allow());
    assert_eq!(
        out.actions,
        vec![
            Action::LeaveAllRooms(ALICE.into()),
            Action::RemoveFromUserDirectory(ALICE.into()),
            Action::UnbindThreepids(ALICE.into()),
        ]
    );
    assert!(testing::state_keys().is_empty());
    assert!(testing::timers().is_empty());
    let ctx = serve(user(BOB), vec![event(ALICE, ROOM, 1, false)]);
    assert_eq!(p.on_client_serve(&ctx).verdicts, vec![ServeVerdict::Serve]);
}

#[test]
fn erasure_request_is_recorded_with_timer_and_actions() {
    let p = policy(json!({"grace_period_days": 7}));
    testing::join(ROOM, ALICE);
    let out = p.on_deactivate(&deactivate(ALICE, true, T0));
    assert!(out.is_allow());
    assert_eq!(out.actions.len(), 4);
    assert_eq!(out.actions[3], Action::DeleteProfile(ALICE.into()));
    assert_eq!(
        testing::timers(),
        vec![(format!("erase/{ALICE}"), T0 + 7 * DAY_MS)]
    );
    let record = load(ALICE).unwrap().unwrap();
    let pending = record.pending.unwrap();
    assert_eq!(pending.requested_at_ms, T0);
    assert_eq!(pending.rooms, vec![ROOM.to_owned()]);
    // A repeated request keeps the first request's time.
    p.on_deactivate(&deactivate(ALICE, true, T0 + DAY_MS));
    let again = load(ALICE).unwrap().unwrap().pending.unwrap();
    assert_eq!(again.requested_at_ms, T0);
    assert_eq!(again.final_at_ms, T0 + 7 * DAY_MS);
}

#[test]
fn second_factor_is_required_when_configured() {
    let p = policy(json!({"require_second_factor": true}));
    let out = p.on_deactivate(&deactivate(ALICE, true, T0));
    assert_eq!(out.errcode(), Some("M_FORBIDDEN"));
    let Verdict::Deny(e) = &out.verdict else {
        panic!()
    };
    assert_eq!(e.fields[SECOND_FACTOR_FIELD], true);
    assert!(out.actions.is_empty());
    assert!(load(ALICE).unwrap().is_none());

    let mut with_factor = deactivate(ALICE, true, T0);
    with_factor.second_factor = true;
    assert!(p.on_deactivate(&with_factor).is_allow());

    let mut admin = deactivate(BOB, true, T0);
    admin.by_admin = true;
    assert!(p.on_deactivate(&admin).is_allow());
    // Plain deactivation never needs it.
    assert!(
        p.on_deactivate(&deactivate("@carol:hs.example", false, T0))
            .is_allow()
    );
}

#[test]
fn client_visibility_depends_on_viewer_joined() {
    let p = policy(json!({}));
    p.on_deactivate(&deactivate(ALICE, true, T0));
    let ctx = serve(
        user(BOB),
        vec![
            event(ALICE, ROOM, 1, true),
            event(ALICE, ROOM, 2, false),
            event(BOB, ROOM, 3, false),
            event("@alice:remote.example", ROOM, 4, false),
        ],
    );
    assert_eq!(
        p.on_client_serve(&ctx).verdicts,
        vec![
            ServeVerdict::Serve,
            ServeVerdict::Redact,
            ServeVerdict::Serve,
            ServeVerdict::Serve
        ]
    );
    // The anonymous public is never joined, whatever the flag says.
    let anon = serve(Viewer::Anonymous, vec![event(ALICE, ROOM, 1, true)]);
    assert_eq!(
        p.on_client_serve(&anon).verdicts,
        vec![ServeVerdict::Redact]
    );
}

#[test]
fn pseudonyms_are_stable_per_room_and_differ_across_rooms() {
    let p = policy(json!({"pseudonymize_clients": true,
                          "pseudonym_secret": "0123456789abcdef"}));
    p.on_deactivate(&deactivate(ALICE, true, T0));
    let other = "!other:hs.example";
    let ctx = serve(
        user(BOB),
        vec![
            event(ALICE, ROOM, 1, false),
            event(ALICE, ROOM, 2, false),
            event(ALICE, other, 3, false),
            event(ALICE, ROOM, 4, true),
        ],
    );
    let v = p.on_client_serve(&ctx).verdicts;
    let ServeVerdict::Pseudonymize(a) = &v[0] else {
        panic!("{v:?}")
    };
    assert_eq!(v[1], ServeVerdict::Pseudonymize(a.clone()));
    let ServeVerdict::Pseudonymize(b) = &v[2] else {
        panic!("{v:?}")
    };
    assert_ne!(a, b);
    assert_eq!(v[3], ServeVerdict::Serve);
    let local = a.localpart().strip_prefix("_erased_").unwrap();
    assert_eq!(local.len(), 16);
    assert!(local.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a.server_name(), HS);
    // Another secret gives other pseudonyms; the same secret the same ones.
    let q = build(json!({"pseudonymize_clients": true,
                         "pseudonym_secret": "fedcba9876543210"}));
    assert_ne!(
        q.pseudonym(&ROOM.into(), &ALICE.into(), HS).as_ref(),
        Some(a)
    );
    assert_eq!(
        p.pseudonym(&ROOM.into(), &ALICE.into(), HS).as_ref(),
        Some(a)
    );
    // Never over federation.
    let fed = serve(
        Viewer::Server("other.example".into()),
        vec![event(ALICE, ROOM, 1, false)],
    );
    assert_eq!(
        p.on_federation_serve(&fed).verdicts,
        vec![ServeVerdict::Redact]
    );
}

#[test]
fn federation_modes() {
    let server = || Viewer::Server("other.example".into());
    let events = || vec![event(ALICE, ROOM, 1, true), event(ALICE, ROOM, 2, false)];
    let verdicts = |p: &Erasure| p.on_federation_serve(&serve(server(), events())).verdicts;
    let spec = policy(json!({}));
    spec.on_deactivate(&deactivate(ALICE, true, T0));
    assert_eq!(
        verdicts(&spec),
        vec![ServeVerdict::Serve, ServeVerdict::Redact]
    );
    let strict = build(json!({"federation": "strict"}));
    assert_eq!(
        verdicts(&strict),
        vec![ServeVerdict::Redact, ServeVerdict::Redact]
    );
    let withhold = build(json!({"federation_withhold_unjoined": true}));
    assert_eq!(
        verdicts(&withhold),
        vec![ServeVerdict::Serve, ServeVerdict::Withhold]
    );
    let both = build(json!({"federation": "strict", "federation_withhold_unjoined": true}));
    assert_eq!(
        verdicts(&both),
        vec![ServeVerdict::Redact, ServeVerdict::Withhold]
    );
}

#[test]
fn reactivation_inside_the_grace_period_cancels() {
    let p = policy(json!({}));
    p.on_deactivate(&deactivate(ALICE, true, T0));
    assert!(p.on_reactivate(&reactivate(ALICE, T0 + DAY_MS)).is_allow());
    assert!(testing::timers().is_empty());
    assert!(load(ALICE).unwrap().is_none());
    let ctx = serve(user(BOB), vec![event(ALICE, ROOM, 1, false)]);
    assert_eq!(p.on_client_serve(&ctx).verdicts, vec![ServeVerdict::Serve]);
    assert!(run_timers(&p, T0 + DEFAULT_GRACE_PERIOD_MS).is_empty());
}

#[test]
fn reactivation_after_the_grace_period_keeps_old_events_filtered() {
    let p = policy(json!({}));
    p.on_deactivate(&deactivate(ALICE, true, T0));
    let end = T0 + DEFAULT_GRACE_PERIOD_MS;
    assert!(run_timers(&p, end - 1).is_empty());
    let actions = run_timers(&p, end);
    assert_eq!(actions, vec![Action::AnnounceErasure(ALICE.into())]);
    let back = end + DAY_MS;
    assert!(p.on_reactivate(&reactivate(ALICE, back)).is_allow());
    let ctx = serve(
        user(BOB),
        vec![
            event(ALICE, ROOM, T0 - 1, false),
            event(ALICE, ROOM, back + 1, false),
        ],
    );
    assert_eq!(
        p.on_client_serve(&ctx).verdicts,
        vec![ServeVerdict::Redact, ServeVerdict::Serve]
    );
    assert_eq!(
        load(ALICE).unwrap().unwrap().status(),
        Status::FinalReactivated
    );
    // A new erasure filters everything again; cancelling it restores the old cut-off.
    p.on_deactivate(&deactivate(ALICE, true, back + 2));
    assert_eq!(
        p.on_client_serve(&ctx).verdicts,
        vec![ServeVerdict::Redact, ServeVerdict::Redact]
    );
    p.on_reactivate(&reactivate(ALICE, back + 3));
    assert_eq!(
        p.on_client_serve(&ctx).verdicts,
        vec![ServeVerdict::Redact, ServeVerdict::Serve]
    );
}

#[test]
fn last_member_erased_purges_the_room() {
    let p = policy(json!({"grace_period_ms": 10}));
    let shared = "!shared:hs.example";
    let with_carol = "!carol:hs.example";
    testing::join(shared, ALICE);
    testing::join(shared, BOB);
    testing::join(with_carol, BOB);
    testing::join(with_carol, "@carol:hs.example");
    p.on_deactivate(&deactivate(ALICE, true, T0));
    let first = run_timers(&p, T0 + 10);
    assert!(purges(&first).is_empty(), "{first:?}");
    // Bob is the last member of `shared`; Carol keeps `with_carol` alive.
    p.on_deactivate(&deactivate(BOB, true, T0 + 20));
    let second = run_timers(&p, T0 + 30);
    assert_eq!(second[0], Action::AnnounceErasure(BOB.into()));
    assert_eq!(purges(&second), vec![shared]);
    let status = p
        .on_admin(&AdminRequest {
            now_ms: T0,
            command: "list-purged-rooms".into(),
            args: Value::Null,
        })
        .unwrap();
    assert_eq!(status["rooms"][0]["room"], shared);
    assert_eq!(status["rooms"][0]["purged_at_ms"], T0 + 30);
}

#[test]
fn pending_erasures_do_not_count_for_purging() {
    let p = policy(json!({"grace_period_ms": 10}));
    testing::join(ROOM, ALICE);
    testing::join(ROOM, BOB);
    p.on_deactivate(&deactivate(ALICE, true, T0));
    p.on_deactivate(&deactivate(BOB, true, T0 + 5));
    // Alice's erasure is final first, Bob's still pending: no purge yet.
    assert!(purges(&run_timers(&p, T0 + 10)).is_empty());
    assert_eq!(purges(&run_timers(&p, T0 + 15)), vec![ROOM]);
}

#[test]
fn a_room_left_without_sending_is_purged_when_its_last_blocker_is_erased() {
    let p = policy(json!({"grace_period_ms": 10}));
    testing::join(ROOM, ALICE);
    testing::join(ROOM, BOB);
    // Bob leaves without sending anything: his own erasure does not know the room.
    testing::leave(ROOM, BOB);
    p.on_deactivate(&deactivate(ALICE, true, T0));
    assert!(purges(&run_timers(&p, T0 + 10)).is_empty());
    p.on_deactivate(&deactivate(BOB, true, T0 + 20));
    assert_eq!(purges(&run_timers(&p, T0 + 30)), vec![ROOM]);
    assert!(state::keys("blocker/").is_empty());
    assert!(state::keys("waiting/").is_empty());
}

#[test]
fn rooms_with_remote_members_are_never_purged() {
    let p = policy(json!({"grace_period_ms": 10}));
    testing::join(ROOM, ALICE);
    testing::join(ROOM, "@zed:remote.example");
    testing::leave(ROOM, "@zed:remote.example");
    p.on_deactivate(&deactivate(ALICE, true, T0));
    assert!(purges(&run_timers(&p, T0 + 10)).is_empty());
    assert!(state::keys("waiting/").is_empty());
}

#[test]
fn rooms_sent_to_are_tracked_and_examined() {
    let p = policy(json!({"grace_period_ms": 10}));
    testing::join(ROOM, ALICE);
    let msg = SendContext::new(ALICE, ROOM, "m.room.message", json!({"body": "hi"}));
    assert!(p.on_send(&msg).is_allow());
    assert!(p.on_send(&msg).is_allow());
    assert_eq!(rooms_under(&sent_prefix(ALICE)), vec![ROOM.to_owned()]);
    testing::leave(ROOM, ALICE);
    p.on_deactivate(&deactivate(ALICE, true, T0));
    assert!(
        load(ALICE)
            .unwrap()
            .unwrap()
            .pending
            .unwrap()
            .rooms
            .is_empty()
    );
    assert_eq!(purges(&run_timers(&p, T0 + 10)), vec![ROOM]);
    // The plugin forgets where the erased user sent.
    assert!(rooms_under(&sent_prefix(ALICE)).is_empty());
}

#[test]
fn admin_lists_erasures_and_status() {
    let p = policy(json!({"grace_period_ms": 10}));
    p.on_deactivate(&deactivate(ALICE, true, T0));
    p.on_deactivate(&deactivate(BOB, true, T0 + 20));
    run_timers(&p, T0 + 10);
    let admin = |command: &str, args: Value| {
        p.on_admin(&AdminRequest {
            now_ms: T0,
            command: command.into(),
            args,
        })
    };
    assert_eq!(
        admin("list-erasures", Value::Null).unwrap(),
        json!({
            "pending": [{"user": BOB, "requested_at_ms": T0 + 20, "final_at_ms": T0 + 30}],
            "completed": [{"user": ALICE, "requested_at_ms": T0,
                           "completed_at_ms": T0 + 10, "reactivated_at_ms": null}],
        })
    );
    let status = admin("erasure-status", json!({"user": ALICE})).unwrap();
    assert_eq!(status["status"], "final");
    let none = admin("erasure-status", json!({"user": "@x:hs.example"})).unwrap();
    assert_eq!(none["status"], "none");
    assert!(admin("erasure-status", json!({})).is_err());
    assert_eq!(
        admin("erasure-status", json!({"user": BOB})).unwrap()["status"],
        "pending"
    );
    assert_eq!(
        admin("nope", Value::Null),
        Err(
            "unknown command `nope`: expected `list-erasures`, `erasure-status` or \
             `list-purged-rooms`"
                .to_owned()
        )
    );
    p.on_reactivate(&reactivate(ALICE, T0 + 40));
    let back = admin("erasure-status", json!({"user": ALICE})).unwrap();
    assert_eq!(back["status"], "final-reactivated");
}

#[test]
fn choices_are_listed_in_english() {
    assert_eq!(one_of(&[]), "");
    assert_eq!(one_of(&["a"]), "`a`");
    assert_eq!(one_of(&["a", "b"]), "`a` or `b`");
    assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
}

#[test]
fn unreadable_record_filters_everything() {
    let p = policy(json!({}));
    state::set_raw(&record_key(ALICE), &[0xff, 0xff, 0xff]);
    let ctx = serve(user(BOB), vec![event(ALICE, ROOM, 1, false)]);
    assert_eq!(p.on_client_serve(&ctx).verdicts, vec![ServeVerdict::Redact]);
    assert!(
        testing::logs()
            .iter()
            .any(|l| l.contains("does not decode"))
    );
}

#[test]
fn an_unreadable_record_refuses_erasure_and_reactivation_and_is_kept() {
    let p = policy(json!({}));
    // A build whose record differs wrote it (here: a time became a string).
    let foreign = br#"{"pending": {"requested_at_ms": "yesterday"}}"#.to_vec();
    state::set_raw(&record_key(ALICE), &foreign);

    let out = p.on_deactivate(&deactivate(ALICE, true, T0));
    assert_eq!(out.errcode(), Some(UNREADABLE_ERRCODE));
    assert!(out.actions.is_empty(), "{out:?}");
    let out = p.on_reactivate(&reactivate(ALICE, T0));
    assert_eq!(out.errcode(), Some(UNREADABLE_ERRCODE));
    assert!(testing::timers().is_empty());
    assert_eq!(state::get_raw(&record_key(ALICE)), Some(foreign));
    // The admin commands name the record rather than answer "none".
    let status = p.on_admin(&AdminRequest {
        now_ms: T0,
        command: "erasure-status".into(),
        args: json!({"user": ALICE}),
    });
    let e = status.expect_err("unreadable");
    assert!(
        e.starts_with(&format!("state `erasure/{ALICE}` does not decode as ")),
        "{e}"
    );
    assert!(e.contains("pending.requested_at_ms"), "{e}");
    assert!(
        testing::logs()
            .iter()
            .any(|l| l.contains("the deactivation is refused and the record kept"))
    );
}

#[test]
fn an_unreadable_record_at_the_timer_waits_and_blocks_purges() {
    let p = policy(json!({"grace_period_ms": 10}));
    testing::join(ROOM, ALICE);
    testing::join(ROOM, BOB);
    p.on_deactivate(&deactivate(ALICE, true, T0));
    p.on_deactivate(&deactivate(BOB, true, T0));
    let bobs = state::get_raw(&record_key(BOB)).unwrap();
    state::set_raw(&record_key(BOB), b"\x01\x02\x03");

    // Alice's erasure is final; Bob's record cannot be read: not final, no purge, the timer
    // comes back a day later.
    let actions = run_timers(&p, T0 + 10);
    assert_eq!(actions, vec![Action::AnnounceErasure(ALICE.into())]);
    assert_eq!(
        testing::timers(),
        vec![(format!("erase/{BOB}"), T0 + 10 + UNREADABLE_RETRY_MS)]
    );
    assert_eq!(
        state::get_raw(&record_key(BOB)).as_deref(),
        Some(&b"\x01\x02\x03"[..])
    );

    // A build that reads the record is back: the erasure completes and the room is purged.
    state::set_raw(&record_key(BOB), &bobs);
    let actions = run_timers(&p, T0 + 10 + UNREADABLE_RETRY_MS);
    assert_eq!(actions[0], Action::AnnounceErasure(BOB.into()));
    assert_eq!(purges(&actions), vec![ROOM]);
}

#[test]
fn a_newer_builds_record_is_read_and_its_fields_kept_when_rewritten() {
    let p = policy(json!({}));
    // A newer build's final erasure, with fields this build does not know.
    let newer = json!({
        "pending": null,
        "completed": {"requested_at_ms": T0, "completed_at_ms": T0 + 10,
                      "reactivated_at_ms": null, "certificate": "c-1"},
        "audit_id": 7,
    });
    state::set_raw(&record_key(ALICE), newer.to_string().as_bytes());
    let ctx = serve(user(BOB), vec![event(ALICE, ROOM, 1, false)]);
    assert_eq!(p.on_client_serve(&ctx).verdicts, vec![ServeVerdict::Redact]);
    // This build rewrites it (a reactivation): the unknown fields are written back.
    assert!(p.on_reactivate(&reactivate(ALICE, T0 + 20)).is_allow());
    let stored: Value =
        serde_json::from_slice(&state::get_raw(&record_key(ALICE)).unwrap()).unwrap();
    assert_eq!(
        stored,
        json!({
            "pending": null,
            "completed": {"requested_at_ms": T0, "completed_at_ms": T0 + 10,
                          "reactivated_at_ms": T0 + 20, "certificate": "c-1"},
            "audit_id": 7,
        })
    );
}
