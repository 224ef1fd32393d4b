//! Making strings that come from plugins safe to log and to put in errors: bounded in length
//! and with control characters escaped, so a plugin can neither flood a log nor forge lines in
//! it (a `\n` followed by a fake timestamp), nor send terminal escape sequences.

/// `s` cut to at most `max` bytes (on a character boundary, with `...` appended when cut),
/// with control characters and Unicode line/paragraph separators escaped as `\n`, `\u{1b}`.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    for c in s.chars() {
        let escaped = matches!(c, '\u{2028}' | '\u{2029}') || c.is_control();
        let piece_len = if escaped {
            c.escape_default().len()
        } else {
            c.len_utf8()
        };
        if out.len() + piece_len > max {
            out.push_str("...");
            break;
        }
        if escaped {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn escapes_controls_and_cuts() {
        assert_eq!(sanitize("a\nb\r\u{1b}[31m", 100), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(sanitize("x\u{2028}", 100), "x\\u{2028}");
        assert_eq!(sanitize("héllo", 3), "hé...");
        assert_eq!(sanitize("ok", 2), "ok");
    }
}
