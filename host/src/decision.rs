//! What a hook call returns to the homeserver: the composed outcome, the actions to carry out,
//! and the plugin failures that were contained on the way.

use serde::Serialize;

use crate::{error::PluginFailure, types::Action};

/// The composed result of one hook across the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision<T> {
    /// The composed outcome (a verdict, the served events, an HTTP response).
    pub outcome: T,
    /// Actions for the homeserver, concatenated in chain order.
    pub actions: Vec<Action>,
    /// Plugin failures contained during the call, with the failure policy applied.
    pub failures: Vec<PluginFailure>,
    /// The plugin whose verdict decided (the first deny), if any.
    pub decided_by: Option<String>,
    /// With the outbox on ([`HostBuilder::outbox`](crate::HostBuilder::outbox)): the outbox
    /// id of each action, in the order of `actions`, to acknowledge once carried out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<u64>,
}

impl<T> Decision<T> {
    pub(crate) fn new(outcome: T) -> Self {
        Self {
            outcome,
            actions: Vec::new(),
            failures: Vec::new(),
            decided_by: None,
            outbox: Vec::new(),
        }
    }

    /// Append one plugin's actions and their outbox ids.
    pub(crate) fn record(&mut self, actions: Vec<Action>, ids: Vec<u64>) {
        self.actions.extend(actions);
        self.outbox.extend(ids);
    }
}

/// One timer that fired during [`Host::run_timers`](crate::Host::run_timers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FiredTimer {
    /// The plugin.
    pub plugin: String,
    /// The timer's id.
    pub id: String,
    /// When it was due.
    pub due_ms: u64,
    /// Whether `on-timer` succeeded (a failed timer is retried later, see `retry_at_ms`).
    pub ok: bool,
    /// Failed attempts so far, this one included.
    pub attempts: u32,
    /// When a failed timer will be tried again.
    pub retry_at_ms: Option<u64>,
    /// The timer failed too often and was removed.
    pub gave_up: bool,
}

/// Counts of timer calls since a host started, from [`Host::timer_stats`](crate::Host::timer_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimerStats {
    /// `on-timer` calls that succeeded.
    pub fired: u64,
    /// `on-timer` calls that failed.
    pub failed: u64,
    /// Timers removed after failing too often.
    pub given_up: u64,
}
