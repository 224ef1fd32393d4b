//! The simulated homeserver: users with kinds, rooms with a version, a history visibility and a
//! membership timeline, events with their JSON, media, server notices received, and the effects
//! of the actions plugins return. It answers the host's [`Homeserver`] queries.
//!
//! Time and order: every event gets the next sequence number (the room's stream order);
//! membership "at an event" is the last membership change of that user at or before the
//! event's sequence number, the event itself included.
//!
//! Cost: replay must stay linear in the number of steps, so no operation here walks a room's
//! whole history. Membership changes are indexed per room and user (the current membership is
//! the last change; the membership at an event is a binary search), each user's current rooms
//! are indexed too, and lookups return small copies ([`Account`], a room's version) instead of
//! cloning records that grow with the history (a room's event list, a user's notices).
//!
//! History visibility, applied before the serve hooks are called (a simplified
//! `synapse/visibility.py`):
//! - user viewer: `world_readable` always; otherwise visible if the user was joined at the
//!   event; else `shared`: visible if the user is joined now; `invited`: visible if the user was
//!   invited at the event; `joined`: not visible.
//! - server viewer: `world_readable` and `shared` always; `invited`: if a user of that server
//!   was invited or joined at the event; `joined`: if a user of that server was joined at it.
//! - anonymous viewer: `world_readable` only.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use mxpolicy_host::{
    Action, HistoryVisibility, Homeserver, ServeEvent, UserKind, Viewer,
    ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId, ServerName, UserId},
};
use ruma::{canonical_json::try_from_json_map, signatures::content_hash};
use serde_json::{Map, Value, json};

/// A membership state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Joined.
    Join,
    /// Left (or was made to leave).
    Leave,
    /// Invited.
    Invite,
}

impl Membership {
    /// The `membership` value of the `m.room.member` event.
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Join => "join",
            Membership::Leave => "leave",
            Membership::Invite => "invite",
        }
    }
}

/// What an op needs to know about an account to act for it: a small copy, so that looking a
/// user up costs the same however many notices the account has received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// The account kind.
    pub kind: UserKind,
    /// Whether it belongs to the simulated server.
    pub local: bool,
    /// Deactivated.
    pub deactivated: bool,
}

/// An account the simulation knows.
#[derive(Debug, Clone)]
pub struct User {
    /// The account kind.
    pub kind: UserKind,
    /// Whether it belongs to the simulated server.
    pub local: bool,
    /// Deactivated.
    pub deactivated: bool,
    /// Marked erased (deactivated with `erase: true`).
    pub erased: bool,
    /// Listed in the user directory.
    pub in_user_directory: bool,
    /// Has third-party ids bound.
    pub threepids_bound: bool,
    /// Has a profile.
    pub profile: bool,
    /// An erasure was announced for it.
    pub erasure_announced: bool,
    /// Server notices received (their content).
    pub notices: Vec<Map<String, Value>>,
}

impl User {
    fn new(kind: UserKind, local: bool) -> Self {
        Self {
            kind,
            local,
            deactivated: false,
            erased: false,
            in_user_directory: local,
            threepids_bound: local,
            profile: true,
            erasure_announced: false,
            notices: Vec::new(),
        }
    }

    /// The account's summary.
    pub fn account(&self) -> Account {
        Account {
            kind: self.kind,
            local: self.local,
            deactivated: self.deactivated,
        }
    }
}

/// A room.
#[derive(Debug, Clone)]
pub struct Room {
    /// Its version.
    pub version: RoomVersionId,
    /// Its current history visibility.
    pub visibility: HistoryVisibility,
    /// The `m.room.create` event, while the history holds it.
    pub create_event: Option<String>,
    /// Membership changes of each user who has one: (sequence number, membership), in
    /// order. The last one is the current membership. Changed only through
    /// [`State::set_membership`] and `purge-room-history`, which keep the indexes in step.
    memberships: BTreeMap<OwnedUserId, Vec<(u64, Membership)>>,
    /// Users with a join among their membership changes.
    ever_joined: BTreeSet<OwnedUserId>,
    /// The room's events, in order.
    pub events: Vec<String>,
    /// The user whose server-notices room this is.
    pub server_notices_for: Option<OwnedUserId>,
    /// Events removed by `purge-room-history`.
    pub purged: usize,
}

