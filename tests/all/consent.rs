//! The consent policy (policies/consent), built to wasm, through the real host: blocking
//! unconsented sends, the consent page, exemptions, server notices, version bumps, hot swaps
//! and the admin API. Expected links are computed here independently (HMAC-SHA256 with the
//! `hmac` crate, percent-encodings written out by hand), not taken from the plugin.

use hmac::{Hmac, Mac};
use mxpolicy_host::{
    Action, Error, HttpRequest, HttpResponse, PluginSpec, SendEvent, ServeEvent, UserKind, Verdict,
    Viewer,
    ruma::{RoomVersionId, owned_room_id},
};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{T0, TEST_DEADLINE, TestHost, plugin_path, spec, test_host};

const ALICE: &str = "@alice:hs.example";
const EVIL: &str = "@<script>alert(1)</script>:hs.example";
const SECRET: &str = "test form secret";
const BLOCK: &str = "You must accept the privacy policy first: %(consent_uri)s";

fn config(version: &str) -> Value {
    json!({
        "version": version,
        "policy_name": "Example Privacy Policy",
        "policy_text_html": "<p>Copies of your messages go to everyone in the room.</p>",
        "public_baseurl": "https://matrix.hs.example/",
        "form_secret": SECRET,
        "block_events_error": BLOCK,
        "server_notice_content": {
            "msgtype": "m.text",
            "body": "Please review and accept our privacy policy: %(consent_uri)s",
        },
        "exempt_users": ["@admin:hs.example"],
    })
}

fn consent(version: &str) -> PluginSpec {
    spec("consent").config(config(version))
}

fn host_with(version: &str) -> TestHost {
    let t = test_host();
    t.host.load(consent(version)).expect("consent loads");
    t
}

/// Hex HMAC-SHA256 of `message` keyed by the test secret, computed without the plugin.
fn hmac_hex(message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The percent-encodings (RFC 3986: all but `A-Z a-z 0-9 - _ . ~` is `%XX`) of the user ids
/// and versions these tests use, written out by hand rather than computed, so the plugin's
/// links are checked against known strings and not against a copy of its own encoder.
fn enc(s: &str) -> &'static str {
    match s {
        ALICE => "%40alice%3Ahs.example",
        "@bob:hs.example" => "%40bob%3Ahs.example",
        "@ghost:hs.example" => "%40ghost%3Ahs.example",
        "@guest:hs.example" => "%40guest%3Ahs.example",
        EVIL => "%40%3Cscript%3Ealert%281%29%3C%2Fscript%3E%3Ahs.example",
        "1.0" => "1.0",
        "2.0" => "2.0",
        "7" => "7",
        other => panic!("no known encoding of `{other}`: add it to `enc`, written out by hand"),
    }
}

fn query_for(user: &str, version: &str) -> String {
    format!("u={}&h={}&v={}", enc(user), hmac_hex(user), enc(version))
}

fn expected_uri(user: &str, version: &str) -> String {
    format!(
        "https://matrix.hs.example/_mxpolicy/consent/?{}",
        query_for(user, version)
    )
}

fn event(sender: &str, kind: UserKind, event_type: &str, content: Value) -> SendEvent {
    SendEvent {
        sender: sender.try_into().expect("user id"),
        sender_kind: kind,
        room_id: owned_room_id!("!room:hs.example"),
        room_version: RoomVersionId::V11,
        event_type: event_type.into(),
        state_key: None,
        content,
        origin_server_ts: T0,
        is_server_notices_room: false,
    }
}

fn message(sender: &str) -> SendEvent {
    event(
        sender,
        UserKind::Regular,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hello"}),
    )
}

fn membership(sender: &str, target: &str, membership: &str) -> SendEvent {
    let mut e = event(
        sender,
        UserKind::Regular,
        "m.room.member",
        json!({"membership": membership}),
    );
    e.state_key = Some(target.into());
    e
}

fn notice_for(user: &str, version: &str) -> Action {
    Action::SendServerNotice {
        user: user.try_into().expect("user id"),
        content: json!({
            "msgtype": "m.server_notice",
            "body": format!(
                "Please review and accept our privacy policy: {}",
                expected_uri(user, version)
            ),
        })
        .as_object()
        .expect("object")
        .clone(),
    }
}

