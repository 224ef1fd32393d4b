"""A minimal typed client for the Matrix client-server API, over plain HTTP (httpx).

Homeserver-agnostic: it speaks only the specification's endpoints. Every exchange is logged
(method, path, status, a short body) to the logger ``mxpolicy_e2e.matrix``, so a failing
test's captured log is the transcript of what was asked and answered.

A non-2xx answer to a JSON call raises `MatrixError`, which keeps the status and the body.
Media downloads return the raw `httpx.Response`: tests compare refusals byte for byte.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger("mxpolicy_e2e.matrix")

JsonObject = dict[str, Any]

_txn_counter = itertools.count(1)


def short(text: str, limit: int = 400) -> str:
    """`text` on one line, cut to `limit` characters."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def describe_body(response: httpx.Response) -> str:
    """A short, printable description of a response body (binary bodies by size and type)."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith(("application/json", "text/")):
        return short(response.text)
    return f"({len(response.content)} bytes of {content_type or 'unknown type'})"


class MatrixError(Exception):
    """A non-2xx answer: `status`, the JSON `body` (``{}`` if it was not a JSON object),
    `errcode` (``None`` without one) and the raw `text`."""

    def __init__(self, method: str, path: str, status: int, text: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.text = text
        self.body: JsonObject = parse_json_object(text)
        errcode = self.body.get("errcode")
        self.errcode: str | None = errcode if isinstance(errcode, str) else None
        super().__init__(f"{method} {path}: {status} {short(text)}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> MatrixError:
        return cls(response.request.method, response.request.url.raw_path.decode(),
                   response.status_code, response.text)


def parse_json_object(text: str) -> JsonObject:
    """`text` as a JSON object, or ``{}`` if it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def new_txn_id() -> str:
    """A transaction id unique in this process."""
    return f"e2e-{time.time_ns()}-{next(_txn_counter)}"


def mxc_parts(mxc: str) -> tuple[str, str]:
    """``mxc://server/media_id`` as ``(server, media_id)``."""
    if not mxc.startswith("mxc://") or mxc.count("/") != 3:
        raise ValueError(f"not an mxc URI: {mxc!r}")
    server, media_id = mxc[len("mxc://"):].split("/")
    return server, media_id


def q(segment: str) -> str:
    """A path segment, percent-encoded (room ids, event ids, user ids)."""
    return quote(segment, safe="")


