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
}

impl<T> Decision<T> {
    pub(crate) fn new(outcome: T) -> Self {
        Self {
            outcome,
            actions: Vec::new(),
            failures: Vec::new(),
            decided_by: None,
        }
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
    /// Whether `on-timer` succeeded (a failed timer stays scheduled and is retried).
    pub ok: bool,
}