impl Room {
    /// The user's current membership: the last change.
    pub fn current(&self, user: &UserId) -> Option<Membership> {
        self.memberships.get(user)?.last().map(|(_, m)| *m)
    }

    /// The user's membership at sequence number `seq` (inclusive): the last change at or
    /// before it, found by binary search (a user's changes are in sequence order).
    pub fn membership_at(&self, user: &UserId, seq: u64) -> Option<Membership> {
        let changes = self.memberships.get(user)?;
        let before = changes.partition_point(|(s, _)| *s <= seq);
        changes[..before].last().map(|(_, m)| *m)
    }

    /// Users with a current membership of `m`, in user id order.
    fn with(&self, m: Membership) -> impl Iterator<Item = &OwnedUserId> {
        self.memberships
            .iter()
            .filter(move |(_, changes)| changes.last().map(|(_, c)| *c) == Some(m))
            .map(|(u, _)| u)
    }
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Stream order.
    pub seq: u64,
    /// Position in the room's history (1 for the first event).
    pub depth: u64,
    /// The room.
    pub room: OwnedRoomId,
    /// The sender.
    pub sender: OwnedUserId,
    /// The type.
    pub event_type: String,
    /// The state key.
    pub state_key: Option<String>,
    /// The content.
    pub content: Value,
    /// `origin_server_ts`.
    pub ts: u64,
    /// History visibility in force when it was sent.
    pub visibility: HistoryVisibility,
    /// The previous event of the room.
    pub prev_events: Vec<String>,
    /// The create event (empty for the create event itself).
    pub auth_events: Vec<String>,
}

/// A stored media item.
#[derive(Debug, Clone)]
pub struct Media {
    /// The uploader.
    pub uploader: OwnedUserId,
    /// Size in bytes.
    pub size: u64,
    /// Declared content type.
    pub content_type: Option<String>,
}

/// One requested event, as the simulation prepares it for a serve hook.
#[derive(Debug)]
pub enum Slot {
    /// The id is not (or no longer) in the history.
    NotFound,
    /// History visibility hides it from this viewer: not passed to the plugins.
    NotVisible,
    /// Passed to the plugins.
    Visible(ServeEvent),
}

/// Everything the simulation holds.
#[derive(Debug, Default)]
pub struct State {
    /// Users: registered local users and remote users seen in rooms.
    pub users: BTreeMap<OwnedUserId, User>,
    /// Rooms.
    pub rooms: BTreeMap<OwnedRoomId, Room>,
    /// Events by id.
    pub events: BTreeMap<String, Event>,
    /// Ids of events that existed and were purged.
    pub purged_ids: BTreeSet<String>,
    /// Ids of events a step tried to create but that were refused (never stored).
    pub refused_ids: BTreeSet<String>,
    /// Media by `mxc://` URI.
    pub media: BTreeMap<String, Media>,
    /// Media deleted by `delete-media`.
    pub deleted_media: BTreeSet<String>,
    /// Each user's rooms where the current membership is join or invite, with that membership
    /// (an index of the rooms' last membership changes).
    current_rooms: BTreeMap<OwnedUserId, BTreeMap<OwnedRoomId, Membership>>,
    seq: u64,
}

/// The simulated homeserver. Its state sits behind a lock that is never held across a host
/// call, because plugins query it from inside their hooks.
#[derive(Debug)]
pub struct World {
    server_name: OwnedServerName,
    state: RwLock<State>,
}

impl World {
    /// An empty homeserver.
    pub fn new(server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            state: RwLock::new(State::default()),
        }
    }

    /// Read access.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access. Never hold it across a host call.
    pub fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The server name.
    pub fn name(&self) -> &ServerName {
        &self.server_name
    }

    /// Whether the user is local.
    pub fn is_local(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name
    }

    /// A local user must be registered; a remote user is known from the moment it is named.
    pub fn known_user(&self, user: &UserId) -> Result<Account, String> {
        let mut s = self.write();
        if let Some(u) = s.users.get(user) {
            return Ok(u.account());
        }
        if self.is_local(user) {
            return Err(format!("unknown user {user} (register it first)"));
        }
        let u = User::new(UserKind::Regular, false);
        let account = u.account();
        s.users.insert(user.to_owned(), u);
        Ok(account)
    }

    /// The version of a room that must exist.
    pub fn known_room(&self, room: &RoomId) -> Result<RoomVersionId, String> {
        self.read()
            .rooms
            .get(room)
            .map(|r| r.version.clone())
            .ok_or_else(|| format!("unknown room {room} (create it first)"))
    }

    /// Register a local user.
    pub fn register(&self, user: &UserId, kind: UserKind) -> Result<(), String> {
        if !self.is_local(user) {
            return Err(format!(
                "{user} is not a user of {}; only local users are registered (remote users \
                 need no registration)",
                self.server_name
            ));
        }
        let mut s = self.write();
        if s.users.contains_key(user) {
            return Err(format!("{user} is already registered"));
        }
        s.users.insert(user.to_owned(), User::new(kind, true));
        Ok(())
    }
}

