//! Read-only questions plugins may ask the homeserver: the [`Homeserver`] trait, and
//! `MemoryHomeserver` (feature `testing`), an in-memory implementation for tests and the
//! replay tool.

#[cfg(feature = "testing")]
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::RwLock,
};

#[cfg(feature = "testing")]
use ruma::OwnedServerName;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId};

/// The homeserver's answers to plugin queries. Called synchronously from inside a plugin call,
/// so answers must be quick (a cache lookup, not a network round trip): epoch deadlines do not
/// interrupt a blocking host function.
pub trait Homeserver: Send + Sync {
    /// The server name.
    fn server_name(&self) -> &ServerName;
    /// Rooms the user is currently joined to.
    fn rooms_of_user(&self, user: &UserId) -> Vec<OwnedRoomId>;
    /// Users currently joined to the room.
    fn members_of_room(&self, room: &RoomId) -> Vec<OwnedUserId>;
    /// Users who were ever joined to the room, including those who left.
    fn ever_joined_members(&self, room: &RoomId) -> Vec<OwnedUserId>;
    /// Whether a question of the current call went unanswered because the homeserver could
    /// not be reached, and why; taken (cleared) by the call. The host asks after each
    /// `on-timer` call and fails the call if so: its writes are dropped and the timer is
    /// retried with backoff. An implementation that answers from memory never fails (the
    /// default: `None`); one that asks over the network (`mxpolicy serve`'s timer facts)
    /// reports here instead of passing an empty answer off as the truth.
    fn take_failure(&self) -> Option<String> {
        None
    }

    /// Whether the user belongs to this server. The default compares server names.
    fn is_local_user(&self, user: &UserId) -> bool {
        user.server_name() == self.server_name()
    }
}

#[cfg(feature = "testing")]
#[derive(Default)]
struct Rooms {
    joined: BTreeMap<OwnedRoomId, BTreeSet<OwnedUserId>>,
    ever: BTreeMap<OwnedRoomId, BTreeSet<OwnedUserId>>,
}

#[cfg(feature = "testing")]
/// An in-memory [`Homeserver`] whose membership the caller sets with [`join`](Self::join) and
/// [`leave`](Self::leave).
pub struct MemoryHomeserver {
    server_name: OwnedServerName,
    rooms: RwLock<Rooms>,
}

#[cfg(feature = "testing")]
impl MemoryHomeserver {
    /// A homeserver with no rooms.
    pub fn new(server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            rooms: RwLock::new(Rooms::default()),
        }
    }

    /// Record that `user` joined `room`.
    pub fn join(&self, room: &RoomId, user: &UserId) {
        let mut r = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        r.joined
            .entry(room.to_owned())
            .or_default()
            .insert(user.to_owned());
        r.ever
            .entry(room.to_owned())
            .or_default()
            .insert(user.to_owned());
    }

    /// Record that `user` left `room`.
    pub fn leave(&self, room: &RoomId, user: &UserId) {
        let mut r = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = r.joined.get_mut(room) {
            m.remove(user);
        }
    }

    /// Forget the room entirely (after a purge).
    pub fn forget_room(&self, room: &RoomId) {
        let mut r = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        r.joined.remove(room);
        r.ever.remove(room);
    }
}

#[cfg(feature = "testing")]
impl Homeserver for MemoryHomeserver {
    fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    fn rooms_of_user(&self, user: &UserId) -> Vec<OwnedRoomId> {
        let r = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        r.joined
            .iter()
            .filter(|(_, m)| m.contains(user))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn members_of_room(&self, room: &RoomId) -> Vec<OwnedUserId> {
        let r = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        r.joined
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn ever_joined_members(&self, room: &RoomId) -> Vec<OwnedUserId> {
        let r = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        r.ever
            .get(room)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }
}
