//! Native unit tests of the policy logic, with the SDK's in-memory host.

use mxpolicy_guest::{
    MatrixError, ServeEvent, Verdict,
    http::{form_value, percent_encode},
    state, testing,
};
use serde_json::json;

use super::*;

const ALICE: &str = "@alice:hs.example";

fn config(extra: Value) -> Config {
    let mut c = json!({
        "version": "1.0",
        "policy_name": "Privacy <Policy>",
        "policy_text_html": "<p>We keep your messages.</p>",
        "public_baseurl": "https://hs.example",
        "form_secret": "s3cret",
        "server_notice_content": {"body": "Please accept: %(consent_uri)s"},
    });
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    serde_json::from_value(c).expect("config")
}

fn policy(extra: Value) -> Consent {
    testing::reset("hs.example");
    Consent::new(config(extra)).expect("valid config")
}

/// Same config, new instance, state kept (what the host does on every call and on a swap).
fn reload(extra: Value) -> Consent {
    Consent::new(config(extra)).expect("valid config")
}

fn msg(sender: &str) -> SendContext {
    SendContext::new(
        sender,
        "!room:hs.example",
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hi"}),
    )
}

fn member(sender: &str, state_key: &str, membership: &str) -> SendContext {
    let mut ctx = SendContext::new(
        sender,
        "!room:hs.example",
        "m.room.member",
        json!({"membership": membership}),
    );
    ctx.state_key = Some(state_key.into());
    ctx
}

fn error(out: &Outcome) -> &MatrixError {
    match &out.verdict {
        Verdict::Deny(e) => e,
        Verdict::Allow => panic!("expected a deny, got {out:?}"),
    }
}

fn get(query: &str) -> HttpResponse {
    http("GET", query, "")
}

fn http(method: &str, query: &str, body: &str) -> HttpResponse {
    Consent::new(config(json!({})))
        .expect("config")
        .on_http(&HttpRequest {
            now_ms: 5_000,
            method: method.into(),
            path: "/".into(),
            query: query.into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        })
}

fn text(r: &HttpResponse) -> String {
    String::from_utf8(r.body.clone()).expect("utf-8")
}

/// The query part of the user's consent link.
fn link_query(p: &Consent, user: &str) -> String {
    let uri = p.consent_uri(user);
    uri.split_once('?').expect("query").1.to_owned()
}

fn serve_to(user: &str) -> ServeContext {
    ServeContext {
        now_ms: 0,
        viewer: Viewer::User(user.into()),
        events: vec![ServeEvent {
            event_id: "$e".into(),
            room_id: "!room:hs.example".into(),
            sender: "@bob:hs.example".into(),
            event_type: "m.room.message".into(),
            state_key: None,
            origin_server_ts: 0,
            room_version: "11".into(),
            history_visibility: mxpolicy_guest::HistoryVisibility::Shared,
            viewer_joined: true,
        }],
    }
}

#[test]
fn unconsented_send_is_denied_with_link_and_notice() {
    let p = policy(json!({}));
    let out = p.on_send(&msg(ALICE));
    let e = error(&out);
    assert_eq!(e.errcode, "M_CONSENT_NOT_GIVEN");
    let uri = p.consent_uri(ALICE);
    assert!(
        uri.starts_with("https://hs.example/_mxpolicy/consent/?u=%40alice%3Ahs.example&h="),
        "{uri}"
    );
    assert!(uri.ends_with("&v=1.0"));
    assert_eq!(e.fields["consent_uri"], uri.as_str());
    assert_eq!(
        e.message,
        format!(
            "To continue using this homeserver you must review and agree to the terms and \
             conditions at {uri}"
        )
    );
    let h = form_value(&link_query(&p, ALICE), "h").expect("h");
    assert_eq!(h.len(), 64);
    assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        out.actions,
        vec![Action::SendServerNotice {
            user: ALICE.into(),
            body: format!("Please accept: {uri}"),
            content: Default::default(),
        }]
    );
}

