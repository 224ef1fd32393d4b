//! Example policy: deny messages that contain a configured keyword or come from a user on a
//! configured block list, the way a spam-checker module would, and keep per-user counts of
//! denials in plugin state. Also serves a small status page (`GET /stats`), written as a `maud`
//! template, which escapes every value it inserts (here the user ids, which come from
//! untrusted senders).
//!
//! Config:
//! ```json
//! {"keywords": ["buy now", "free crypto"], "blocked_users": ["@spammer:evil.example"],
//!  "errcode": "M_FORBIDDEN"}
//! ```
//!
//! State: `denied/<user>`, the user's count of denials (JSON, by the SDK). A count this build
//! cannot decode (written by another build) changes no decision: the message is denied all
//! the same, the count is left as it is (not restarted, which would lose the other build's
//! count), the denial is not counted, and the stats page shows it as unreadable.

use maud::{DOCTYPE, html};
use mxpolicy_guest::{
    ConfigError, HttpRequest, HttpResponse, Outcome, Policy, SendContext, UserKind, export_policy,
    log, policy, state,
};
use serde::Deserialize;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Case-insensitive substrings that get a message denied.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Users whose every message is denied.
    #[serde(default)]
    pub blocked_users: Vec<String>,
    /// The errcode to deny with (default `M_FORBIDDEN`).
    #[serde(default = "default_errcode")]
    pub errcode: String,
}

fn default_errcode() -> String {
    "M_FORBIDDEN".into()
}

/// The policy.
pub struct KeywordFilter {
    keywords: Vec<String>,
    blocked_users: Vec<String>,
    errcode: String,
}

/// Text fields of message content that are searched.
const TEXT_FIELDS: [&str; 3] = ["body", "formatted_body", "topic"];

impl KeywordFilter {
    /// Count a denial of `sender`; the new count, or `None` if the stored count does not
    /// decode (it is then left as it is).
    fn count_denial(sender: &str) -> Option<u64> {
        let key = format!("denied/{sender}");
        match state::get::<u64>(&key) {
            Ok(n) => {
                let n = n.unwrap_or(0) + 1;
                state::set(&key, &n);
                Some(n)
            }
            Err(e) => {
                log::warn(&format!("{e}; the denial is not counted"));
                None
            }
        }
    }
}