fn http(t: &TestHost, method: &str, query: &str, body: &str) -> HttpResponse {
    let decision = t
        .host
        .on_http(
            "consent",
            &HttpRequest {
                method: method.into(),
                path: "/".into(),
                query: query.into(),
                headers: vec![(
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                )],
                body: body.as_bytes().to_vec(),
            },
        )
        .expect("consent serves http");
    assert!(decision.failures.is_empty(), "{:?}", decision.failures);
    decision.outcome
}

fn text(r: &HttpResponse) -> String {
    String::from_utf8(r.body.clone()).expect("utf-8 page")
}

/// Open the link as the user would and press the accept button (the form's fields, as the
/// page gives them, posted back).
fn accept(t: &TestHost, user: &str, version: &str) -> HttpResponse {
    let page = http(t, "GET", &query_for(user, version), "");
    assert_eq!(page.status, 200, "{}", text(&page));
    let html = text(&page);
    for (name, value) in [
        ("u", user.to_owned()),
        ("h", hmac_hex(user)),
        ("v", version.to_owned()),
    ] {
        let input = format!("name=\"{name}\" value=\"{value}\"");
        assert!(html.contains(&input), "form lacks {input}: {html}");
    }
    http(t, "POST", "", &query_for(user, version))
}

fn deny_body(t: &TestHost, e: &SendEvent) -> Value {
    match t.host.on_send(e).outcome {
        Verdict::Deny(err) => err.to_body(),
        Verdict::Allow => panic!("expected a deny for {}", e.sender),
    }
}

fn serve_to(t: &TestHost, user: &str) -> Vec<Action> {
    let event = ServeEvent {
        event: json!({
            "event_id": "$e1",
            "room_id": "!room:hs.example",
            "sender": "@bob:hs.example",
            "type": "m.room.message",
            "origin_server_ts": T0,
            "content": {"msgtype": "m.text", "body": "hi"},
        }),
        room_version: RoomVersionId::V11,
        history_visibility: Default::default(),
        viewer_joined: true,
    };
    let d = t
        .host
        .on_client_serve(
            &Viewer::User(user.try_into().expect("user id")),
            vec![event],
        )
        .expect("serve");
    assert!(d.failures.is_empty(), "{:?}", d.failures);
    assert!(d.outcome[0].event.is_some(), "consent never hides events");
    d.actions
}

#[test]
fn unconsented_send_is_denied_with_exact_errcode_message_and_uri() {
    let t = host_with("1.0");
    let d = t.host.on_send(&message(ALICE));
    assert_eq!(d.decided_by.as_deref(), Some("consent"));
    assert!(d.failures.is_empty());
    let uri = expected_uri(ALICE, "1.0");
    assert_eq!(
        uri,
        format!(
            "https://matrix.hs.example/_mxpolicy/consent/?u=%40alice%3Ahs.example&h={}&v=1.0",
            hmac_hex(ALICE)
        )
    );
    let Verdict::Deny(err) = d.outcome else {
        panic!("expected a deny")
    };
    assert_eq!(
        err.to_body(),
        json!({
            "errcode": "M_CONSENT_NOT_GIVEN",
            "error": format!("You must accept the privacy policy first: {uri}"),
            "consent_uri": uri,
        })
    );
    assert_eq!(d.actions, vec![notice_for(ALICE, "1.0")]);
}

#[test]
fn consent_link_encodes_user_and_version_as_rfc_3986() {
    let version = "2026 rev~1*";
    let t = host_with(version);
    let user = "@x.y_z-1=2/3+4:hs.example";
    let body = deny_body(&t, &message(user));
    let uri = format!(
        "https://matrix.hs.example/_mxpolicy/consent/?u=%40x.y_z-1%3D2%2F3%2B4%3Ahs.example&h={}\
         &v=2026%20rev~1%2A",
        hmac_hex(user)
    );
    assert_eq!(body["consent_uri"], uri.as_str());
    // The plugin decodes its own link back to the user and version.
    let (_, query) = uri.split_once('?').expect("query");
    let page = http(&t, "GET", query, "");
    assert_eq!(page.status, 200, "{}", text(&page));
    let html = text(&page);
    assert!(
        html.contains(&format!("name=\"u\" value=\"{user}\"")),
        "{html}"
    );
    assert!(
        html.contains(&format!("name=\"v\" value=\"{version}\"")),
        "{html}"
    );
}

