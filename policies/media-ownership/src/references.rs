//! `on-send`: which events reference which media, and (for the email-model exception) who
//! was joined to the room when they were sent.

use std::collections::BTreeSet;

use mxpolicy_guest::{Outcome, RoomId, SendContext, UserId, homeserver, log, state};
use sha2::{Digest, Sha256};

use crate::{
    MediaOwnership, extract,
    records::{MAX_KEY_BYTES, Reference, media_key, ref_prefix},
};

impl MediaOwnership {
    /// `on-send`: record the event's references to media uploaded here.
    pub(crate) fn record_references(&self, ctx: &SendContext) -> Outcome {
        let known: Vec<String> = extract::media_references(&ctx.content)
            .into_iter()
            .filter(|mxc| ref_prefix(mxc).len() + 16 <= MAX_KEY_BYTES)
            .filter(|mxc| state::get_raw(&media_key(mxc)).is_some())
            .collect();
        if known.is_empty() {
            return Outcome::allow();
        }
        // A counter that does not decode could hand out numbers already used, overwriting
        // references: record none for this event (fewer references only narrow the email-model
        // exception), and never refuse the send for it.
        let mut seq = match state::get::<u64>("ref-seq") {
            Ok(seq) => seq.unwrap_or(0),
            Err(e) => {
                log::error(&format!(
                    "{e}; the event's media references are not recorded"
                ));
                return Outcome::allow();
            }
        };
        let members = self.config.email_model_exception.then(|| {
            let hash = snapshot_members(&ctx.room_id);
            adjust_snapshot_refs(&hash, known.len() as i64);
            hash
        });
        let sent_at_ms = if ctx.origin_server_ts > 0 {
            ctx.origin_server_ts
        } else {
            ctx.now_ms
        };
        for mxc in &known {
            seq = seq.wrapping_add(1);
            state::set(
                &format!("{}{seq:016x}", ref_prefix(mxc)),
                &Reference {
                    room_id: ctx.room_id.to_string(),
                    sender: ctx.sender.to_string(),
                    event_type: ctx.event_type.clone(),
                    sent_at_ms,
                    members: members.clone(),
                },
            );
        }
        state::set("ref-seq", &seq);
        Outcome::allow()
    }
}

/// The members snapshot `hash` gets one more (or fewer) reference; dropped at zero. A count
/// that does not decode is left as it is, and so is the snapshot (kept longer, never dropped
/// while a reference may still point at it).
pub(crate) fn adjust_snapshot_refs(hash: &str, delta: i64) {
    let rc_key = format!("members-rc/{hash}");
    let rc = match state::get::<u64>(&rc_key) {
        Ok(rc) => rc.unwrap_or(0),
        Err(e) => {
            log::error(&format!("{e}; the snapshot is kept"));
            return;
        }
    };
    let rc = if delta >= 0 {
        rc.saturating_add(delta.unsigned_abs())
    } else {
        rc.saturating_sub(delta.unsigned_abs())
    };
    if rc == 0 {
        state::delete(&rc_key);
        state::delete(&format!("members/{hash}"));
    } else {
        state::set(&rc_key, &rc);
    }
}

/// Store the room's current joined members (once per distinct membership) and return the
/// snapshot's hash.
fn snapshot_members(room: &RoomId) -> String {
    let members: BTreeSet<String> = homeserver::members_of_room(room)
        .into_iter()
        .map(UserId::into_string)
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(room.as_str().as_bytes());
    for m in &members {
        hasher.update(b"\n");
        hasher.update(m.as_bytes());
    }
    let hash = hex::encode(hasher.finalize());
    let key = format!("members/{hash}");
    if state::get_raw(&key).is_none() {
        state::set(&key, &members.into_iter().collect::<Vec<_>>());
    }
    hash
}
