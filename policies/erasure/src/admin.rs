//! `on-admin`: `list-erasures`, `erasure-status`, `list-purged-rooms`.

use mxpolicy_guest::{AdminRequest, state};
use serde_json::{Value, json};
use strum::{EnumString, VariantNames};

use crate::{
    one_of,
    records::{Completed, Pending, load},
};

/// The admin commands, named in kebab-case (`list-erasures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumString, VariantNames)]
#[strum(serialize_all = "kebab-case")]
enum Command {
    /// Every pending and completed erasure.
    ListErasures,
    /// One user's erasure status and records.
    ErasureStatus,
    /// The rooms whose purge was requested, and when.
    ListPurgedRooms,
}

/// Run one admin command.
pub(crate) fn handle(req: &AdminRequest) -> Result<Value, String> {
    let command = req.command.parse::<Command>().map_err(|_| {
        format!(
            "unknown command `{}`: expected {}",
            req.command,
            one_of(Command::VARIANTS)
        )
    })?;
    match command {
        Command::ListErasures => list_erasures(),
        Command::ErasureStatus => erasure_status(&req.args),
        Command::ListPurgedRooms => Ok(list_purged_rooms()),
    }
}

fn pending_json(user: &str, p: &Pending) -> Value {
    json!({"user": user, "requested_at_ms": p.requested_at_ms, "final_at_ms": p.final_at_ms})
}

fn completed_json(user: &str, c: &Completed) -> Value {
    json!({
        "user": user,
        "requested_at_ms": c.requested_at_ms,
        "completed_at_ms": c.completed_at_ms,
        "reactivated_at_ms": c.reactivated_at_ms,
    })
}

fn list_erasures() -> Result<Value, String> {
    let mut pending = Vec::new();
    let mut completed = Vec::new();
    for key in state::keys_iter("erasure/") {
        let user = key.trim_start_matches("erasure/");
        let Some(record) = load(user).map_err(|e| e.to_string())? else {
            continue;
        };
        if let Some(p) = &record.pending {
            pending.push(pending_json(user, p));
        }
        if let Some(c) = &record.completed {
            completed.push(completed_json(user, c));
        }
    }
    Ok(json!({"pending": pending, "completed": completed}))
}

fn erasure_status(args: &Value) -> Result<Value, String> {
    let user = args
        .get("user")
        .and_then(Value::as_str)
        .ok_or("`user` (a user id) is required")?;
    let record = load(user).map_err(|e| e.to_string())?.unwrap_or_default();
    Ok(json!({
        "user": user,
        "status": record.status(),
        "pending": record.pending.as_ref().map(|p| pending_json(user, p)),
        "completed": record.completed.as_ref().map(|c| completed_json(user, c)),
    }))
}

fn list_purged_rooms() -> Value {
    let rooms: Vec<Value> = state::keys_iter("purged/")
        .map(|key| {
            // An undecodable time is shown as unknown; the room is listed all the same.
            let at = state::get::<u64>(&key).ok().flatten();
            json!({"room": key.trim_start_matches("purged/"), "purged_at_ms": at})
        })
        .collect();
    json!({ "rooms": rooms })
}