class MatrixClient:
    """One user's (or an anonymous) session with a homeserver at `base_url`."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.user_id: str | None = None
        self.device_id: str | None = None
        self.password: str | None = None
        self.timeout = timeout
        self.transport = transport
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> MatrixClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def anonymous(self) -> MatrixClient:
        """A client on the same server without an access token."""
        return MatrixClient(self.base_url, timeout=self.timeout, transport=self.transport)

    @property
    def who(self) -> str:
        return self.user_id or "anonymous"

    # --- transport -------------------------------------------------------------------------

    def request(self, method: str, path: str, *, json_body: JsonObject | None = None,
                params: dict[str, str | int] | None = None, content: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> httpx.Response:
        """One exchange, logged; never raises for a status."""
        all_headers = dict(headers or {})
        if auth and self.token is not None:
            all_headers["Authorization"] = f"Bearer {self.token}"
        response = self.http.request(method, path, json=json_body, params=params,
                                     content=content, headers=all_headers)
        shown = json.dumps(json_body, separators=(",", ":")) if json_body is not None else ""
        if content is not None:
            shown = f"({len(content)} bytes)"
        log.info("> %s %s %s (as %s)", method, response.request.url.raw_path.decode(),
                 short(shown, 300), self.who)
        log.info("< %d %s", response.status_code, describe_body(response))
        return response

    def call(self, method: str, path: str, json_body: JsonObject | None = None, *,
             params: dict[str, str | int] | None = None) -> JsonObject:
        """A JSON call: the answer's JSON object, or `MatrixError` for a non-2xx status."""
        response = self.request(method, path, json_body=json_body, params=params)
        if not 200 <= response.status_code < 300:
            raise MatrixError.from_response(response)
        return parse_json_object(response.text)

    # --- account ---------------------------------------------------------------------------

    def versions(self) -> JsonObject:
        return self.call("GET", "/_matrix/client/versions")

    def _logged_in(self, answer: JsonObject) -> JsonObject:
        self.token = str(answer["access_token"])
        self.user_id = str(answer["user_id"])
        self.device_id = str(answer.get("device_id"))
        return answer

    def register(self, username: str, password: str) -> JsonObject:
        """Register with the ``m.login.dummy`` stage and use the new account's token."""
        answer = self.call("POST", "/_matrix/client/v3/register", {
            "username": username, "password": password,
            "auth": {"type": "m.login.dummy"},
        })
        self.password = password
        return self._logged_in(answer)

    def login(self, username: str, password: str) -> JsonObject:
        answer = self.call("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
        })
        self.password = password
        return self._logged_in(answer)

    def deactivate(self, *, erase: bool, password: str | None = None) -> JsonObject:
        """Deactivate the account with user-interactive auth: the first call (no ``auth``)
        must answer 401 with a ``session``; the second authenticates with the password."""
        body: JsonObject = {"erase": erase}
        first = self.request("POST", "/_matrix/client/v3/account/deactivate", json_body=body)
        if first.status_code != 401:
            raise MatrixError.from_response(first)
        session = parse_json_object(first.text).get("session")
        if not isinstance(session, str):
            raise MatrixError.from_response(first)
        localpart = (self.user_id or "").removeprefix("@").split(":")[0]
        secret = password if password is not None else self.password
        return self.call("POST", "/_matrix/client/v3/account/deactivate", {
            **body,
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": secret,
                "session": session,
            },
        })

    # --- rooms -----------------------------------------------------------------------------

    def create_room(self, **body: Any) -> str:
        """createRoom with `body` as given (``name``, ``preset``, ...): the room id."""
        return str(self.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"])

    def join(self, room: str) -> str:
        return str(self.call("POST", f"/_matrix/client/v3/join/{q(room)}", {})["room_id"])

    def send(self, room_id: str, content: JsonObject, *, event_type: str = "m.room.message",
             txn_id: str | None = None) -> str:
        """PUT an event with a transaction id: its event id."""
        txn = txn_id or new_txn_id()
        path = f"/_matrix/client/v3/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn)}"
        return str(self.call("PUT", path, content)["event_id"])

    def send_text(self, room_id: str, body: str) -> str:
        return self.send(room_id, {"msgtype": "m.text", "body": body})

    def state(self, room_id: str, event_type: str, state_key: str = "") -> JsonObject:
        """The content of a state event."""
        return self.call("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/state/{q(event_type)}/"
                                f"{q(state_key)}")

    def messages(self, room_id: str, *, direction: str = "b", limit: int = 50,
                 from_token: str | None = None) -> JsonObject:
        params: dict[str, str | int] = {"dir": direction, "limit": limit}
        if from_token is not None:
            params["from"] = from_token
        return self.call("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages", params=params)

    def context(self, room_id: str, event_id: str, *, limit: int = 10) -> JsonObject:
        return self.call("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/context/{q(event_id)}",
                         params={"limit": limit})

    def event(self, room_id: str, event_id: str) -> JsonObject:
        return self.call("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(event_id)}")

    def sync(self, *, filter_: JsonObject | None = None, since: str | None = None,
             timeout_ms: int = 0) -> JsonObject:
        params: dict[str, str | int] = {"timeout": timeout_ms}
        if filter_ is not None:
            params["filter"] = json.dumps(filter_, separators=(",", ":"))
        if since is not None:
            params["since"] = since
        return self.call("GET", "/_matrix/client/v3/sync", params=params)

    # --- media -----------------------------------------------------------------------------

    def upload(self, data: bytes, *, content_type: str, filename: str) -> str:
        """POST /_matrix/media/v3/upload: the ``mxc://`` URI."""
        response = self.request("POST", "/_matrix/media/v3/upload", content=data,
                                params={"filename": filename},
                                headers={"Content-Type": content_type})
        if response.status_code != 200:
            raise MatrixError.from_response(response)
        return str(parse_json_object(response.text)["content_uri"])

    def download(self, mxc: str, *, version: str = "v1") -> httpx.Response:
        """GET the media: ``v1`` is the authenticated ``/_matrix/client/v1/media/download``,
        ``v3`` the legacy ``/_matrix/media/v3/download``. The raw response."""
        server, media_id = mxc_parts(mxc)
        return self.request("GET", f"{_media_prefix(version)}/download/{q(server)}/{q(media_id)}")

    def thumbnail(self, mxc: str, *, version: str = "v1", width: int = 32, height: int = 32,
                  method: str = "scale") -> httpx.Response:
        server, media_id = mxc_parts(mxc)
        return self.request("GET", f"{_media_prefix(version)}/thumbnail/{q(server)}/{q(media_id)}",
                            params={"width": width, "height": height, "method": method})


def _media_prefix(version: str) -> str:
    if version == "v1":
        return "/_matrix/client/v1/media"
    if version == "v3":
        return "/_matrix/media/v3"
    raise ValueError(f"unknown media API version {version!r} (v1 or v3)")


def timeline_events(sync: JsonObject, room_id: str) -> list[JsonObject]:
    """The timeline events of a joined room in a /sync answer (``[]`` if the room is absent)."""
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    events = room.get("timeline", {}).get("events", [])
    return [e for e in events if isinstance(e, dict)]


def room_state_events(sync: JsonObject, room_id: str) -> list[JsonObject]:
    """The state and timeline events of a joined room in a /sync answer."""
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    events = room.get("state", {}).get("events", []) + room.get("timeline", {}).get("events", [])
    return [e for e in events if isinstance(e, dict)]