#[test]
fn links_are_percent_encoded_as_rfc_3986() {
    let p = policy(json!({"version": "2026 rev~1*"}));
    let user = "@x.y_z-1=2/3+4:hs.example";
    // Written out by hand: only `A-Z a-z 0-9 - _ . ~` stay as they are.
    assert_eq!(
        p.consent_uri(user),
        format!(
            "https://hs.example/_mxpolicy/consent/?u=%40x.y_z-1%3D2%2F3%2B4%3Ahs.example&h={}\
             &v=2026%20rev~1%2A",
            p.sign(user)
        )
    );
    let terms = admin(&p, "terms-params", json!({})).expect("terms");
    assert_eq!(
        terms["policies"]["privacy_policy"]["en"]["url"],
        "https://hs.example/_mxpolicy/consent/?v=2026%20rev~1%2A"
    );
    let uri = admin(&p, "consent-uri", json!({"user": "@a:hs.example"})).expect("uri");
    assert_eq!(uri["consent_uri"], p.consent_uri("@a:hs.example"));
    assert!(admin(&p, "consent-uri", json!({"user": "nobody"})).is_err());
}

#[test]
fn hmac_is_keyed_by_the_secret_and_the_user() {
    let p = policy(json!({}));
    let other_secret = reload(json!({"form_secret": "other"}));
    assert_ne!(p.sign(ALICE), other_secret.sign(ALICE));
    assert_ne!(p.sign(ALICE), p.sign("@bob:hs.example"));
    assert_eq!(p.sign(ALICE), reload(json!({})).sign(ALICE));
}

#[test]
fn notice_is_sent_once_per_version() {
    let p = policy(json!({}));
    assert_eq!(p.on_send(&msg(ALICE)).actions.len(), 1);
    assert!(p.on_send(&msg(ALICE)).actions.is_empty());
    assert!(reload(json!({})).on_send(&msg(ALICE)).actions.is_empty());
    // Nor on sync for the same version.
    assert!(p.on_client_serve(&serve_to(ALICE)).actions.is_empty());
    // A new version: one more notice, then none.
    let v2 = reload(json!({"version": "2.0"}));
    let out = v2.on_send(&msg(ALICE));
    assert_eq!(out.actions.len(), 1);
    let Action::SendServerNotice { body, .. } = &out.actions[0] else {
        panic!()
    };
    assert!(body.ends_with("&v=2.0"), "{body}");
    assert!(v2.on_send(&msg(ALICE)).actions.is_empty());
}

#[test]
fn notice_on_sync_for_local_unconsented_users_only() {
    let p = policy(json!({}));
    let out = p.on_client_serve(&serve_to(ALICE));
    assert_eq!(out.verdicts, vec![mxpolicy_guest::ServeVerdict::Serve]);
    assert_eq!(out.actions.len(), 1);
    assert!(p.on_client_serve(&serve_to(ALICE)).actions.is_empty());
    // Remote users, consented users and the anonymous public get nothing.
    assert!(
        p.on_client_serve(&serve_to("@r:other.example"))
            .actions
            .is_empty()
    );
    records::record_consent("@c:hs.example", "1.0", 1, Source::ConsentPage).unwrap();
    assert!(
        p.on_client_serve(&serve_to("@c:hs.example"))
            .actions
            .is_empty()
    );
    let mut anon = serve_to(ALICE);
    anon.viewer = Viewer::Anonymous;
    assert!(p.on_client_serve(&anon).actions.is_empty());
    // The denied send after a notice on sync carries no second notice.
    assert!(p.on_send(&msg(ALICE)).actions.is_empty());
}

#[test]
fn no_notice_without_notice_content() {
    testing::reset("hs.example");
    let mut c = config(json!({}));
    c.server_notice_content = None;
    let p = Consent::new(c).expect("config");
    let out = p.on_send(&msg(ALICE));
    assert_eq!(out.errcode(), Some(ERRCODE));
    assert!(out.actions.is_empty());
    assert!(p.on_client_serve(&serve_to(ALICE)).actions.is_empty());
}

