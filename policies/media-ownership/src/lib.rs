//! GDPR media ownership: media uploaded by a user who asked for erasure stops being served at
//! once, to everyone, with the same answer as media that never existed, and is deleted when the
//! erasure becomes final (the grace period ends). Optional upload limits: size, content types,
//! per-user quota.
//!
//! The plugin keeps its own knowledge (plugin state is per plugin name):
//! - who uploaded each `mxc://` URI (`on-media-upload`);
//! - which events reference it, where, when, and, when the "email model" exception is on, who
//!   was joined to the room at that moment (`on-send`);
//! - which users asked for erasure, and when (`on-deactivate`, `on-reactivate`), with a durable
//!   timer at the end of the grace period (`on-timer`), which returns the delete-media actions.
//!
//! It returns no deactivation actions and never vetoes a deactivation or reactivation: the
//! erasure plugin decides those. Configure both with the same grace period.
//!
//! Config (every key optional):
//! ```json
//! {"grace_period_ms": 2592000000, "email_model_exception": false,
//!  "max_upload_bytes": 52428800, "allowed_content_types": ["image/*", "application/pdf"],
//!  "quota_bytes": 1073741824, "quota_errcode": "M_FORBIDDEN", "deletion_batch_size": 500}
//! ```

mod extract;

use std::collections::BTreeSet;

use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, DeactivateContext, Hook, MediaFetchContext,
    MediaUploadContext, MxcUri, Outcome, Policy, ReactivateContext, Requester, RoomId, SendContext,
    TimerContext, UserId, export_policy, homeserver, log, state, timers,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The default grace period: 30 days, the erasure plugin's default too.
pub const DEFAULT_GRACE_PERIOD_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// The default number of media (and references) cleaned up per timer firing.
pub const DEFAULT_DELETION_BATCH_SIZE: u32 = 500;
/// The largest batch: 5000 delete-media actions stay well under the host's output cap.
pub const MAX_DELETION_BATCH_SIZE: u32 = 5000;
/// The errcode of a refused fetch: the host's answer for media that does not exist.
pub const NOT_FOUND_ERRCODE: &str = "M_NOT_FOUND";
/// The message of a refused fetch, identical to the host's answer for missing media.
pub const NOT_FOUND_MESSAGE: &str = "Not found";

/// The host refuses state keys longer than this (bytes).
const MAX_KEY_BYTES: usize = 1024;
/// The content type of uploads that declare none (as Synapse assumes).
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Time between the erasure request and its becoming final (deletion), in ms. Must equal
    /// the erasure plugin's grace period. Default 30 days.
    #[serde(default = "default_grace_period_ms")]
    pub grace_period_ms: u64,
    /// During the grace period only, let a user fetch an erased user's media if they were
    /// joined to a room where an event referencing it was sent, when it was sent (as an email
    /// stays in the recipients' mailboxes). Default `false`. Membership is only recorded while
    /// this is on.
    #[serde(default)]
    pub email_model_exception: bool,
    /// Largest upload accepted, in bytes (`M_TOO_LARGE` above). Default: no limit.
    #[serde(default)]
    pub max_upload_bytes: Option<u64>,
    /// Content types accepted: exact (`application/pdf`) or a whole family (`image/*`, `*/*`).
    /// Uploads without a type count as `application/octet-stream`. Default: any type.
    #[serde(default)]
    pub allowed_content_types: Option<Vec<String>>,
    /// Per-user quota: the most bytes of media a user may have stored. Default: no quota.
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// The errcode for uploads over quota. Default `M_FORBIDDEN` (Synapse's own
    /// `media_upload_limits` uses `M_RESOURCE_LIMIT_EXCEEDED`; set that to match it).
    #[serde(default = "default_quota_errcode")]
    pub quota_errcode: String,
    /// Media (and references) cleaned up per timer firing; more are done at the next run.
    #[serde(default = "default_deletion_batch_size")]
    pub deletion_batch_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period_ms: DEFAULT_GRACE_PERIOD_MS,
            email_model_exception: false,
            max_upload_bytes: None,
            allowed_content_types: None,
            quota_bytes: None,
            quota_errcode: default_quota_errcode(),
            deletion_batch_size: DEFAULT_DELETION_BATCH_SIZE,
        }
    }
}

fn default_grace_period_ms() -> u64 {
    DEFAULT_GRACE_PERIOD_MS
}

fn default_quota_errcode() -> String {
    "M_FORBIDDEN".into()
}

