//! The GDPR erasure policy (policies/erasure), built to wasm, through the host: who sees an
//! erased user's events and how, redaction equal to ruma's per room version, pseudonyms, the
//! grace period with reactivation, purging, the second factor, hot swap and the admin API.

use mxpolicy_host::{
    Action, Deactivation, HistoryVisibility, Homeserver, PluginSpec, Reactivation, SendEvent,
    ServeEvent, ServeVerdict, ServedEvent, StateStore, UserKind, Verdict, Viewer,
    ruma::{
        OwnedRoomId, OwnedUserId, RoomVersionId, UserId,
        canonical_json::{CanonicalJsonValue, redact},
    },
};
use serde_json::{Value, json};

use crate::support::{T0, TestHost, spec, test_host};

const DAY_MS: u64 = 86_400_000;
const GRACE_MS: u64 = 30 * DAY_MS;
const ALICE: &str = "@alice:hs.example";
const BOB: &str = "@bob:hs.example";
const CAROL: &str = "@carol:hs.example";
const ROOM: &str = "!room:hs.example";
const SECRET: &str = "a server secret of some length";

const VISIBILITIES: [HistoryVisibility; 4] = [
    HistoryVisibility::WorldReadable,
    HistoryVisibility::Shared,
    HistoryVisibility::Invited,
    HistoryVisibility::Joined,
];

fn user(id: &str) -> OwnedUserId {
    id.try_into().expect("user id")
}

fn room(id: &str) -> OwnedRoomId {
    id.try_into().expect("room id")
}

fn erasure(config: Value) -> PluginSpec {
    spec("erasure").config(config)
}

fn host_with(config: Value) -> TestHost {
    let t = test_host();
    t.host.load(erasure(config)).expect("load erasure");
    t
}

fn deactivation(id: &str, erase: bool) -> Deactivation {
    Deactivation {
        user: user(id),
        erase,
        by_admin: false,
        second_factor: false,
    }
}

/// Ask for erasure and carry out `leave-all-rooms` as the homeserver would.
fn erase(t: &TestHost, id: &str) {
    let rooms = t.homeserver.rooms_of_user(&user(id));
    let d = t.host.on_deactivate(&deactivation(id, true));
    assert_eq!(d.outcome, Verdict::Allow, "{d:?}");
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    assert!(
        d.actions
            .contains(&Action::LeaveAllRooms { user: user(id) })
    );
    for r in rooms {
        t.homeserver.leave(&r, &user(id));
    }
}

fn reactivate(t: &TestHost, id: &str) {
    let d = t.host.on_reactivate(&Reactivation {
        user: user(id),
        by_admin: true,
    });
    assert_eq!(d.outcome, Verdict::Allow);
    assert!(d.failures.is_empty(), "{:?}", d.failures);
}

fn send(t: &TestHost, sender: &str, room_id: &str) {
    let d = t.host.on_send(&SendEvent {
        sender: user(sender),
        sender_kind: UserKind::Regular,
        room_id: room(room_id),
        room_version: RoomVersionId::V11,
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "hi"}),
        origin_server_ts: T0,
        is_server_notices_room: false,
    });
    assert_eq!(d.outcome, Verdict::Allow);
}

fn message(sender: &str, room_id: &str, ts: u64) -> Value {
    json!({
        "event_id": format!("$m{ts}"),
        "room_id": room_id,
        "sender": sender,
        "type": "m.room.message",
        "origin_server_ts": ts,
        "content": {"msgtype": "m.text", "body": format!("secret {ts}")},
        "unsigned": {"age": 5},
    })
}

fn to_serve(
    event: &Value,
    version: RoomVersionId,
    hv: HistoryVisibility,
    joined: bool,
) -> ServeEvent {
    ServeEvent {
        event: event.clone(),
        room_version: version,
        history_visibility: hv,
        viewer_joined: joined,
    }
}

fn client(t: &TestHost, viewer: Viewer, events: Vec<ServeEvent>) -> Vec<ServedEvent> {
    let d = t.host.on_client_serve(&viewer, events).expect("serve");
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    d.outcome
}

