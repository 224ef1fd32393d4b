//! Finding the `mxc://` URIs an event's content references.

use std::collections::BTreeSet;

use mxpolicy_guest::MxcUri;
use serde_json::Value;

/// Keys whose string value is a media reference, at any depth of the content: `url` (files,
/// images, stickers, `m.room.avatar`, and `file.url` of encrypted attachments), `thumbnail_url`
/// (`info.thumbnail_url`; `info.thumbnail_file.url` is a `url`), `avatar_url` (member events).
const REFERENCE_KEYS: [&str; 3] = ["url", "thumbnail_url", "avatar_url"];

/// Keys holding HTML that may embed media (`<img src="mxc://...">`).
const HTML_KEYS: [&str; 1] = ["formatted_body"];

/// How deep into the content the search goes. Real events nest 3 levels at most
/// (`m.new_content.info.thumbnail_file.url`); deeper is a hostile or broken event.
const MAX_DEPTH: usize = 8;

/// Most URIs taken from one event, so a hostile event cannot make the hook do unbounded work.
pub(crate) const MAX_PER_EVENT: usize = 32;

/// The distinct `mxc://` URIs `content` references, in sorted order, at most
/// [`MAX_PER_EVENT`].
pub(crate) fn media_references(content: &Value) -> Vec<String> {
    let mut found = BTreeSet::new();
    walk(content, 0, &mut found);
    found.into_iter().take(MAX_PER_EVENT).collect()
}

fn walk(value: &Value, depth: usize, found: &mut BTreeSet<String>) {
    if depth > MAX_DEPTH || found.len() >= MAX_PER_EVENT {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::String(s) if REFERENCE_KEYS.contains(&key.as_str()) => {
                        if MxcUri::is_valid(s) {
                            found.insert(s.clone());
                        }
                    }
                    Value::String(s) if HTML_KEYS.contains(&key.as_str()) => {
                        scan_html(s, found);
                    }
                    _ => walk(v, depth + 1, found),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                walk(v, depth + 1, found);
            }
        }
        _ => {}
    }
}

/// Characters an `mxc://` URI can hold (server names with ports and IPv6 literals, media ids),
/// a little wider than the grammar: where a candidate in HTML ends. Each candidate is then
/// validated by [`MxcUri::is_valid`] (ruma's rules).
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '-' | '_' | '[' | ']' | '~')
}

/// Every `mxc://` URI embedded in an HTML body (the `src` of inline images, but any occurrence
/// counts: a false positive only records a reference to media the event did mention).
fn scan_html(html: &str, found: &mut BTreeSet<String>) {
    let mut rest = html;
    while let Some(start) = rest.find("mxc://") {
        let candidate = &rest[start..];
        let end = candidate
            .char_indices()
            .find(|&(_, c)| !is_uri_char(c))
            .map_or(candidate.len(), |(i, _)| i);
        let uri = &candidate[..end];
        if MxcUri::is_valid(uri) {
            found.insert(uri.to_owned());
            if found.len() >= MAX_PER_EVENT {
                return;
            }
        }
        rest = &candidate[end.max("mxc://".len())..];
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_every_kind_of_reference() {
        let content = json!({
            "msgtype": "m.image",
            "body": "mxc://hs.example/in-body-is-not-a-reference",
            "url": "mxc://hs.example/plain",
            "info": {
                "thumbnail_url": "mxc://hs.example/thumb",
                "thumbnail_file": {"url": "mxc://hs.example/enc-thumb", "key": {}},
            },
            "file": {"url": "mxc://hs.example/enc", "iv": "x"},
            "m.new_content": {"url": "mxc://hs.example/edited"},
            "formatted_body": "<p>hi <img src=\"mxc://hs.example/inline\" alt=x> \
                               <img src='mxc://remote.example:8448/other'></p>",
        });
        assert_eq!(
            media_references(&content),
            vec![
                "mxc://hs.example/edited",
                "mxc://hs.example/enc",
                "mxc://hs.example/enc-thumb",
                "mxc://hs.example/inline",
                "mxc://hs.example/plain",
                "mxc://hs.example/thumb",
                "mxc://remote.example:8448/other",
            ]
        );
        let member = json!({"membership": "join", "avatar_url": "mxc://hs.example/face"});
        assert_eq!(media_references(&member), vec!["mxc://hs.example/face"]);
    }

    #[test]
    fn ignores_non_uris_and_hostile_content() {
        let content = json!({
            "url": "https://example.org/x",
            "avatar_url": "mxc://no-media-id",
            // Not a media id by the specification's grammar (ruma's rules).
            "m.new_content": {"url": "mxc://hs.example/cat.png", "thumbnail_url": "mxc://hs_x/a"},
            "thumbnail_url": 42,
            "formatted_body": "mxc:// mxc://a/ <b>mxc://hs.example/\"x</b>",
        });
        assert!(media_references(&content).is_empty());
        // Deeply nested content is not searched past MAX_DEPTH.
        let mut deep = json!({"url": "mxc://hs.example/deep"});
        for _ in 0..20 {
            deep = json!({ "x": deep });
        }
        assert!(media_references(&deep).is_empty());
        // At most MAX_PER_EVENT URIs are taken.
        let many: Vec<Value> = (0..100)
            .map(|i| json!({"url": format!("mxc://hs.example/m{i}")}))
            .collect();
        assert_eq!(
            media_references(&json!({ "items": many })).len(),
            MAX_PER_EVENT
        );
        let html = (0..100)
            .map(|i| format!("<img src=\"mxc://hs.example/h{i}\">"))
            .collect::<String>();
        assert_eq!(
            media_references(&json!({ "formatted_body": html })).len(),
            MAX_PER_EVENT
        );
    }
}
