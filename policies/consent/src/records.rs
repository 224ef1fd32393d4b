//! What the plugin keeps in its state. Values are JSON documents (not postcard) so that any
//! later build of the plugin can read them, whatever its structs look like, and so an admin can
//! read them with `Host::read_state`.
//!
//! Keys:
//! - `consent/<user>`: [`ConsentRecord`], the versions the user accepted and when.
//! - `notice/<user>`: [`NoticeRecord`], the versions a consent server notice was sent for.
//! - `kind/<user>`: the user's account kind, when it is not `regular` (learned from on-send or
//!   the `set-user-kind` admin command), so on-client-serve can skip exempt users.

use mxpolicy_guest::{UserKind, log, state};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

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
}

/// Every version a user accepted, oldest first; the last one is what counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsentRecord {
    pub(crate) accepted: Vec<Acceptance>,
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

/// Read a JSON value; a value that does not decode is logged and treated as missing, which
/// fails safe (the user is asked to consent again).
fn read<T: DeserializeOwned>(key: &str) -> Option<T> {
    let bytes = state::get_raw(key)?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn(&format!("state `{key}` does not decode ({e}); ignoring it"));
            None
        }
    }
}

fn write<T: Serialize>(key: &str, value: &T) {
    match serde_json::to_vec(value) {
        Ok(bytes) => state::set_raw(key, &bytes),
        Err(e) => log::error(&format!("cannot encode state `{key}`: {e}")),
    }
}

/// The user's consent record.
pub(crate) fn consent(user: &str) -> ConsentRecord {
    read(&consent_key(user)).unwrap_or_default()
}

/// Whether the user's latest accepted version is `version`.
pub(crate) fn has_accepted(user: &str, version: &str) -> bool {
    consent(user).latest().is_some_and(|a| a.version == version)
}

/// Record that `user` accepted `version` at `now_ms`. Accepting the version already in force
/// keeps the original time (the audit answers when consent was first given); accepting another
/// one appends it.
pub(crate) fn record_consent(user: &str, version: &str, now_ms: u64, source: Source) -> Acceptance {
    let mut record = consent(user);
    if let Some(latest) = record.latest().filter(|a| a.version == version) {
        return latest.clone();
    }
    let acceptance = Acceptance {
        version: version.to_owned(),
        accepted_at_ms: now_ms,
        source,
    };
    record.accepted.push(acceptance.clone());
    write(&consent_key(user), &record);
    acceptance
}

/// Whether a notice was sent to `user` for `version`.
pub(crate) fn notice_sent(user: &str, version: &str) -> bool {
    read::<NoticeRecord>(&notice_key(user)).is_some_and(|r| r.versions.iter().any(|v| v == version))
}

/// Mark a notice for `version` as sent to `user`; returns false if it already was.
pub(crate) fn mark_notice_sent(user: &str, version: &str) -> bool {
    let mut record: NoticeRecord = read(&notice_key(user)).unwrap_or_default();
    if record.versions.iter().any(|v| v == version) {
        return false;
    }
    record.versions.push(version.to_owned());
    write(&notice_key(user), &record);
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

/// The user's remembered kind (`regular` when unknown).
pub(crate) fn kind(user: &str) -> UserKind {
    read::<String>(&kind_key(user))
        .and_then(|k| kind_from_name(&k))
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
        write(&kind_key(user), &kind_name(kind));
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
        record_consent(u, "1", 10, Source::Registration);
        let again = record_consent(u, "1", 20, Source::ConsentPage);
        assert_eq!(again.accepted_at_ms, 10);
        assert!(has_accepted(u, "1"));
        record_consent(u, "2", 30, Source::ConsentPage);
        assert!(!has_accepted(u, "1"));
        assert!(has_accepted(u, "2"));
        assert_eq!(
            consent(u).of_version("1").map(|a| a.accepted_at_ms),
            Some(10)
        );
        assert_eq!(consent(u).accepted.len(), 2);
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
    fn undecodable_state_is_treated_as_missing() {
        testing::reset("hs.example");
        state::set_raw("consent/@a:hs.example", b"\xff garbage");
        assert!(!has_accepted("@a:hs.example", "1"));
        assert!(
            testing::logs()
                .iter()
                .any(|l| l.contains("does not decode"))
        );
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
