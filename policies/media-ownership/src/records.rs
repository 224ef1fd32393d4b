//! The state layout: what the plugin stores about media, references and erasures.
//!
//! Values are JSON (the SDK's encoding), so a build before or after this one reads them:
//! fields are only ever added, with defaults. A value this build cannot decode is never taken
//! for a missing one, and never overwritten; where it guards media, the answer fails closed:
//! - fetch: a media record or an uploader's erasure record that does not decode refuses the
//!   media (as if it did not exist); a reference or members snapshot that does not decode
//!   gives no email-model exception;
//! - upload: a record the upload would change (the URI's media record, a usage count) that
//!   does not decode refuses the upload, before anything is written;
//! - erasure request, reactivation (never vetoed, the erasure plugin decides): an erasure
//!   record that does not decode is kept, its media stays refused; a request schedules the
//!   timer so that the record is looked at again;
//! - timer: an erasure record that does not decode deletes nothing and fires again a day later;
//!   a media record that does not decode is not deleted (it stays refused) and is looked at
//!   again a day later;
//! - bookkeeping (the reference counter, a snapshot's count, a usage count while deleting):
//!   left as it is, which at worst keeps a value longer or records fewer references;
//! - admin commands answer with the error, naming the key.
//!
//! Each case is logged as an error naming the key.

use mxpolicy_guest::{state, state::DecodeError};
use serde::{Deserialize, Serialize};

/// The host refuses state keys longer than this (bytes).
pub(crate) const MAX_KEY_BYTES: usize = 1024;

// ---- state ----
//
// media/<mxc>              -> MediaRecord
// by-user/<user>/<mxc>     -> (empty)           index for "every mxc this user uploaded"
// usage/<user>             -> u64               bytes stored, for the quota
// ref/<mxc>/<seq:016x>     -> Reference         one event referencing the media
// ref-seq                  -> u64               last reference number
// members/<sha256>         -> Vec<String>       a room's joined members at some moment
// members-rc/<sha256>      -> u64               references pointing at that snapshot
// erasure/<user>           -> Erasure
// gone/<mxc>               -> u64               deleted at (ms): refused even if still stored
//
// Key separators are unambiguous: server names hold no `/`, so `by-user/<user>/` never
// prefixes another user's keys; reference keys are checked to end in exactly 16 hex digits.

/// What the plugin knows about one uploaded media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// The uploader.
    pub uploader: String,
    /// Size in bytes.
    pub size: u64,
    /// The declared content type.
    pub content_type: Option<String>,
    /// Upload time.
    pub uploaded_at_ms: u64,
}

/// One event referencing a media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// The room.
    pub room_id: String,
    /// The event's sender.
    pub sender: String,
    /// The event's type.
    pub event_type: String,
    /// When it was sent (`origin_server_ts`, or the hook's time if absent).
    pub sent_at_ms: u64,
    /// The snapshot of the room's joined members when it was sent (`members/<hash>`), if
    /// membership was recorded.
    pub members: Option<String>,
}

/// A user's erasure request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// When it was requested.
    pub requested_at_ms: u64,
    /// When it becomes final (request + grace period).
    pub final_at_ms: u64,
    /// Whether the deletion has run (started).
    pub finalized: bool,
}

impl Erasure {
    /// Whether the grace period is over (the erasure is final) at `now_ms`.
    pub fn is_final(&self, now_ms: u64) -> bool {
        self.finalized || now_ms >= self.final_at_ms
    }

    /// Whether media uploaded at `uploaded_at_ms` falls under this erasure: everything
    /// uploaded up to the request. Media uploaded after a reactivation does not.
    pub fn covers(&self, uploaded_at_ms: u64) -> bool {
        uploaded_at_ms <= self.requested_at_ms
    }
}

pub(crate) fn media_key(mxc: &str) -> String {
    format!("media/{mxc}")
}

pub(crate) fn by_user_prefix(user: &str) -> String {
    format!("by-user/{user}/")
}

pub(crate) fn usage_key(user: &str) -> String {
    format!("usage/{user}")
}

pub(crate) fn ref_prefix(mxc: &str) -> String {
    format!("ref/{mxc}/")
}

pub(crate) fn erasure_key(user: &str) -> String {
    format!("erasure/{user}")
}

pub(crate) fn gone_key(mxc: &str) -> String {
    format!("gone/{mxc}")
}

/// The erasure timer of `user` (its id is also its state key).
pub(crate) fn timer_id(user: &str) -> String {
    erasure_key(user)
}

/// The reference keys of `mxc`, ignoring keys of another media whose URI extends this one.
pub(crate) fn reference_keys(mxc: &str) -> Vec<String> {
    let prefix = ref_prefix(mxc);
    state::keys_iter(&prefix)
        .filter(|k| {
            k.strip_prefix(&prefix)
                .is_some_and(|seq| seq.len() == 16 && seq.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

/// The user's erasure: `Ok(None)` if there is none, `Err` if it does not decode.
pub(crate) fn erasure_of(user: &str) -> Result<Option<Erasure>, DecodeError> {
    state::get(&erasure_key(user))
}

/// The media's record: `Ok(None)` if it was not uploaded here, `Err` if it does not decode.
pub(crate) fn media_of(mxc: &str) -> Result<Option<MediaRecord>, DecodeError> {
    state::get(&media_key(mxc))
}
