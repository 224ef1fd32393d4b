//! The configuration: what the admin writes, how it is checked, and the validated [`Settings`]
//! the hooks work with.

use mxpolicy_guest::{ConfigError, UserKind};
use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;

use crate::template::Template;

/// The plugin's configuration (JSON). Keys follow Synapse's `user_consent` block where one
/// exists; see the crate README for a full example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The current policy version. Users whose accepted version differs must accept again.
    pub version: String,
    /// The policy's name, shown on the page and in `m.login.terms` (default "Privacy Policy").
    #[serde(default = "default_policy_name")]
    pub policy_name: String,
    /// The policy's text as HTML, inserted into the page as is (trusted admin content).
    #[serde(default)]
    pub policy_text_html: Option<String>,
    /// The policy's text as plain text: escaped, blank lines separate paragraphs. Give this or
    /// `policy_text_html`, not both.
    #[serde(default)]
    pub policy_text: Option<String>,
    /// The homeserver's public base URL (`https://matrix.example.org/`); the consent page is at
    /// `<public_baseurl>/_mxpolicy/consent/`.
    pub public_baseurl: String,
    /// The secret keying the HMAC in consent links.
    pub form_secret: String,
    /// The `error` text of `M_CONSENT_NOT_GIVEN`; `%(consent_uri)s` (or `{consent_uri}`) is
    /// replaced by the user's consent link.
    #[serde(default = "default_block_events_error")]
    pub block_events_error: String,
    /// The content of the server notice sent once per version to users who have not accepted
    /// it: `body` is required and must hold the consent-link placeholder; other keys (e.g.
    /// `format`, `formatted_body`) are copied, with the placeholder replaced in every string.
    /// Without it, no notices are sent.
    #[serde(default)]
    pub server_notice_content: Option<Map<String, Value>>,
    /// Whether guests get the server notice too (default false, as in Synapse).
    #[serde(default)]
    pub send_server_notice_to_guests: bool,
    /// Account kinds that never need consent: any of `bot`, `support`, `guest` (default
    /// `["bot", "support"]`, as in Synapse). Application-service users and the server-notices
    /// user are always exempt.
    #[serde(default = "default_exempt_kinds")]
    pub exempt_kinds: Vec<String>,
    /// Users who never need consent (e.g. an admin bot registered as a regular user).
    #[serde(default)]
    pub exempt_users: Vec<String>,
}

fn default_policy_name() -> String {
    "Privacy Policy".into()
}

/// Synapse's documented example text.
pub(crate) const DEFAULT_BLOCK_EVENTS_ERROR: &str = "To continue using this homeserver you must \
     review and agree to the terms and conditions at %(consent_uri)s";

fn default_block_events_error() -> String {
    DEFAULT_BLOCK_EVENTS_ERROR.into()
}

fn default_exempt_kinds() -> Vec<String> {
    vec!["bot".into(), "support".into()]
}

/// Longest accepted policy version.
const MAX_VERSION_BYTES: usize = 128;

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) version: String,
    pub(crate) policy_name: String,
    /// The policy as HTML (escaped already when it came from `policy_text`).
    pub(crate) policy_html: String,
    /// `<public_baseurl>/_mxpolicy/consent/`, without a query.
    pub(crate) page_url: Url,
    pub(crate) form_secret: Vec<u8>,
    pub(crate) block_events_error: Template,
    /// The notice's `body` and its other content keys.
    pub(crate) notice: Option<(Template, Map<String, Value>)>,
    pub(crate) notify_guests: bool,
    pub(crate) exempt_kinds: Vec<UserKind>,
    pub(crate) exempt_users: Vec<String>,
}