impl State {
    /// Whether an event id is taken (now or before a purge).
    pub fn event_id_taken(&self, id: &str) -> bool {
        self.events.contains_key(id) || self.purged_ids.contains(id)
    }

    /// The user's current membership.
    pub fn membership(&self, room: &RoomId, user: &UserId) -> Option<Membership> {
        self.rooms.get(room)?.current(user)
    }

    /// The user's membership at sequence number `seq` (inclusive).
    pub fn membership_at(&self, room: &RoomId, user: &UserId, seq: u64) -> Option<Membership> {
        self.rooms.get(room)?.membership_at(user, seq)
    }

    /// The rooms where the user's current membership is one of `wanted`, in room id order.
    fn rooms_with(&self, user: &UserId, wanted: &[Membership]) -> Vec<&OwnedRoomId> {
        self.current_rooms
            .get(user)
            .into_iter()
            .flatten()
            .filter(|(_, m)| wanted.contains(m))
            .map(|(r, _)| r)
            .collect()
    }

    fn users_of_server_at(&self, room: &RoomId, server: &ServerName, seq: u64) -> Vec<Membership> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.memberships
            .keys()
            .filter(|u| u.server_name() == server)
            .filter_map(|u| r.membership_at(u, seq))
            .collect()
    }

    /// Append an event to a room's history. The id must be new; the room must exist.
    #[allow(clippy::too_many_arguments)]
    pub fn add_event(
        &mut self,
        id: &str,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        state_key: Option<String>,
        content: Value,
        ts: u64,
    ) -> Result<u64, String> {
        if self.event_id_taken(id) {
            return Err(format!("event id {id} is already used"));
        }
        if !id.starts_with('$') {
            return Err(format!("event id {id:?} must start with `$`"));
        }
        self.seq += 1;
        let seq = self.seq;
        let r = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| format!("unknown room {room} (create it first)"))?;
        let prev_events: Vec<String> = r.events.last().cloned().into_iter().collect();
        let auth_events: Vec<String> = match &r.create_event {
            Some(c) if c != id => vec![c.clone()],
            _ => Vec::new(),
        };
        if event_type == "m.room.create" && state_key.as_deref() == Some("") {
            r.create_event = Some(id.to_owned());
        }
        if event_type == "m.room.history_visibility"
            && state_key.as_deref() == Some("")
            && let Some(v) = content
                .get("history_visibility")
                .and_then(|v| serde_json::from_value::<HistoryVisibility>(v.clone()).ok())
        {
            r.visibility = v;
        }
        r.events.push(id.to_owned());
        let depth = r.events.len() as u64 + r.purged as u64;
        let event = Event {
            seq,
            depth,
            room: room.to_owned(),
            sender: sender.to_owned(),
            event_type: event_type.to_owned(),
            state_key,
            content,
            ts,
            visibility: r.visibility,
            prev_events,
            auth_events,
        };
        self.events.insert(id.to_owned(), event);
        Ok(seq)
    }

    /// Record a membership change with its `m.room.member` event.
    pub fn set_membership(
        &mut self,
        id: &str,
        room: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: Membership,
        ts: u64,
    ) -> Result<(), String> {
        let seq = self.add_event(
            id,
            room,
            sender,
            "m.room.member",
            Some(target.to_string()),
            json!({"membership": membership.as_str()}),
            ts,
        )?;
        if let Some(r) = self.rooms.get_mut(room) {
            r.memberships
                .entry(target.to_owned())
                .or_default()
                .push((seq, membership));
            if membership == Membership::Join {
                r.ever_joined.insert(target.to_owned());
            }
        }
        let rooms = self.current_rooms.entry(target.to_owned()).or_default();
        match membership {
            Membership::Join | Membership::Invite => {
                rooms.insert(room.to_owned(), membership);
            }
            Membership::Leave => {
                rooms.remove(room);
            }
        }
        Ok(())
    }

    /// Create a room: `m.room.create`, the creator's join, and `m.room.history_visibility`.
    #[allow(clippy::too_many_arguments)]
    pub fn create_room(
        &mut self,
        id: &str,
        room: &RoomId,
        creator: &UserId,
        version: RoomVersionId,
        visibility: HistoryVisibility,
        server_notices_for: Option<OwnedUserId>,
        ts: u64,
    ) -> Result<Vec<String>, String> {
        if self.rooms.contains_key(room) {
            return Err(format!("room {room} already exists"));
        }
        let ids = [
            id.to_owned(),
            format!("{id}-member"),
            format!("{id}-history"),
        ];
        if let Some(taken) = ids.iter().find(|i| self.event_id_taken(i)) {
            return Err(format!("event id {taken} is already used"));
        }
        let create_content = match version {
            // Room version 11 dropped `creator` (the sender is the creator).
            RoomVersionId::V1
            | RoomVersionId::V2
            | RoomVersionId::V3
            | RoomVersionId::V4
            | RoomVersionId::V5
            | RoomVersionId::V6
            | RoomVersionId::V7
            | RoomVersionId::V8
            | RoomVersionId::V9
            | RoomVersionId::V10 => {
                json!({"creator": creator.as_str(), "room_version": version.as_str()})
            }
            _ => json!({"room_version": version.as_str()}),
        };
        self.rooms.insert(
            room.to_owned(),
            Room {
                version,
                visibility,
                create_event: None,
                memberships: BTreeMap::new(),
                ever_joined: BTreeSet::new(),
                events: Vec::new(),
                server_notices_for,
                purged: 0,
            },
        );
        self.add_event(
            &ids[0],
            room,
            creator,
            "m.room.create",
            Some(String::new()),
            create_content,
            ts,
        )?;
        self.set_membership(&ids[1], room, creator, creator, Membership::Join, ts)?;
        let visibility = serde_json::to_value(visibility).unwrap_or(Value::Null);
        self.add_event(
            &ids[2],
            room,
            creator,
            "m.room.history_visibility",
            Some(String::new()),
            json!({"history_visibility": visibility}),
            ts,
        )?;
        Ok(ids.to_vec())
    }

    /// The event in client format (as `/messages` or `/sync` serve it).
    pub fn client_json(&self, id: &str, e: &Event) -> Value {
        let mut o = Map::new();
        o.insert("content".into(), e.content.clone());
        o.insert("event_id".into(), id.into());
        o.insert("origin_server_ts".into(), e.ts.into());
        o.insert("room_id".into(), e.room.as_str().into());
        o.insert("sender".into(), e.sender.as_str().into());
        if let Some(k) = &e.state_key {
            o.insert("state_key".into(), k.as_str().into());
        }
        o.insert("type".into(), e.event_type.as_str().into());
        Value::Object(o)
    }

    /// The event as a federation PDU: the client fields plus `auth_events`, `depth`,
    /// `prev_events`, a real content hash (`hashes.sha256`, computed by ruma's
    /// [`content_hash`]: unpadded base64 of the SHA-256 of the canonical JSON without
    /// `hashes`, `signatures` and `unsigned`; the `event_id` is left out first, as room versions
    /// 3 and later have none in the PDU) and a placeholder signature (the simulation holds no
    /// signing key).
    ///
    /// An event no homeserver could send over federation gets no `hashes`: content that is not
    /// canonical JSON (a float, an integer beyond ±(2^53 - 1)) or a PDU over the spec's 65,535
    /// bytes, which ruma refuses to hash (a real homeserver refuses such events when they
    /// are sent).
    pub fn pdu_json(&self, id: &str, e: &Event) -> Value {
        let Value::Object(mut o) = self.client_json(id, e) else {
            return Value::Null;
        };
        o.insert("auth_events".into(), json!(e.auth_events));
        o.insert("depth".into(), e.depth.into());
        o.insert("prev_events".into(), json!(e.prev_events));
        let mut hashed = o.clone();
        hashed.remove("event_id");
        let hash = try_from_json_map(hashed)
            .ok()
            .and_then(|canonical| content_hash(&canonical).ok());
        if let Some(hash) = hash {
            o.insert("hashes".into(), json!({"sha256": hash.encode()}));
        }
        o.insert(
            "signatures".into(),
            json!({e.sender.server_name().as_str(): {"ed25519:sim": "simulated-signature"}}),
        );
        Value::Object(o)
    }

    /// Whether history visibility lets `viewer` see the event at all.
    fn visible(&self, e: &Event, viewer: &Viewer) -> bool {
        if e.visibility == HistoryVisibility::WorldReadable {
            return true;
        }
        match viewer {
            Viewer::Anonymous => false,
            Viewer::User(u) => match self.membership_at(&e.room, u, e.seq) {
                Some(Membership::Join) => true,
                at => match e.visibility {
                    HistoryVisibility::Shared => {
                        self.membership(&e.room, u) == Some(Membership::Join)
                    }
                    HistoryVisibility::Invited => at == Some(Membership::Invite),
                    _ => false,
                },
            },
            Viewer::Server(s) => {
                let at = self.users_of_server_at(&e.room, s, e.seq);
                match e.visibility {
                    HistoryVisibility::Invited => at
                        .iter()
                        .any(|m| matches!(m, Membership::Join | Membership::Invite)),
                    HistoryVisibility::Joined => at.contains(&Membership::Join),
                    _ => true,
                }
            }
        }
    }

    /// Was the viewer joined at the event (for a server: any of its users)?
    fn viewer_joined(&self, e: &Event, viewer: &Viewer) -> bool {
        match viewer {
            Viewer::Anonymous => false,
            Viewer::User(u) => self.membership_at(&e.room, u, e.seq) == Some(Membership::Join),
            Viewer::Server(s) => self
                .users_of_server_at(&e.room, s, e.seq)
                .contains(&Membership::Join),
        }
    }

    /// Prepare requested events for a serve hook. Ids no step named are an error (a typo);
    /// purged ids, and ids of events that were refused, are `NotFound`.
    pub fn serve_slots(
        &self,
        viewer: &Viewer,
        ids: &[String],
        federation: bool,
    ) -> Result<Vec<Slot>, String> {
        ids.iter()
            .map(|id| {
                let Some(e) = self.events.get(id) else {
                    return if self.purged_ids.contains(id) || self.refused_ids.contains(id) {
                        Ok(Slot::NotFound)
                    } else {
                        Err(format!("unknown event {id} (no step created it)"))
                    };
                };
                if !self.visible(e, viewer) {
                    return Ok(Slot::NotVisible);
                }
                let version = self
                    .rooms
                    .get(&e.room)
                    .map(|r| r.version.clone())
                    .unwrap_or(RoomVersionId::V10);
                Ok(Slot::Visible(ServeEvent {
                    event: if federation {
                        self.pdu_json(id, e)
                    } else {
                        self.client_json(id, e)
                    },
                    room_version: version,
                    history_visibility: e.visibility,
                    viewer_joined: self.viewer_joined(e, viewer),
                }))
            })
            .collect()
    }

    /// Carry out one action; returns what was done, for the report. `tag` names the step, for
    /// the ids of membership events the action creates.
    pub fn apply(&mut self, action: &Action, tag: &str, now_ms: u64) -> String {
        let user_flag = |s: &mut State, user: &UserId, set: fn(&mut User), done: &str| match s
            .users
            .get_mut(user)
        {
            Some(u) => {
                set(u);
                format!("{user}: {done}")
            }
            None => format!("{user}: unknown user, nothing to do"),
        };
        match action {
            Action::LeaveAllRooms { user } => {
                let rooms: Vec<OwnedRoomId> = self
                    .rooms_with(user, &[Membership::Join, Membership::Invite])
                    .into_iter()
                    .cloned()
                    .collect();
                if rooms.is_empty() {
                    return format!("{user}: in no room");
                }
                let mut left = Vec::new();
                for (k, room) in rooms.iter().enumerate() {
                    let id = format!("$leave-{tag}-{k}");
                    match self.set_membership(&id, room, user, user, Membership::Leave, now_ms) {
                        Ok(()) => left.push(format!("{room} ({id})")),
                        Err(e) => left.push(format!("{room} (failed: {e})")),
                    }
                }
                format!("{user}: left {}", left.join(", "))
            }
            Action::RemoveFromUserDirectory { user } => user_flag(
                self,
                user,
                |u| u.in_user_directory = false,
                "removed from the user directory",
            ),
            Action::UnbindThreepids { user } => user_flag(
                self,
                user,
                |u| u.threepids_bound = false,
                "third-party ids unbound",
            ),
            Action::DeleteProfile { user } => {
                user_flag(self, user, |u| u.profile = false, "profile deleted")
            }
            Action::AnnounceErasure { user } => user_flag(
                self,
                user,
                |u| u.erasure_announced = true,
                "erasure announced",
            ),
            Action::PurgeRoomHistory { room } => {
                let Some(r) = self.rooms.get_mut(room) else {
                    return format!("{room}: unknown room, nothing to purge");
                };
                let ids = std::mem::take(&mut r.events);
                r.purged += ids.len();
                r.create_event = None;
                // The history is gone: only the current members remain, as of now. The others
                // (invited, left) have no membership any more.
                self.seq += 1;
                let seq = self.seq;
                let (mut members, mut others) = (Vec::new(), Vec::new());
                for (u, changes) in std::mem::take(&mut r.memberships) {
                    if changes.last().map(|(_, m)| *m) == Some(Membership::Join) {
                        members.push(u);
                    } else {
                        others.push(u);
                    }
                }
                r.memberships = members
                    .iter()
                    .map(|u| (u.clone(), vec![(seq, Membership::Join)]))
                    .collect();
                r.ever_joined = members.into_iter().collect();
                for u in &others {
                    if let Some(rooms) = self.current_rooms.get_mut(u) {
                        rooms.remove(room);
                    }
                }
                for id in &ids {
                    self.events.remove(id);
                    self.purged_ids.insert(id.clone());
                }
                format!("{room}: purged {} events", ids.len())
            }
            Action::DeleteMedia { mxc } => {
                let key = mxc.to_string();
                if self.media.remove(&key).is_some() {
                    self.deleted_media.insert(key.clone());
                    format!("{key}: deleted")
                } else {
                    format!("{key}: no such media, nothing to delete")
                }
            }
            Action::SendServerNotice { user, content } => match self.users.get_mut(user) {
                Some(u) => {
                    u.notices.push(content.clone());
                    let body = content.get("body").and_then(Value::as_str).unwrap_or("");
                    let short: String = body.chars().take(60).collect();
                    format!("{user}: server notice {short:?}")
                }
                None => format!("{user}: unknown user, notice dropped"),
            },
        }
    }

    /// What the simulation knows about a user.
    pub fn user_facts(&self, user: &UserId) -> Option<Value> {
        let u = self.users.get(user)?;
        let rooms: Vec<&str> = self
            .rooms_with(user, &[Membership::Join])
            .into_iter()
            .map(|r| r.as_str())
            .collect();
        Some(json!({
            "kind": u.kind,
            "local": u.local,
            "deactivated": u.deactivated,
            "erased": u.erased,
            "erasure_announced": u.erasure_announced,
            "in_user_directory": u.in_user_directory,
            "threepids_bound": u.threepids_bound,
            "profile": u.profile,
            "rooms": rooms,
            "notices": u.notices,
        }))
    }

    /// What the simulation knows about a room.
    pub fn room_facts(&self, room: &RoomId) -> Option<Value> {
        let r = self.rooms.get(room)?;
        let ever: BTreeSet<&str> = r.ever_joined.iter().map(|u| u.as_str()).collect();
        let with = |m: Membership| -> Vec<&str> { r.with(m).map(|u| u.as_str()).collect() };
        Some(json!({
            "room_version": r.version.as_str(),
            "history_visibility": r.visibility,
            "members": with(Membership::Join),
            "invited": with(Membership::Invite),
            "ever_joined": ever,
            "events": r.events,
            "purged": r.purged,
        }))
    }

    /// What the simulation knows about a media item.
    pub fn media_facts(&self, mxc: &str) -> Value {
        match self.media.get(mxc) {
            Some(m) => json!({
                "exists": true,
                "uploader": m.uploader.as_str(),
                "size": m.size,
                "content_type": m.content_type,
            }),
            None => json!({"exists": false, "deleted": self.deleted_media.contains(mxc)}),
        }
    }
}