#[test]
fn default_block_message_is_synapses() {
    let t = test_host();
    let mut c = config("7");
    c.as_object_mut()
        .expect("object")
        .remove("block_events_error");
    t.host.load(spec("consent").config(c)).expect("loads");
    assert_eq!(
        deny_body(&t, &message(ALICE))["error"],
        format!(
            "To continue using this homeserver you must review and agree to the terms and \
             conditions at {}",
            expected_uri(ALICE, "7")
        )
    );
}

#[test]
fn consent_given_on_the_page_then_allowed_then_bump_denies_again() {
    let t = host_with("1.0");
    assert!(!t.host.on_send(&message(ALICE)).outcome.is_allow());

    let done = accept(&t, ALICE, "1.0");
    assert_eq!(done.status, 200, "{}", text(&done));
    assert!(text(&done).contains("2026-01-01 00:00 UTC"));
    assert!(t.host.on_send(&message(ALICE)).outcome.is_allow());
    // Another user still needs to consent.
    assert!(
        !t.host
            .on_send(&message("@bob:hs.example"))
            .outcome
            .is_allow()
    );

    // A new policy version, swapped in without a restart: everyone must accept again.
    t.host.replace("consent", consent("2.0")).expect("swap");
    let body = deny_body(&t, &message(ALICE));
    assert_eq!(body["errcode"], "M_CONSENT_NOT_GIVEN");
    assert_eq!(body["consent_uri"], expected_uri(ALICE, "2.0"));
    // The v1 link still opens the page, now with the v2 form.
    let page = text(&http(&t, "GET", &query_for(ALICE, "1.0"), ""));
    assert!(page.contains("name=\"v\" value=\"2.0\""), "{page}");
    assert!(page.contains("policy has changed"));

    t.clock.set(T0 + 86_400_000);
    assert_eq!(accept(&t, ALICE, "2.0").status, 200);
    assert!(t.host.on_send(&message(ALICE)).outcome.is_allow());
    let status = t
        .host
        .admin("consent", "consent-status", &json!({"user": ALICE}))
        .expect("status");
    assert_eq!(status["version"], "2.0");
    assert_eq!(status["accepted_at_ms"], T0 + 86_400_000);
    assert_eq!(status["source"], "consent-page");
    assert_eq!(status["history"][0]["version"], "1.0");
    assert_eq!(status["history"][0]["accepted_at_ms"], T0);
}

#[test]
fn each_exemption() {
    let t = host_with("1.0");
    let allowed = |e: &SendEvent| t.host.on_send(e).outcome.is_allow();

    // Negative control: an ordinary user's message is denied.
    assert!(!allowed(&message("@carol:hs.example")));
    for kind in [
        UserKind::Appservice,
        UserKind::ServerNotices,
        UserKind::Bot,
        UserKind::Support,
    ] {
        let e = event(
            "@x:hs.example",
            kind,
            "m.room.message",
            json!({"body": "hi"}),
        );
        assert!(allowed(&e), "{kind:?} is exempt");
    }
    assert!(
        !allowed(&event(
            "@guest:hs.example",
            UserKind::Guest,
            "m.room.message",
            json!({"body": "hi"})
        )),
        "guests are not exempt unless configured"
    );
    assert!(allowed(&message("@admin:hs.example")), "exempt_users");

    // Own leave is exempt; kicking someone else is not.
    assert!(allowed(&membership(ALICE, ALICE, "leave")));
    assert!(!allowed(&membership(ALICE, "@bob:hs.example", "leave")));
    // Joining the server-notices room is exempt; joining another room is not.
    assert!(!allowed(&membership(ALICE, ALICE, "join")));
    let mut notices_join = membership(ALICE, ALICE, "join");
    notices_join.is_server_notices_room = true;
    assert!(allowed(&notices_join));
    let mut notices_message = message(ALICE);
    notices_message.is_server_notices_room = true;
    assert!(!allowed(&notices_message), "only the join is exempt");

    // Bots and support users are exempt only while configured; guests when configured.
    let mut strict = config("1.0");
    strict["exempt_kinds"] = json!(["guest"]);
    t.host
        .replace("consent", spec("consent").config(strict))
        .expect("swap");
    let bot = event(
        "@bot:hs.example",
        UserKind::Bot,
        "m.room.message",
        json!({"body": "hi"}),
    );
    assert_eq!(deny_body(&t, &bot)["errcode"], "M_CONSENT_NOT_GIVEN");
    let guest = event(
        "@guest:hs.example",
        UserKind::Guest,
        "m.room.message",
        json!({"body": "hi"}),
    );
    assert!(t.host.on_send(&guest).outcome.is_allow());
    let appservice = event(
        "@irc_x:hs.example",
        UserKind::Appservice,
        "m.room.message",
        json!({"body": "hi"}),
    );
    assert!(t.host.on_send(&appservice).outcome.is_allow());
}