fn default_deletion_batch_size() -> u32 {
    DEFAULT_DELETION_BATCH_SIZE
}

/// The policy.
#[derive(Debug)]
pub struct MediaOwnership {
    config: Config,
    /// `allowed_content_types`, lowercased.
    allowed: Option<Vec<String>>,
}

// ---- state ----
//
// media/<mxc>              -> MediaRecord
// by-user/<user>/<mxc>     -> (empty)           index for "every mxc this user uploaded"
// usage/<user>             -> u64               bytes stored, for the quota
// ref/<mxc>/<seq:016x>     -> Reference         one event referencing the media
// ref-seq                  -> u64               last reference number
// members/<sha256>         -> Vec<String>       a room's joined members at some moment
// members-rc/<sha256>      -> u64               references pointing at that snapshot
// erasure/<user>           -> Erasure
// gone/<mxc>               -> u64               deleted at (ms): refused even if still stored
//
// Key separators are unambiguous: server names hold no `/`, so `by-user/<user>/` never
// prefixes another user's keys; reference keys are checked to end in exactly 16 hex digits.

/// What the plugin knows about one uploaded media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// The uploader.
    pub uploader: String,
    /// Size in bytes.
    pub size: u64,
    /// The declared content type.
    pub content_type: Option<String>,
    /// Upload time.
    pub uploaded_at_ms: u64,
}

/// One event referencing a media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// The room.
    pub room_id: String,
    /// The event's sender.
    pub sender: String,
    /// The event's type.
    pub event_type: String,
    /// When it was sent (`origin_server_ts`, or the hook's time if absent).
    pub sent_at_ms: u64,
    /// The snapshot of the room's joined members when it was sent (`members/<hash>`), if
    /// membership was recorded.
    pub members: Option<String>,
}

/// A user's erasure request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// When it was requested.
    pub requested_at_ms: u64,
    /// When it becomes final (request + grace period).
    pub final_at_ms: u64,
    /// Whether the deletion has run (started).
    pub finalized: bool,
}

impl Erasure {
    /// Whether the grace period is over (the erasure is final) at `now_ms`.
    pub fn is_final(&self, now_ms: u64) -> bool {
        self.finalized || now_ms >= self.final_at_ms
    }

    /// Whether media uploaded at `uploaded_at_ms` falls under this erasure: everything
    /// uploaded up to the request. Media uploaded after a reactivation does not.
    pub fn covers(&self, uploaded_at_ms: u64) -> bool {
        uploaded_at_ms <= self.requested_at_ms
    }
}

fn media_key(mxc: &str) -> String {
    format!("media/{mxc}")
}

fn by_user_prefix(user: &str) -> String {
    format!("by-user/{user}/")
}

fn usage_key(user: &str) -> String {
    format!("usage/{user}")
}

fn ref_prefix(mxc: &str) -> String {
    format!("ref/{mxc}/")
}

fn erasure_key(user: &str) -> String {
    format!("erasure/{user}")
}

fn gone_key(mxc: &str) -> String {
    format!("gone/{mxc}")
}

/// The erasure timer of `user` (its id is also its state key).
fn timer_id(user: &str) -> String {
    erasure_key(user)
}

