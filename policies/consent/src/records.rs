//! What the plugin keeps in its state. Values are JSON (the SDK's encoding for typed state),
//! so that any later or earlier build of the plugin reads them (fields are only ever added,
//! with defaults), and so an admin or auditor reads them with `Host::read_state` or
//! `mxpolicy state export`.
//!
//! Keys:
//! - `consent/<user>`: [`ConsentRecord`], the versions the user accepted and when.
//! - `notice/<user>`: [`NoticeRecord`], the versions a consent server notice was sent for.
//! - `kind/<user>`: the user's account kind, when it is not `regular` (learned from on-send or
//!   the `set-user-kind` admin command), so on-client-serve can skip exempt users.
//!
//! Each record keeps the fields it does not know (`rest`), so an older build that appends to
//! a newer build's record writes them back.
//!
//! A record this build cannot decode (written by a build whose types differ, or damaged) is
//! never taken for a missing one, and never overwritten:
//! - consent: the user has not accepted (sends are denied), and recording a new acceptance is
//!   refused, since it would replace the user's history (the audit record) with a new one;
//! - notice: counts as sent (no notice; "never twice per version" holds);
//! - kind: `regular`, the kind that needs consent.
//!
//! Each case is logged as an error naming the key.

use mxpolicy_guest::{UserKind, log, state, state::DecodeError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How consent was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Source {
    /// The consent page (on-http POST).
    ConsentPage,
    /// The homeserver's `m.login.terms` registration step (`record-consent`).
    Registration,
}

/// One acceptance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Acceptance {
    pub(crate) version: String,
    pub(crate) accepted_at_ms: u64,
    pub(crate) source: Source,
    /// Fields a newer build wrote that this one does not know, kept when it writes the
    /// record back (after a rollback, the older build must not erase them).
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
}

/// Every version a user accepted, oldest first; the last one is what counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsentRecord {
    pub(crate) accepted: Vec<Acceptance>,
    /// Fields a newer build wrote that this one does not know, kept when it writes the
    /// record back (after a rollback, the older build must not erase them).
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
}

impl ConsentRecord {
    /// The latest acceptance.
    pub(crate) fn latest(&self) -> Option<&Acceptance> {
        self.accepted.last()
    }

    /// The first acceptance of `version`.
    pub(crate) fn of_version(&self, version: &str) -> Option<&Acceptance> {
        self.accepted.iter().find(|a| a.version == version)
    }
}

/// The versions a consent notice was sent for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NoticeRecord {
    pub(crate) versions: Vec<String>,
    /// Fields a newer build wrote that this one does not know, kept when it writes the
    /// record back (after a rollback, the older build must not erase them).
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
}

fn consent_key(user: &str) -> String {
    format!("consent/{user}")
}

fn notice_key(user: &str) -> String {
    format!("notice/{user}")
}

fn kind_key(user: &str) -> String {
    format!("kind/{user}")
}

/// The user's consent record (empty if there is none), or the error if it does not decode.
pub(crate) fn consent(user: &str) -> Result<ConsentRecord, DecodeError> {
    state::get(&consent_key(user)).map(Option::unwrap_or_default)
}

/// Whether the user's latest accepted version is `version`. A record that does not decode
/// counts as no consent (logged).
pub(crate) fn has_accepted(user: &str, version: &str) -> bool {
    match consent(user) {
        Ok(record) => record.latest().is_some_and(|a| a.version == version),
        Err(e) => {
            log::error(&format!("{e}; the user counts as not having consented"));
            false
        }
    }
}

/// Record that `user` accepted `version` at `now_ms`. Accepting the version already in force
/// keeps the original time (the audit answers when consent was first given); accepting another
/// one appends it. Refused, changing nothing, if the record does not decode.
pub(crate) fn record_consent(
    user: &str,
    version: &str,
    now_ms: u64,
    source: Source,
) -> Result<Acceptance, DecodeError> {
    let mut record = consent(user).inspect_err(|e| {
        log::error(&format!("{e}; the acceptance is not recorded"));
    })?;
    if let Some(latest) = record.latest().filter(|a| a.version == version) {
        return Ok(latest.clone());
    }
    let acceptance = Acceptance {
        version: version.to_owned(),
        accepted_at_ms: now_ms,
        source,
        rest: Map::new(),
    };
    record.accepted.push(acceptance.clone());
    state::set(&consent_key(user), &record);
    Ok(acceptance)
}

