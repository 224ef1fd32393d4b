//! Bounding the nesting of JSON from outside before anything recursive touches it.
//!
//! `serde_json` refuses to parse past 128 levels, but a homeserver may hold a deeper
//! `serde_json::Value` (built by other code, or parsed with the recursion limit off), and
//! serializing, canonicalizing or redacting it recurses once per level: about 10,000 levels
//! overflow a 2 MiB thread (tokio's blocking threads) and abort the process. The host
//! measures depth with an explicit stack, never recursion, and refuses deeper values.

use serde_json::Value;

/// Deepest event content the host accepts, counting the content object as level 1: content
/// nested deeper is refused before any plugin sees it (on-send answers `M_BAD_JSON`). 128
/// is one more than what the Rust SDK parses (`serde_json`'s limit of 127 nested levels
/// below the root it reads), so the SDK's own explicit error for unparsable content stays
/// reachable; plugins in other languages may parse deeper.
pub const DEFAULT_MAX_CONTENT_DEPTH: usize = 128;

/// Whether `value` nests arrays and objects more than `max` levels deep (a scalar is level
/// 0, `{}` level 1). Iterative: safe on any depth, and stops at the first branch too deep.
pub(crate) fn depth_exceeds(value: &Value, max: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        let depth = depth + 1;
        if depth > max {
            return true;
        }
        stack.extend(
            children
                .filter(|c| c.is_array() || c.is_object())
                .map(|c| (c, depth)),
        );
    }
    false
}

/// Drop a value of any depth without recursion: `serde_json::Value`'s own drop recurses once
/// per level, so a deep value taken apart here cannot overflow the caller's stack.
pub(crate) fn drop_deep(value: Value) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(levels: usize) -> Value {
        let mut v = json!("leaf");
        for _ in 0..levels {
            v = Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn counts_levels() {
        assert!(!depth_exceeds(&json!(1), 0));
        assert!(!depth_exceeds(&json!({}), 1));
        assert!(depth_exceeds(&json!({}), 0));
        assert!(!depth_exceeds(&json!({"a": [1, {"b": 2}]}), 3));
        assert!(depth_exceeds(&json!({"a": [1, {"b": {}}]}), 3));
        assert!(!depth_exceeds(&nested(128), 128));
        assert!(depth_exceeds(&nested(129), 128));
    }

    #[test]
    fn deep_values_are_measured_and_dropped_without_recursion() {
        let deep = nested(1_000_000);
        assert!(depth_exceeds(&deep, 128));
        drop_deep(deep);
    }
}
