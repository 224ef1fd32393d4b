"""The homeserver's facts, read from Synapse's database (read-only SQL, run through the
module API's public `run_db_interaction`, on Synapse's own connection pool).

Synapse's module API has no method for a user's rooms, a room's members or everyone ever
joined to a room, so these queries read its schema, which is private to Synapse. Tested on
Synapse 1.163.2 (SQLite; the SQL is portable to PostgreSQL, placeholders are Synapse's ``?``,
which its database layer converts):

- ``current_state_events(room_id, type, state_key, membership)``: the current state; a
  member row with ``membership = 'join'`` is a joined user (rooms of a user, members of a
  room);
- ``room_memberships(room_id, user_id, membership)``: every membership event ever stored,
  so a user with any ``join`` row ever joined the room (what Synapse's
  `get_membership_event_ids_for_user` reads too);
- ``erased_users(user_id)``: Synapse's erased mark (`UserErasureStore.is_user_erased` reads
  this table; `DeactivateAccountHandler` writes it with `mark_user_erased` before it calls
  `on_user_deactivation_status_changed`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from .wire import QUESTIONS


class Cursor(Protocol):
    """What the queries need of a DB-API cursor (Synapse's `LoggingTransaction`, sqlite3's
    cursor)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def fetchall(self) -> list[Any]: ...


ROOMS_OF_USER = (
    "SELECT room_id FROM current_state_events"
    " WHERE type = 'm.room.member' AND state_key = ? AND membership = 'join'"
    " ORDER BY room_id"
)
MEMBERS_OF_ROOM = (
    "SELECT state_key FROM current_state_events"
    " WHERE room_id = ? AND type = 'm.room.member' AND membership = 'join'"
    " ORDER BY state_key"
)
EVER_JOINED_MEMBERS = (
    "SELECT DISTINCT user_id FROM room_memberships"
    " WHERE room_id = ? AND membership = 'join'"
    " ORDER BY user_id"
)
IS_ERASED = "SELECT user_id FROM erased_users WHERE user_id = ?"

SQL = {
    "rooms_of_user": ROOMS_OF_USER,
    "members_of_room": MEMBERS_OF_ROOM,
    "ever_joined_members": EVER_JOINED_MEMBERS,
}


def query(txn: Cursor, question: str, subject: str) -> list[str]:
    """One question's answer, in a transaction."""
    txn.execute(SQL[question], (subject,))
    return [str(row[0]) for row in txn.fetchall()]


def query_many(txn: Cursor, asks: Iterable[tuple[str, str]]) -> dict[str, dict[str, list[str]]]:
    """Several questions in one transaction: ``{question: {subject: answer}}``."""
    facts: dict[str, dict[str, list[str]]] = {}
    for question, subject in asks:
        facts.setdefault(question, {})[subject] = query(txn, question, subject)
    return facts


def is_erased(txn: Cursor, user_id: str) -> bool:
    txn.execute(IS_ERASED, (user_id,))
    return bool(txn.fetchall())


#: Runs a function in a database transaction (the module API's `run_db_interaction`, or a
#: test's sqlite3 wrapper).
DbRunner = Callable[..., Awaitable[Any]]


class FactsSource:
    """The facts, asked through `run` (a `run_db_interaction`-like callable)."""

    def __init__(self, run: DbRunner) -> None:
        self._run = run

    async def facts(self, asks: Iterable[tuple[str, str]]) -> dict[str, dict[str, list[str]]]:
        asks = [(q, s) for q, s in asks if q in SQL]
        if not asks:
            return {}
        result: dict[str, dict[str, list[str]]] = await self._run(
            "mxpolicy_facts", query_many, asks)
        return result

    async def answer(self, question: str, subject: str) -> list[str]:
        result: list[str] = await self._run("mxpolicy_facts", query, question, subject)
        return result

    async def is_erased(self, user_id: str) -> bool:
        result: bool = await self._run("mxpolicy_is_erased", is_erased, user_id)
        return result


class FactsRequestError(Exception):
    """A timer-facts request refused: `status` and a Matrix-style body."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"errcode": errcode, "error": error}


def check_facts_request(authorization: str | None, expected_secret: str,
                        question: str | None, subject: str | None) -> tuple[str, str]:
    """Validate ``GET <facts_url>?question=&subject=`` with ``Authorization: Bearer
    <secret>``: the (question, subject) to answer, or `FactsRequestError` (401 for a missing or
    wrong secret, checked first; 400 for an unknown question or a bad subject)."""
    import hmac

    token = None
    if authorization is not None:
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = rest.strip()
    if token is None:
        raise FactsRequestError(401, "M_MISSING_TOKEN",
                                "an `Authorization: Bearer <api secret>` header is required")
    if not hmac.compare_digest(token.encode(), expected_secret.encode()):
        raise FactsRequestError(401, "M_UNKNOWN_TOKEN", "wrong API secret")
    if question not in QUESTIONS:
        raise FactsRequestError(400, "M_INVALID_PARAM",
                                f"`question` must be one of {', '.join(QUESTIONS)}")
    assert question is not None
    sigil = "@" if question == "rooms_of_user" else "!"
    # Room ids of room version 12 have no server part (`!<hash>`); user ids always have one.
    if (not subject or not subject.startswith(sigil) or len(subject) > 255
            or (sigil == "@" and ":" not in subject)):
        what = "a user id" if sigil == "@" else "a room id"
        raise FactsRequestError(400, "M_INVALID_PARAM", f"`subject` must be {what}")
    return question, subject