impl Settings {
    /// Check `config`, naming the offending key on error.
    pub(crate) fn from_config(config: Config) -> Result<Self, ConfigError> {
        let version = config.version.trim().to_owned();
        if version.is_empty() {
            return Err(ConfigError::new("version", "must not be empty"));
        }
        if version.len() > MAX_VERSION_BYTES || version.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "version",
                format!("must be at most {MAX_VERSION_BYTES} bytes without control characters"),
            ));
        }
        if config.policy_name.trim().is_empty() {
            return Err(ConfigError::new("policy_name", "must not be empty"));
        }
        let policy_html = match (config.policy_text_html, config.policy_text) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "policy_text",
                    "give `policy_text_html` or `policy_text`, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "policy_text_html",
                    "the policy's text is required (`policy_text_html`, or `policy_text` as \
                     plain text)",
                ));
            }
            (Some(html), None) if html.trim().is_empty() => {
                return Err(ConfigError::new("policy_text_html", "must not be empty"));
            }
            (None, Some(text)) if text.trim().is_empty() => {
                return Err(ConfigError::new("policy_text", "must not be empty"));
            }
            (Some(html), None) => html,
            (None, Some(text)) => crate::pages::plain_text_to_html(&text),
        };
        let page_url =
            page_url(&config.public_baseurl).map_err(|m| ConfigError::new("public_baseurl", m))?;
        if config.form_secret.is_empty() {
            return Err(ConfigError::new("form_secret", "must not be empty"));
        }
        let block_events_error = Template::parse(&config.block_events_error)
            .map_err(|m| ConfigError::new("block_events_error", m))?;
        let notice = config
            .server_notice_content
            .map(check_notice_content)
            .transpose()?;
        let exempt_kinds = config
            .exempt_kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match k.as_str() {
                "bot" => Ok(UserKind::Bot),
                "support" => Ok(UserKind::Support),
                "guest" => Ok(UserKind::Guest),
                other => Err(ConfigError::new(
                    format!("exempt_kinds.{i}"),
                    format!(
                        "unknown kind `{other}`: use `bot`, `support` or `guest` \
                         (application-service users and the server-notices user are always exempt)"
                    ),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, user) in config.exempt_users.iter().enumerate() {
            if !looks_like_user_id(user) {
                return Err(ConfigError::new(
                    format!("exempt_users.{i}"),
                    format!("`{user}` is not a user id (`@localpart:server`)"),
                ));
            }
        }
        Ok(Self {
            version,
            policy_name: config.policy_name.trim().to_owned(),
            policy_html,
            page_url,
            form_secret: config.form_secret.into_bytes(),
            block_events_error,
            notice,
            notify_guests: config.send_server_notice_to_guests,
            exempt_kinds,
            exempt_users: config.exempt_users,
        })
    }
}