#[test]
fn guests_are_blocked_but_notified_only_if_configured() {
    let p = policy(json!({}));
    let mut guest = msg("@g:hs.example");
    guest.sender_kind = UserKind::Guest;
    let out = p.on_send(&guest);
    assert_eq!(out.errcode(), Some(ERRCODE));
    assert!(out.actions.is_empty());
    // The kind is remembered, so syncing does not notify the guest either.
    assert!(
        p.on_client_serve(&serve_to("@g:hs.example"))
            .actions
            .is_empty()
    );

    let p = reload(json!({"send_server_notice_to_guests": true}));
    assert_eq!(p.on_send(&guest).actions.len(), 1);

    let p = reload(json!({"exempt_kinds": ["guest"]}));
    assert!(p.on_send(&guest).is_allow());
}

#[test]
fn exemptions() {
    let p = policy(json!({"exempt_users": ["@admin:hs.example"]}));
    for kind in [
        UserKind::Appservice,
        UserKind::ServerNotices,
        UserKind::Bot,
        UserKind::Support,
    ] {
        let mut ctx = msg("@x:hs.example");
        ctx.sender_kind = kind;
        assert!(p.on_send(&ctx).is_allow(), "{kind:?}");
    }
    assert!(p.on_send(&msg("@admin:hs.example")).is_allow());
    // Own leave: allowed; kicking someone else or joining an ordinary room: not.
    assert!(p.on_send(&member(ALICE, ALICE, "leave")).is_allow());
    assert!(
        !p.on_send(&member(ALICE, "@bob:hs.example", "leave"))
            .is_allow()
    );
    assert!(!p.on_send(&member(ALICE, ALICE, "join")).is_allow());
    let mut notices_join = member(ALICE, ALICE, "join");
    notices_join.is_server_notices_room = true;
    assert!(p.on_send(&notices_join).is_allow());
    // Only a join is exempt in the notices room, not a message.
    let mut notices_msg = msg(ALICE);
    notices_msg.is_server_notices_room = true;
    assert!(!p.on_send(&notices_msg).is_allow());

    // Bot and support are exempt only while configured.
    let strict = reload(json!({"exempt_kinds": []}));
    let mut bot = msg("@bot:hs.example");
    bot.sender_kind = UserKind::Bot;
    assert_eq!(strict.on_send(&bot).errcode(), Some(ERRCODE));
    let mut appservice = msg("@irc_x:hs.example");
    appservice.sender_kind = UserKind::Appservice;
    assert!(strict.on_send(&appservice).is_allow());
}

#[test]
fn consent_page_flow() {
    let p = policy(json!({}));
    let q = link_query(&p, ALICE);
    let page = get(&q);
    assert_eq!(page.status, 200);
    let body = text(&page);
    assert!(body.contains("<p>We keep your messages.</p>"));
    assert!(body.contains("<h1>Privacy &lt;Policy&gt;</h1>"), "{body}");
    assert!(body.contains("method=\"post\""));
    assert!(body.contains("action=\"https://hs.example/_mxpolicy/consent/\""));
    assert!(body.contains("name=\"v\" value=\"1.0\""));

    // Post the form's fields back.
    let h = form_value(&q, "h").expect("h");
    let form = format!("u={}&h={h}&v=1.0", percent_encode(ALICE));
    let done = http("POST", "", &form);
    assert_eq!(done.status, 200, "{}", text(&done));
    assert!(text(&done).contains("1970-01-01 00:00 UTC"));
    assert!(p.on_send(&msg(ALICE)).is_allow());
    let record = records::consent(ALICE).unwrap();
    assert_eq!(record.latest().map(|a| a.accepted_at_ms), Some(5_000));

    // The page now says so, without a form.
    let again = text(&get(&q));
    assert!(again.contains("accepted this version"));
    assert!(!again.contains("<form"));

    // A new version: denied again, and the form is back.
    let v2 = reload(json!({"version": "2"}));
    assert_eq!(v2.on_send(&msg(ALICE)).errcode(), Some(ERRCODE));
}

