//! What a swap changed in the chain, for [`Applied::changes`](crate::Applied::changes) and the
//! reload and rollback log lines.

use std::{fmt, sync::Arc};

use serde::Serialize;

use crate::plugin::Plugin;

/// One difference between the chain before and after an apply or a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    /// An entry that was not in the chain.
    Added {
        /// Its instance name.
        instance: String,
        /// SHA-256 of its component.
        sha256: String,
    },
    /// An entry that is no longer in the chain (its state stays in the store).
    Removed {
        /// Its instance name.
        instance: String,
    },
    /// The same instance with another component build.
    Rebuilt {
        /// Its instance name.
        instance: String,
        /// SHA-256 before.
        from: String,
        /// SHA-256 after.
        to: String,
    },
    /// The same component with another config, limits or failure policies.
    Reconfigured {
        /// Its instance name.
        instance: String,
    },
    /// An entry kept, at another place relative to the other kept entries.
    Moved {
        /// Its instance name.
        instance: String,
        /// Its position before (0 is first).
        from: usize,
        /// Its position after.
        to: usize,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = |sha: &str| sha.get(..12).unwrap_or(sha).to_owned();
        match self {
            Change::Added { instance, sha256 } => write!(f, "+{instance} ({})", short(sha256)),
            Change::Removed { instance } => write!(f, "-{instance}"),
            Change::Rebuilt { instance, from, to } => {
                write!(f, "{instance}: {} -> {}", short(from), short(to))
            }
            Change::Reconfigured { instance } => write!(f, "{instance}: reconfigured"),
            Change::Moved { instance, from, to } => write!(f, "{instance}: moved {from} -> {to}"),
        }
    }
}

/// The changes from `old` to `new`, in `new`'s order, removals last.
pub(crate) fn diff(old: &[Arc<Plugin>], new: &[Arc<Plugin>]) -> Vec<Change> {
    let position = |chain: &[Arc<Plugin>], name: &str| chain.iter().position(|p| *p.name == *name);
    // Order among the entries both chains have: a move is a change of that order, not the
    // shift an addition or removal causes.
    let kept_old: Vec<&str> = old
        .iter()
        .filter(|p| position(new, &p.name).is_some())
        .map(|p| &*p.name)
        .collect();
    let kept_new: Vec<&str> = new
        .iter()
        .filter(|p| position(old, &p.name).is_some())
        .map(|p| &*p.name)
        .collect();
    let mut changes = Vec::new();
    for p in new {
        let Some(before) = position(old, &p.name).map(|i| &old[i]) else {
            changes.push(Change::Added {
                instance: p.name.to_string(),
                sha256: p.sha256.clone(),
            });
            continue;
        };
        if before.sha256 != p.sha256 {
            changes.push(Change::Rebuilt {
                instance: p.name.to_string(),
                from: before.sha256.clone(),
                to: p.sha256.clone(),
            });
        } else if before.config_json != p.config_json
            || format!("{:?}", before.settings) != format!("{:?}", p.settings)
        {
            changes.push(Change::Reconfigured {
                instance: p.name.to_string(),
            });
        }
        let from = kept_old.iter().position(|n| **n == *p.name);
        let to = kept_new.iter().position(|n| **n == *p.name);
        if let (Some(from), Some(to)) = (from, to)
            && from != to
        {
            changes.push(Change::Moved {
                instance: p.name.to_string(),
                from,
                to,
            });
        }
    }
    for p in old {
        if position(new, &p.name).is_none() {
            changes.push(Change::Removed {
                instance: p.name.to_string(),
            });
        }
    }
    changes
}

/// `changes` on one log line.
pub(crate) fn summary(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no change".into();
    }
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
