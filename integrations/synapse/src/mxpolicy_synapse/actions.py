"""Carrying out the service's actions in Synapse: the module API where it has a method,
Synapse's admin API otherwise (with an admin's access token read from `admin_token_file`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .http import HttpClient, HttpError
from .wire import Action, mxc_parts

log = logging.getLogger(__name__)


class ActionError(Exception):
    """An action could not be carried out now (it stays unacknowledged and is retried)."""


#: The pauses before a failed action is tried again within the same pass, as the Conduit
#: integration does (a notice whose room creation met one slow policy call, an admin API call
#: during a restart). After the last one the action is left unacknowledged, and the service
#: hands it out again once its outbox lease (60 s) runs out.
RETRY_DELAYS_S = (1.0, 2.0, 4.0)


async def run_retrying(run: Callable[[Action], Awaitable[str]], action: Action,
                       sleep: Callable[[float], Awaitable[None]],
                       delays: tuple[float, ...] = RETRY_DELAYS_S) -> str:
    """`run(action)`, tried again after each of `delays` while it raises `ActionError`; the
    last error is raised. Other errors (a malformed action) are raised at once."""
    for delay in delays:
        try:
            return await run(action)
        except ActionError as e:
            log.info("mxpolicy: action %s (outbox %s) failed, trying again in %.0f s: %s",
                     action.kind, action.outbox_id, delay, e)
        await sleep(delay)
    return await run(action)


def q(segment: str) -> str:
    return quote(segment, safe="")


class AdminApi:
    """Synapse's admin API at `base_url`, as the admin whose token is in `token_file`. The
    file is read when first needed and again after a 401 (so the token can be created after
    Synapse starts, and rotated)."""

    def __init__(self, http: HttpClient, base_url: str, token_file: Path | None,
                 timeout_s: float = 30.0) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.timeout_s = timeout_s
        self._token: str | None = None

    def _read_token(self) -> str:
        if self.token_file is None:
            raise ActionError("no `admin_token_file` in the module config: the admin API "
                              "cannot be used")
        try:
            token = self.token_file.read_text().strip()
        except OSError as e:
            raise ActionError(f"admin_token_file {self.token_file}: {e}") from e
        if not token:
            raise ActionError(f"admin_token_file {self.token_file} is empty")
        return token

    async def call(self, method: str, path: str, payload: Any | None = None,
                   *, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._read_token()
            try:
                status, body = await self.http.json_call(
                    method, f"{self.base_url}{path}", payload, token=self._token,
                    timeout_s=self.timeout_s)
            except HttpError as e:
                raise ActionError(str(e)) from e
            if status == 401 and attempt == 1:
                self._token = None
                continue
            if status not in ok:
                raise ActionError(f"{method} {path}: {status} {body}")
            return status, body
        raise ActionError(f"{method} {path}: the admin token is refused (401)")

    async def user_media(self, user_id: str) -> list[dict[str, Any]]:
        """Every local media the user uploaded (``GET /_synapse/admin/v1/users/<user>/media``,
        paged)."""
        media: list[dict[str, Any]] = []
        start = 0
        while True:
            _, body = await self.call(
                "GET", f"/_synapse/admin/v1/users/{q(user_id)}/media?limit=500&from={start}")
            page = body.get("media", []) if isinstance(body, dict) else []
            media += [m for m in page if isinstance(m, dict)]
            next_token = body.get("next_token") if isinstance(body, dict) else None
            if not isinstance(next_token, int) or not page:
                return media
            start = next_token

    async def quarantine(self, server: str, media_id: str) -> None:
        await self.call("POST", f"/_synapse/admin/v1/media/quarantine/{q(server)}/{q(media_id)}",
                        {})

    async def unquarantine(self, server: str, media_id: str) -> None:
        await self.call("POST",
                        f"/_synapse/admin/v1/media/unquarantine/{q(server)}/{q(media_id)}", {})

    async def delete_media(self, server: str, media_id: str) -> bool:
        """Delete a local media (its files and thumbnails): False if it was already gone."""
        status, _ = await self.call("DELETE", f"/_synapse/admin/v1/media/{q(server)}/{q(media_id)}",
                                    ok=(200, 404))
        return status == 200

    async def send_server_notice(self, user_id: str, content: dict[str, Any]) -> str:
        _, body = await self.call("POST", "/_synapse/admin/v1/send_server_notice",
                                  {"user_id": user_id, "content": content})
        return str(body.get("event_id")) if isinstance(body, dict) else ""

    async def whoami(self) -> str:
        _, body = await self.call("GET", "/_matrix/client/v3/account/whoami")
        return str(body.get("user_id")) if isinstance(body, dict) else ""


class ActionRunner:
    """One action at a time; raises `ActionError` when it must be retried."""

    def __init__(self, api: Any, admin: AdminApi, server_name: str,
                 rooms_of_user: Any = None, is_deactivated: Any = None) -> None:
        self.api = api
        self.admin = admin
        self.server_name = server_name
        self._rooms_of_user = rooms_of_user
        self._is_deactivated = is_deactivated

    async def run(self, action: Action) -> str:
        """Carry out `action`: a short description of what was done (for the log)."""
        kind, data = action.kind, action.data
        if kind == "send-server-notice":
            user, content = str(data["user"]), data.get("content")
            if not isinstance(content, dict):
                raise ActionError(f"send-server-notice without content: {data}")
            event_id = await self.admin.send_server_notice(user, content)
            return f"server notice {event_id} to {user}"
        if kind == "purge-room-history":
            room = str(data["room"])
            # ModuleApi.delete_room: Synapse's shutdown-and-purge of the room (purge: true),
            # scheduled; the room's events, state and local memberships are deleted.
            await self.api.delete_room(room)
            return f"room {room}: deletion with purge scheduled"
        if kind == "delete-media":
            mxc = str(data["mxc"])
            server, media_id = mxc_parts(mxc)
            if server != self.server_name:
                return f"{mxc}: remote media, nothing stored here to delete"
            deleted = await self.admin.delete_media(server, media_id)
            return f"{mxc}: {'deleted' if deleted else 'already gone'}"
        if kind == "leave-all-rooms":
            user = str(data["user"])
            if self._is_deactivated is not None and await self._is_deactivated(user):
                return f"{user}: deactivated; Synapse's user parter leaves the rooms"
            rooms: list[str] = (await self._rooms_of_user(user)
                                if self._rooms_of_user is not None else [])
            for room in rooms:
                await self.api.update_room_membership(user, user, room, "leave")
            return f"{user}: left {len(rooms)} rooms"
        if kind in ("remove-from-user-directory", "unbind-threepids", "delete-profile"):
            # Synapse's DeactivateAccountHandler does each of these itself (the profile only
            # with erase), before the module hears of the deactivation.
            return f"{kind} {data.get('user')}: done by Synapse's deactivation"
        if kind == "announce-erasure":
            return f"announce-erasure {data.get('user')}: Synapse has no channel for it (logged)"
        log.warning("mxpolicy: unknown action %s %s: acknowledged without effect", kind, data)
        return f"unknown action {kind}: ignored"
