//! Room ops: `create_room`, the membership ops (`join`, `leave`, `invite`) and `send`.

use mxpolicy_host::{
    SendEvent,
    ruma::{RoomId, RoomVersionId, UserId},
};
use serde_json::{Map, Value, json};

use super::runner::{Runner, homeserver_deny};
use crate::{scenario::Op, sim::Membership};

impl Runner {
    pub(super) fn create_room(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        op: &Op,
    ) -> Result<(), String> {
        let Op::CreateRoom {
            room,
            creator,
            room_version,
            history_visibility,
            event_id,
            server_notices_for,
        } = op
        else {
            return Ok(());
        };
        self.world.known_user(creator)?;
        let version = RoomVersionId::try_from(room_version.as_str())
            .ok()
            .filter(|v| v.rules().is_some())
            .ok_or_else(|| format!("unknown room version {room_version:?}"))?;
        if let Some(u) = server_notices_for {
            self.local_user(u)?;
        }
        let id = self.new_event_id(event_id, "create", i)?;
        let ids = self.world.write().create_room(
            &id,
            room,
            creator,
            version,
            *history_visibility,
            server_notices_for.clone(),
            self.now(),
        )?;
        r.insert("event_ids".into(), json!(ids));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn membership(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        room: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: Membership,
        event_id: &Option<String>,
    ) -> Result<(), String> {
        let room_version = self.world.known_room(room)?;
        let sender_rec = self.world.known_user(sender)?;
        if target != sender {
            self.world.known_user(target)?;
        }
        let id = self.new_event_id(event_id, membership.as_str(), i)?;
        r.insert("event_id".into(), id.as_str().into());
        if sender_rec.deactivated {
            homeserver_deny(r, "M_USER_DEACTIVATED", format!("{sender} is deactivated"));
            return Ok(());
        }
        if sender_rec.local {
            let d = self.send_event(SendEvent {
                sender: sender.to_owned(),
                sender_kind: sender_rec.kind,
                room_id: room.to_owned(),
                room_version,
                event_type: "m.room.member".into(),
                state_key: Some(target.to_string()),
                content: json!({"membership": membership.as_str()}),
                origin_server_ts: 0,
                is_server_notices_room: false,
            });
            self.verdict(r, &d, i);
            if !d.outcome.is_allow() {
                return Ok(());
            }
        } else {
            r.insert("verdict".into(), "allow".into());
            r.insert("federated".into(), true.into());
        }
        // The homeserver's own authorization, after the policies (as Synapse checks consent
        // before auth rules).
        let (sender_now, target_now) = {
            let w = self.world.read();
            (w.membership(room, sender), w.membership(room, target))
        };
        let refusal = match membership {
            Membership::Leave
                if !matches!(target_now, Some(Membership::Join | Membership::Invite)) =>
            {
                Some(format!("{target} is not in {room}"))
            }
            Membership::Invite if sender_now != Some(Membership::Join) => {
                Some(format!("{sender} is not in {room}"))
            }
            Membership::Invite if target_now == Some(Membership::Join) => {
                Some(format!("{target} is already in {room}"))
            }
            _ => None,
        };
        if let Some(message) = refusal {
            homeserver_deny(r, "M_FORBIDDEN", message);
            return Ok(());
        }
        self.world
            .write()
            .set_membership(&id, room, sender, target, membership, self.now())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        room: &RoomId,
        sender: &UserId,
        event_id: &Option<String>,
        event_type: &str,
        state_key: &Option<String>,
        content: &Value,
    ) -> Result<(), String> {
        let room_version = self.world.known_room(room)?;
        let sender_rec = self.world.known_user(sender)?;
        if !content.is_object() {
            return Err("`content` must be a JSON object".into());
        }
        let id = self.new_event_id(event_id, "send", i)?;
        r.insert("event_id".into(), id.as_str().into());
        if sender_rec.deactivated {
            homeserver_deny(r, "M_USER_DEACTIVATED", format!("{sender} is deactivated"));
            return Ok(());
        }
        if sender_rec.local {
            let d = self.send_event(SendEvent {
                sender: sender.to_owned(),
                sender_kind: sender_rec.kind,
                room_id: room.to_owned(),
                room_version,
                event_type: event_type.to_owned(),
                state_key: state_key.clone(),
                content: content.clone(),
                origin_server_ts: 0,
                is_server_notices_room: false,
            });
            self.verdict(r, &d, i);
            if !d.outcome.is_allow() {
                return Ok(());
            }
        } else {
            // A remote user's event arrives over federation: on-send is for local users only.
            r.insert("verdict".into(), "allow".into());
            r.insert("federated".into(), true.into());
        }
        if self.world.read().membership(room, sender) != Some(Membership::Join) {
            homeserver_deny(r, "M_FORBIDDEN", format!("{sender} is not in {room}"));
            return Ok(());
        }
        self.world
            .write()
            .add_event(
                &id,
                room,
                sender,
                event_type,
                state_key.clone(),
                content.clone(),
                self.now(),
            )
            .map(|_| ())
    }
}
