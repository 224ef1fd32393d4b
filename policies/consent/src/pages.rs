//! The consent pages: plain, accessible HTML with no external assets, written as `maud`
//! templates. maud checks the markup at compile time and escapes every value it inserts
//! (`& < > "`; attribute values are always double-quoted), so every value shown (user id,
//! policy name, version, dates) is escaped without a call to forget. The one exception is the
//! policy text, the admin's own HTML, inserted as [`PreEscaped`].

use maud::{DOCTYPE, Markup, PreEscaped, html};
use mxpolicy_guest::HttpResponse;
use time::{OffsetDateTime, format_description::BorrowedFormatItem, macros::format_description};

/// Headers of every page: no caching (pages carry the user's link), no framing (a consent
/// form must not be clickjacked), no referrer (the URL carries the HMAC), nothing loaded from
/// elsewhere.
fn headers() -> Vec<(String, String)> {
    [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The pages' only style sheet, inline (the CSP allows inline styles and nothing else).
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:42em;margin:2em auto;\
                     padding:0 1em;line-height:1.5}\
                     .status{border-left:4px solid #555;padding:.5em 1em;background:#f4f4f4}\
                     button{font-size:1.1em;padding:.5em 1.5em}";

/// A page with `content` as its `<main>`.
pub(crate) fn page(status: u16, title: &str, content: &Markup) -> HttpResponse {
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                main { (content) }
            }
        }
    };
    let mut response = HttpResponse::html(status, html.into_string());
    response.headers = headers();
    response
}

/// The policy itself, under its name and version. `policy_html` is trusted admin HTML.
pub(crate) fn policy_section(name: &str, version: &str, policy_html: &str) -> Markup {
    html! {
        h1 { (name) }
        p { "Version " (version) }
        section aria-label="Policy text" { (PreEscaped(policy_html)) }
    }
}

/// A status paragraph, announced to screen readers.
pub(crate) fn status(text: &Markup) -> Markup {
    html! {
        p class="status" role="status" { (text) }
    }
}

/// The accept form: it posts `u`, `h` and `v` back, so the same HMAC that let the user see
/// the page authorises the POST.
pub(crate) fn accept_form(action: &str, u: &str, h: &str, v: &str, user: &str) -> Markup {
    html! {
        form method="post" action=(action) {
            input type="hidden" name="u" value=(u);
            input type="hidden" name="h" value=(h);
            input type="hidden" name="v" value=(v);
            p { "Signed in as " strong { (user) } "." }
            p { button type="submit" { "I have read and accept this policy" } }
        }
    }
}

/// The 403 page: identical for every refused link, so it tells nothing about the user.
pub(crate) fn forbidden() -> HttpResponse {
    let content = html! {
        h1 { "Invalid consent link" }
        p {
            "This link is incomplete or not valid. Please open the link exactly as your \
             homeserver sent it to you."
        }
    };
    page(403, "Invalid consent link", &content)
}

/// The 500 page for a consent record this build cannot read (written by another build, or
/// damaged): nothing is shown from it and nothing is recorded over it. The cause is in the
/// homeserver's log, not on the page.
pub(crate) fn record_unreadable() -> HttpResponse {
    let content = html! {
        h1 { "Consent record unavailable" }
        p {
            "Your consent record cannot be read right now, so nothing was recorded. Please try \
             again later, or contact the server's administrator."
        }
    };
    page(500, "Consent record unavailable", &content)
}

/// Plain text as HTML paragraphs: escaped, blank lines separate paragraphs, single newlines
/// become `<br>`. The text is not Markdown (see the crate docs).
pub(crate) fn plain_text_to_html(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n");
    let paragraphs = normalized
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty());
    html! {
        @for (i, paragraph) in paragraphs.enumerate() {
            @if i > 0 { "\n" }
            p {
                @for (j, line) in paragraph.lines().enumerate() {
                    @if j > 0 { br; "\n" }
                    (line)
                }
            }
        }
    }
    .into_string()
}

/// `YYYY-MM-DD HH:MM UTC`.
const DATE: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day] [hour]:[minute] UTC");

/// `YYYY-MM-DD HH:MM UTC` for a Unix time in milliseconds (from a hook context's `now_ms`:
/// the plugin has no clock). A time past the year 9999 cannot be a real one and is shown as
/// `<ms> ms after 1970-01-01 00:00 UTC`.
pub(crate) fn format_utc(ms: u64) -> String {
    i64::try_from(ms / 1000)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.format(DATE).ok())
        .unwrap_or_else(|| format!("{ms} ms after 1970-01-01 00:00 UTC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(1_767_225_600_000), "2026-01-01 00:00 UTC");
        assert_eq!(format_utc(951_827_696_000), "2000-02-29 12:34 UTC");
        assert_eq!(format_utc(253_402_300_799_999), "9999-12-31 23:59 UTC");
        assert_eq!(
            format_utc(253_402_300_800_000),
            "253402300800000 ms after 1970-01-01 00:00 UTC"
        );
        assert!(format_utc(u64::MAX).ends_with(" UTC"), "no overflow");
    }

    #[test]
    fn plain_text() {
        assert_eq!(
            plain_text_to_html("One\r\nline & <two>\n\n\n Three "),
            "<p>One<br>\nline &amp; &lt;two&gt;</p>\n<p>Three</p>"
        );
    }

    #[test]
    fn form_escapes_every_value() {
        let f = accept_form("https://x/\"", "@<a>:x", "\"h", "v'", "@<a>:x").into_string();
        assert!(!f.contains("<a>"));
        assert!(f.contains("&lt;a&gt;"));
        assert!(f.contains("action=\"https://x/&quot;\""));
        assert!(f.contains("value=\"&quot;h\""));
        // Attribute values are always double-quoted, so `'` cannot end one and is kept.
        assert!(f.contains("value=\"v'\""));
    }

    #[test]
    fn pages_forbid_framing_and_caching() {
        let p = forbidden();
        assert_eq!(p.status, 403);
        assert!(
            p.headers
                .iter()
                .any(|(k, v)| k == "x-frame-options" && v == "DENY")
        );
        assert!(p.headers.iter().any(|(k, _)| k == "cache-control"));
    }
}