#[test]
fn forged_or_missing_h_is_refused_alike() {
    let p = policy(json!({}));
    let real = form_value(&link_query(&p, ALICE), "h").expect("h");
    let mut forged = real.clone().into_bytes();
    forged[0] = if forged[0] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).expect("ascii");
    let u = percent_encode(ALICE);
    let refused = [
        get(&format!("u={u}")),
        get(&format!("u={u}&h={forged}")),
        get(&format!("u={u}&h=zz")),
        get(&format!("u={u}&h={}", &real[..10])),
        get(&format!("h={real}")),
        get(&format!(
            "u={}&h={real}",
            percent_encode("@nobody:hs.example")
        )),
        http("POST", "", &format!("u={u}&h={forged}&v=1.0")),
        http("POST", "", &format!("u={u}&v=1.0")),
    ];
    for r in &refused {
        assert_eq!(r.status, 403);
        assert_eq!(r.body, refused[0].body);
    }
    assert!(records::consent(ALICE).unwrap().accepted.is_empty());
    assert!(testing::state_keys().is_empty());
}

#[test]
fn stale_version_post_is_not_recorded() {
    let p = policy(json!({}));
    let h = p.sign(ALICE);
    let r = http(
        "POST",
        "",
        &format!("u={}&h={h}&v=0.9", percent_encode(ALICE)),
    );
    assert_eq!(r.status, 409);
    assert!(text(&r).contains("name=\"v\" value=\"1.0\""));
    assert!(!records::has_accepted(ALICE, "0.9"));
    assert!(!records::has_accepted(ALICE, "1.0"));
}

#[test]
fn public_page_and_other_routes() {
    let _p = policy(json!({}));
    let public = get("v=1.0");
    assert_eq!(public.status, 200);
    assert!(!text(&public).contains("<form"));
    assert!(text(&public).contains("We keep your messages"));
    assert_eq!(http("PUT", "", "").status, 405);
    let p = reload(json!({}));
    let nope = p.on_http(&HttpRequest {
        method: "GET".into(),
        path: "/other".into(),
        ..Default::default()
    });
    assert_eq!(nope.status, 404);
}

#[test]
fn localpart_links_as_synapse_issues_them() {
    let p = policy(json!({}));
    let h = p.sign("alice");
    let r = http("POST", "", &format!("u=alice&h={h}&v=1.0"));
    assert_eq!(r.status, 200);
    assert!(records::has_accepted(ALICE, "1.0"));
}

#[test]
fn user_ids_are_escaped_in_pages() {
    let p = policy(json!({}));
    let evil = "@<script>alert(1)</script>:hs.example";
    let page = text(&get(&link_query(&p, evil)));
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let h = p.sign(evil);
    let done = text(&http(
        "POST",
        "",
        &format!("u={}&h={h}&v=1.0", percent_encode(evil)),
    ));
    assert!(!done.contains("<script>"));
    assert!(done.contains("&lt;script&gt;"));
}

#[test]
fn block_message_placeholders() {
    let p = policy(json!({"block_events_error": "100%% needed: {consent_uri}"}));
    let out = p.on_send(&msg(ALICE));
    assert_eq!(
        error(&out).message,
        format!("100% needed: {}", p.consent_uri(ALICE))
    );
}

#[test]
fn notice_extra_content_gets_the_link() {
    let p = policy(json!({"server_notice_content": {
        "msgtype": "m.text",
        "body": "Accept: %(consent_uri)s",
        "format": "org.matrix.custom.html",
        "formatted_body": "<a href=\"%(consent_uri)s\">Accept</a>",
    }}));
    let out = p.on_send(&msg(ALICE));
    let Some(Action::SendServerNotice { content, .. }) = out.actions.first() else {
        panic!("{out:?}")
    };
    assert_eq!(
        content["formatted_body"],
        format!("<a href=\"{}\">Accept</a>", p.consent_uri(ALICE))
    );
    assert!(!content.contains_key("msgtype"));
}

fn admin(p: &Consent, command: &str, args: Value) -> Result<Value, String> {
    p.on_admin(&AdminRequest {
        now_ms: 7_000,
        command: command.into(),
        args,
    })
}

