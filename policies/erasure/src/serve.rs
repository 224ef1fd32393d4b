//! Serving (`on-client-serve`, `on-federation-serve`): the verdicts for an erased user's
//! events, and their per-room pseudonyms.

use std::collections::BTreeMap;

use hmac::Mac;
use mxpolicy_guest::{
    RoomId, ServeContext, ServeOutcome, ServeVerdict, UserId, Viewer, homeserver, log,
};

use crate::{
    Erasure, FederationMode,
    records::{Record, load},
};

/// What one sender's state says, read once per batch.
enum SenderState {
    /// Not erased (or not ours to erase).
    Clear,
    /// Has an erasure record.
    Erased(Record),
    /// The record does not decode: treat every event as erased.
    Unreadable,
}

impl SenderState {
    fn hides(&self, ts: u64) -> bool {
        match self {
            SenderState::Clear => false,
            SenderState::Erased(r) => r.hides(ts),
            SenderState::Unreadable => true,
        }
    }
}

impl Erasure {
    /// The sender's per-room pseudonym, `@_erased_<16 hex>:<server>`, if pseudonymization is
    /// configured: the first 8 bytes of HMAC-SHA256(secret, room + "\n" + user).
    pub fn pseudonym(&self, room: &RoomId, user: &UserId, server_name: &str) -> Option<UserId> {
        let mut mac = self.pseudonym_key.clone()?;
        mac.update(room.as_str().as_bytes());
        mac.update(b"\n");
        mac.update(user.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let short = digest.get(..8).map(hex::encode)?;
        Some(UserId::new(format!("@_erased_{short}:{server_name}")))
    }

    /// The verdicts for one batch of events, for a client or (`federation`) a server.
    pub(crate) fn serve(&self, ctx: &ServeContext, federation: bool) -> ServeOutcome {
        if ctx.events.is_empty() {
            return ServeOutcome::serve_all(ctx);
        }
        let server_name = homeserver::server_name();
        let anonymous = matches!(ctx.viewer, Viewer::Anonymous);
        let mut senders: BTreeMap<&str, SenderState> = BTreeMap::new();
        let mut pseudonyms: BTreeMap<(&str, &str), Option<UserId>> = BTreeMap::new();
        let mut verdicts = Vec::with_capacity(ctx.events.len());
        for ev in &ctx.events {
            let sender = senders.entry(ev.sender.as_str()).or_insert_with(|| {
                // Only local users are erased by this server.
                if ev.sender.server_name() != server_name {
                    return SenderState::Clear;
                }
                match load(ev.sender.as_str()) {
                    Ok(None) => SenderState::Clear,
                    Ok(Some(r)) => SenderState::Erased(r),
                    Err(e) => {
                        log::error(&format!("{e}; every event of the user is hidden"));
                        SenderState::Unreadable
                    }
                }
            });
            if !sender.hides(ev.origin_server_ts) {
                verdicts.push(ServeVerdict::Serve);
                continue;
            }
            let joined = ev.viewer_joined && !anonymous;
            let verdict = if federation {
                match (self.federation, joined) {
                    (FederationMode::Spec, true) => ServeVerdict::Serve,
                    (FederationMode::Strict, true) => ServeVerdict::Redact,
                    (_, false) if self.withhold_unjoined => ServeVerdict::Withhold,
                    (_, false) => ServeVerdict::Redact,
                }
            } else if joined {
                ServeVerdict::Serve
            } else {
                let pseudonym = pseudonyms
                    .entry((ev.room_id.as_str(), ev.sender.as_str()))
                    .or_insert_with(|| self.pseudonym(&ev.room_id, &ev.sender, &server_name));
                match pseudonym {
                    Some(p) => ServeVerdict::Pseudonymize(p.clone()),
                    None => ServeVerdict::Redact,
                }
            };
            verdicts.push(verdict);
        }
        ServeOutcome {
            verdicts,
            actions: Vec::new(),
        }
    }
}