/// The reference keys of `mxc`, ignoring keys of another media whose URI extends this one.
fn reference_keys(mxc: &str) -> Vec<String> {
    let prefix = ref_prefix(mxc);
    state::keys(&prefix)
        .into_iter()
        .filter(|k| {
            k.strip_prefix(&prefix)
                .is_some_and(|seq| seq.len() == 16 && seq.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect()
}

/// The answer for media that does not exist.
fn not_found() -> Outcome {
    Outcome::deny(NOT_FOUND_ERRCODE, NOT_FOUND_MESSAGE)
}

/// `type/subtype` in lowercase, without parameters.
fn normalize_content_type(content_type: Option<&str>) -> String {
    content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned())
}

/// Whether `content_type` (normalized) matches `pattern` (lowercase): exact, `type/*`, `*/*`.
fn content_type_matches(pattern: &str, content_type: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some("*") => true,
        Some(family) => content_type
            .split_once('/')
            .is_some_and(|(t, _)| t == family),
        None => pattern == content_type,
    }
}

fn erasure_of(user: &str) -> Option<Erasure> {
    state::get(&erasure_key(user))
}

fn erasure_json(erasure: &Erasure, now_ms: u64) -> Value {
    json!({
        "requested_at_ms": erasure.requested_at_ms,
        "final_at_ms": erasure.final_at_ms,
        "state": if erasure.is_final(now_ms) { "final" } else { "grace" },
    })
}

/// The members snapshot `hash` gets one more (or fewer) reference; dropped at zero.
fn adjust_snapshot_refs(hash: &str, delta: i64) {
    let rc_key = format!("members-rc/{hash}");
    let rc = state::get::<u64>(&rc_key).unwrap_or(0);
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

impl MediaOwnership {
    /// Refuse an upload, or `None` to accept it.
    fn check_upload(&self, ctx: &MediaUploadContext) -> Option<Outcome> {
        if let Some(max) = self.config.max_upload_bytes
            && ctx.size > max
        {
            return Some(Outcome::deny(
                "M_TOO_LARGE",
                format!(
                    "This upload is {} bytes; the largest upload allowed is {max} bytes",
                    ctx.size
                ),
            ));
        }
        if let Some(allowed) = &self.allowed {
            let content_type = normalize_content_type(ctx.content_type.as_deref());
            if !allowed
                .iter()
                .any(|p| content_type_matches(p, &content_type))
            {
                return Some(Outcome::deny(
                    "M_FORBIDDEN",
                    format!(
                        "Media of type {content_type} may not be uploaded here; allowed types: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let mxc = ctx.mxc.as_str();
        let user = ctx.uploader.as_str();
        let longest = format!("{}{mxc}", by_user_prefix(user))
            .len()
            .max(ref_prefix(mxc).len() + 16);
        if longest > MAX_KEY_BYTES {
            return Some(Outcome::deny(
                "M_FORBIDDEN",
                "This media id is too long for the media policy to track",
            ));
        }
        if let Some(quota) = self.config.quota_bytes {
            let mut used = state::get::<u64>(&usage_key(user)).unwrap_or(0);
            // Re-uploading content for the same URI (asynchronous uploads) replaces it.
            if let Some(old) = state::get::<MediaRecord>(&media_key(mxc))
                && old.uploader == user
            {
                used = used.saturating_sub(old.size);
            }
            if used.saturating_add(ctx.size) > quota {
                return Some(Outcome::deny(
                    &self.config.quota_errcode,
                    format!(
                        "Media upload quota exceeded: you store {used} of {quota} bytes, and \
                         this upload is {} bytes",
                        ctx.size
                    ),
                ));
            }
        }
        None
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
            if let Some(Reference {
                members: Some(hash),
                ..
            }) = state::get::<Reference>(&key)
            {
                adjust_snapshot_refs(&hash, -1);
            }
            state::delete(&key);
            used += 1;
        }
        state::delete(&media_key(mxc));
        state::delete(&format!("{}{mxc}", by_user_prefix(&record.uploader)));
        let usage_key = usage_key(&record.uploader);
        let usage = state::get::<u64>(&usage_key)
            .unwrap_or(0)
            .saturating_sub(record.size);
        if usage == 0 {
            state::delete(&usage_key);
        } else {
            state::set(&usage_key, &usage);
        }
        (true, used + 1)
    }

    /// Whether `user` was joined to a room where an event referencing `mxc` was sent, when it
    /// was sent (as recorded).
    fn joined_at_a_reference(mxc: &str, user: &str) -> bool {
        let mut seen = BTreeSet::new();
        reference_keys(mxc).iter().any(|key| {
            let Some(Reference {
                members: Some(hash),
                ..
            }) = state::get::<Reference>(key)
            else {
                return false;
            };
            if !seen.insert(hash.clone()) {
                return false;
            }
            state::get::<Vec<String>>(&format!("members/{hash}"))
                .is_some_and(|members| members.iter().any(|m| m == user))
        })
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
        let prefix = by_user_prefix(user);
        for key in state::keys(&prefix) {
            let Some(mxc) = key.strip_prefix(&prefix) else {
                continue;
            };
            let Some(record) = state::get::<MediaRecord>(&media_key(mxc)) else {
                // A stale index entry.
                state::delete(&key);
                continue;
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
        }
        log::info(&format!(
            "erasure of {user} is final: {} media deleted{}",
            actions.len(),
            if unfinished { ", more to follow" } else { "" }
        ));
        actions
    }

    fn admin_media_of_user(args: &Value, now_ms: u64) -> Result<Value, String> {
        let user = args
            .get("user")
            .and_then(Value::as_str)
            .ok_or("`user` (a user id) is required")?;
        let prefix = by_user_prefix(user);
        let mut total: u64 = 0;
        let media: Vec<Value> = state::keys(&prefix)
            .iter()
            .filter_map(|key| {
                let mxc = key.strip_prefix(&prefix)?;
                let record = state::get::<MediaRecord>(&media_key(mxc))?;
                total = total.saturating_add(record.size);
                Some(json!({
                    "mxc": mxc,
                    "size": record.size,
                    "content_type": record.content_type,
                    "uploaded_at_ms": record.uploaded_at_ms,
                }))
            })
            .collect();
        Ok(json!({
            "user": user,
            "media": media,
            "total_bytes": total,
            "erasure": erasure_of(user).map(|e| erasure_json(&e, now_ms)),
        }))
    }

    fn admin_media_info(args: &Value, now_ms: u64) -> Result<Value, String> {
        let mxc = args
            .get("mxc")
            .and_then(Value::as_str)
            .ok_or("`mxc` (an mxc:// URI) is required")?;
        let Some(record) = state::get::<MediaRecord>(&media_key(mxc)) else {
            if let Some(deleted_at_ms) = state::get::<u64>(&gone_key(mxc)) {
                return Ok(json!({"mxc": mxc, "deleted_at_ms": deleted_at_ms}));
            }
            return Err(format!("no media {mxc} was uploaded here"));
        };
        let references: Vec<Value> = reference_keys(mxc)
            .iter()
            .filter_map(|key| state::get::<Reference>(key))
            .map(|r| {
                let joined = r
                    .members
                    .as_ref()
                    .and_then(|h| state::get::<Vec<String>>(&format!("members/{h}")));
                json!({
                    "room_id": r.room_id,
                    "sender": r.sender,
                    "event_type": r.event_type,
                    "sent_at_ms": r.sent_at_ms,
                    "joined_at_send": joined,
                })
            })
            .collect();
        Ok(json!({
            "mxc": mxc,
            "uploader": record.uploader,
            "size": record.size,
            "content_type": record.content_type,
            "uploaded_at_ms": record.uploaded_at_ms,
            "uploader_erasure": erasure_of(&record.uploader).map(|e| erasure_json(&e, now_ms)),
            "references": references,
        }))
    }
}

impl Policy for MediaOwnership {
    const NAME: &'static str = "media-ownership";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: &'static [Hook] = &[
        Hook::OnSend,
        Hook::OnDeactivate,
        Hook::OnReactivate,
        Hook::OnMediaUpload,
        Hook::OnMediaFetch,
        Hook::OnTimer,
        Hook::OnAdmin,
    ];
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        if !config.quota_errcode.starts_with("M_") {
            return Err(ConfigError::new(
                "quota_errcode",
                "a Matrix errcode starts with `M_`",
            ));
        }
        if config.deletion_batch_size == 0 || config.deletion_batch_size > MAX_DELETION_BATCH_SIZE {
            return Err(ConfigError::new(
                "deletion_batch_size",
                format!("must be between 1 and {MAX_DELETION_BATCH_SIZE}"),
            ));
        }
        let allowed = match &config.allowed_content_types {
            None => None,
            Some(types) => {
                let mut out = Vec::with_capacity(types.len());
                for (i, t) in types.iter().enumerate() {
                    let t = t.trim().to_ascii_lowercase();
                    let valid = t
                        .split_once('/')
                        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'))
                        && (!t.starts_with("*/") || t == "*/*")
                        && !t.contains(';');
                    if !valid {
                        return Err(ConfigError::new(
                            format!("allowed_content_types.{i}"),
                            "expected a content type like `image/png`, `image/*` or `*/*`",
                        ));
                    }
                    out.push(t);
                }
                Some(out)
            }
        };
        Ok(Self { config, allowed })
    }

    fn on_send(&self, ctx: &SendContext) -> Outcome {
        let known: Vec<String> = extract::media_references(&ctx.content)
            .into_iter()
            .filter(|mxc| ref_prefix(mxc).len() + 16 <= MAX_KEY_BYTES)
            .filter(|mxc| state::get_raw(&media_key(mxc)).is_some())
            .collect();
        if known.is_empty() {
            return Outcome::allow();
        }
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
        let mut seq = state::get::<u64>("ref-seq").unwrap_or(0);
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

    fn on_deactivate(&self, ctx: &DeactivateContext) -> Outcome {
        if !ctx.erase {
            return Outcome::allow();
        }
        let user = ctx.user.as_str();
        if erasure_of(user).is_some_and(|existing| !existing.finalized) {
            // A request is already running: its grace period is not extended.
            return Outcome::allow();
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

    fn on_reactivate(&self, ctx: &ReactivateContext) -> Outcome {
        let user = ctx.user.as_str();
        match erasure_of(user) {
            Some(erasure) if !erasure.is_final(ctx.now_ms) => {
                state::delete(&erasure_key(user));
                timers::cancel(&timer_id(user));
                log::info(&format!(
                    "{user} was reactivated within the grace period: their media is served again"
                ));
            }
            Some(_) => log::info(&format!(
                "{user} was reactivated after their erasure became final: their media stays \
                 deleted"
            )),
            None => {}
        }
        Outcome::allow()
    }

    fn on_media_upload(&self, ctx: &MediaUploadContext) -> Outcome {
        if let Some(refusal) = self.check_upload(ctx) {
            return refusal;
        }
        let mxc = ctx.mxc.as_str();
        let user = ctx.uploader.as_str();
        if let Some(old) = state::get::<MediaRecord>(&media_key(mxc)) {
            // Content uploaded again for the same URI: replace the old record's accounting.
            Self::forget_usage_and_index(mxc, &old);
        }
        state::set(
            &media_key(mxc),
            &MediaRecord {
                uploader: user.to_owned(),
                size: ctx.size,
                content_type: ctx.content_type.clone(),
                uploaded_at_ms: ctx.now_ms,
            },
        );
        state::set_raw(&format!("{}{mxc}", by_user_prefix(user)), &[]);
        let key = usage_key(user);
        let usage = state::get::<u64>(&key)
            .unwrap_or(0)
            .saturating_add(ctx.size);
        state::set(&key, &usage);
        Outcome::allow()
    }

    fn on_media_fetch(&self, ctx: &MediaFetchContext) -> Outcome {
        let mxc = ctx.mxc.as_str();
        let Some(record) = state::get::<MediaRecord>(&media_key(mxc)) else {
            if state::get_raw(&gone_key(mxc)).is_some() {
                // Deleted by an erasure: refused even if the homeserver still has a copy.
                return not_found();
            }
            // Not uploaded here (remote media, or before the plugin was loaded): not ours.
            return Outcome::allow();
        };
        let Some(erasure) = erasure_of(&record.uploader) else {
            return Outcome::allow();
        };
        if !erasure.covers(record.uploaded_at_ms) {
            return Outcome::allow();
        }
        if !erasure.is_final(ctx.now_ms)
            && self.config.email_model_exception
            && let Requester::User(user) = &ctx.requester
            && Self::joined_at_a_reference(mxc, user.as_str())
        {
            return Outcome::allow();
        }
        not_found()
    }

    fn on_timer(&self, ctx: &TimerContext) -> Vec<Action> {
        let Some(user) = ctx.id.strip_prefix("erasure/") else {
            log::warn(&format!("unknown timer `{}` ignored", ctx.id));
            return Vec::new();
        };
        let Some(erasure) = erasure_of(user) else {
            // Cancelled by a reactivation.
            return Vec::new();
        };
        if !erasure.is_final(ctx.now_ms) {
            // Fired early (a rescheduled timer): wait for the end of the grace period.
            timers::schedule(&ctx.id, erasure.final_at_ms, user);
            return Vec::new();
        }
        self.finalize(user, erasure, ctx.now_ms)
    }

    fn on_admin(&self, req: &AdminRequest) -> Result<Value, String> {
        match req.command.as_str() {
            "media-of-user" => Self::admin_media_of_user(&req.args, req.now_ms),
            "media-info" => Self::admin_media_info(&req.args, req.now_ms),
            other => Err(format!(
                "unknown command `{other}`; known: media-of-user, media-info"
            )),
        }
    }
}

impl MediaOwnership {
    /// Remove a media's index entry and its share of its uploader's usage (before the record
    /// is replaced by a new upload for the same URI).
    fn forget_usage_and_index(mxc: &str, old: &MediaRecord) {
        state::delete(&format!("{}{mxc}", by_user_prefix(&old.uploader)));
        let key = usage_key(&old.uploader);
        let usage = state::get::<u64>(&key)
            .unwrap_or(0)
            .saturating_sub(old.size);
        state::set(&key, &usage);
    }
}

export_policy!(MediaOwnership);

#[cfg(test)]
mod tests;
