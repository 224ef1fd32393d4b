"""Wire format v1 of `mxpolicy serve`, as this module speaks it (pure functions: no Synapse,
no I/O). A hook request is ``{"context": ..., "facts": ...}``; a hook response is the host's
decision (``outcome``, ``actions``, ``outbox``, ``failures``, ``decided_by``) with
``generation`` and ``unanswered``. A deny is a 200 whose ``outcome.verdict`` is ``"deny"``
with the Matrix error to return (``errcode``, ``message``, ``fields``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

#: The three homeserver questions (the keys of ``facts`` and of the timer facts endpoint).
QUESTIONS = ("rooms_of_user", "members_of_room", "ever_joined_members")


class WireError(ValueError):
    """The service answered something that is not wire format v1."""


@dataclass(frozen=True)
class Deny:
    """A policy's refusal: what the client must get, exactly."""

    errcode: str
    message: str
    fields: JsonDict = field(default_factory=dict)

    @property
    def status(self) -> int:
        return status_for_errcode(self.errcode)

    def body(self) -> JsonDict:
        """The client's JSON body: the extra fields, then ``errcode`` and ``error`` (which the
        fields cannot override)."""
        return {**self.fields, "errcode": self.errcode, "error": self.message}


@dataclass(frozen=True)
class Action:
    """An action to carry out; `outbox_id` is what to acknowledge (None without the outbox)."""

    kind: str
    data: JsonDict
    outbox_id: int | None


@dataclass(frozen=True)
class Decision:
    deny: Deny | None
    actions: list[Action]
    unanswered: list[tuple[str, str]]
    generation: int | None
    failures: list[JsonDict]

    @property
    def allowed(self) -> bool:
        return self.deny is None


def status_for_errcode(errcode: str) -> int:
    """The HTTP status of a refusal, from its errcode (the same table as the Conduit
    integration): `M_LIMIT_EXCEEDED` 429, `M_NOT_FOUND` 404, `M_TOO_LARGE` 413, bad input
    400, `M_UNKNOWN` (a plugin failing closed) 500, anything else 403."""
    return {
        "M_LIMIT_EXCEEDED": 429,
        "M_NOT_FOUND": 404,
        "M_TOO_LARGE": 413,
        "M_BAD_JSON": 400,
        "M_NOT_JSON": 400,
        "M_INVALID_PARAM": 400,
        "M_UNKNOWN": 500,
    }.get(errcode, 403)


def hook_request(context: Mapping[str, Any], facts: Mapping[str, Any] | None = None) -> JsonDict:
    body: JsonDict = {"context": dict(context)}
    if facts:
        body["facts"] = {k: v for k, v in facts.items() if v}
    return body


def parse_action(value: object, outbox_id: int | None) -> Action:
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise WireError(f"not an action: {value!r}")
    data = {k: v for k, v in value.items() if k != "kind"}
    return Action(str(value["kind"]), data, outbox_id)


def parse_decision(body: object) -> Decision:
    """A hook response (`WireError` if it is not one)."""
    if not isinstance(body, dict):
        raise WireError("a hook response must be a JSON object")
    outcome = body.get("outcome")
    deny: Deny | None = None
    if isinstance(outcome, dict) and "verdict" in outcome:
        verdict = outcome["verdict"]
        if verdict == "deny":
            errcode, message = outcome.get("errcode"), outcome.get("message")
            fields = outcome.get("fields", {})
            if not isinstance(errcode, str) or not isinstance(message, str) \
                    or not isinstance(fields, dict):
                raise WireError(f"a deny without errcode and message: {outcome!r}")
            deny = Deny(errcode, message, dict(fields))
        elif verdict != "allow":
            raise WireError(f"unknown verdict {verdict!r}")
    elif outcome is None:
        raise WireError("a hook response without `outcome`")
    raw_actions = body.get("actions", [])
    raw_ids = body.get("outbox", [])
    if not isinstance(raw_actions, list) or not isinstance(raw_ids, list):
        raise WireError("`actions` and `outbox` must be lists")
    ids: list[int | None] = [i if isinstance(i, int) else None for i in raw_ids]
    ids += [None] * (len(raw_actions) - len(ids))
    actions = [parse_action(a, i) for a, i in zip(raw_actions, ids)]
    unanswered = [(str(u.get("question")), str(u.get("subject")))
                  for u in body.get("unanswered", []) if isinstance(u, dict)]
    generation = body.get("generation")
    failures = [f for f in body.get("failures", []) if isinstance(f, dict)]
    return Decision(deny, actions, unanswered,
                    generation if isinstance(generation, int) else None, failures)


def parse_claimed(body: object) -> list[Action]:
    """The answer of ``POST /_mxpolicy/v1/admin/outbox/claim``: ``{"actions": [{"id",
    "plugin", "action"}]}``."""
    if not isinstance(body, dict) or not isinstance(body.get("actions"), list):
        raise WireError("a claim answer must be {\"actions\": [...]}")
    claimed = []
    for entry in body["actions"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise WireError(f"not a claimed action: {entry!r}")
        claimed.append(parse_action(entry.get("action"), int(entry["id"])))
    return claimed


def user_kind(sender: str, *, server_notices_user: str | None,
              appservice: bool = False, guest: bool = False) -> str:
    """The wire's ``sender_kind``: ``server-notices`` for Synapse's notices user, else
    ``appservice``/``guest`` when known, else ``regular``."""
    if server_notices_user is not None and sender == server_notices_user:
        return "server-notices"
    if appservice:
        return "appservice"
    if guest:
        return "guest"
    return "regular"


def send_context(*, sender: str, sender_kind: str, room_id: str, room_version: str,
                 event_type: str, state_key: str | None, content: Mapping[str, Any],
                 origin_server_ts: int, is_server_notices_room: bool) -> JsonDict:
    context: JsonDict = {
        "sender": sender,
        "sender_kind": sender_kind,
        "room_id": room_id,
        "room_version": room_version,
        "event_type": event_type,
        "content": dict(content),
        "origin_server_ts": origin_server_ts,
        "is_server_notices_room": is_server_notices_room,
    }
    if state_key is not None:
        context["state_key"] = state_key
    return context


def joined_members(state: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[str]:
    """Joined users from ``(type, state_key, content)`` triples of a room's state."""
    return sorted(key for kind, key, content in state
                  if kind == "m.room.member" and content.get("membership") == "join")


def mxc_parts(mxc: str) -> tuple[str, str]:
    """``mxc://server/media_id`` as ``(server, media_id)`` (`ValueError` otherwise)."""
    if not mxc.startswith("mxc://"):
        raise ValueError(f"not an mxc URI: {mxc!r}")
    rest = mxc[len("mxc://"):]
    server, _, media_id = rest.partition("/")
    if not server or not media_id or "/" in media_id:
        raise ValueError(f"not an mxc URI: {mxc!r}")
    return server, media_id
