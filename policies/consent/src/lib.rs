//! GDPR consent: block a local user's events until they accept the current version of the
//! server's privacy policy, as Synapse's `user_consent` does, as a plugin the admin can swap
//! without a restart.
//!
//! - **on-send**: a user whose latest accepted version is not the configured one is denied with
//!   `M_CONSENT_NOT_GIVEN`, the configured message and `consent_uri`
//!   (`<public_baseurl>/_mxpolicy/consent/?u=<user>&h=<HMAC-SHA256(user, form_secret)>&v=<version>`).
//!   Exempt: application-service users, the server-notices user, the configured kinds (bot and
//!   support by default) and users, a user's own leave, and a join into their server-notices
//!   room.
//! - **on-http** (mounted at `/_mxpolicy/consent/`): `GET /` shows the policy and, for a valid
//!   link, an accept form; `POST /` records the acceptance. Without `u` and `h` the page shows
//!   the policy only (the `m.login.terms` URL); a link with a missing or wrong `h` gets 403.
//! - **Server notices**: one per user and version, on a denied send and when the user is
//!   served events (sync), never twice for a version, across hot swaps (the record is state).
//! - **on-admin**: `record-consent`, `consent-status`, `terms-params`, `set-user-kind`,
//!   `consent-uri` (the signed link of a user's consent page, to hand out by other means).
//!
//! See the README for the configuration.
//!
//! Crates doing the generic work: `url` parses and checks `public_baseurl` and builds the
//! page's links; `maud` writes the pages, escaping every value by default; `time` formats the
//! dates shown (only formatting: times come from the hook contexts' `now_ms`, never a clock);
//! `mxpolicy_guest::http` encodes and decodes queries and forms (`percent-encoding` and
//! `form_urlencoded`). Not used:
//! - `pulldown-cmark`: the policy text is HTML (`policy_text_html`) or plain text
//!   (`policy_text`), not Markdown, so no Markdown renderer is compiled into the plugin.
//! - `url`'s own query serializer (`query_pairs_mut`, which is `form_urlencoded`'s): it writes a
//!   space as `+` and leaves `*` bare, which would change links already sent to users; the
//!   query is encoded by `mxpolicy_guest::http::query_string` (RFC 3986) and set on the `Url`.

mod config;
mod pages;
mod records;
mod template;

use hmac::{Hmac, Mac};
use maud::{Markup, html};
use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, HttpRequest, HttpResponse, Outcome, Policy, SendContext,
    ServeContext, ServeOutcome, UserId, UserKind, Viewer, export_policy, homeserver,
    http::query_string, log, policy,
};
use serde_json::{Value, json};
use sha2::Sha256;

pub use crate::config::Config;
use crate::{
    config::{Settings, looks_like_user_id},
    records::Source,
};

/// The errcode Synapse uses for a missing consent (not in the Matrix spec).
pub const ERRCODE: &str = "M_CONSENT_NOT_GIVEN";

/// The consent policy.
#[derive(Debug, Clone)]
pub struct Consent {
    s: Settings,
}

type HmacSha256 = Hmac<Sha256>;

impl Consent {
    fn mac(&self, message: &str) -> Option<HmacSha256> {
        let mut mac = HmacSha256::new_from_slice(&self.s.form_secret).ok()?;
        mac.update(message.as_bytes());
        Some(mac)
    }