#[test]
fn forged_or_missing_h_is_refused_and_records_nothing() {
    let t = host_with("1.0");
    let real = hmac_hex(ALICE);
    let mut forged = real.clone().into_bytes();
    forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).expect("ascii");
    let u = enc(ALICE);
    let wrong_key = {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"another secret").expect("key");
        mac.update(ALICE.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let attempts = [
        ("GET", format!("u={u}&v=1.0"), String::new()),
        ("GET", format!("u={u}&h={forged}&v=1.0"), String::new()),
        ("GET", format!("u={u}&h={wrong_key}&v=1.0"), String::new()),
        ("GET", format!("u={u}&h=&v=1.0"), String::new()),
        ("GET", format!("h={real}&v=1.0"), String::new()),
        // A valid h for Alice does not open Bob's page (nor a user that does not exist).
        (
            "GET",
            format!("u={}&h={real}", enc("@bob:hs.example")),
            String::new(),
        ),
        (
            "GET",
            format!("u={}&h={real}", enc("@ghost:hs.example")),
            String::new(),
        ),
        ("POST", String::new(), format!("u={u}&h={forged}&v=1.0")),
        ("POST", String::new(), format!("u={u}&v=1.0")),
        (
            "POST",
            String::new(),
            format!("u={}&h={real}&v=1.0", enc("@bob:hs.example")),
        ),
    ];
    let first = http(&t, "GET", &attempts[0].1, &attempts[0].2);
    assert_eq!(first.status, 403);
    assert!(!text(&first).contains("alice"));
    for (method, query, body) in &attempts {
        let r = http(&t, method, query, body);
        assert_eq!(r.status, 403, "{method} {query} {body}");
        assert_eq!(r.body, first.body, "every refusal looks the same");
    }
    assert!(
        t.host
            .list_state("consent", "consent/")
            .expect("state")
            .is_empty()
    );
    assert!(!t.host.on_send(&message(ALICE)).outcome.is_allow());
    assert!(
        !t.host
            .on_send(&message("@bob:hs.example"))
            .outcome
            .is_allow()
    );
}

#[test]
fn notice_is_sent_once_per_version() {
    let t = host_with("1.0");
    let first = t.host.on_send(&message(ALICE));
    assert_eq!(first.actions, vec![notice_for(ALICE, "1.0")]);
    let second = t.host.on_send(&message(ALICE));
    assert!(!second.outcome.is_allow());
    assert!(second.actions.is_empty(), "{:?}", second.actions);
    assert!(serve_to(&t, ALICE).is_empty(), "nor on sync");

    // Sync is the other trigger: a user who never sends gets the notice once.
    let bob = "@bob:hs.example";
    assert_eq!(serve_to(&t, bob), vec![notice_for(bob, "1.0")]);
    assert!(serve_to(&t, bob).is_empty());
    assert!(t.host.on_send(&message(bob)).actions.is_empty());
    // Never to remote users, the anonymous public, consented or exempt users.
    assert!(serve_to(&t, "@remote:other.example").is_empty());
    assert!(serve_to(&t, "@admin:hs.example").is_empty());

    // A new version: one new notice each, then none.
    t.host.replace("consent", consent("2.0")).expect("swap");
    assert_eq!(
        t.host.on_send(&message(ALICE)).actions,
        vec![notice_for(ALICE, "2.0")]
    );
    assert!(t.host.on_send(&message(ALICE)).actions.is_empty());
    assert_eq!(serve_to(&t, bob), vec![notice_for(bob, "2.0")]);
    assert!(serve_to(&t, bob).is_empty());
}

