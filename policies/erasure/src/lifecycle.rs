//! The erasure lifecycle: the request (`on-deactivate`), its cancellation (`on-reactivate`),
//! the end of the grace period (`on-timer`) and the purge of rooms whose members are all
//! erased, fed by the rooms each user sent to (`on-send`).
//!
//! A user's record that does not decode (written by a build whose record differs) fails
//! closed, and is kept as it is for a build that can read it:
//! - an erasure request and a reactivation are refused ([`UNREADABLE_ERRCODE`]): either would
//!   overwrite the legal record, or cancel an erasure it cannot see;
//! - the timer does not make the erasure final nor purge anything: it fires again after
//!   [`UNREADABLE_RETRY_MS`], and each time logs the error;
//! - the user counts as not finally erased, so they keep every room they were in from being
//!   purged (serving hides all their events: see `serve`).

use std::collections::{BTreeMap, BTreeSet};

use mxpolicy_guest::{
    Action, DeactivateContext, Outcome, ReactivateContext, RoomId, SendContext, TimerContext,
    UserId, gdpr::DAY_MS, homeserver, log, state, state::DecodeError, timers,
};
use serde_json::Map;

use crate::{
    Erasure,
    records::{
        Completed, Pending, TIMER_PREFIX, blocker_prefix, load, purged_key, rooms_under, save,
        sent_prefix, timer_id, waiting_key,
    },
};

/// The errcode of the second-factor veto.
pub const SECOND_FACTOR_ERRCODE: &str = "M_FORBIDDEN";
/// The extra key of the second-factor veto's error body (`true`), so clients can tell this
/// refusal from others and ask for the second factor.
pub const SECOND_FACTOR_FIELD: &str = "org.mxpolicy.erasure.second_factor_required";
/// The errcode of a deactivation or reactivation refused because the user's erasure record
/// does not decode (the host's errcode for a policy that is unavailable).
pub const UNREADABLE_ERRCODE: &str = "M_UNKNOWN";
/// When the timer of an erasure whose record does not decode fires again: one day later.
pub const UNREADABLE_RETRY_MS: u64 = DAY_MS;

/// The refusal of a (de/re)activation over an undecodable record, logged.
fn refuse_unreadable(e: &DecodeError, what: &str) -> Outcome {
    log::error(&format!("{e}; the {what} is refused and the record kept"));
    Outcome::deny(
        UNREADABLE_ERRCODE,
        format!(
            "The erasure policy cannot read this account's erasure record, so the {what} was \
             not carried out; please try again later"
        ),
    )
}

impl Erasure {
    /// Remember which rooms each user sent to (one key per user and room, written once), so
    /// rooms a user left before erasing are still examined for purging.
    pub(crate) fn record_send(&self, ctx: &SendContext) -> Outcome {
        let key = format!("{}{}", sent_prefix(ctx.sender.as_str()), ctx.room_id);
        if state::get_raw(&key).is_none() {
            state::set_raw(&key, &[]);
        }
        Outcome::allow()
    }

    /// `on-deactivate`: the deactivation actions and, when erasing, the erasure request.
    pub(crate) fn deactivate(&self, ctx: &DeactivateContext) -> Outcome {
        let user = &ctx.user;
        let deactivation = Outcome::allow()
            .with_action(Action::LeaveAllRooms(user.clone()))
            .with_action(Action::RemoveFromUserDirectory(user.clone()))
            .with_action(Action::UnbindThreepids(user.clone()));
        if !ctx.erase {
            // Plain deactivation: the data stays in case of reactivation (the profile too, as
            // in Synapse, which deletes it only when erasing).
            return deactivation;
        }
        if self.require_second_factor && !ctx.second_factor && !ctx.by_admin {
            return Outcome::deny(
                SECOND_FACTOR_ERRCODE,
                "Erasing your account requires confirming the request with a second factor",
            )
            .with_field(SECOND_FACTOR_FIELD, true);
        }
        let mut record = match load(user.as_str()) {
            Ok(r) => r.unwrap_or_default(),
            // Starting afresh would replace the legal record with one that forgets it.
            Err(e) => return refuse_unreadable(&e, "deactivation"),
        };
        let mut rooms: BTreeSet<String> = homeserver::rooms_of_user(user)
            .into_iter()
            .map(RoomId::into_string)
            .collect();
        match &mut record.pending {
            // A repeated request keeps the first request's time and timer.
            Some(p) => {
                rooms.extend(p.rooms.drain(..));
                p.rooms = rooms.into_iter().collect();
            }
            None => {
                let final_at_ms = ctx.now_ms.saturating_add(self.grace_period_ms);
                record.pending = Some(Pending {
                    requested_at_ms: ctx.now_ms,
                    final_at_ms,
                    rooms: rooms.into_iter().collect(),
                    rest: Map::new(),
                });
                timers::schedule(&timer_id(user.as_str()), final_at_ms, user.as_str());
                log::info(&format!(
                    "erasure of {user} requested; final at {final_at_ms}"
                ));
            }
        }
        save(user.as_str(), &record);
        deactivation.with_action(Action::DeleteProfile(user.clone()))
    }

