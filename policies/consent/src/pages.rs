//! The consent pages: plain, accessible HTML with no external assets. Every value shown is
//! escaped, except the policy text, which is the admin's own HTML.

use mxpolicy_guest::{HttpResponse, http::escape_html};

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

/// A page: `title` is escaped here, `main` is HTML built by the callers from escaped values.
pub(crate) fn page(status: u16, title: &str, main: &str) -> HttpResponse {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>body{{font-family:system-ui,sans-serif;\
         max-width:42em;margin:2em auto;padding:0 1em;line-height:1.5}}\
         .status{{border-left:4px solid #555;padding:.5em 1em;background:#f4f4f4}}\
         button{{font-size:1.1em;padding:.5em 1.5em}}</style>\n</head>\n<body>\n<main>\n\
         {main}\n</main>\n</body>\n</html>\n",
        title = escape_html(title),
    );
    let mut response = HttpResponse::html(status, html);
    response.headers = headers();
    response
}

/// The policy itself, under its name and version.
pub(crate) fn policy_section(name: &str, version: &str, policy_html: &str) -> String {
    format!(
        "<h1>{name}</h1>\n<p>Version {version}</p>\n<section aria-label=\"Policy text\">\n\
         {policy_html}\n</section>",
        name = escape_html(name),
        version = escape_html(version),
    )
}

/// A status paragraph, announced to screen readers.
pub(crate) fn status(text_html: &str) -> String {
    format!("<p class=\"status\" role=\"status\">{text_html}</p>")
}

/// The accept form: it posts `u`, `h` and `v` back, so the same HMAC that let the user see
/// the page authorises the POST.
pub(crate) fn accept_form(action: &str, u: &str, h: &str, v: &str, user: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"u\" value=\"{u}\">\n\
         <input type=\"hidden\" name=\"h\" value=\"{h}\">\n\
         <input type=\"hidden\" name=\"v\" value=\"{v}\">\n\
         <p>Signed in as <strong>{user}</strong>.</p>\n\
         <p><button type=\"submit\">I have read and accept this policy</button></p>\n\
         </form>",
        action = escape_html(action),
        u = escape_html(u),
        h = escape_html(h),
        v = escape_html(v),
        user = escape_html(user),
    )
}

/// The 403 page: identical for every refused link, so it tells nothing about the user.
pub(crate) fn forbidden() -> HttpResponse {
    page(
        403,
        "Invalid consent link",
        "<h1>Invalid consent link</h1>\n<p>This link is incomplete or not valid. Please open \
         the link exactly as your homeserver sent it to you.</p>",
    )
}

/// Plain text as HTML paragraphs: escaped, blank lines separate paragraphs, single newlines
/// become `<br>`.
pub(crate) fn plain_text_to_html(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n");
    normalized
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let lines: Vec<String> = p.lines().map(escape_html).collect();
            format!("<p>{}</p>", lines.join("<br>\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `YYYY-MM-DD HH:MM UTC` for a Unix time in milliseconds.
pub(crate) fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(1_767_225_600_000), "2026-01-01 00:00 UTC");
        assert_eq!(format_utc(951_827_696_000), "2000-02-29 12:34 UTC");
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
        let f = accept_form("https://x/\"", "@<a>:x", "\"h", "v'", "@<a>:x");
        assert!(!f.contains("<a>"));
        assert!(f.contains("&lt;a&gt;"));
        assert!(f.contains("value=\"&quot;h\""));
        assert!(f.contains("value=\"v&#39;\""));
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