    /// The hex HMAC-SHA256 of `user` keyed by the form secret.
    fn sign(&self, user: &str) -> String {
        self.mac(user)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// The link to the consent page for `user` and the current version:
    /// `<page>?u=<user>&h=<hex HMAC of user>&v=<version>`, values percent-encoded.
    pub fn consent_uri(&self, user: &str) -> String {
        let h = self.sign(user);
        self.page_link(&[("u", user), ("h", &h), ("v", &self.s.version)])
    }

    /// The consent page with the query `pairs`.
    fn page_link(&self, pairs: &[(&str, &str)]) -> String {
        let mut url = self.s.page_url.clone();
        url.set_query(Some(&query_string(pairs.iter().copied())));
        url.into()
    }

    /// Check a link's `u` and `h` (in constant time) and return the user it is for. `u` is a
    /// user id, or a localpart of this server (Synapse's links carry localparts).
    fn verify(&self, u: Option<&str>, h: Option<&str>) -> Option<UserId> {
        let (u, h) = (u?, h?);
        let tag = hex::decode(h).ok()?;
        if u.is_empty() || self.mac(u)?.verify_slice(&tag).is_err() {
            return None;
        }
        let user = if u.starts_with('@') {
            u.to_owned()
        } else {
            format!("@{u}:{}", homeserver::server_name())
        };
        looks_like_user_id(&user).then(|| UserId::from(user))
    }

    fn is_exempt_kind(&self, kind: UserKind) -> bool {
        matches!(kind, UserKind::Appservice | UserKind::ServerNotices)
            || self.s.exempt_kinds.contains(&kind)
    }

    fn is_exempt_user(&self, user: &str) -> bool {
        self.s.exempt_users.iter().any(|u| u == user)
    }

    /// Whether the event is one a user may always send: their own leave, or their join into
    /// their server-notices room (Synapse's `_is_exempt_from_privacy_policy`).
    fn is_exempt_event(ctx: &SendContext) -> bool {
        if ctx.event_type != "m.room.member"
            || ctx.state_key.as_deref() != Some(ctx.sender.as_str())
        {
            return false;
        }
        match ctx.content["membership"].as_str() {
            Some("leave") => true,
            Some("join") => ctx.is_server_notices_room,
            _ => false,
        }
    }

    /// Whether server notices go to a user of this kind.
    fn notice_allowed(&self, kind: UserKind) -> bool {
        !self.is_exempt_kind(kind) && (kind != UserKind::Guest || self.s.notify_guests)
    }

    /// The consent notice for `user`, if one is configured and none was sent for the current
    /// version yet; marks it sent.
    fn take_notice(&self, user: &UserId) -> Option<Action> {
        let (body, extra) = self.s.notice.as_ref()?;
        if !records::mark_notice_sent(user.as_str(), &self.s.version) {
            return None;
        }
        let uri = self.consent_uri(user.as_str());
        let content = extra
            .iter()
            .map(|(k, v)| (k.clone(), template::render_value(v, &uri)))
            .collect();
        Some(Action::SendServerNotice {
            user: user.clone(),
            body: body.render(&uri),
            content,
        })
    }

    // ---- pages ----

    /// The policy page: an optional status note, the policy, then an optional form.
    fn policy_page(
        &self,
        status: u16,
        note: Option<&Markup>,
        form: Option<&Markup>,
    ) -> HttpResponse {
        let content = html! {
            @if let Some(note) = note { (note) }
            (pages::policy_section(&self.s.policy_name, &self.s.version, &self.s.policy_html))
            @if let Some(form) = form { (form) }
        };
        pages::page(status, &self.s.policy_name, &content)
    }

    fn form_page(
        &self,
        status: u16,
        u: &str,
        h: &str,
        user: &UserId,
        note: Option<&Markup>,
    ) -> HttpResponse {
        let form = pages::accept_form(
            self.s.page_url.as_str(),
            u,
            h,
            &self.s.version,
            user.as_str(),
        );
        self.policy_page(status, note, Some(&form))
    }

    fn get_page(&self, req: &HttpRequest) -> HttpResponse {
        let (u, h) = (req.query_param("u"), req.query_param("h"));
        if u.is_none() && h.is_none() {
            // The public policy: what `m.login.terms` links to before an account exists.
            return self.policy_page(200, None, None);
        }
        let Some(user) = self.verify(u.as_deref(), h.as_deref()) else {
            return pages::forbidden();
        };
        let (u, h) = (u.unwrap_or_default(), h.unwrap_or_default());
        let record = match records::consent(user.as_str()) {
            Ok(record) => record,
            Err(e) => {
                log::error(&format!("{e}; the consent page is not shown"));
                return pages::record_unreadable();
            }
        };
        if let Some(a) = record.latest().filter(|a| a.version == self.s.version) {
            let note = pages::status(&html! {
                "You (" (user.as_str()) ") accepted this version on "
                (pages::format_utc(a.accepted_at_ms)) ". There is nothing more to do."
            });
            return self.policy_page(200, Some(&note), None);
        }
        let stale = req.query_param("v").is_some_and(|v| v != self.s.version);
        let note = (stale || record.latest().is_some()).then(|| {
            pages::status(&html! {
                "The policy has changed since you last accepted it. Please review the current \
                 version."
            })
        });
        self.form_page(200, &u, &h, &user, note.as_ref())
    }

    fn post_page(&self, req: &HttpRequest) -> HttpResponse {
        let field = |name: &str| req.form_param(name).or_else(|| req.query_param(name));
        let (u, h) = (field("u"), field("h"));
        let Some(user) = self.verify(u.as_deref(), h.as_deref()) else {
            return pages::forbidden();
        };
        if field("v").as_deref() != Some(self.s.version.as_str()) {
            // The form showed another version than the one now in force: consent is only
            // to the text the user saw, so show the current one again.
            let note = pages::status(&html! {
                "The policy changed while you were reading it. Please review the current version."
            });
            return self.form_page(
                409,
                &u.unwrap_or_default(),
                &h.unwrap_or_default(),
                &user,
                Some(&note),
            );
        }
        let Ok(a) = records::record_consent(
            user.as_str(),
            &self.s.version,
            req.now_ms,
            Source::ConsentPage,
        ) else {
            return pages::record_unreadable();
        };
        let content = html! {
            h1 { "Thank you" }
            (pages::status(&html! {
                "You (" (user.as_str()) ") accepted the " (self.s.policy_name) " (version "
                (a.version) ") on " (pages::format_utc(a.accepted_at_ms)) "."
            }))
            p { "You can close this page and return to your Matrix client." }
        };
        pages::page(200, &self.s.policy_name, &content)
    }

    // ---- admin ----

    fn admin_user(args: &Value) -> Result<UserId, String> {
        let user = args["user"]
            .as_str()
            .ok_or("`user` (a user id string) is required")?;
        if !looks_like_user_id(user) {
            return Err(format!("`{user}` is not a user id"));
        }
        Ok(UserId::from(user))
    }

    fn record_consent(&self, req: &AdminRequest) -> Result<Value, String> {
        let user = Self::admin_user(&req.args)?;
        if !homeserver::is_local_user(&user) {
            return Err(format!("`{user}` is not a local user"));
        }
        let version = req.args["version"]
            .as_str()
            .ok_or("`version` (the version the user accepted) is required")?;
        if version.is_empty() {
            return Err("`version` must not be empty".into());
        }
        // The given version is recorded even when it is not the current one (the terms shown
        // at registration may predate a swap): the audit stays truthful, and a user who
        // accepted an old version is still asked to accept the current one.
        let a = records::record_consent(user.as_str(), version, req.now_ms, Source::Registration)
            .map_err(|e| format!("{e}: nothing was recorded"))?;
        Ok(json!({
            "user": user,
            "version": a.version,
            "accepted_at_ms": a.accepted_at_ms,
            "current": a.version == self.s.version,
        }))
    }

    fn consent_status(&self, req: &AdminRequest) -> Result<Value, String> {
        let user = Self::admin_user(&req.args)?;
        let record = records::consent(user.as_str()).map_err(|e| e.to_string())?;
        let latest = record.latest();
        let mut answer = json!({
            "user": user,
            "current_version": self.s.version,
            "version": latest.map(|a| a.version.clone()),
            "accepted_at_ms": latest.map(|a| a.accepted_at_ms),
            "source": latest.map(|a| a.source),
            "current": latest.is_some_and(|a| a.version == self.s.version),
            "notice_sent": records::notice_sent(user.as_str(), &self.s.version),
            "history": record.accepted,
        });
        match &req.args["version"] {
            Value::Null => {}
            Value::String(v) => {
                let asked = record.of_version(v);
                answer["asked"] = json!({
                    "version": v,
                    "accepted": asked.is_some(),
                    "accepted_at_ms": asked.map(|a| a.accepted_at_ms),
                    "in_force": latest.is_some_and(|a| &a.version == v),
                });
            }
            _ => return Err("`version` must be a string".into()),
        }
        Ok(answer)
    }

    fn terms_params(&self) -> Value {
        json!({
            "policies": {
                "privacy_policy": {
                    "version": self.s.version,
                    "en": {
                        "name": self.s.policy_name,
                        "url": self.page_link(&[("v", &self.s.version)]),
                    },
                },
            },
        })
    }

    fn set_user_kind(req: &AdminRequest) -> Result<Value, String> {
        let user = Self::admin_user(&req.args)?;
        let name = req.args["kind"].as_str().ok_or("`kind` is required")?;
        let kind = records::kind_from_name(name).ok_or_else(|| {
            format!(
                "unknown kind `{name}`: use regular, guest, appservice, server-notices, bot or \
                 support"
            )
        })?;
        records::remember_kind(user.as_str(), kind);
        Ok(json!({"user": user, "kind": records::kind_name(kind)}))
    }
}

#[policy]
impl Policy for Consent {
    const NAME: &'static str = "consent";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let s = Settings::from_config(config)?;
        Ok(Self { s })
    }

