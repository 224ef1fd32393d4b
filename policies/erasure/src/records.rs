//! The state layout: one record per user, plus the keys that track rooms and purges.
//!
//! Values are JSON (the SDK's encoding), so a build before or after this one reads them:
//! fields are only ever added, with defaults, and each part of a record keeps the fields it does
//! not know (`rest`), so an older build that changes a newer build's record writes them back.
//! A [`Record`] this build cannot decode is never
//! taken for "no erasure" and never overwritten: serving hides all the user's events,
//! (re)activation and erasure requests are refused, the timer waits (see the lifecycle), and
//! the user blocks every purge.

use mxpolicy_guest::{state, state::DecodeError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What the plugin keeps about one user, under `erasure/<user>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// A request inside its grace period.
    pub(crate) pending: Option<Pending>,
    /// The last erasure that became final.
    pub(crate) completed: Option<Completed>,
    /// Fields a newer build wrote that this one does not know, kept when it writes the
    /// record back (after a rollback, the older build must not erase them).
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) requested_at_ms: u64,
    pub(crate) final_at_ms: u64,
    /// Rooms the user was joined to when asking (they leave them at once).
    pub(crate) rooms: Vec<String>,
    /// Fields a newer build wrote that this one does not know, kept when it writes the
    /// record back (after a rollback, the older build must not erase them).
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Completed {
    pub(crate) requested_at_ms: u64,
    pub(crate) completed_at_ms: u64,
    /// Set when the account was reactivated after the erasure became final: events from then
    /// on are the user's new life and are served normally; earlier ones stay filtered.
    pub(crate) reactivated_at_ms: Option<u64>,
    /// Fields a newer build wrote that this one does not know, kept when it writes the
    /// record back (after a rollback, the older build must not erase them).
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
}

impl Record {
    /// Whether an event the user sent at `ts` is filtered.
    pub(crate) fn hides(&self, ts: u64) -> bool {
        self.pending.is_some()
            || self
                .completed
                .as_ref()
                .is_some_and(|c| c.reactivated_at_ms.is_none_or(|r| ts < r))
    }

    /// Whether the user counts as erased for purging: a final erasure, not reactivated since,
    /// and no cancellable request pending.
    pub(crate) fn is_final(&self) -> bool {
        self.pending.is_none()
            && self
                .completed
                .as_ref()
                .is_some_and(|c| c.reactivated_at_ms.is_none())
    }

    /// Where the user's erasure is, for the admin commands.
    pub(crate) fn status(&self) -> Status {
        match (&self.pending, &self.completed) {
            (Some(_), _) => Status::Pending,
            (None, Some(c)) if c.reactivated_at_ms.is_some() => Status::FinalReactivated,
            (None, Some(_)) => Status::Final,
            (None, None) => Status::None,
        }
    }
}

/// A user's erasure status, as `erasure-status` reports it (kebab-case: `final-reactivated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    /// A request inside its grace period.
    Pending,
    /// A final erasure, the account reactivated since.
    FinalReactivated,
    /// A final erasure.
    Final,
    /// No erasure.
    None,
}

pub(crate) fn record_key(user: &str) -> String {
    format!("erasure/{user}")
}

/// `sent/<user> <room>`: the user sent an event to the room. A space cannot occur in ids, so
/// one user's prefix never matches another's keys.
pub(crate) fn sent_prefix(user: &str) -> String {
    format!("sent/{user} ")
}

/// `waiting/<room>`: the room is not purged yet; the value lists the users who keep it alive.
pub(crate) fn waiting_key(room: &str) -> String {
    format!("waiting/{room}")
}

/// `blocker/<user> <room>`: the user keeps `room` from being purged.
pub(crate) fn blocker_prefix(user: &str) -> String {
    format!("blocker/{user} ")
}

/// `purged/<room>`: when the room's purge was requested.
pub(crate) fn purged_key(room: &str) -> String {
    format!("purged/{room}")
}

pub(crate) const TIMER_PREFIX: &str = "erase/";

pub(crate) fn timer_id(user: &str) -> String {
    format!("{TIMER_PREFIX}{user}")
}

/// The user's record: `Ok(None)` if there is none, `Err` if it does not decode.
pub(crate) fn load(user: &str) -> Result<Option<Record>, DecodeError> {
    state::get::<Record>(&record_key(user))
}

pub(crate) fn save(user: &str, record: &Record) {
    if record.pending.is_none() && record.completed.is_none() && record.rest.is_empty() {
        state::delete(&record_key(user));
    } else {
        state::set(&record_key(user), record);
    }
}

/// The rooms under a `<kind>/<user> ` prefix.
pub(crate) fn rooms_under(prefix: &str) -> Vec<String> {
    state::keys_iter(prefix)
        .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
        .collect()
}
