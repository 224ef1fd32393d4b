//! GDPR erasure policy: the right to erasure (GDPR article 17) at account granularity, following
//! the email model of the Matrix GDPR plan: whoever already had a copy of an erased user's
//! events keeps it; nobody new ever sees it.
//!
//! - `on-deactivate` with `erase`: records an erasure request, schedules the end of the grace
//!   period on a durable timer, and asks the homeserver to leave all rooms, remove the user from
//!   the user directory, unbind third-party ids and delete the profile. Optionally vetoes an
//!   erasure that did not pass a second factor.
//! - Serving (`on-client-serve`, `on-federation-serve`): from the request on, an erased user's
//!   events are served whole only to viewers (servers) that were joined at the event; everyone
//!   else gets them redacted (or pseudonymized, or withheld, by configuration).
//! - `on-reactivate` inside the grace period cancels the erasure; after it, the erasure is final
//!   and the user's earlier events stay filtered.
//! - `on-timer` at the end of the grace period: announces the erasure and purges every room in
//!   which every user ever joined is (finally) erased.
//! - `on-admin`: `list-erasures`, `erasure-status`, `list-purged-rooms`.
//!
//! See the crate's README for the configuration and how this maps to Synapse and MSC4025.
//!
//! The default grace period is the SDK's [`DEFAULT_GRACE_PERIOD_MS`] (30 days), the one the
//! media-ownership plugin uses too. Names are parsed by `strum` (the `federation` modes, the
//! admin commands) and written by serde attributes (an erasure's status): one enum per table.
//!
//! [`DEFAULT_GRACE_PERIOD_MS`]: mxpolicy_guest::gdpr::DEFAULT_GRACE_PERIOD_MS

mod admin;
mod config;
mod lifecycle;
mod records;
mod serve;
#[cfg(test)]
mod tests;

use hmac::Hmac;
use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, DeactivateContext, Outcome, Policy, ReactivateContext,
    SendContext, ServeContext, ServeOutcome, TimerContext, export_policy, policy,
};
use serde_json::Value;
use sha2::Sha256;

pub use crate::{
    config::{Config, FederationMode, MIN_SECRET_LEN},
    lifecycle::{
        SECOND_FACTOR_ERRCODE, SECOND_FACTOR_FIELD, UNREADABLE_ERRCODE, UNREADABLE_RETRY_MS,
    },
};

/// The policy, built from its [`Config`].
pub struct Erasure {
    grace_period_ms: u64,
    require_second_factor: bool,
    pseudonym_key: Option<Hmac<Sha256>>,
    federation: FederationMode,
    withhold_unjoined: bool,
}

#[policy]
impl Policy for Erasure {
    const NAME: &'static str = "erasure";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        Self::from_config(config)
    }

    fn on_send(&self, ctx: &SendContext) -> Outcome {
        self.record_send(ctx)
    }

    fn on_client_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        self.serve(ctx, false)
    }

    fn on_federation_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        self.serve(ctx, true)
    }

    fn on_deactivate(&self, ctx: &DeactivateContext) -> Outcome {
        self.deactivate(ctx)
    }

    fn on_reactivate(&self, ctx: &ReactivateContext) -> Outcome {
        self.reactivate(ctx)
    }

    fn on_timer(&self, ctx: &TimerContext) -> Vec<Action> {
        self.fire_timer(ctx)
    }

    fn on_admin(&self, req: &AdminRequest) -> Result<Value, String> {
        admin::handle(req)
    }
}

export_policy!(Erasure);

/// `names` as an English choice for error messages: "`a`, `b` or `c`".
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}