impl Homeserver for World {
    fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    fn rooms_of_user(&self, user: &UserId) -> Vec<OwnedRoomId> {
        self.read()
            .rooms_with(user, &[Membership::Join])
            .into_iter()
            .cloned()
            .collect()
    }

    fn members_of_room(&self, room: &RoomId) -> Vec<OwnedUserId> {
        self.read()
            .rooms
            .get(room)
            .map(|r| r.with(Membership::Join).cloned().collect())
            .unwrap_or_default()
    }

    fn ever_joined_members(&self, room: &RoomId) -> Vec<OwnedUserId> {
        self.read()
            .rooms
            .get(room)
            .map(|r| r.ever_joined.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use mxpolicy_host::ruma::{owned_room_id, owned_server_name, owned_user_id};

    use super::*;

    fn world() -> (World, OwnedRoomId) {
        let w = World::new(owned_server_name!("hs.example"));
        w.register(&owned_user_id!("@a:hs.example"), UserKind::Regular)
            .unwrap();
        let room = owned_room_id!("!r:hs.example");
        w.write()
            .create_room(
                "$c",
                &room,
                &owned_user_id!("@a:hs.example"),
                RoomVersionId::V10,
                HistoryVisibility::Shared,
                None,
                1,
            )
            .unwrap();
        (w, room)
    }

    #[test]
    fn membership_over_time_decides_viewer_joined_and_visibility() {
        let (w, room) = world();
        let b = owned_user_id!("@b:other.example");
        let a = owned_user_id!("@a:hs.example");
        let mut s = w.write();
        s.add_event(
            "$e1",
            &room,
            &a,
            "m.room.message",
            None,
            json!({"body": "1"}),
            2,
        )
        .unwrap();
        s.set_membership("$j", &room, &b, &b, Membership::Join, 3)
            .unwrap();
        s.add_event(
            "$e2",
            &room,
            &a,
            "m.room.message",
            None,
            json!({"body": "2"}),
            4,
        )
        .unwrap();
        let ids = ["$e1".to_owned(), "$e2".to_owned()];
        let viewer = Viewer::User(b.clone());
        let slots = s.serve_slots(&viewer, &ids, false).unwrap();
        let joined: Vec<bool> = slots
            .iter()
            .map(|x| matches!(x, Slot::Visible(e) if e.viewer_joined))
            .collect();
        // shared: a current member sees earlier history, but was not joined at it.
        assert_eq!(joined, vec![false, true]);
        let server = Viewer::Server(owned_server_name!("other.example"));
        let slots = s.serve_slots(&server, &ids, true).unwrap();
        assert!(
            matches!(&slots[1], Slot::Visible(e) if e.viewer_joined && e.event["hashes"]["sha256"].is_string())
        );
        assert!(matches!(&slots[0], Slot::Visible(e) if !e.viewer_joined));
        assert!(matches!(
            s.serve_slots(&Viewer::Anonymous, &ids, false).unwrap()[0],
            Slot::NotVisible
        ));
        assert!(s.serve_slots(&viewer, &["$nope".into()], false).is_err());
        drop(s);
        assert_eq!(w.ever_joined_members(&room).len(), 2);
        assert_eq!(w.rooms_of_user(&b), vec![room.clone()]);
    }

    #[test]
    fn pdus_carry_ruma_content_hashes() {
        let (w, room) = world();
        let a = owned_user_id!("@a:hs.example");
        let mut s = w.write();
        s.add_event(
            "$h",
            &room,
            &a,
            "m.room.message",
            None,
            json!({"body": "hi"}),
            7,
        )
        .unwrap();
        let pdu = s.pdu_json("$h", &s.events["$h"]);
        // The spec's content hash: SHA-256 of the canonical JSON of the PDU without
        // `event_id` (none in room versions 3+), `hashes`, `signatures` and `unsigned`, in
        // unpadded base64. Computed independently (Python: `json.dumps(pdu, sort_keys=True,
        // separators=(",", ":"), ensure_ascii=False)`, `hashlib.sha256`, `base64`).
        assert_eq!(
            pdu["hashes"]["sha256"], "X56RmENyqvmTM1sWgQ5AQb/F4IorQcWxmnsypTdAlAE",
            "{pdu}"
        );
        // Content that is not canonical JSON cannot be hashed: no `hashes`, the rest is kept.
        s.add_event(
            "$f",
            &room,
            &a,
            "m.room.message",
            None,
            json!({"n": 1.5}),
            8,
        )
        .unwrap();
        let pdu = s.pdu_json("$f", &s.events["$f"]);
        assert!(pdu.get("hashes").is_none(), "{pdu}");
        assert_eq!(pdu["content"]["n"], 1.5);
    }

    #[test]
    fn actions_change_the_world() {
        let (w, room) = world();
        let a = owned_user_id!("@a:hs.example");
        let mut s = w.write();
        let effect = s.apply(&Action::LeaveAllRooms { user: a.clone() }, "3", 9);
        assert_eq!(effect, "@a:hs.example: left !r:hs.example ($leave-3-0)");
        assert_eq!(s.membership(&room, &a), Some(Membership::Leave));
        let effect = s.apply(&Action::PurgeRoomHistory { room: room.clone() }, "4", 9);
        assert_eq!(effect, "!r:hs.example: purged 4 events");
        assert!(
            s.serve_slots(&Viewer::Anonymous, &["$c".into()], false)
                .map(|v| matches!(v[0], Slot::NotFound))
                .unwrap()
        );
        drop(s);
        assert!(w.ever_joined_members(&room).is_empty());
    }

    #[test]
    fn membership_indexes_follow_changes_and_purges() {
        let (w, room) = world();
        let a = owned_user_id!("@a:hs.example");
        let b = owned_user_id!("@b:other.example");
        let c = owned_user_id!("@c:other.example");
        let mut s = w.write();
        let m = |s: &mut State, id: &str, who: &OwnedUserId, m: Membership| {
            s.set_membership(id, &room, who, who, m, 5).unwrap();
            s.events[id].seq
        };
        let joined = m(&mut s, "$b1", &b, Membership::Join);
        let left = m(&mut s, "$b2", &b, Membership::Leave);
        let again = m(&mut s, "$b3", &b, Membership::Join);
        s.set_membership("$c1", &room, &a, &c, Membership::Invite, 6)
            .unwrap();
        // Membership at each point of b's history, including between changes.
        let at = |s: &State, seq| s.membership_at(&room, &b, seq);
        assert_eq!(at(&s, joined - 1), None);
        assert_eq!(at(&s, joined), Some(Membership::Join));
        assert_eq!(at(&s, left), Some(Membership::Leave));
        assert_eq!(at(&s, again - 1), Some(Membership::Leave));
        assert_eq!(at(&s, u64::MAX), Some(Membership::Join));
        assert_eq!(s.membership(&room, &c), Some(Membership::Invite));
        let facts = s.room_facts(&room).unwrap();
        assert_eq!(
            facts["members"],
            json!(["@a:hs.example", "@b:other.example"])
        );
        assert_eq!(facts["invited"], json!(["@c:other.example"]));
        assert_eq!(
            facts["ever_joined"],
            json!(["@a:hs.example", "@b:other.example"])
        );
        // The purge forgets the invite: c is in no room, b and a remain members.
        s.apply(&Action::PurgeRoomHistory { room: room.clone() }, "7", 9);
        assert_eq!(s.membership(&room, &c), None);
        assert_eq!(
            s.apply(&Action::LeaveAllRooms { user: c.clone() }, "8", 9),
            "@c:other.example: in no room"
        );
        assert_eq!(s.membership(&room, &b), Some(Membership::Join));
        assert_eq!(s.membership_at(&room, &b, again), None, "history is gone");
        drop(s);
        assert_eq!(w.rooms_of_user(&b), vec![room.clone()]);
        assert_eq!(w.members_of_room(&room), vec![a.clone(), b.clone()]);
        assert_eq!(w.ever_joined_members(&room), vec![a, b.clone()]);
        let mut s = w.write();
        s.apply(&Action::LeaveAllRooms { user: b.clone() }, "9", 9);
        drop(s);
        assert!(w.rooms_of_user(&b).is_empty());
        assert_eq!(
            w.ever_joined_members(&room).len(),
            2,
            "left, but joined since the purge"
        );
    }
}
