//! The erasure lifecycle: the request (`on-deactivate`), its cancellation (`on-reactivate`)
//! and the deletion at the end of the grace period (`on-timer`), in batches.

use mxpolicy_guest::{
    Action, DeactivateContext, MxcUri, Outcome, ReactivateContext, TimerContext, gdpr::DAY_MS, log,
    state, timers,
};

use crate::{
    Erasure, MediaOwnership,
    records::{
        MediaRecord, Reference, by_user_prefix, erasure_key, erasure_of, gone_key, media_key,
        media_of, reference_keys, timer_id, usage_key,
    },
    references::adjust_snapshot_refs,
};

/// When a timer that met a record it cannot decode fires again: one day later.
pub const UNREADABLE_RETRY_MS: u64 = DAY_MS;

impl MediaOwnership {
    /// `on-deactivate`: record an erasure request and schedule its deletion.
    pub(crate) fn request_erasure(&self, ctx: &DeactivateContext) -> Outcome {
        if !ctx.erase {
            return Outcome::allow();
        }
        let user = ctx.user.as_str();
        match erasure_of(user) {
            // A request is already running: its grace period is not extended.
            Ok(Some(existing)) if !existing.finalized => return Outcome::allow(),
            Ok(_) => {}
            Err(e) => {
                // Kept (its media stays refused); the timer makes sure it is looked at again,
                // by this build (which waits) or one that reads it.
                let at_ms = ctx.now_ms.saturating_add(self.config.grace_period_ms);
                log::error(&format!(
                    "{e}; the erasure request is not recorded over it, the timer is set for \
                     {at_ms}"
                ));
                timers::schedule(&timer_id(user), at_ms, user);
                return Outcome::allow();
            }
        }
        let erasure = Erasure {
            requested_at_ms: ctx.now_ms,
            final_at_ms: ctx.now_ms.saturating_add(self.config.grace_period_ms),
            finalized: false,
        };
        state::set(&erasure_key(user), &erasure);
        timers::schedule(&timer_id(user), erasure.final_at_ms, user);
        log::info(&format!(
            "{user} asked for erasure: their media is no longer served, and is deleted at {}",
            erasure.final_at_ms
        ));
        Outcome::allow()
    }

    /// `on-reactivate`: cancel an erasure still inside its grace period.
    pub(crate) fn reactivate(&self, ctx: &ReactivateContext) -> Outcome {
        let user = ctx.user.as_str();
        match erasure_of(user) {
            Ok(Some(erasure)) if !erasure.is_final(ctx.now_ms) => {
                state::delete(&erasure_key(user));
                timers::cancel(&timer_id(user));
                log::info(&format!(
                    "{user} was reactivated within the grace period: their media is served again"
                ));
            }
            Ok(Some(_)) => log::info(&format!(
                "{user} was reactivated after their erasure became final: their media stays \
                 deleted"
            )),
            Ok(None) => {}
            // Whether it is still cancellable is unknown: it is kept, its media stays refused.
            Err(e) => log::error(&format!("{e}; the erasure is not cancelled")),
        }
        Outcome::allow()
    }

    /// `on-timer`: delete the media of an erasure that became final.
    pub(crate) fn fire_timer(&self, ctx: &TimerContext) -> Vec<Action> {
        let Some(user) = ctx.id.strip_prefix("erasure/") else {
            log::warn(&format!("unknown timer `{}` ignored", ctx.id));
            return Vec::new();
        };
        let erasure = match erasure_of(user) {
            Ok(Some(erasure)) => erasure,
            // Cancelled by a reactivation.
            Ok(None) => return Vec::new(),
            Err(e) => {
                // Nothing is deleted on a record that cannot be read; its media stays refused.
                let retry_at_ms = ctx.now_ms.saturating_add(UNREADABLE_RETRY_MS);
                log::error(&format!(
                    "{e}; nothing is deleted, the timer fires again at {retry_at_ms}"
                ));
                timers::schedule(&ctx.id, retry_at_ms, user);
                return Vec::new();
            }
        };
        if !erasure.is_final(ctx.now_ms) {
            // Fired early (a rescheduled timer): wait for the end of the grace period.
            timers::schedule(&ctx.id, erasure.final_at_ms, user);
            return Vec::new();
        }
        self.finalize(user, erasure, ctx.now_ms)
    }

    /// Finish (a batch of) the erasure of `user`: delete-media actions for the media they
    /// uploaded up to the request, and the plugin's state about them.
    fn finalize(&self, user: &str, mut erasure: Erasure, now_ms: u64) -> Vec<Action> {
        if !erasure.finalized {
            erasure.finalized = true;
            state::set(&erasure_key(user), &erasure);
        }
        let budget = self.config.deletion_batch_size as usize;
        let mut used = 0;
        let mut actions = Vec::new();
        let mut unfinished = false;
        let mut unreadable = false;
        let prefix = by_user_prefix(user);
        for key in state::keys_iter(&prefix) {
            let Some(mxc) = key.strip_prefix(&prefix) else {
                continue;
            };
            let record = match media_of(mxc) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    // A stale index entry.
                    state::delete(&key);
                    continue;
                }
                Err(e) => {
                    // Whose it is and when it was uploaded are unknown: not deleted (it stays
                    // refused), looked at again later.
                    log::error(&format!("{e}; the media is not deleted"));
                    unreadable = true;
                    continue;
                }
            };
            if record.uploader != user || !erasure.covers(record.uploaded_at_ms) {
                continue;
            }
            if used >= budget {
                unfinished = true;
                break;
            }
            let (done, cost) = Self::forget_media(mxc, &record, budget - used);
            used += cost;
            if !done {
                unfinished = true;
                break;
            }
            state::set(&gone_key(mxc), &now_ms);
            actions.push(Action::DeleteMedia(MxcUri::from(mxc)));
        }
        if unfinished {
            // Continue at the next timer run.
            timers::schedule(&timer_id(user), now_ms, user);
        } else if unreadable {
            timers::schedule(
                &timer_id(user),
                now_ms.saturating_add(UNREADABLE_RETRY_MS),
                user,
            );
        }
        log::info(&format!(
            "erasure of {user} is final: {} media deleted{}",
            actions.len(),
            if unfinished { ", more to follow" } else { "" }
        ));
        actions
    }

    /// Forget one media: its record, index entry, references (and their member snapshots)
    /// and its share of the uploader's usage. Stops after `budget` references; returns whether
    /// the media is completely gone and how much budget was used.
    fn forget_media(mxc: &str, record: &MediaRecord, budget: usize) -> (bool, usize) {
        let mut used = 0;
        for key in reference_keys(mxc) {
            if used >= budget {
                return (false, used);
            }
            match state::get::<Reference>(&key) {
                Ok(Some(Reference {
                    members: Some(hash),
                    ..
                })) => adjust_snapshot_refs(&hash, -1),
                Ok(_) => {}
                // The reference goes with its media; the snapshot it may point at is kept.
                Err(e) => log::warn(&format!("{e}; deleting it, its members snapshot is kept")),
            }
            state::delete(&key);
            used += 1;
        }
        state::delete(&media_key(mxc));
        state::delete(&format!("{}{mxc}", by_user_prefix(&record.uploader)));
        let usage_key = usage_key(&record.uploader);
        match state::get::<u64>(&usage_key) {
            Ok(usage) => {
                let usage = usage.unwrap_or(0).saturating_sub(record.size);
                if usage == 0 {
                    state::delete(&usage_key);
                } else {
                    state::set(&usage_key, &usage);
                }
            }
            Err(e) => log::error(&format!("{e}; the usage is left as it is")),
        }
        (true, used + 1)
    }
}