#[test]
fn admin_commands() {
    let p = policy(json!({}));
    let before = admin(&p, "consent-status", json!({"user": ALICE})).expect("status");
    assert_eq!(before["current"], false);
    assert_eq!(before["version"], Value::Null);
    assert_eq!(before["current_version"], "1.0");

    let r = admin(
        &p,
        "record-consent",
        json!({"user": ALICE, "version": "1.0"}),
    )
    .expect("ok");
    assert_eq!(r["current"], true);
    assert!(p.on_send(&msg(ALICE)).is_allow());
    let status = admin(
        &p,
        "consent-status",
        json!({"user": ALICE, "version": "1.0"}),
    )
    .expect("status");
    assert_eq!(status["version"], "1.0");
    assert_eq!(status["accepted_at_ms"], 7_000);
    assert_eq!(status["source"], "registration");
    assert_eq!(status["current"], true);
    assert_eq!(status["asked"]["accepted"], true);

    // An old version is recorded as given, and does not count as the current one.
    let old = admin(
        &p,
        "record-consent",
        json!({"user": "@b:hs.example", "version": "0.9"}),
    )
    .expect("ok");
    assert_eq!(old["current"], false);
    assert_eq!(p.on_send(&msg("@b:hs.example")).errcode(), Some(ERRCODE));

    assert!(
        admin(
            &p,
            "record-consent",
            json!({"user": "@r:other.example", "version": "1.0"})
        )
        .is_err()
    );
    assert!(admin(&p, "record-consent", json!({"user": ALICE})).is_err());
    assert!(
        admin(
            &p,
            "record-consent",
            json!({"user": "alice", "version": "1"})
        )
        .is_err()
    );
    assert!(admin(&p, "consent-status", json!({})).is_err());
    assert!(admin(&p, "nope", json!({})).is_err());

    let terms = admin(&p, "terms-params", json!({})).expect("terms");
    assert_eq!(
        terms,
        json!({"policies": {"privacy_policy": {"version": "1.0", "en": {
            "name": "Privacy <Policy>",
            "url": "https://hs.example/_mxpolicy/consent/?v=1.0",
        }}}})
    );

    admin(
        &p,
        "set-user-kind",
        json!({"user": "@bot:hs.example", "kind": "bot"}),
    )
    .expect("kind");
    assert!(
        p.on_client_serve(&serve_to("@bot:hs.example"))
            .actions
            .is_empty()
    );
    assert!(
        admin(
            &p,
            "set-user-kind",
            json!({"user": "@x:hs.example", "kind": "robot"})
        )
        .is_err()
    );
}

#[test]
fn an_undecodable_consent_record_fails_closed_and_is_kept() {
    let p = policy(json!({}));
    // Written by a build whose record differs (here: `accepted` is no longer a list).
    let foreign = br#"{"accepted": {"1.0": 5000}}"#.to_vec();
    state::set_raw(&format!("consent/{ALICE}"), &foreign);

    // Sends are denied, as for a user who never consented.
    assert_eq!(p.on_send(&msg(ALICE)).errcode(), Some(ERRCODE));
    // The page shows nothing from the record, and accepting records nothing over it.
    let q = link_query(&p, ALICE);
    let page = get(&q);
    assert_eq!(page.status, 500);
    assert!(text(&page).contains("cannot be read"));
    let h = form_value(&q, "h").expect("h");
    let done = http(
        "POST",
        "",
        &format!("u={}&h={h}&v=1.0", percent_encode(ALICE)),
    );
    assert_eq!(done.status, 500);
    // The admin commands name the key instead of answering "no consent".
    let recorded = admin(
        &p,
        "record-consent",
        json!({"user": ALICE, "version": "1.0"}),
    );
    let e = recorded.expect_err("refused");
    assert!(
        e.starts_with(&format!("state `consent/{ALICE}` does not decode as ")),
        "{e}"
    );
    assert!(e.ends_with("nothing was recorded"), "{e}");
    assert!(admin(&p, "consent-status", json!({"user": ALICE})).is_err());
    assert_eq!(
        state::get_raw(&format!("consent/{ALICE}")),
        Some(foreign),
        "the record is never overwritten"
    );
    assert!(p.on_send(&msg(ALICE)).errcode() == Some(ERRCODE));
}