    fn on_send(&self, ctx: &SendContext) -> Outcome {
        let sender = ctx.sender.as_str();
        records::remember_kind(sender, ctx.sender_kind);
        if self.is_exempt_kind(ctx.sender_kind)
            || self.is_exempt_user(sender)
            || Self::is_exempt_event(ctx)
            || records::has_accepted(sender, &self.s.version)
        {
            return Outcome::allow();
        }
        let uri = self.consent_uri(sender);
        let mut outcome = Outcome::deny(ERRCODE, self.s.block_events_error.render(&uri))
            .with_field("consent_uri", uri);
        if self.notice_allowed(ctx.sender_kind)
            && let Some(notice) = self.take_notice(&ctx.sender)
        {
            outcome = outcome.with_action(notice);
        }
        outcome
    }

    fn on_client_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        let mut out = ServeOutcome::serve_all(ctx);
        let Viewer::User(user) = &ctx.viewer else {
            return out;
        };
        if self.s.notice.is_none()
            || self.is_exempt_user(user.as_str())
            || records::has_accepted(user.as_str(), &self.s.version)
            || records::notice_sent(user.as_str(), &self.s.version)
            || !self.notice_allowed(records::kind(user.as_str()))
            || !homeserver::is_local_user(user)
        {
            return out;
        }
        out.actions.extend(self.take_notice(user));
        out
    }

    fn on_http(&self, req: &HttpRequest) -> HttpResponse {
        if !matches!(req.path.as_str(), "/" | "") {
            return HttpResponse::not_found();
        }
        match req.method.as_str() {
            "GET" => self.get_page(req),
            "POST" => self.post_page(req),
            _ => {
                let mut r = HttpResponse::text(405, "Method not allowed");
                r.headers.push(("allow".into(), "GET, POST".into()));
                r
            }
        }
    }

    fn on_admin(&self, req: &AdminRequest) -> Result<Value, String> {
        match req.command.as_str() {
            "record-consent" => self.record_consent(req),
            "consent-status" => self.consent_status(req),
            "terms-params" => Ok(self.terms_params()),
            "set-user-kind" => Self::set_user_kind(req),
            "consent-uri" => {
                let user = Self::admin_user(&req.args)?;
                Ok(json!({ "consent_uri": self.consent_uri(user.as_str()) }))
            }
            other => Err(format!(
                "unknown command `{other}`: use record-consent, consent-status, terms-params, \
                 set-user-kind or consent-uri"
            )),
        }
    }
}

export_policy!(Consent);

#[cfg(test)]
mod tests;
