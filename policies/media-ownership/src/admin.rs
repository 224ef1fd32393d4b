//! `on-admin`: `media-of-user`, `media-info`. A record that does not decode makes the command
//! fail with the error naming its key: an audit answer never leaves a record out silently.

use mxpolicy_guest::{AdminRequest, state};
use serde::Serialize;
use serde_json::{Value, json};
use strum::{EnumString, VariantNames};

use crate::{
    Erasure,
    records::{Reference, by_user_prefix, erasure_of, gone_key, media_of, reference_keys},
};

/// The admin commands, named in kebab-case (`media-of-user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumString, VariantNames)]
#[strum(serialize_all = "kebab-case")]
enum Command {
    /// The media a user uploaded, their total size, and the user's erasure.
    MediaOfUser,
    /// One media: its record, uploader's erasure and references (or when it was deleted).
    MediaInfo,
}

/// Where an erasure is, as the admin commands report it (`"grace"` or `"final"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum ErasureState {
    /// Inside the grace period: the media is refused but not deleted yet.
    Grace,
    /// The grace period is over: the media is (being) deleted.
    Final,
}

/// Run one admin command.
pub(crate) fn handle(req: &AdminRequest) -> Result<Value, String> {
    let command = req.command.parse::<Command>().map_err(|_| {
        format!(
            "unknown command `{}`; known: {}",
            req.command,
            Command::VARIANTS.join(", ")
        )
    })?;
    match command {
        Command::MediaOfUser => media_of_user(&req.args, req.now_ms),
        Command::MediaInfo => media_info(&req.args, req.now_ms),
    }
}

fn media_of_user(args: &Value, now_ms: u64) -> Result<Value, String> {
    let user = args
        .get("user")
        .and_then(Value::as_str)
        .ok_or("`user` (a user id) is required")?;
    let prefix = by_user_prefix(user);
    let mut total: u64 = 0;
    let mut media = Vec::new();
    for key in state::keys_iter(&prefix) {
        let Some(mxc) = key.strip_prefix(&prefix) else {
            continue;
        };
        let Some(record) = media_of(mxc).map_err(|e| e.to_string())? else {
            continue;
        };
        total = total.saturating_add(record.size);
        media.push(json!({
            "mxc": mxc,
            "size": record.size,
            "content_type": record.content_type,
            "uploaded_at_ms": record.uploaded_at_ms,
        }));
    }
    let erasure = erasure_of(user).map_err(|e| e.to_string())?;
    Ok(json!({
        "user": user,
        "media": media,
        "total_bytes": total,
        "erasure": erasure.map(|e| erasure_json(&e, now_ms)),
    }))
}

fn media_info(args: &Value, now_ms: u64) -> Result<Value, String> {
    let mxc = args
        .get("mxc")
        .and_then(Value::as_str)
        .ok_or("`mxc` (an mxc:// URI) is required")?;
    let Some(record) = media_of(mxc).map_err(|e| e.to_string())? else {
        if let Some(deleted_at_ms) = state::get::<u64>(&gone_key(mxc)).map_err(|e| e.to_string())? {
            return Ok(json!({"mxc": mxc, "deleted_at_ms": deleted_at_ms}));
        }
        return Err(format!("no media {mxc} was uploaded here"));
    };
    let mut references = Vec::new();
    for key in reference_keys(mxc) {
        let Some(r) = state::get::<Reference>(&key).map_err(|e| e.to_string())? else {
            continue;
        };
        let joined = match &r.members {
            Some(h) => {
                state::get::<Vec<String>>(&format!("members/{h}")).map_err(|e| e.to_string())?
            }
            None => None,
        };
        references.push(json!({
            "room_id": r.room_id,
            "sender": r.sender,
            "event_type": r.event_type,
            "sent_at_ms": r.sent_at_ms,
            "joined_at_send": joined,
        }));
    }
    let erasure = erasure_of(&record.uploader).map_err(|e| e.to_string())?;
    Ok(json!({
        "mxc": mxc,
        "uploader": record.uploader,
        "size": record.size,
        "content_type": record.content_type,
        "uploaded_at_ms": record.uploaded_at_ms,
        "uploader_erasure": erasure.map(|e| erasure_json(&e, now_ms)),
        "references": references,
    }))
}

fn erasure_json(erasure: &Erasure, now_ms: u64) -> Value {
    json!({
        "requested_at_ms": erasure.requested_at_ms,
        "final_at_ms": erasure.final_at_ms,
        "state": if erasure.is_final(now_ms) {
            ErasureState::Final
        } else {
            ErasureState::Grace
        },
    })
}
