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

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use mxpolicy_guest::{
    Action, AdminRequest, ConfigError, DeactivateContext, Hook, Outcome, Policy, ReactivateContext,
    RoomId, SendContext, ServeContext, ServeOutcome, ServeVerdict, TimerContext, UserId, Viewer,
    export_policy, homeserver, log, state, timers,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// The default grace period: 30 days, as in the Matrix GDPR plan.
pub const DEFAULT_GRACE_PERIOD_MS: u64 = 30 * DAY_MS;
/// The shortest pseudonym secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// The errcode of the second-factor veto.
pub const SECOND_FACTOR_ERRCODE: &str = "M_FORBIDDEN";
/// The extra key of the second-factor veto's error body (`true`), so clients can tell this
/// refusal from others and ask for the second factor.
pub const SECOND_FACTOR_FIELD: &str = "org.mxpolicy.erasure.second_factor_required";

/// The plugin's configuration. Every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Grace period between the request and the irreversible steps, in milliseconds.
    #[serde(default)]
    pub grace_period_ms: Option<u64>,
    /// The same in days (give one of the two; default 30 days).
    #[serde(default)]
    pub grace_period_days: Option<u64>,
    /// Veto erasure requests that did not pass a second factor (admins are exempt).
    #[serde(default)]
    pub require_second_factor: bool,
    /// Serve erased users' events to later client viewers with a per-room pseudonym as sender.
    #[serde(default)]
    pub pseudonymize_clients: bool,
    /// The HMAC key of the pseudonyms (required with `pseudonymize_clients`).
    #[serde(default)]
    pub pseudonym_secret: Option<String>,
    /// `"spec"` (default) or `"strict"`.
    #[serde(default)]
    pub federation: Option<String>,
    /// Withhold, rather than redact, erased events for servers that had no user joined.
    #[serde(default)]
    pub federation_withhold_unjoined: bool,
}

/// How erased events are served over federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FederationMode {
    /// The spec's text (MSC4025): a server that had a user joined at the event gets it whole.
    Spec,
    /// Synapse's behaviour: every server gets it redacted.
    Strict,
}

/// The policy, built from its [`Config`].
pub struct Erasure {
    grace_period_ms: u64,
    require_second_factor: bool,
    pseudonym_key: Option<Hmac<Sha256>>,
    federation: FederationMode,
    withhold_unjoined: bool,
}

// ---- state ----

/// What the plugin keeps about one user, under `erasure/<user>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// A request inside its grace period.
    pending: Option<Pending>,
    /// The last erasure that became final.
    completed: Option<Completed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    requested_at_ms: u64,
    final_at_ms: u64,
    /// Rooms the user was joined to when asking (they leave them at once).
    rooms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Completed {
    requested_at_ms: u64,
    completed_at_ms: u64,
    /// Set when the account was reactivated after the erasure became final: events from then
    /// on are the user's new life and are served normally; earlier ones stay filtered.
    reactivated_at_ms: Option<u64>,
}

impl Record {
    /// Whether an event the user sent at `ts` is filtered.
    fn hides(&self, ts: u64) -> bool {
        self.pending.is_some()
            || self
                .completed
                .as_ref()
                .is_some_and(|c| c.reactivated_at_ms.is_none_or(|r| ts < r))
    }

    /// Whether the user counts as erased for purging: a final erasure, not reactivated since,
    /// and no cancellable request pending.
    fn is_final(&self) -> bool {
        self.pending.is_none()
            && self
                .completed
                .as_ref()
                .is_some_and(|c| c.reactivated_at_ms.is_none())
    }

    fn status(&self) -> &'static str {
        match (&self.pending, &self.completed) {
            (Some(_), _) => "pending",
            (None, Some(c)) if c.reactivated_at_ms.is_some() => "final-reactivated",
            (None, Some(_)) => "final",
            (None, None) => "none",
        }
    }
}

fn record_key(user: &str) -> String {
    format!("erasure/{user}")
}

/// `sent/<user> <room>`: the user sent an event to the room. A space cannot occur in ids, so
/// one user's prefix never matches another's keys.
fn sent_prefix(user: &str) -> String {
    format!("sent/{user} ")
}