#[test]
fn guests_are_notified_only_when_configured() {
    let t = host_with("1.0");
    let guest = event(
        "@guest:hs.example",
        UserKind::Guest,
        "m.room.message",
        json!({"body": "hi"}),
    );
    let d = t.host.on_send(&guest);
    assert!(!d.outcome.is_allow());
    assert!(d.actions.is_empty());
    // The plugin remembered the kind, so the guest's sync sends nothing either.
    assert!(serve_to(&t, "@guest:hs.example").is_empty());

    let mut c = config("1.0");
    c["send_server_notice_to_guests"] = json!(true);
    t.host
        .replace("consent", spec("consent").config(c))
        .expect("swap");
    assert_eq!(
        t.host.on_send(&guest).actions,
        vec![notice_for("@guest:hs.example", "1.0")]
    );
}

/// The same component with a custom section appended: a different build (another digest)
/// of the same plugin, which the host must compile and swap in like any new release.
fn new_build() -> PluginSpec {
    let mut bytes = std::fs::read(plugin_path("consent")).expect("built plugin");
    let name = b"mxpolicy-test-build";
    let payload = b"build 2";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload);
    bytes.push(0); // custom section id
    bytes.push(u8::try_from(section.len()).expect("short section")); // LEB128, < 128
    bytes.extend_from_slice(&section);
    PluginSpec::bytes("consent-build-2", bytes).deadline(TEST_DEADLINE)
}

#[test]
fn state_survives_a_hot_swap_to_a_new_build() {
    let t = host_with("1.0");
    let old = t.host.plugins()[0].sha256.clone();
    assert_eq!(accept(&t, ALICE, "1.0").status, 200);
    let bob = "@bob:hs.example";
    assert_eq!(t.host.on_send(&message(bob)).actions.len(), 1);

    let report = t
        .host
        .replace("consent", new_build().config(config("1.0")))
        .expect("swap to the new build");
    assert_ne!(report.sha256, old, "a different build");
    assert_eq!(t.host.plugins()[0].sha256, report.sha256);

    assert!(t.host.on_send(&message(ALICE)).outcome.is_allow());
    let d = t.host.on_send(&message(bob));
    assert!(!d.outcome.is_allow());
    assert!(d.actions.is_empty(), "no second notice after the swap");
    assert!(serve_to(&t, bob).is_empty());
    let status = t
        .host
        .admin("consent", "consent-status", &json!({"user": ALICE}))
        .expect("status");
    assert_eq!(status["accepted_at_ms"], T0);
    assert_eq!(status["current"], true);
}

