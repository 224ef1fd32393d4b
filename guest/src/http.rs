//! Small helpers for plugin web pages: query and form decoding, query encoding, HTML escaping.
//!
//! Decoding is `application/x-www-form-urlencoded` as browsers send it, done by the
//! [`form_urlencoded`] crate (the one `url` uses). Encoding is RFC 3986 percent-encoding of
//! everything but the unreserved characters `A-Z a-z 0-9 - _ . ~`, done by the
//! [`percent_encoding`] crate. Encoding does not use `form_urlencoded`'s serializer on
//! purpose: that one writes a space as `+` and leaves `*` bare, which would change the links
//! policies already sent out (in error messages and server notices); both forms decode to the
//! same value here and in every browser.
//!
//! Pages should be built with a template crate that escapes by default (the bundled policies
//! use `maud`); [`escape_html`] is for a value or two in otherwise fixed text.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What [`percent_encode`] escapes: every byte except RFC 3986's unreserved characters.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Decode one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte.
/// Invalid escapes (`%zz`, a `%` near the end) are kept literally; invalid UTF-8 is replaced
/// with U+FFFD.
///
/// ```
/// use mxpolicy_guest::http::percent_decode;
/// assert_eq!(percent_decode("a+b%40c%3Ad"), "a b@c:d");
/// assert_eq!(percent_decode("100%"), "100%");
/// ```
pub fn percent_decode(s: &str) -> String {
    // The same two steps `form_urlencoded::parse` takes for each name and value.
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Encode a value for a query string: everything but the unreserved characters
/// `A-Z a-z 0-9 - _ . ~` becomes `%XX` (uppercase hex, UTF-8 bytes), so a space is `%20`.
///
/// ```
/// use mxpolicy_guest::http::percent_encode;
/// assert_eq!(percent_encode("@alice:hs.example"), "%40alice%3Ahs.example");
/// assert_eq!(percent_encode("v 2~"), "v%202~");
/// ```
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// A query string from name/value pairs, each encoded with [`percent_encode`] and joined as
/// `name=value&name=value` (no leading `?`).
///
/// ```
/// use mxpolicy_guest::http::query_string;
/// assert_eq!(query_string([("u", "@a:hs"), ("v", "1 0")]), "u=%40a%3Ahs&v=1%200");
/// ```
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&percent_encode(name));
        out.push('=');
        out.push_str(&percent_encode(value));
    }
    out
}

/// The first value of field `name` in form-encoded `text` (a query string or an
/// `application/x-www-form-urlencoded` body), decoded as [`percent_decode`] does. A field
/// without `=` has the empty value.
///
/// ```
/// use mxpolicy_guest::http::form_value;
/// assert_eq!(form_value("u=%40a%3Ahs&h=ff", "u").as_deref(), Some("@a:hs"));
/// assert_eq!(form_value("u=1", "h"), None);
/// ```
pub fn form_value(text: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(text.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Escape text for HTML element content and attribute values (double- or single-quoted):
/// `& < > " '`.
///
/// Kept by hand rather than taken from a crate: it is one five-way match, and a template
/// crate's escaper would tie every policy using the SDK to that crate.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a+b%40c%3Ad"), "a b@c:d");
        assert_eq!(percent_decode("%2B+%20"), "+  ");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    #[test]
    fn encoding_matches_known_strings() {
        // Written out by hand from RFC 3986, not computed.
        assert_eq!(percent_encode("@u:hs.example"), "%40u%3Ahs.example");
        assert_eq!(percent_encode("Az09-_.~"), "Az09-_.~");
        assert_eq!(
            percent_encode(" !*'()+,/;=?&#%"),
            "%20%21%2A%27%28%29%2B%2C%2F%3B%3D%3F%26%23%25"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(
            query_string([("u", "@a:hs"), ("h", "ff"), ("v", "1.0")]),
            "u=%40a%3Ahs&h=ff&v=1.0"
        );
        assert_eq!(query_string([]), "");
    }

    #[test]
    fn encoding_round_trips_through_the_form_decoder() {
        for s in ["@u:hs.example", "a b+c", "100% ~*'", "é\u{1F600}", "&=?#"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
            let query = query_string([("x", "1"), ("k", s)]);
            assert_eq!(form_value(&query, "k").as_deref(), Some(s), "{query}");
            // And what a browser posts for the same value (`+` for a space).
            let posted = form_urlencoded::Serializer::new(String::new())
                .append_pair("k", s)
                .finish();
            assert_eq!(form_value(&posted, "k").as_deref(), Some(s), "{posted}");
        }
    }

    #[test]
    fn form_fields() {
        assert_eq!(
            form_value("u=%40a%3Ahs&h=ff", "u").as_deref(),
            Some("@a:hs")
        );
        assert_eq!(form_value("u=1&u=2", "u").as_deref(), Some("1"), "first");
        assert_eq!(form_value("a+b=c", "a b").as_deref(), Some("c"));
        assert_eq!(form_value("flag&u=1", "flag").as_deref(), Some(""));
        assert_eq!(form_value("u=1", "h"), None);
        assert_eq!(form_value("", "u"), None);
    }

    #[test]
    fn html_escaping() {
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