/// Whether `s` is a user id by the SDK's shared validator (ruma's rules, 255 bytes at most),
/// and, stricter than the historical ids ruma still accepts, has a non-empty localpart and no
/// whitespace or control characters: ids the consent policy records or exempts are ids a
/// user could type in a client.
pub(crate) fn looks_like_user_id(s: &str) -> bool {
    mxpolicy_guest::UserId::is_valid(s)
        && !s.starts_with("@:")
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Check a public base URL and return the consent page's URL below it,
/// `<public_baseurl>/_mxpolicy/consent/`.
///
/// The text is checked first (scheme, no query or fragment, no spaces, a host right after
/// `//` and no user info), so that what is refused is spelled out, and so that inputs the URL
/// standard would repair (`https:///host`, where it skips the extra `/`) are refused. Then the
/// `url` crate parses it (host syntax, port range, internationalised names) and builds the
/// page URL, in its normal form (host lowercased, default port dropped).
fn page_url(url: &str) -> Result<Url, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{url}` must start with `https://` or `http://`"))?;
    if url.contains(['?', '#']) {
        return Err(format!("`{url}` must not have a query or fragment"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{url}` must not contain spaces or control characters"
        ));
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(format!("`{url}` needs a host (and no user info)"));
    }
    let mut page = Url::parse(url).map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
    if page.host_str().is_none_or(str::is_empty)
        || !page.username().is_empty()
        || page.password().is_some()
    {
        return Err(format!("`{url}` needs a host (and no user info)"));
    }
    let path = format!("{}/_mxpolicy/consent/", page.path().trim_end_matches('/'));
    page.set_path(&path);
    Ok(page)
}

/// Check `server_notice_content`: a string `body` holding the consent-link placeholder, and
/// valid templates in every other string.
fn check_notice_content(
    mut content: Map<String, Value>,
) -> Result<(Template, Map<String, Value>), ConfigError> {
    let body = match content.remove("body") {
        Some(Value::String(body)) => body,
        Some(_) => {
            return Err(ConfigError::new(
                "server_notice_content.body",
                "must be a string",
            ));
        }
        None => {
            return Err(ConfigError::new(
                "server_notice_content.body",
                "is required",
            ));
        }
    };
    let body =
        Template::parse(&body).map_err(|m| ConfigError::new("server_notice_content.body", m))?;
    if !body.has_placeholder() {
        return Err(ConfigError::new(
            "server_notice_content.body",
            "must contain the consent link placeholder `%(consent_uri)s`",
        ));
    }
    // The homeserver sets `msgtype: m.server_notice` itself; Synapse's examples carry a
    // `msgtype` here, so accept it and leave it out.
    content.remove("msgtype");
    for (key, value) in &content {
        check_templates(value, &format!("server_notice_content.{key}"))?;
    }
    Ok((body, content))
}

fn check_templates(value: &Value, key: &str) -> Result<(), ConfigError> {
    match value {
        Value::String(s) => Template::parse(s)
            .map(|_| ())
            .map_err(|m| ConfigError::new(key, m)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_templates(v, &format!("{key}.{i}"))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_templates(v, &format!("{key}.{k}"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> Value {
        json!({
            "version": "1.0",
            "policy_text_html": "<p>We keep your messages.</p>",
            "public_baseurl": "https://hs.example/",
            "form_secret": "s3cret",
        })
    }

    fn check(patch: Value) -> Result<Settings, ConfigError> {
        let mut config = base();
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                config.as_object_mut().expect("object").remove(k);
            } else {
                config[k] = v.clone();
            }
        }
        let config: Config = serde_json::from_value(config)
            .map_err(|e| ConfigError::new("(serde)", e.to_string()))?;
        Settings::from_config(config)
    }

    fn key_of(patch: Value) -> String {
        check(patch).expect_err("refused").key
    }

    #[test]
    fn defaults_follow_synapse() {
        let s = check(json!({})).expect("valid");
        assert_eq!(s.policy_name, "Privacy Policy");
        assert_eq!(s.page_url.as_str(), "https://hs.example/_mxpolicy/consent/");
        assert_eq!(s.exempt_kinds, vec![UserKind::Bot, UserKind::Support]);
        assert!(s.notice.is_none());
        assert!(!s.notify_guests);
        assert_eq!(
            s.block_events_error.render("U"),
            "To continue using this homeserver you must review and agree to the terms and \
             conditions at U"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(key_of(json!({"version": "  "})), "version");
        assert_eq!(key_of(json!({"version": "a\nb"})), "version");
        assert_eq!(key_of(json!({"form_secret": ""})), "form_secret");
        assert_eq!(
            key_of(json!({"public_baseurl": "ftp://x"})),
            "public_baseurl"
        );
        assert_eq!(
            key_of(json!({"public_baseurl": "hs.example"})),
            "public_baseurl"
        );
        assert_eq!(
            key_of(json!({"public_baseurl": "https://hs.example/?a=b"})),
            "public_baseurl"
        );
        assert_eq!(
            key_of(json!({"public_baseurl": "https:///x"})),
            "public_baseurl"
        );
        assert_eq!(
            key_of(json!({"public_baseurl": "https://hs.example:99999/"})),
            "public_baseurl"
        );
        assert_eq!(
            key_of(json!({"public_baseurl": "https://hs<example/"})),
            "public_baseurl"
        );
        assert_eq!(
            key_of(json!({"policy_text_html": null})),
            "policy_text_html"
        );
        assert_eq!(key_of(json!({"policy_text": "x"})), "policy_text");
        assert_eq!(
            key_of(json!({"block_events_error": "100% sure"})),
            "block_events_error"
        );
        assert_eq!(
            key_of(json!({"exempt_kinds": ["bot", "robot"]})),
            "exempt_kinds.1"
        );
        assert_eq!(key_of(json!({"exempt_users": ["alice"]})), "exempt_users.0");
        assert_eq!(
            key_of(json!({"server_notice_content": {"body": "no link"}})),
            "server_notice_content.body"
        );
        assert_eq!(
            key_of(json!({"server_notice_content": {"msgtype": "m.text"}})),
            "server_notice_content.body"
        );
        assert_eq!(
            key_of(json!({"server_notice_content": {
                "body": "%(consent_uri)s", "formatted_body": "50%"}})),
            "server_notice_content.formatted_body"
        );
    }

    #[test]
    fn page_url_keeps_the_base_path() {
        let page = |base: &str| {
            check(json!({"public_baseurl": base}))
                .expect("valid")
                .page_url
                .to_string()
        };
        for base in [
            "https://hs.example",
            "https://hs.example/",
            "https://hs.example//",
        ] {
            assert_eq!(
                page(base),
                "https://hs.example/_mxpolicy/consent/",
                "{base}"
            );
        }
        assert_eq!(
            page("http://hs.example:8008/matrix/"),
            "http://hs.example:8008/matrix/_mxpolicy/consent/"
        );
        assert_eq!(
            page("https://HS.example:443/a"),
            "https://hs.example/a/_mxpolicy/consent/"
        );
    }

    #[test]
    fn plain_text_policy_is_escaped() {
        let s =
            check(json!({"policy_text_html": null, "policy_text": "a <b>\n\nc"})).expect("valid");
        assert_eq!(s.policy_html, "<p>a &lt;b&gt;</p>\n<p>c</p>");
    }

    #[test]
    fn notice_content_keeps_extra_keys_but_not_msgtype() {
        let s = check(json!({"server_notice_content": {
            "msgtype": "m.text",
            "body": "Accept at %(consent_uri)s",
            "format": "org.matrix.custom.html",
        }}))
        .expect("valid");
        let (body, extra) = s.notice.expect("valid");
        assert_eq!(body.render("U"), "Accept at U");
        assert_eq!(extra.len(), 1);
        assert_eq!(extra["format"], "org.matrix.custom.html");
    }
}