#[test]
fn record_consent_and_consent_status_through_admin() {
    let t = host_with("1.0");
    let before = t
        .host
        .admin("consent", "consent-status", &json!({"user": ALICE}))
        .expect("status");
    assert_eq!(
        before,
        json!({
            "user": ALICE,
            "current_version": "1.0",
            "version": null,
            "accepted_at_ms": null,
            "source": null,
            "current": false,
            "notice_sent": false,
            "history": [],
        })
    );

    // Consent given at registration (m.login.terms), recorded by the homeserver.
    t.clock.set(T0 + 5);
    let recorded = t
        .host
        .admin(
            "consent",
            "record-consent",
            &json!({"user": ALICE, "version": "1.0"}),
        )
        .expect("recorded");
    assert_eq!(
        recorded,
        json!({"user": ALICE, "version": "1.0", "accepted_at_ms": T0 + 5, "current": true})
    );
    assert!(t.host.on_send(&message(ALICE)).outcome.is_allow());
    let status = t
        .host
        .admin(
            "consent",
            "consent-status",
            &json!({"user": ALICE, "version": "1.0"}),
        )
        .expect("status");
    assert_eq!(status["version"], "1.0");
    assert_eq!(status["accepted_at_ms"], T0 + 5);
    assert_eq!(status["source"], "registration");
    assert_eq!(status["current"], true);
    assert_eq!(
        status["asked"],
        json!({"version": "1.0", "accepted": true, "accepted_at_ms": T0 + 5, "in_force": true})
    );
    let never = t
        .host
        .admin(
            "consent",
            "consent-status",
            &json!({"user": ALICE, "version": "0.1"}),
        )
        .expect("status");
    assert_eq!(never["asked"]["accepted"], false);

    // An outdated version is recorded as given, but does not let the user send.
    t.host
        .admin(
            "consent",
            "record-consent",
            &json!({"user": "@bob:hs.example", "version": "0.9"}),
        )
        .expect("recorded");
    assert!(
        !t.host
            .on_send(&message("@bob:hs.example"))
            .outcome
            .is_allow()
    );

    for (command, args) in [
        (
            "record-consent",
            json!({"user": "@r:other.example", "version": "1.0"}),
        ),
        ("record-consent", json!({"user": ALICE})),
        ("record-consent", json!({"user": "alice", "version": "1.0"})),
        ("consent-status", json!({})),
        ("no-such-command", json!({})),
    ] {
        let err = t
            .host
            .admin("consent", command, &args)
            .expect_err("refused");
        assert!(
            matches!(err, Error::AdminRefused { .. }),
            "{command}: {err}"
        );
    }

    let terms = t
        .host
        .admin("consent", "terms-params", &json!({}))
        .expect("terms");
    assert_eq!(
        terms,
        json!({"policies": {"privacy_policy": {"version": "1.0", "en": {
            "name": "Example Privacy Policy",
            "url": "https://matrix.hs.example/_mxpolicy/consent/?v=1.0",
        }}}})
    );
    // The terms URL shows the policy without a form.
    let public = http(&t, "GET", "v=1.0", "");
    assert_eq!(public.status, 200);
    assert!(text(&public).contains("Copies of your messages"));
    assert!(!text(&public).contains("<form"));
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let t = test_host();
    let cases = [
        ("form_secret", json!(null)),
        ("form_secret", json!("")),
        ("version", json!("")),
        ("version", json!(null)),
        ("public_baseurl", json!("matrix.hs.example")),
        ("public_baseurl", json!("https://matrix.hs.example/?x=1")),
        ("server_notice_content", json!({"body": "no link here"})),
    ];
    for (key, value) in cases {
        let mut c = config("1.0");
        if value.is_null() {
            c.as_object_mut().expect("object").remove(key);
        } else {
            c[key] = value.clone();
        }
        let err = t.host.load(spec("consent").config(c)).expect_err("refused");
        let Error::Config {
            plugin, key: named, ..
        } = &err
        else {
            panic!("{key}={value}: expected a config error, got {err}")
        };
        assert_eq!(plugin, "consent");
        assert!(
            named.starts_with(key),
            "{key}={value}: named `{named}` ({err})"
        );
    }
    let err = t
        .host
        .load(spec("consent").config(json!({"versoin": "1"})))
        .expect_err("refused");
    assert!(err.to_string().contains("versoin"), "{err}");
    assert!(t.host.plugins().is_empty());

    // A bad config in a swap leaves the running policy in place.
    t.host.load(consent("1.0")).expect("loads");
    let mut bad = config("2.0");
    bad["form_secret"] = json!("");
    assert!(
        t.host
            .replace("consent", spec("consent").config(bad))
            .is_err()
    );
    assert_eq!(
        deny_body(&t, &message(ALICE))["consent_uri"],
        expected_uri(ALICE, "1.0")
    );
}

#[test]
fn pages_escape_user_ids() {
    let t = host_with("1.0");
    let page = text(&http(&t, "GET", &query_for(EVIL, "1.0"), ""));
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let done = http(&t, "POST", "", &query_for(EVIL, "1.0"));
    assert_eq!(done.status, 200);
    assert!(!text(&done).contains("<script>"));
    assert!(text(&done).contains("&lt;script&gt;"));
}