    /// `on-reactivate`: cancel a pending erasure, or mark a final one reactivated.
    pub(crate) fn reactivate(&self, ctx: &ReactivateContext) -> Outcome {
        let user = ctx.user.as_str();
        let mut record = match load(user) {
            Ok(Some(r)) => r,
            Ok(None) => return Outcome::allow(),
            // Whether a pending erasure must be cancelled is unknown: letting the account back
            // could leave its erasure running, or end one the user did not cancel.
            Err(e) => return refuse_unreadable(&e, "reactivation"),
        };
        if record.pending.take().is_some() {
            timers::cancel(&timer_id(user));
            log::info(&format!("erasure of {user} cancelled by reactivation"));
        }
        if let Some(c) = record.completed.as_mut()
            && c.reactivated_at_ms.is_none()
        {
            c.reactivated_at_ms = Some(ctx.now_ms);
            log::info(&format!(
                "{user} reactivated after a final erasure: earlier events stay filtered"
            ));
        }
        save(user, &record);
        Outcome::allow()
    }

    /// `on-timer`: make an erasure final and purge the rooms it leaves without members.
    pub(crate) fn fire_timer(&self, ctx: &TimerContext) -> Vec<Action> {
        let Some(user) = ctx.id.strip_prefix(TIMER_PREFIX) else {
            log::warn(&format!("unknown timer `{}`", ctx.id));
            return Vec::new();
        };
        let mut record = match load(user) {
            Ok(Some(r)) => r,
            Ok(None) => return Vec::new(),
            Err(e) => {
                // Neither final nor forgotten: ask again later (a build that reads the record
                // may be back by then); serving hides everything meanwhile.
                let retry_at_ms = ctx.now_ms.saturating_add(UNREADABLE_RETRY_MS);
                log::error(&format!(
                    "{e}; the erasure is not made final, the timer fires again at {retry_at_ms}"
                ));
                timers::schedule(&ctx.id, retry_at_ms, user);
                return Vec::new();
            }
        };
        let Some(pending) = record.pending.take() else {
            return Vec::new();
        };
        if ctx.now_ms < pending.final_at_ms {
            // Fired early (cannot happen with a correct host): wait for the real end.
            timers::schedule(&ctx.id, pending.final_at_ms, user);
            return Vec::new();
        }
        record.completed = Some(Completed {
            requested_at_ms: pending.requested_at_ms,
            completed_at_ms: ctx.now_ms,
            reactivated_at_ms: None,
            rest: Map::new(),
        });
        save(user, &record);
        log::info(&format!("erasure of {user} is final"));

        // Rooms to examine: joined at the request, sent to, or waiting on this user.
        let mut rooms: BTreeSet<String> = pending.rooms.into_iter().collect();
        let sent = sent_prefix(user);
        for room in rooms_under(&sent) {
            state::delete(&format!("{sent}{room}"));
            rooms.insert(room);
        }
        rooms.extend(rooms_under(&blocker_prefix(user)));

        let server_name = homeserver::server_name();
        let mut cache = FinalCache(BTreeMap::new());
        let user_id = UserId::from(user);
        let mut actions = vec![Action::AnnounceErasure(user_id)];
        for room in rooms {
            if check_room(&room, ctx.now_ms, &server_name, &mut cache) {
                log::info(&format!("every member of {room} is erased: purging it"));
                actions.push(Action::PurgeRoomHistory(RoomId::from(room)));
            }
        }
        actions
    }
}

// ---- purging ----

/// Whether each user counts as finally erased, cached over one timer call.
struct FinalCache(BTreeMap<String, bool>);

impl FinalCache {
    fn is_final(&mut self, user: &str) -> bool {
        if let Some(v) = self.0.get(user) {
            return *v;
        }
        let v = matches!(load(user), Ok(Some(r)) if r.is_final());
        self.0.insert(user.to_owned(), v);
        v
    }
}

/// Re-examine `room` after an erasure became final: purge it if every user ever joined is
/// finally erased, else remember who keeps it alive. Returns whether to purge it.
fn check_room(room: &str, now_ms: u64, server_name: &str, cache: &mut FinalCache) -> bool {
    // Forget who blocked it before: the answer is recomputed from scratch.
    let waiting = waiting_key(room);
    match state::get::<Vec<String>>(&waiting) {
        Ok(old) => {
            for user in old.unwrap_or_default() {
                state::delete(&format!("{}{room}", blocker_prefix(&user)));
            }
        }
        // A cache, recomputed below: a stale blocker key only makes a later timer look at
        // this room again.
        Err(e) => log::warn(&format!("{e}; recomputing it")),
    }
    state::delete(&waiting);
    if state::get_raw(&purged_key(room)).is_some() {
        return false;
    }
    let members = homeserver::ever_joined_members(&RoomId::from(room));
    // A room the homeserver does not know (or no longer knows) is not ours to purge.
    if members.is_empty() {
        return false;
    }
    // Remote users are never erased by this server: such a room is never purged.
    if members.iter().any(|m| m.server_name() != server_name) {
        return false;
    }
    let blockers: Vec<String> = members
        .iter()
        .filter(|m| !cache.is_final(m.as_str()))
        .map(|m| m.as_str().to_owned())
        .collect();
    if blockers.is_empty() {
        state::set(&purged_key(room), &now_ms);
        return true;
    }
    for user in &blockers {
        state::set_raw(&format!("{}{room}", blocker_prefix(user)), &[]);
    }
    state::set(&waiting, &blockers);
    false
}