fn federation(t: &TestHost, events: Vec<ServeEvent>) -> Vec<ServedEvent> {
    let viewer = Viewer::Server("other.example".try_into().expect("server name"));
    let d = t.host.on_federation_serve(&viewer, events).expect("serve");
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    d.outcome
}

/// ruma's redaction of `event` for `version`: what the host must serve for a redact verdict.
fn ruma_redacted(event: &Value, version: &RoomVersionId) -> Value {
    let Ok(CanonicalJsonValue::Object(obj)) = CanonicalJsonValue::try_from(event.clone()) else {
        panic!("not a canonical JSON object: {event}")
    };
    let rules = version.rules().expect("known room version");
    let redacted = redact(obj, &rules.redaction, None).expect("redact");
    serde_json::to_value(redacted).expect("json")
}

fn verdicts(served: &[ServedEvent]) -> Vec<ServeVerdict> {
    served.iter().map(|s| s.verdict).collect()
}

fn admin(t: &TestHost, command: &str, args: Value) -> Value {
    t.host.admin("erasure", command, &args).expect("admin")
}

fn status(t: &TestHost, id: &str) -> String {
    admin(t, "erasure-status", json!({"user": id}))["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

fn advance_and_run_timers(t: &TestHost, ms: u64) -> Vec<Action> {
    t.clock.advance(ms);
    let d = t.host.run_timers().expect("timers");
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    assert!(d.outcome.iter().all(|f| f.ok));
    d.actions
}

fn purged(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PurgeRoomHistory { room } => Some(room.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn describes_its_hooks() {
    let t = test_host();
    let report = t.host.load(erasure(json!({}))).unwrap();
    assert_eq!(report.info.name, "erasure");
    use mxpolicy_host::Hook::*;
    assert_eq!(
        report.info.hooks,
        vec![
            OnSend,
            OnClientServe,
            OnFederationServe,
            OnDeactivate,
            OnReactivate,
            OnTimer,
            OnAdmin
        ]
    );
}

#[test]
fn bad_config_is_refused() {
    let t = test_host();
    let err = t
        .host
        .load(erasure(json!({"pseudonymize_clients": true})))
        .unwrap_err();
    assert!(err.to_string().contains("`pseudonym_secret`"), "{err}");
    let err = t
        .host
        .load(erasure(json!({"federation": "loose"})))
        .unwrap_err();
    assert!(err.to_string().contains("`federation`"), "{err}");
    let err = t.host.load(erasure(json!({"grace": 1}))).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    assert!(t.host.plugins().is_empty());
}

#[test]
fn plain_deactivation_records_nothing_and_keeps_the_profile() {
    let t = host_with(json!({}));
    let d = t.host.on_deactivate(&deactivation(ALICE, false));
    assert_eq!(d.outcome, Verdict::Allow);
    let alice = user(ALICE);
    assert_eq!(
        d.actions,
        vec![
            Action::LeaveAllRooms {
                user: alice.clone()
            },
            Action::RemoveFromUserDirectory {
                user: alice.clone()
            },
            Action::UnbindThreepids { user: alice },
        ]
    );
    assert_eq!(status(&t, ALICE), "none");
    let served = client(
        &t,
        Viewer::Anonymous,
        vec![to_serve(
            &message(ALICE, ROOM, T0 - 1),
            RoomVersionId::V11,
            HistoryVisibility::WorldReadable,
            false,
        )],
    );
    assert_eq!(served[0].verdict, ServeVerdict::Serve);
}

#[test]
fn erasure_asks_for_the_deactivation_actions_and_a_timer() {
    let t = host_with(json!({}));
    t.homeserver.join(&room(ROOM), &user(ALICE));
    let d = t.host.on_deactivate(&deactivation(ALICE, true));
    assert_eq!(d.outcome, Verdict::Allow);
    let alice = user(ALICE);
    assert_eq!(
        d.actions,
        vec![
            Action::LeaveAllRooms {
                user: alice.clone()
            },
            Action::RemoveFromUserDirectory {
                user: alice.clone()
            },
            Action::UnbindThreepids {
                user: alice.clone()
            },
            Action::DeleteProfile { user: alice },
        ]
    );
    let timer = t
        .store
        .timer("erasure", &format!("erase/{ALICE}"))
        .unwrap()
        .expect("grace timer");
    assert_eq!(timer.due_ms, T0 + GRACE_MS);
    assert_eq!(status(&t, ALICE), "pending");
}

/// The viewer matrix: for each history visibility, the situations the homeserver expresses
/// with `viewer_joined`. Only a viewer joined at the event gets an erased user's event whole.
#[test]
fn viewer_matrix_for_every_history_visibility() {
    let t = host_with(json!({}));
    erase(&t, ALICE);
    // (situation, viewer, joined at the event)
    let situations: [(&str, Viewer, bool); 5] = [
        ("joined at the event", Viewer::User(user(BOB)), true),
        ("joined later", Viewer::User(user(CAROL)), false),
        (
            "invited, not joined",
            Viewer::User(user("@dave:hs.example")),
            false,
        ),
        (
            "left before the event",
            Viewer::User(user("@erin:hs.example")),
            false,
        ),
        ("anonymous", Viewer::Anonymous, false),
    ];
    let erased = message(ALICE, ROOM, T0 - 10);
    let other = message(BOB, ROOM, T0 - 9);
    for hv in VISIBILITIES {
        for (situation, viewer, joined) in &situations {
            let served = client(
                &t,
                viewer.clone(),
                vec![
                    to_serve(&erased, RoomVersionId::V11, hv, *joined),
                    to_serve(&other, RoomVersionId::V11, hv, *joined),
                ],
            );
            let (expected, body) = if *joined {
                (ServeVerdict::Serve, erased.clone())
            } else {
                (
                    ServeVerdict::Redact,
                    ruma_redacted(&erased, &RoomVersionId::V11),
                )
            };
            assert_eq!(served[0].verdict, expected, "{situation} / {hv:?}");
            assert_eq!(
                served[0].event.as_ref(),
                Some(&body),
                "{situation} / {hv:?}"
            );
            // Others' events are untouched.
            assert_eq!(
                served[1].verdict,
                ServeVerdict::Serve,
                "{situation} / {hv:?}"
            );
            assert_eq!(served[1].event.as_ref(), Some(&other));
        }
    }
    // The anonymous public is never joined, even if the homeserver says so.
    let anon = client(
        &t,
        Viewer::Anonymous,
        vec![to_serve(
            &erased,
            RoomVersionId::V11,
            HistoryVisibility::WorldReadable,
            true,
        )],
    );
    assert_eq!(anon[0].verdict, ServeVerdict::Redact);
    assert_eq!(anon[0].event.as_ref().unwrap()["content"], json!({}));
}

#[test]
fn pseudonyms_are_stable_in_a_room_and_differ_across_rooms() {
    let t = host_with(json!({"pseudonymize_clients": true, "pseudonym_secret": SECRET}));
    erase(&t, ALICE);
    let other_room = "!other:hs.example";
    let member = json!({
        "event_id": "$member", "room_id": ROOM, "sender": ALICE, "type": "m.room.member",
        "state_key": ALICE, "origin_server_ts": T0 - 100,
        "content": {"membership": "join", "displayname": "Alice Real-Name"},
    });
    let events = vec![
        to_serve(
            &member,
            RoomVersionId::V11,
            HistoryVisibility::Shared,
            false,
        ),
        to_serve(
            &message(ALICE, ROOM, T0 - 5),
            RoomVersionId::V11,
            HistoryVisibility::Shared,
            false,
        ),
        to_serve(
            &message(ALICE, other_room, T0 - 4),
            RoomVersionId::V11,
            HistoryVisibility::Shared,
            false,
        ),
        to_serve(
            &message(ALICE, ROOM, T0 - 3),
            RoomVersionId::V11,
            HistoryVisibility::Shared,
            true,
        ),
    ];
    let served = client(&t, Viewer::User(user(CAROL)), events);
    assert_eq!(
        verdicts(&served),
        vec![
            ServeVerdict::Pseudonymize,
            ServeVerdict::Pseudonymize,
            ServeVerdict::Pseudonymize,
            ServeVerdict::Serve
        ]
    );
    let sender = |i: usize| {
        served[i].event.as_ref().unwrap()["sender"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let in_room = sender(0);
    assert_eq!(sender(1), in_room);
    assert_ne!(sender(2), in_room);
    assert_eq!(sender(3), ALICE);
    for p in [&in_room, &sender(2)] {
        let id = UserId::parse(p.as_str()).expect("pseudonym is a user id");
        assert_eq!(id.server_name().as_str(), "hs.example");
        let hexpart = id.localpart().strip_prefix("_erased_").expect("prefix");
        assert_eq!(hexpart.len(), 16);
        assert!(hexpart.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!p.contains("alice"));
    }
    // The member event: redacted, and its state key is the pseudonym too.
    let m = served[0].event.as_ref().unwrap();
    assert_eq!(m["state_key"], in_room.as_str());
    assert_eq!(m["content"], json!({"membership": "join"}));
    // Stable across calls.
    let again = client(
        &t,
        Viewer::Anonymous,
        vec![to_serve(
            &message(ALICE, ROOM, T0 - 1),
            RoomVersionId::V10,
            HistoryVisibility::WorldReadable,
            false,
        )],
    );
    assert_eq!(again[0].event.as_ref().unwrap()["sender"], in_room.as_str());
    // Never over federation: the sender stays (signatures), the content is redacted.
    let fed = federation(
        &t,
        vec![to_serve(
            &message(ALICE, ROOM, T0 - 5),
            RoomVersionId::V11,
            HistoryVisibility::Shared,
            false,
        )],
    );
    assert_eq!(fed[0].verdict, ServeVerdict::Redact);
    assert_eq!(fed[0].event.as_ref().unwrap()["sender"], ALICE);
}

#[test]
fn federation_spec_strict_and_withhold() {
    let ev = message(ALICE, ROOM, T0 - 1);
    let batch = || {
        vec![
            to_serve(&ev, RoomVersionId::V10, HistoryVisibility::Shared, true),
            to_serve(&ev, RoomVersionId::V10, HistoryVisibility::Shared, false),
            to_serve(
                &message(BOB, ROOM, T0 - 2),
                RoomVersionId::V10,
                HistoryVisibility::Shared,
                false,
            ),
        ]
    };
    let redacted = ruma_redacted(&ev, &RoomVersionId::V10);
    let t = host_with(json!({}));
    // Before the erasure, everything is served whole.
    assert_eq!(
        verdicts(&federation(&t, batch())),
        vec![ServeVerdict::Serve; 3]
    );
    erase(&t, ALICE);

    // spec (default): a server with a user joined at the event keeps the whole event.
    let spec_mode = federation(&t, batch());
    assert_eq!(
        verdicts(&spec_mode),
        vec![
            ServeVerdict::Serve,
            ServeVerdict::Redact,
            ServeVerdict::Serve
        ]
    );
    assert_eq!(spec_mode[0].event.as_ref(), Some(&ev));
    assert_eq!(spec_mode[1].event.as_ref(), Some(&redacted));

    let cases = [
        (
            json!({"federation": "strict"}),
            [ServeVerdict::Redact, ServeVerdict::Redact],
        ),
        (
            json!({"federation_withhold_unjoined": true}),
            [ServeVerdict::Serve, ServeVerdict::Withhold],
        ),
        (
            json!({"federation": "strict", "federation_withhold_unjoined": true}),
            [ServeVerdict::Redact, ServeVerdict::Withhold],
        ),
    ];
    for (config, expected) in cases {
        t.host.replace("erasure", erasure(config.clone())).unwrap();
        let served = federation(&t, batch());
        assert_eq!(
            verdicts(&served),
            vec![expected[0], expected[1], ServeVerdict::Serve],
            "{config}"
        );
        for (s, v) in served.iter().zip(expected) {
            let body = match v {
                ServeVerdict::Serve => Some(&ev),
                ServeVerdict::Redact => Some(&redacted),
                _ => None,
            };
            assert_eq!(s.event.as_ref(), body, "{config}");
        }
    }
}

/// Events whose content redaction treats differently across room versions.
fn redaction_fixtures(version: &RoomVersionId) -> Vec<Value> {
    let base = |id: &str, ty: &str, state_key: Option<&str>, content: Value| {
        let mut ev = json!({
            "event_id": format!("${id}"),
            "room_id": ROOM,
            "sender": ALICE,
            "type": ty,
            "origin_server_ts": T0 - 1000,
            "content": content,
            "depth": 7,
            "hashes": {"sha256": "abc"},
            "signatures": {"hs.example": {"ed25519:a": "sig"}},
            "prev_events": ["$prev"],
            "auth_events": ["$auth"],
            "origin": "hs.example",
            "membership": "join",
            "prev_state": [],
            "org.example.custom": "top-level extra",
            "unsigned": {"age": 12, "transaction_id": "txn"},
        });
        if let Some(k) = state_key {
            ev["state_key"] = json!(k);
        }
        ev
    };
    vec![
        base(
            "member",
            "m.room.member",
            Some(ALICE),
            json!({
                "membership": "join", "displayname": "Alice", "avatar_url": "mxc://hs.example/a",
                "join_authorised_via_users_server": BOB,
                "third_party_invite": {"display_name": "alice@example.org",
                                       "signed": {"mxid": ALICE, "token": "t"}},
            }),
        ),
        base(
            "create",
            "m.room.create",
            Some(""),
            json!({"creator": ALICE, "room_version": version.as_str(), "m.federate": true,
                   "predecessor": {"room_id": "!old:hs.example", "event_id": "$old"}}),
        ),
        base(
            "joinrules",
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership",
                   "room_id": "!space:hs.example"}], "extra": 1}),
        ),
        base(
            "power",
            "m.room.power_levels",
            Some(""),
            json!({"ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 0,
                   "kick": 50, "redact": 50, "state_default": 50, "users": {ALICE: 100},
                   "users_default": 0, "notifications": {"room": 50}}),
        ),
        base(
            "hv",
            "m.room.history_visibility",
            Some(""),
            json!({"history_visibility": "shared", "extra": "x"}),
        ),
        base(
            "message",
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": "my secret", "m.mentions": {}}),
        ),
    ]
}

#[test]
fn redacted_output_equals_ruma_redaction_per_room_version() {
    let t = host_with(json!({}));
    erase(&t, ALICE);
    let versions = [
        RoomVersionId::V1,
        RoomVersionId::V6,
        RoomVersionId::V9,
        RoomVersionId::V10,
        RoomVersionId::V11,
    ];
    let mut outputs: Vec<(RoomVersionId, String, Value)> = Vec::new();
    for version in &versions {
        let fixtures = redaction_fixtures(version);
        let events: Vec<ServeEvent> = fixtures
            .iter()
            .map(|e| to_serve(e, version.clone(), HistoryVisibility::Shared, false))
            .collect();
        let by_client = client(&t, Viewer::User(user(CAROL)), events.clone());
        let by_server = federation(&t, events);
        for ((fixture, c), s) in fixtures.iter().zip(&by_client).zip(&by_server) {
            let ty = fixture["type"].as_str().unwrap().to_owned();
            let expected = ruma_redacted(fixture, version);
            assert_eq!(c.verdict, ServeVerdict::Redact, "{version} {ty}");
            assert_eq!(c.event.as_ref(), Some(&expected), "client {version} {ty}");
            assert_eq!(
                s.event.as_ref(),
                Some(&expected),
                "federation {version} {ty}"
            );
            assert_ne!(
                &expected, fixture,
                "{version} {ty}: redaction changed nothing"
            );
            outputs.push((version.clone(), ty, expected));
        }
    }
    // The fixtures do exercise version differences (so equality with ruma means something).
    let get = |v: RoomVersionId, ty: &str| {
        outputs
            .iter()
            .find(|(ov, oty, _)| *ov == v && oty == ty)
            .map(|(_, _, e)| e.clone())
            .unwrap()
    };
    assert_eq!(
        get(RoomVersionId::V10, "m.room.create")["content"],
        json!({"creator": ALICE})
    );
    assert!(
        get(RoomVersionId::V11, "m.room.create")["content"]
            .get("m.federate")
            .is_some()
    );
    assert!(
        get(RoomVersionId::V6, "m.room.join_rules")["content"]
            .get("allow")
            .is_none()
    );
    assert!(
        get(RoomVersionId::V9, "m.room.join_rules")["content"]
            .get("allow")
            .is_some()
    );
    assert!(
        get(RoomVersionId::V6, "m.room.member")["content"]
            .get("join_authorised_via_users_server")
            .is_none()
    );
    assert!(
        get(RoomVersionId::V9, "m.room.member")["content"]
            .get("join_authorised_via_users_server")
            .is_some()
    );
    assert!(
        get(RoomVersionId::V10, "m.room.power_levels")["content"]
            .get("invite")
            .is_none()
    );
    assert!(
        get(RoomVersionId::V11, "m.room.power_levels")["content"]
            .get("invite")
            .is_some()
    );
    assert!(
        get(RoomVersionId::V10, "m.room.message")
            .get("origin")
            .is_some()
    );
    assert!(
        get(RoomVersionId::V11, "m.room.message")
            .get("origin")
            .is_none()
    );
    assert_eq!(
        get(RoomVersionId::V1, "m.room.message")["content"],
        json!({})
    );
}

#[test]
fn reactivation_inside_the_grace_period_cancels_the_erasure() {
    let t = host_with(json!({}));
    erase(&t, ALICE);
    let ev = message(ALICE, ROOM, T0 - 1);
    let serve_later = || {
        client(
            &t,
            Viewer::User(user(CAROL)),
            vec![to_serve(
                &ev,
                RoomVersionId::V11,
                HistoryVisibility::Shared,
                false,
            )],
        )
    };
    assert_eq!(serve_later()[0].verdict, ServeVerdict::Redact);
    t.clock.advance(GRACE_MS - DAY_MS);
    reactivate(&t, ALICE);
    assert!(
        t.store
            .timer("erasure", &format!("erase/{ALICE}"))
            .unwrap()
            .is_none(),
        "timer cancelled"
    );
    assert_eq!(status(&t, ALICE), "none");
    let served = serve_later();
    assert_eq!(served[0].verdict, ServeVerdict::Serve);
    assert_eq!(served[0].event.as_ref(), Some(&ev));
    // The end of the grace period passes without anything happening.
    let actions = advance_and_run_timers(&t, 2 * DAY_MS);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(serve_later()[0].verdict, ServeVerdict::Serve);
}

#[test]
fn reactivation_after_the_grace_period_does_not_bring_events_back() {
    let t = host_with(json!({}));
    erase(&t, ALICE);
    assert!(advance_and_run_timers(&t, GRACE_MS - 1).is_empty());
    let actions = advance_and_run_timers(&t, 1);
    assert_eq!(actions, vec![Action::AnnounceErasure { user: user(ALICE) }]);
    assert_eq!(status(&t, ALICE), "final");
    t.clock.advance(DAY_MS);
    reactivate(&t, ALICE);
    assert_eq!(status(&t, ALICE), "final-reactivated");
    let old = message(ALICE, ROOM, T0 - 1);
    let new = message(ALICE, ROOM, T0 + GRACE_MS + 2 * DAY_MS);
    let served = client(
        &t,
        Viewer::User(user(CAROL)),
        vec![
            to_serve(&old, RoomVersionId::V11, HistoryVisibility::Shared, false),
            to_serve(&new, RoomVersionId::V11, HistoryVisibility::Shared, false),
        ],
    );
    assert_eq!(
        verdicts(&served),
        vec![ServeVerdict::Redact, ServeVerdict::Serve]
    );
    assert_eq!(
        served[0].event.as_ref(),
        Some(&ruma_redacted(&old, &RoomVersionId::V11))
    );
}

#[test]
fn the_last_member_erased_triggers_the_purge() {
    let t = host_with(json!({"grace_period_days": 1}));
    let shared = "!shared:hs.example";
    let with_carol = "!withcarol:hs.example";
    let left_early = "!leftearly:hs.example";
    for (r, u) in [
        (shared, ALICE),
        (shared, BOB),
        (with_carol, BOB),
        (with_carol, CAROL),
        (left_early, ALICE),
        (left_early, BOB),
    ] {
        t.homeserver.join(&room(r), &user(u));
    }
    send(&t, ALICE, shared);
    send(&t, BOB, with_carol);
    // Alice sent nothing to `left_early` and left it before erasing: Bob's erasure examines it.
    t.homeserver.leave(&room(left_early), &user(ALICE));
    erase(&t, ALICE);
    let first = advance_and_run_timers(&t, DAY_MS);
    assert_eq!(first[0], Action::AnnounceErasure { user: user(ALICE) });
    assert!(purged(&first).is_empty(), "Bob is still there: {first:?}");

    erase(&t, BOB);
    // Pending erasures do not count: nothing is purged before Bob's grace period ends.
    assert!(advance_and_run_timers(&t, DAY_MS / 2).is_empty());
    let second = advance_and_run_timers(&t, DAY_MS / 2);
    assert_eq!(second[0], Action::AnnounceErasure { user: user(BOB) });
    let mut rooms = purged(&second);
    rooms.sort();
    // Carol, not erased, keeps `with_carol`.
    assert_eq!(rooms, vec![left_early.to_owned(), shared.to_owned()]);
    let listed = admin(&t, "list-purged-rooms", json!({}));
    assert_eq!(listed["rooms"].as_array().unwrap().len(), 2);
    assert_eq!(listed["rooms"][0]["purged_at_ms"], T0 + 2 * DAY_MS);

    // Carol's erasure completes the set of `with_carol`, purged then.
    erase(&t, CAROL);
    let third = advance_and_run_timers(&t, DAY_MS);
    assert_eq!(purged(&third), vec![with_carol.to_owned()]);
}

#[test]
fn a_room_with_a_remote_member_is_never_purged() {
    let t = host_with(json!({"grace_period_ms": 1000}));
    t.homeserver.join(&room(ROOM), &user(ALICE));
    t.homeserver.join(&room(ROOM), &user("@zed:remote.example"));
    t.homeserver
        .leave(&room(ROOM), &user("@zed:remote.example"));
    erase(&t, ALICE);
    let actions = advance_and_run_timers(&t, 1000);
    assert_eq!(actions, vec![Action::AnnounceErasure { user: user(ALICE) }]);
}

#[test]
fn second_factor_required_and_missing_is_vetoed() {
    let t = host_with(json!({"require_second_factor": true}));
    let d = t.host.on_deactivate(&deactivation(ALICE, true));
    let Verdict::Deny(err) = &d.outcome else {
        panic!("expected a veto: {d:?}")
    };
    assert_eq!(err.errcode, "M_FORBIDDEN");
    assert!(err.message.contains("second factor"), "{}", err.message);
    assert_eq!(
        err.to_body()["org.mxpolicy.erasure.second_factor_required"],
        true
    );
    assert_eq!(d.decided_by.as_deref(), Some("erasure"));
    assert!(d.actions.is_empty());
    assert_eq!(status(&t, ALICE), "none");

    let mut confirmed = deactivation(ALICE, true);
    confirmed.second_factor = true;
    assert_eq!(t.host.on_deactivate(&confirmed).outcome, Verdict::Allow);
    assert_eq!(status(&t, ALICE), "pending");

    // Admins are exempt; plain deactivation never needs it.
    let mut by_admin = deactivation(BOB, true);
    by_admin.by_admin = true;
    assert_eq!(t.host.on_deactivate(&by_admin).outcome, Verdict::Allow);
    assert_eq!(
        t.host.on_deactivate(&deactivation(CAROL, false)).outcome,
        Verdict::Allow
    );
}

#[test]
fn state_survives_a_hot_swap() {
    let t = host_with(json!({}));
    erase(&t, ALICE);
    t.clock.advance(DAY_MS);
    let report = t
        .host
        .replace(
            "erasure",
            erasure(json!({"pseudonymize_clients": true, "pseudonym_secret": SECRET})),
        )
        .unwrap();
    assert_eq!(report.info.name, "erasure");
    let served = client(
        &t,
        Viewer::User(user(CAROL)),
        vec![to_serve(
            &message(ALICE, ROOM, T0 - 1),
            RoomVersionId::V11,
            HistoryVisibility::Shared,
            false,
        )],
    );
    assert_eq!(served[0].verdict, ServeVerdict::Pseudonymize);
    assert_eq!(status(&t, ALICE), "pending");
    // The timer scheduled by the old build fires in the new one.
    let actions = advance_and_run_timers(&t, GRACE_MS - DAY_MS);
    assert_eq!(actions, vec![Action::AnnounceErasure { user: user(ALICE) }]);
    assert_eq!(status(&t, ALICE), "final");
}

#[test]
fn list_erasures_shows_pending_and_completed_with_times() {
    let t = host_with(json!({"grace_period_days": 10}));
    erase(&t, ALICE);
    t.clock.advance(3 * DAY_MS);
    erase(&t, BOB);
    advance_and_run_timers(&t, 7 * DAY_MS);
    assert_eq!(
        admin(&t, "list-erasures", json!({})),
        json!({
            "pending": [{"user": BOB, "requested_at_ms": T0 + 3 * DAY_MS,
                         "final_at_ms": T0 + 13 * DAY_MS}],
            "completed": [{"user": ALICE, "requested_at_ms": T0,
                           "completed_at_ms": T0 + 10 * DAY_MS, "reactivated_at_ms": null}],
        })
    );
    let s = admin(&t, "erasure-status", json!({"user": BOB}));
    assert_eq!(s["status"], "pending");
    assert_eq!(s["pending"]["final_at_ms"], T0 + 13 * DAY_MS);
    assert!(
        t.host
            .admin("erasure", "erasure-status", &json!({}))
            .is_err()
    );
    assert!(
        t.host
            .admin("erasure", "forget-everything", &json!({}))
            .is_err()
    );
}

#[test]
fn a_batch_of_hundreds_of_events_gets_one_verdict_each() {
    let t = host_with(json!({}));
    erase(&t, ALICE);
    let senders = [ALICE, BOB, "@remote:other.example", CAROL];
    let events: Vec<ServeEvent> = (0..600u64)
        .map(|i| {
            let sender = senders[(i % 4) as usize];
            to_serve(
                &message(sender, ROOM, T0 - 1000 + i),
                RoomVersionId::V11,
                HistoryVisibility::Shared,
                i % 3 == 0,
            )
        })
        .collect();
    let served = client(&t, Viewer::User(user(CAROL)), events);
    assert_eq!(served.len(), 600);
    for (i, s) in served.iter().enumerate() {
        let expected = if i % 4 == 0 && i % 3 != 0 {
            ServeVerdict::Redact
        } else {
            ServeVerdict::Serve
        };
        assert_eq!(s.verdict, expected, "event {i}");
    }
}

#[test]
fn the_grace_timer_is_idempotent_when_delivered_again() {
    // Timers fire at least once: a second delivery of the final timer changes nothing.
    let t = host_with(json!({}));
    erase(&t, ALICE);
    let actions = advance_and_run_timers(&t, GRACE_MS);
    assert_eq!(actions, vec![Action::AnnounceErasure { user: user(ALICE) }]);
    let before = status(&t, ALICE);
    crate::support::redeliver_timer(&t, "erasure", &format!("erase/{ALICE}"), &json!(ALICE));
    let again = advance_and_run_timers(&t, 1);
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(status(&t, ALICE), before);
}