/// `waiting/<room>`: the room is not purged yet; the value lists the users who keep it alive.
fn waiting_key(room: &str) -> String {
    format!("waiting/{room}")
}

/// `blocker/<user> <room>`: the user keeps `room` from being purged.
fn blocker_prefix(user: &str) -> String {
    format!("blocker/{user} ")
}

/// `purged/<room>`: when the room's purge was requested.
fn purged_key(room: &str) -> String {
    format!("purged/{room}")
}

const TIMER_PREFIX: &str = "erase/";

fn timer_id(user: &str) -> String {
    format!("{TIMER_PREFIX}{user}")
}

/// The user's record: `Ok(None)` if there is none, `Err` if it does not decode.
fn load(user: &str) -> Result<Option<Record>, String> {
    state::try_get::<Record>(&record_key(user))
        .map_err(|e| format!("erasure record of {user} does not decode: {e}"))
}

fn save(user: &str, record: &Record) {
    if record.pending.is_none() && record.completed.is_none() {
        state::delete(&record_key(user));
    } else {
        state::set(&record_key(user), record);
    }
}

/// The rooms under a `<kind>/<user> ` prefix.
fn rooms_under(prefix: &str) -> Vec<String> {
    state::keys(prefix)
        .into_iter()
        .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

// ---- serving ----

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

    fn serve(&self, ctx: &ServeContext, federation: bool) -> ServeOutcome {
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
                        log::error(&e);
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
    if let Ok(Some(old)) = state::try_get::<Vec<String>>(&waiting) {
        for user in old {
            state::delete(&format!("{}{room}", blocker_prefix(&user)));
        }
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

// ---- admin ----

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
    for key in state::keys("erasure/") {
        let user = key.trim_start_matches("erasure/");
        let Some(record) = load(user)? else { continue };
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
    let record = load(user)?.unwrap_or_default();
    Ok(json!({
        "user": user,
        "status": record.status(),
        "pending": record.pending.as_ref().map(|p| pending_json(user, p)),
        "completed": record.completed.as_ref().map(|c| completed_json(user, c)),
    }))
}

fn list_purged_rooms() -> Value {
    let rooms: Vec<Value> = state::keys("purged/")
        .into_iter()
        .map(|key| {
            let at = state::try_get::<u64>(&key).ok().flatten();
            json!({"room": key.trim_start_matches("purged/"), "purged_at_ms": at})
        })
        .collect();
    json!({ "rooms": rooms })
}

impl Policy for Erasure {
    const NAME: &'static str = "erasure";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: &'static [Hook] = &[
        Hook::OnSend,
        Hook::OnClientServe,
        Hook::OnFederationServe,
        Hook::OnDeactivate,
        Hook::OnReactivate,
        Hook::OnTimer,
        Hook::OnAdmin,
    ];
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let grace_period_ms = match (config.grace_period_ms, config.grace_period_days) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "grace_period_days",
                    "give either `grace_period_ms` or `grace_period_days`, not both",
                ));
            }
            (Some(ms), None) => ms,
            (None, Some(days)) => days.checked_mul(DAY_MS).ok_or_else(|| {
                ConfigError::new("grace_period_days", "the grace period is too long")
            })?,
            (None, None) => DEFAULT_GRACE_PERIOD_MS,
        };
        let federation = match config.federation.as_deref() {
            None | Some("spec") => FederationMode::Spec,
            Some("strict") => FederationMode::Strict,
            Some(other) => {
                return Err(ConfigError::new(
                    "federation",
                    format!("unknown mode `{other}`: expected `spec` or `strict`"),
                ));
            }
        };
        let pseudonym_key = if config.pseudonymize_clients {
            let secret = config.pseudonym_secret.as_deref().unwrap_or_default();
            if secret.len() < MIN_SECRET_LEN {
                return Err(ConfigError::new(
                    "pseudonym_secret",
                    format!(
                        "`pseudonymize_clients` needs a secret of at least {MIN_SECRET_LEN} bytes"
                    ),
                ));
            }
            Some(
                Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                    .map_err(|e| ConfigError::new("pseudonym_secret", e.to_string()))?,
            )
        } else {
            None
        };
        Ok(Self {
            grace_period_ms,
            require_second_factor: config.require_second_factor,
            pseudonym_key,
            federation,
            withhold_unjoined: config.federation_withhold_unjoined,
        })
    }

    /// Remember which rooms each user sent to (one key per user and room, written once), so
    /// rooms a user left before erasing are still examined for purging.
    fn on_send(&self, ctx: &SendContext) -> Outcome {
        let key = format!("{}{}", sent_prefix(ctx.sender.as_str()), ctx.room_id);
        if state::get_raw(&key).is_none() {
            state::set_raw(&key, &[]);
        }
        Outcome::allow()
    }

    fn on_client_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        self.serve(ctx, false)
    }

    fn on_federation_serve(&self, ctx: &ServeContext) -> ServeOutcome {
        self.serve(ctx, true)
    }

    fn on_deactivate(&self, ctx: &DeactivateContext) -> Outcome {
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
            Err(e) => {
                // Start afresh: a pending request filters everything, the safe direction.
                log::error(&e);
                Record::default()
            }
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

    fn on_reactivate(&self, ctx: &ReactivateContext) -> Outcome {
        let user = ctx.user.as_str();
        let mut record = match load(user) {
            Ok(Some(r)) => r,
            Ok(None) => return Outcome::allow(),
            Err(e) => {
                // Keep the unreadable record (it filters everything) and let the account back.
                log::error(&e);
                return Outcome::allow();
            }
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

    fn on_timer(&self, ctx: &TimerContext) -> Vec<Action> {
        let Some(user) = ctx.id.strip_prefix(TIMER_PREFIX) else {
            log::warn(&format!("unknown timer `{}`", ctx.id));
            return Vec::new();
        };
        let mut record = match load(user) {
            Ok(Some(r)) => r,
            Ok(None) => return Vec::new(),
            Err(e) => {
                log::error(&e);
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

    fn on_admin(&self, req: &AdminRequest) -> Result<Value, String> {
        match req.command.as_str() {
            "list-erasures" => list_erasures(),
            "erasure-status" => erasure_status(&req.args),
            "list-purged-rooms" => Ok(list_purged_rooms()),
            other => Err(format!(
                "unknown command `{other}`: expected `list-erasures`, `erasure-status` or \
                 `list-purged-rooms`"
            )),
        }
    }
}

export_policy!(Erasure);

#[cfg(test)]
mod tests {
    use mxpolicy_guest::{HistoryVisibility, ServeEvent, Verdict, testing};

    use super::*;

    const HS: &str = "hs.example";
    const ALICE: &str = "@alice:hs.example";
    const BOB: &str = "@bob:hs.example";
    const ROOM: &str = "!room:hs.example";
    const T0: u64 = 1_767_225_600_000;

    fn policy(config: Value) -> Erasure {
        testing::reset(HS);
        build(config)
    }

    fn build(config: Value) -> Erasure {
        let config: Config = serde_json::from_value(config).unwrap();
        Erasure::new(config).unwrap()
    }

    fn config_error(config: Value) -> ConfigError {
        let config: Config = serde_json::from_value(config).unwrap();
        Erasure::new(config).err().unwrap()
    }

    fn deactivate(user: &str, erase: bool, now_ms: u64) -> DeactivateContext {
        DeactivateContext {
            now_ms,
            user: user.into(),
            erase,
            by_admin: false,
            second_factor: false,
        }
    }

    fn reactivate(user: &str, now_ms: u64) -> ReactivateContext {
        ReactivateContext {
            now_ms,
            user: user.into(),
            by_admin: true,
        }
    }

    fn event(sender: &str, room: &str, ts: u64, joined: bool) -> ServeEvent {
        ServeEvent {
            event_id: format!("$e{ts}").into(),
            room_id: room.into(),
            sender: sender.into(),
            event_type: "m.room.message".into(),
            state_key: None,
            origin_server_ts: ts,
            room_version: "11".into(),
            history_visibility: HistoryVisibility::Shared,
            viewer_joined: joined,
        }
    }

    fn serve(viewer: Viewer, events: Vec<ServeEvent>) -> ServeContext {
        ServeContext {
            now_ms: T0,
            viewer,
            events,
        }
    }

    fn user(u: &str) -> Viewer {
        Viewer::User(u.into())
    }

    /// Fire every timer due at `now_ms`, as the host would, collecting the actions.
    fn run_timers(p: &Erasure, now_ms: u64) -> Vec<Action> {
        testing::take_due_timers(now_ms)
            .into_iter()
            .flat_map(|(id, due_ms, payload)| {
                p.on_timer(&TimerContext {
                    now_ms,
                    id,
                    due_ms,
                    payload,
                })
            })
            .collect()
    }

    fn purges(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::PurgeRoomHistory(r) => Some(r.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn config_defaults_and_errors() {
        let p = policy(json!({}));
        assert_eq!(p.grace_period_ms, DEFAULT_GRACE_PERIOD_MS);
        assert_eq!(p.federation, FederationMode::Spec);
        assert!(p.pseudonym_key.is_none());
        assert_eq!(
            build(json!({"grace_period_days": 2})).grace_period_ms,
            2 * DAY_MS
        );
        assert_eq!(build(json!({"grace_period_ms": 5})).grace_period_ms, 5);
        assert_eq!(
            config_error(json!({"grace_period_ms": 1, "grace_period_days": 1})).key,
            "grace_period_days"
        );
        assert_eq!(
            config_error(json!({"grace_period_days": u64::MAX})).key,
            "grace_period_days"
        );
        assert_eq!(
            config_error(json!({"pseudonymize_clients": true})).key,
            "pseudonym_secret"
        );
        assert_eq!(
            config_error(json!({"pseudonymize_clients": true, "pseudonym_secret": "short"})).key,
            "pseudonym_secret"
        );
        assert_eq!(config_error(json!({"federation": "lax"})).key, "federation");
        assert_eq!(
            build(json!({"federation": "strict"})).federation,
            FederationMode::Strict
        );
    }

    #[test]
    fn plain_deactivation_records_nothing() {
        let p = policy(json!({}));
        let out = p.on_deactivate(&deactivate(ALICE, false, T0));
        assert!(out.is_allow());
        assert_eq!(
            out.actions,
            vec![
                Action::LeaveAllRooms(ALICE.into()),
                Action::RemoveFromUserDirectory(ALICE.into()),
                Action::UnbindThreepids(ALICE.into()),
            ]
        );
        assert!(testing::state_keys().is_empty());
        assert!(testing::timers().is_empty());
        let ctx = serve(user(BOB), vec![event(ALICE, ROOM, 1, false)]);
        assert_eq!(p.on_client_serve(&ctx).verdicts, vec![ServeVerdict::Serve]);
    }

    #[test]
    fn erasure_request_is_recorded_with_timer_and_actions() {
        let p = policy(json!({"grace_period_days": 7}));
        testing::join(ROOM, ALICE);
        let out = p.on_deactivate(&deactivate(ALICE, true, T0));
        assert!(out.is_allow());
        assert_eq!(out.actions.len(), 4);
        assert_eq!(out.actions[3], Action::DeleteProfile(ALICE.into()));
        assert_eq!(
            testing::timers(),
            vec![(format!("erase/{ALICE}"), T0 + 7 * DAY_MS)]
        );
        let record = load(ALICE).unwrap().unwrap();
        let pending = record.pending.unwrap();
        assert_eq!(pending.requested_at_ms, T0);
        assert_eq!(pending.rooms, vec![ROOM.to_owned()]);
        // A repeated request keeps the first request's time.
        p.on_deactivate(&deactivate(ALICE, true, T0 + DAY_MS));
        let again = load(ALICE).unwrap().unwrap().pending.unwrap();
        assert_eq!(again.requested_at_ms, T0);
        assert_eq!(again.final_at_ms, T0 + 7 * DAY_MS);
    }

    #[test]
    fn second_factor_is_required_when_configured() {
        let p = policy(json!({"require_second_factor": true}));
        let out = p.on_deactivate(&deactivate(ALICE, true, T0));
        assert_eq!(out.errcode(), Some("M_FORBIDDEN"));
        let Verdict::Deny(e) = &out.verdict else {
            panic!()
        };
        assert_eq!(e.fields[SECOND_FACTOR_FIELD], true);
        assert!(out.actions.is_empty());
        assert!(load(ALICE).unwrap().is_none());

        let mut with_factor = deactivate(ALICE, true, T0);
        with_factor.second_factor = true;
        assert!(p.on_deactivate(&with_factor).is_allow());

        let mut admin = deactivate(BOB, true, T0);
        admin.by_admin = true;
        assert!(p.on_deactivate(&admin).is_allow());
        // Plain deactivation never needs it.
        assert!(
            p.on_deactivate(&deactivate("@carol:hs.example", false, T0))
                .is_allow()
        );
    }

    #[test]
    fn client_visibility_depends_on_viewer_joined() {
        let p = policy(json!({}));
        p.on_deactivate(&deactivate(ALICE, true, T0));
        let ctx = serve(
            user(BOB),
            vec![
                event(ALICE, ROOM, 1, true),
                event(ALICE, ROOM, 2, false),
                event(BOB, ROOM, 3, false),
                event("@alice:remote.example", ROOM, 4, false),
            ],
        );
        assert_eq!(
            p.on_client_serve(&ctx).verdicts,
            vec![
                ServeVerdict::Serve,
                ServeVerdict::Redact,
                ServeVerdict::Serve,
                ServeVerdict::Serve
            ]
        );
        // The anonymous public is never joined, whatever the flag says.
        let anon = serve(Viewer::Anonymous, vec![event(ALICE, ROOM, 1, true)]);
        assert_eq!(
            p.on_client_serve(&anon).verdicts,
            vec![ServeVerdict::Redact]
        );
    }

    #[test]
    fn pseudonyms_are_stable_per_room_and_differ_across_rooms() {
        let p = policy(json!({"pseudonymize_clients": true,
                              "pseudonym_secret": "0123456789abcdef"}));
        p.on_deactivate(&deactivate(ALICE, true, T0));
        let other = "!other:hs.example";
        let ctx = serve(
            user(BOB),
            vec![
                event(ALICE, ROOM, 1, false),
                event(ALICE, ROOM, 2, false),
                event(ALICE, other, 3, false),
                event(ALICE, ROOM, 4, true),
            ],
        );
        let v = p.on_client_serve(&ctx).verdicts;
        let ServeVerdict::Pseudonymize(a) = &v[0] else {
            panic!("{v:?}")
        };
        assert_eq!(v[1], ServeVerdict::Pseudonymize(a.clone()));
        let ServeVerdict::Pseudonymize(b) = &v[2] else {
            panic!("{v:?}")
        };
        assert_ne!(a, b);
        assert_eq!(v[3], ServeVerdict::Serve);
        let local = a.localpart().strip_prefix("_erased_").unwrap();
        assert_eq!(local.len(), 16);
        assert!(local.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.server_name(), HS);
        // Another secret gives other pseudonyms; the same secret the same ones.
        let q = build(json!({"pseudonymize_clients": true,
                             "pseudonym_secret": "fedcba9876543210"}));
        assert_ne!(
            q.pseudonym(&ROOM.into(), &ALICE.into(), HS).as_ref(),
            Some(a)
        );
        assert_eq!(
            p.pseudonym(&ROOM.into(), &ALICE.into(), HS).as_ref(),
            Some(a)
        );
        // Never over federation.
        let fed = serve(
            Viewer::Server("other.example".into()),
            vec![event(ALICE, ROOM, 1, false)],
        );
        assert_eq!(
            p.on_federation_serve(&fed).verdicts,
            vec![ServeVerdict::Redact]
        );
    }

    #[test]
    fn federation_modes() {
        let server = || Viewer::Server("other.example".into());
        let events = || vec![event(ALICE, ROOM, 1, true), event(ALICE, ROOM, 2, false)];
        let verdicts = |p: &Erasure| p.on_federation_serve(&serve(server(), events())).verdicts;
        let spec = policy(json!({}));
        spec.on_deactivate(&deactivate(ALICE, true, T0));
        assert_eq!(
            verdicts(&spec),
            vec![ServeVerdict::Serve, ServeVerdict::Redact]
        );
        let strict = build(json!({"federation": "strict"}));
        assert_eq!(
            verdicts(&strict),
            vec![ServeVerdict::Redact, ServeVerdict::Redact]
        );
        let withhold = build(json!({"federation_withhold_unjoined": true}));
        assert_eq!(
            verdicts(&withhold),
            vec![ServeVerdict::Serve, ServeVerdict::Withhold]
        );
        let both = build(json!({"federation": "strict", "federation_withhold_unjoined": true}));
        assert_eq!(
            verdicts(&both),
            vec![ServeVerdict::Redact, ServeVerdict::Withhold]
        );
    }

    #[test]
    fn reactivation_inside_the_grace_period_cancels() {
        let p = policy(json!({}));
        p.on_deactivate(&deactivate(ALICE, true, T0));
        assert!(p.on_reactivate(&reactivate(ALICE, T0 + DAY_MS)).is_allow());
        assert!(testing::timers().is_empty());
        assert!(load(ALICE).unwrap().is_none());
        let ctx = serve(user(BOB), vec![event(ALICE, ROOM, 1, false)]);
        assert_eq!(p.on_client_serve(&ctx).verdicts, vec![ServeVerdict::Serve]);
        assert!(run_timers(&p, T0 + DEFAULT_GRACE_PERIOD_MS).is_empty());
    }

    #[test]
    fn reactivation_after_the_grace_period_keeps_old_events_filtered() {
        let p = policy(json!({}));
        p.on_deactivate(&deactivate(ALICE, true, T0));
        let end = T0 + DEFAULT_GRACE_PERIOD_MS;
        assert!(run_timers(&p, end - 1).is_empty());
        let actions = run_timers(&p, end);
        assert_eq!(actions, vec![Action::AnnounceErasure(ALICE.into())]);
        let back = end + DAY_MS;
        assert!(p.on_reactivate(&reactivate(ALICE, back)).is_allow());
        let ctx = serve(
            user(BOB),
            vec![
                event(ALICE, ROOM, T0 - 1, false),
                event(ALICE, ROOM, back + 1, false),
            ],
        );
        assert_eq!(
            p.on_client_serve(&ctx).verdicts,
            vec![ServeVerdict::Redact, ServeVerdict::Serve]
        );
        assert_eq!(load(ALICE).unwrap().unwrap().status(), "final-reactivated");
        // A new erasure filters everything again; cancelling it restores the old cut-off.
        p.on_deactivate(&deactivate(ALICE, true, back + 2));
        assert_eq!(
            p.on_client_serve(&ctx).verdicts,
            vec![ServeVerdict::Redact, ServeVerdict::Redact]
        );
        p.on_reactivate(&reactivate(ALICE, back + 3));
        assert_eq!(
            p.on_client_serve(&ctx).verdicts,
            vec![ServeVerdict::Redact, ServeVerdict::Serve]
        );
    }

    #[test]
    fn last_member_erased_purges_the_room() {
        let p = policy(json!({"grace_period_ms": 10}));
        let shared = "!shared:hs.example";
        let with_carol = "!carol:hs.example";
        testing::join(shared, ALICE);
        testing::join(shared, BOB);
        testing::join(with_carol, BOB);
        testing::join(with_carol, "@carol:hs.example");
        p.on_deactivate(&deactivate(ALICE, true, T0));
        let first = run_timers(&p, T0 + 10);
        assert!(purges(&first).is_empty(), "{first:?}");
        // Bob is the last member of `shared`; Carol keeps `with_carol` alive.
        p.on_deactivate(&deactivate(BOB, true, T0 + 20));
        let second = run_timers(&p, T0 + 30);
        assert_eq!(second[0], Action::AnnounceErasure(BOB.into()));
        assert_eq!(purges(&second), vec![shared]);
        let status = p
            .on_admin(&AdminRequest {
                now_ms: T0,
                command: "list-purged-rooms".into(),
                args: Value::Null,
            })
            .unwrap();
        assert_eq!(status["rooms"][0]["room"], shared);
        assert_eq!(status["rooms"][0]["purged_at_ms"], T0 + 30);
    }

    #[test]
    fn pending_erasures_do_not_count_for_purging() {
        let p = policy(json!({"grace_period_ms": 10}));
        testing::join(ROOM, ALICE);
        testing::join(ROOM, BOB);
        p.on_deactivate(&deactivate(ALICE, true, T0));
        p.on_deactivate(&deactivate(BOB, true, T0 + 5));
        // Alice's erasure is final first, Bob's still pending: no purge yet.
        assert!(purges(&run_timers(&p, T0 + 10)).is_empty());
        assert_eq!(purges(&run_timers(&p, T0 + 15)), vec![ROOM]);
    }

    #[test]
    fn a_room_left_without_sending_is_purged_when_its_last_blocker_is_erased() {
        let p = policy(json!({"grace_period_ms": 10}));
        testing::join(ROOM, ALICE);
        testing::join(ROOM, BOB);
        // Bob leaves without sending anything: his own erasure does not know the room.
        testing::leave(ROOM, BOB);
        p.on_deactivate(&deactivate(ALICE, true, T0));
        assert!(purges(&run_timers(&p, T0 + 10)).is_empty());
        p.on_deactivate(&deactivate(BOB, true, T0 + 20));
        assert_eq!(purges(&run_timers(&p, T0 + 30)), vec![ROOM]);
        assert!(state::keys("blocker/").is_empty());
        assert!(state::keys("waiting/").is_empty());
    }

    #[test]
    fn rooms_with_remote_members_are_never_purged() {
        let p = policy(json!({"grace_period_ms": 10}));
        testing::join(ROOM, ALICE);
        testing::join(ROOM, "@zed:remote.example");
        testing::leave(ROOM, "@zed:remote.example");
        p.on_deactivate(&deactivate(ALICE, true, T0));
        assert!(purges(&run_timers(&p, T0 + 10)).is_empty());
        assert!(state::keys("waiting/").is_empty());
    }

    #[test]
    fn rooms_sent_to_are_tracked_and_examined() {
        let p = policy(json!({"grace_period_ms": 10}));
        testing::join(ROOM, ALICE);
        let msg = SendContext::new(ALICE, ROOM, "m.room.message", json!({"body": "hi"}));
        assert!(p.on_send(&msg).is_allow());
        assert!(p.on_send(&msg).is_allow());
        assert_eq!(rooms_under(&sent_prefix(ALICE)), vec![ROOM.to_owned()]);
        testing::leave(ROOM, ALICE);
        p.on_deactivate(&deactivate(ALICE, true, T0));
        assert!(
            load(ALICE)
                .unwrap()
                .unwrap()
                .pending
                .unwrap()
                .rooms
                .is_empty()
        );
        assert_eq!(purges(&run_timers(&p, T0 + 10)), vec![ROOM]);
        // The plugin forgets where the erased user sent.
        assert!(rooms_under(&sent_prefix(ALICE)).is_empty());
    }

    #[test]
    fn admin_lists_erasures_and_status() {
        let p = policy(json!({"grace_period_ms": 10}));
        p.on_deactivate(&deactivate(ALICE, true, T0));
        p.on_deactivate(&deactivate(BOB, true, T0 + 20));
        run_timers(&p, T0 + 10);
        let admin = |command: &str, args: Value| {
            p.on_admin(&AdminRequest {
                now_ms: T0,
                command: command.into(),
                args,
            })
        };
        assert_eq!(
            admin("list-erasures", Value::Null).unwrap(),
            json!({
                "pending": [{"user": BOB, "requested_at_ms": T0 + 20, "final_at_ms": T0 + 30}],
                "completed": [{"user": ALICE, "requested_at_ms": T0,
                               "completed_at_ms": T0 + 10, "reactivated_at_ms": null}],
            })
        );
        let status = admin("erasure-status", json!({"user": ALICE})).unwrap();
        assert_eq!(status["status"], "final");
        let none = admin("erasure-status", json!({"user": "@x:hs.example"})).unwrap();
        assert_eq!(none["status"], "none");
        assert!(admin("erasure-status", json!({})).is_err());
        assert!(admin("nope", Value::Null).is_err());
    }

    #[test]
    fn unreadable_record_filters_everything() {
        let p = policy(json!({}));
        state::set_raw(&record_key(ALICE), &[0xff, 0xff, 0xff]);
        let ctx = serve(user(BOB), vec![event(ALICE, ROOM, 1, false)]);
        assert_eq!(p.on_client_serve(&ctx).verdicts, vec![ServeVerdict::Redact]);
        assert!(
            testing::logs()
                .iter()
                .any(|l| l.contains("does not decode"))
        );
    }
}
