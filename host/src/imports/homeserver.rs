//! `mxpolicy:policy/homeserver`: read-only queries answered by the embedding homeserver.
//!
//! Ids a plugin passes are parsed first. An id that does not parse gets an empty answer rather
//! than a trap: plugins often pass ids taken from user-controlled content, and a malformed one
//! must not turn into a plugin failure (and, failing closed, a denial of service).

use ruma::{RoomId, UserId};

use crate::{bindings::mxpolicy::policy::homeserver::Host, context::CallCtx};

impl Host for CallCtx {
    fn server_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.homeserver.server_name().to_string())
    }

    fn rooms_of_user(&mut self, user: String) -> wasmtime::Result<Vec<String>> {
        Ok(match UserId::parse(&user) {
            Ok(user) => self
                .homeserver
                .rooms_of_user(&user)
                .iter()
                .map(|r| r.to_string())
                .collect(),
            Err(_) => Vec::new(),
        })
    }

    fn members_of_room(&mut self, room: String) -> wasmtime::Result<Vec<String>> {
        Ok(match RoomId::parse(&room) {
            Ok(room) => self
                .homeserver
                .members_of_room(&room)
                .iter()
                .map(|u| u.to_string())
                .collect(),
            Err(_) => Vec::new(),
        })
    }

    fn ever_joined_members(&mut self, room: String) -> wasmtime::Result<Vec<String>> {
        Ok(match RoomId::parse(&room) {
            Ok(room) => self
                .homeserver
                .ever_joined_members(&room)
                .iter()
                .map(|u| u.to_string())
                .collect(),
            Err(_) => Vec::new(),
        })
    }

    fn is_local_user(&mut self, user: String) -> wasmtime::Result<bool> {
        Ok(UserId::parse(&user).is_ok_and(|u| self.homeserver.is_local_user(&u)))
    }
}