/// The notice record, or `None` (logged) if it does not decode.
fn notices(user: &str) -> Option<NoticeRecord> {
    match state::get::<NoticeRecord>(&notice_key(user)) {
        Ok(record) => Some(record.unwrap_or_default()),
        Err(e) => {
            log::error(&format!("{e}; notices count as sent"));
            None
        }
    }
}

/// Whether a notice was sent to `user` for `version` (yes if the record does not decode).
pub(crate) fn notice_sent(user: &str, version: &str) -> bool {
    notices(user).is_none_or(|r| r.versions.iter().any(|v| v == version))
}

/// Mark a notice for `version` as sent to `user`; returns false if it already was (or the
/// record does not decode: it is kept, and no notice is sent).
pub(crate) fn mark_notice_sent(user: &str, version: &str) -> bool {
    let Some(mut record) = notices(user) else {
        return false;
    };
    if record.versions.iter().any(|v| v == version) {
        return false;
    }
    record.versions.push(version.to_owned());
    state::set(&notice_key(user), &record);
    true
}

/// The kind's name in state and admin commands.
pub(crate) fn kind_name(kind: UserKind) -> &'static str {
    match kind {
        UserKind::Regular => "regular",
        UserKind::Guest => "guest",
        UserKind::Appservice => "appservice",
        UserKind::ServerNotices => "server-notices",
        UserKind::Bot => "bot",
        UserKind::Support => "support",
    }
}

/// The kind named `name`.
pub(crate) fn kind_from_name(name: &str) -> Option<UserKind> {
    Some(match name {
        "regular" => UserKind::Regular,
        "guest" => UserKind::Guest,
        "appservice" => UserKind::Appservice,
        "server-notices" => UserKind::ServerNotices,
        "bot" => UserKind::Bot,
        "support" => UserKind::Support,
        _ => return None,
    })
}

/// The user's remembered kind (`regular` when unknown, or when the record does not decode:
/// the kind that needs consent).
pub(crate) fn kind(user: &str) -> UserKind {
    let name = state::get::<String>(&kind_key(user)).unwrap_or_else(|e| {
        log::error(&format!("{e}; the user counts as regular"));
        None
    });
    name.and_then(|k| kind_from_name(&k))
        .unwrap_or(UserKind::Regular)
}

/// Remember the user's kind, writing only when it changed (regular users have no key).
pub(crate) fn remember_kind(user: &str, kind: UserKind) {
    if self::kind(user) == kind {
        return;
    }
    if kind == UserKind::Regular {
        state::delete(&kind_key(user));
    } else {
        state::set(&kind_key(user), kind_name(kind));
    }
}

#[cfg(test)]
mod tests {
    use mxpolicy_guest::testing;

    use super::*;