#[policy]
impl Policy for KeywordFilter {
    const NAME: &'static str = "keyword-filter";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        if let Some(i) = config.keywords.iter().position(|k| k.trim().is_empty()) {
            return Err(ConfigError::new(
                format!("keywords.{i}"),
                "keywords must not be empty",
            ));
        }
        if !config.errcode.starts_with("M_") {
            return Err(ConfigError::new(
                "errcode",
                "a Matrix errcode starts with `M_`",
            ));
        }
        Ok(Self {
            keywords: config.keywords.iter().map(|k| k.to_lowercase()).collect(),
            blocked_users: config.blocked_users,
            errcode: config.errcode,
        })
    }

    fn on_send(&self, ctx: &SendContext) -> Outcome {
        if matches!(
            ctx.sender_kind,
            UserKind::ServerNotices | UserKind::Appservice
        ) {
            return Outcome::allow();
        }
        if self.blocked_users.iter().any(|u| u == ctx.sender.as_str()) {
            Self::count_denial(ctx.sender.as_str());
            return Outcome::deny(&self.errcode, "You are not allowed to send messages here");
        }
        let hit = TEXT_FIELDS
            .iter()
            .filter_map(|f| ctx.content[f].as_str())
            .find_map(|text| {
                let text = text.to_lowercase();
                self.keywords.iter().find(|k| text.contains(k.as_str()))
            });
        match hit {
            None => Outcome::allow(),
            Some(keyword) => {
                let out = Outcome::deny(&self.errcode, "This message contains a blocked keyword")
                    .with_field("org.mxpolicy.keyword", keyword.as_str());
                match Self::count_denial(ctx.sender.as_str()) {
                    Some(n) => out.with_field("org.mxpolicy.denials", n),
                    None => out,
                }
            }
        }
    }

    fn on_http(&self, req: &HttpRequest) -> HttpResponse {
        if req.method != "GET" || req.path != "/stats" {
            return HttpResponse::not_found();
        }
        let keys: Vec<String> = state::keys_iter("denied/").collect();
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "Keyword filter" }
                }
                body {
                    h1 { "Denials" }
                    table {
                        tr { th { "User" } th { "Denials" } }
                        @for key in &keys {
                            tr {
                                td { (key.trim_start_matches("denied/")) }
                                td {
                                    @match state::get::<u64>(key) {
                                        Ok(n) => (n.unwrap_or(0)),
                                        Err(_) => "unreadable",
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        HttpResponse::html(200, page.into_string())
    }
}

export_policy!(KeywordFilter);

#[cfg(test)]
mod tests {
    use mxpolicy_guest::{Verdict, testing};
    use serde_json::json;

    use super::*;

    fn policy() -> KeywordFilter {
        testing::reset("hs.example");
        KeywordFilter::new(Config {
            keywords: vec!["Buy Now".into()],
            blocked_users: vec!["@spam:evil.example".into()],
            errcode: "M_FORBIDDEN".into(),
        })
        .unwrap()
    }

    fn msg(sender: &str, body: &str) -> SendContext {
        SendContext::new(
            sender,
            "!r:hs.example",
            "m.room.message",
            json!({"body": body}),
        )
    }

    #[test]
    fn keyword_is_denied_case_insensitively_and_counted() {
        let p = policy();
        assert!(p.on_send(&msg("@a:hs.example", "hello")).is_allow());
        let out = p.on_send(&msg("@a:hs.example", "BUY NOW please"));
        assert_eq!(out.errcode(), Some("M_FORBIDDEN"));
        p.on_send(&msg("@a:hs.example", "buy now!"));
        assert_eq!(state::get::<u64>("denied/@a:hs.example"), Ok(Some(2)));
        assert_eq!(state::get_raw("denied/@a:hs.example"), Some(b"2".to_vec()));
    }

    #[test]
    fn blocked_user_and_exempt_kinds() {
        let p = policy();
        assert!(!p.on_send(&msg("@spam:evil.example", "hi")).is_allow());
        let mut notice = msg("@notices:hs.example", "buy now");
        notice.sender_kind = UserKind::ServerNotices;
        assert!(p.on_send(&notice).is_allow());
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = KeywordFilter::new(Config {
            keywords: vec!["ok".into(), " ".into()],
            blocked_users: vec![],
            errcode: "M_FORBIDDEN".into(),
        })
        .err()
        .unwrap();
        assert_eq!(err.key, "keywords.1");
    }

    #[test]
    fn stats_page_escapes_user_ids() {
        let p = policy();
        state::set("denied/<script>", &1u64);
        let page = p.on_http(&HttpRequest {
            method: "GET".into(),
            path: "/stats".into(),
            ..Default::default()
        });
        let body = String::from_utf8(page.body).unwrap();
        assert!(body.contains("<td>&lt;script&gt;</td><td>1</td>"), "{body}");
        assert!(!body.contains("<script>"));
    }

    #[test]
    fn an_unreadable_count_still_denies_and_is_kept() {
        let p = policy();
        state::set_raw("denied/@a:hs.example", b"\x01 not json");
        let out = p.on_send(&msg("@a:hs.example", "buy now"));
        assert_eq!(out.errcode(), Some("M_FORBIDDEN"));
        let Verdict::Deny(error) = &out.verdict else {
            panic!("{out:?}")
        };
        assert_eq!(
            error.fields.get("org.mxpolicy.keyword"),
            Some(&json!("buy now"))
        );
        assert!(!error.fields.contains_key("org.mxpolicy.denials"));
        assert_eq!(
            state::get_raw("denied/@a:hs.example"),
            Some(b"\x01 not json".to_vec())
        );
        assert!(
            testing::logs()
                .iter()
                .any(|l| l.contains("state `denied/@a:hs.example` does not decode as u64"))
        );
        let page = p.on_http(&HttpRequest {
            method: "GET".into(),
            path: "/stats".into(),
            ..Default::default()
        });
        let body = String::from_utf8(page.body).unwrap();
        assert!(
            body.contains("<td>@a:hs.example</td><td>unreadable</td>"),
            "{body}"
        );
    }
}
