//! Applying serve verdicts to event JSON: redaction with ruma's implementation of the Matrix
//! redaction algorithm for the event's room version, and sender pseudonymization.

use ruma::{
    RoomVersionId,
    canonical_json::{CanonicalJsonValue, redact},
};
use serde_json::Value;

use crate::json::{DEFAULT_MAX_CONTENT_DEPTH, depth_exceeds, drop_deep};

/// Deepest event the host redacts: content at the deepest the host accepts, inside the
/// event object. A deeper event is withheld, never served whole.
const MAX_EVENT_DEPTH: usize = DEFAULT_MAX_CONTENT_DEPTH + 1;

/// Prune `event` by the redaction algorithm of `version`.
///
/// Keys the algorithm drops are dropped, `unsigned` included; no `redacted_because` is added
/// (an erasure is not a redaction, and Synapse serves erased events the same way). Fails for an
/// unknown room version or an event that is not canonical JSON (floats, for example), and the
/// caller then withholds the event rather than leak it.
pub(crate) fn redact_event(event: Value, version: &RoomVersionId) -> Result<Value, String> {
    // Canonical JSON conversion and pruning recurse once per level: bound the depth first
    // (the event object is one level above its content), and take a refused event apart
    // without recursion.
    if depth_exceeds(&event, MAX_EVENT_DEPTH) {
        drop_deep(event);
        return Err(format!(
            "event nests deeper than {MAX_EVENT_DEPTH} levels; it cannot be redacted safely"
        ));
    }
    let rules = version
        .rules()
        .ok_or_else(|| format!("unknown room version `{version}`"))?;
    let mut event = event;
    // `unsigned` is dropped by redaction anyway, and client-format `unsigned` may hold values
    // canonical JSON refuses (floats): remove it first.
    if let Some(obj) = event.as_object_mut() {
        obj.remove("unsigned");
    }
    let canonical = match CanonicalJsonValue::try_from(event) {
        Ok(CanonicalJsonValue::Object(obj)) => obj,
        Ok(_) => return Err("event is not a JSON object".into()),
        Err(e) => return Err(format!("event is not canonical JSON: {e}")),
    };
    let redacted = redact(canonical, &rules.redaction, None).map_err(|e| e.to_string())?;
    serde_json::to_value(redacted).map_err(|e| e.to_string())
}

/// Redact `event` and replace its sender (and, for the sender's own membership event, the
/// state key) with `pseudonym`.
pub(crate) fn pseudonymize_event(
    event: Value,
    version: &RoomVersionId,
    pseudonym: &str,
) -> Result<Value, String> {
    let mut redacted = redact_event(event, version)?;
    if let Some(obj) = redacted.as_object_mut() {
        let sender = obj.get("sender").cloned();
        if obj.get("type").and_then(Value::as_str) == Some("m.room.member")
            && obj.get("state_key") == sender.as_ref()
        {
            obj.insert("state_key".into(), Value::String(pseudonym.to_owned()));
        }
        obj.insert("sender".into(), Value::String(pseudonym.to_owned()));
    }
    Ok(redacted)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn message_content_is_emptied_and_unsigned_dropped() {
        let ev = json!({
            "event_id": "$e", "room_id": "!r:hs", "sender": "@a:hs", "type": "m.room.message",
            "origin_server_ts": 1, "content": {"body": "secret", "msgtype": "m.text"},
            "unsigned": {"age": 1.5}
        });
        let out = redact_event(ev, &RoomVersionId::V10).unwrap();
        assert_eq!(out["content"], json!({}));
        assert!(out.get("unsigned").is_none());
        assert_eq!(out["sender"], "@a:hs");
    }

    #[test]
    fn unknown_version_is_an_error() {
        let v = RoomVersionId::try_from("org.example.custom").unwrap();
        assert!(redact_event(json!({"type": "m.room.message"}), &v).is_err());
    }
}