    #[test]
    fn consent_history_keeps_first_time_per_version() {
        testing::reset("hs.example");
        let u = "@a:hs.example";
        assert!(!has_accepted(u, "1"));
        record_consent(u, "1", 10, Source::Registration).unwrap();
        let again = record_consent(u, "1", 20, Source::ConsentPage).unwrap();
        assert_eq!(again.accepted_at_ms, 10);
        assert!(has_accepted(u, "1"));
        record_consent(u, "2", 30, Source::ConsentPage).unwrap();
        assert!(!has_accepted(u, "1"));
        assert!(has_accepted(u, "2"));
        let record = consent(u).unwrap();
        assert_eq!(record.of_version("1").map(|a| a.accepted_at_ms), Some(10));
        assert_eq!(record.accepted.len(), 2);
        // Stored as JSON, readable by an auditor.
        let stored: Value =
            serde_json::from_slice(&state::get_raw("consent/@a:hs.example").unwrap()).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"accepted": [
                {"version": "1", "accepted_at_ms": 10, "source": "registration"},
                {"version": "2", "accepted_at_ms": 30, "source": "consent-page"},
            ]})
        );
    }

    #[test]
    fn a_newer_builds_record_is_read_and_extended_keeping_its_fields() {
        testing::reset("hs.example");
        let u = "@a:hs.example";
        // A later build added fields: this build reads the record all the same...
        let newer = serde_json::json!({
            "accepted": [{"version": "1", "accepted_at_ms": 10, "source": "registration",
                          "ip": "192.0.2.1"}],
            "audit_id": 7,
        });
        state::set_raw("consent/@a:hs.example", newer.to_string().as_bytes());
        assert!(has_accepted(u, "1"));
        let again = record_consent(u, "1", 20, Source::ConsentPage).unwrap();
        assert_eq!(again.accepted_at_ms, 10);
        // ...and appending to it writes the fields it does not know back.
        record_consent(u, "2", 30, Source::ConsentPage).unwrap();
        let stored: Value =
            serde_json::from_slice(&state::get_raw("consent/@a:hs.example").unwrap()).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({
                "accepted": [
                    {"version": "1", "accepted_at_ms": 10, "source": "registration",
                     "ip": "192.0.2.1"},
                    {"version": "2", "accepted_at_ms": 30, "source": "consent-page"},
                ],
                "audit_id": 7,
            })
        );
    }

    #[test]
    fn notices_once_per_version() {
        testing::reset("hs.example");
        let u = "@a:hs.example";
        assert!(mark_notice_sent(u, "1"));
        assert!(!mark_notice_sent(u, "1"));
        assert!(notice_sent(u, "1"));
        assert!(!notice_sent(u, "2"));
        assert!(mark_notice_sent(u, "2"));
    }

    #[test]
    fn an_undecodable_consent_record_is_no_consent_and_is_never_overwritten() {
        testing::reset("hs.example");
        let u = "@a:hs.example";
        let garbage = b"\xff garbage".to_vec();
        state::set_raw("consent/@a:hs.example", &garbage);
        assert!(!has_accepted(u, "1"));
        let e = record_consent(u, "1", 10, Source::ConsentPage).unwrap_err();
        assert_eq!(e.key(), "consent/@a:hs.example");
        assert_eq!(state::get_raw("consent/@a:hs.example"), Some(garbage));
        assert!(consent(u).is_err());
        assert!(
            testing::logs()
                .iter()
                .any(|l| l.contains("state `consent/@a:hs.example` does not decode"))
        );
    }

    #[test]
    fn an_undecodable_notice_record_counts_as_sent_and_is_kept() {
        testing::reset("hs.example");
        let u = "@a:hs.example";
        state::set_raw("notice/@a:hs.example", b"[1");
        assert!(notice_sent(u, "1"));
        assert!(!mark_notice_sent(u, "1"));
        assert_eq!(state::get_raw("notice/@a:hs.example"), Some(b"[1".to_vec()));
    }

    #[test]
    fn an_undecodable_kind_is_regular() {
        testing::reset("hs.example");
        state::set_raw("kind/@b:hs.example", b"{}");
        assert_eq!(kind("@b:hs.example"), UserKind::Regular);
        // What the homeserver says replaces it.
        remember_kind("@b:hs.example", UserKind::Bot);
        assert_eq!(kind("@b:hs.example"), UserKind::Bot);
    }

    #[test]
    fn kinds_round_trip_and_regular_has_no_key() {
        testing::reset("hs.example");
        let u = "@g:hs.example";
        remember_kind(u, UserKind::Guest);
        assert_eq!(kind(u), UserKind::Guest);
        remember_kind(u, UserKind::Regular);
        assert_eq!(kind(u), UserKind::Regular);
        assert!(testing::state_keys().is_empty());
        for k in [
            UserKind::Bot,
            UserKind::Support,
            UserKind::Appservice,
            UserKind::ServerNotices,
        ] {
            assert_eq!(kind_from_name(kind_name(k)), Some(k));
        }
    }
}
