"""Unit tests of the module's parts that need no running Synapse: config parsing, the wire
format, error mapping, the facts queries (on an in-memory SQLite database with Synapse's
tables) and the timer-facts endpoint's checks, the action runner with fakes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from synapse.api.errors import SynapseError

from mxpolicy_synapse.actions import ActionError, ActionRunner, AdminApi
from mxpolicy_synapse.config import ConfigError, parse_config
from mxpolicy_synapse.facts import FactsRequestError, FactsSource, check_facts_request
from mxpolicy_synapse.module import policy_error, unavailable
from mxpolicy_synapse.wire import Action, Deny, WireError, joined_members, mxc_parts, \
    parse_claimed, parse_decision, status_for_errcode, user_kind

SECRET = "0123456789abcdef0123"


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-secret"
    path.write_text(SECRET + "\n")
    return path


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_fail_closed_for_consent_and_media(secret_file: Path) -> None:
    config = parse_config({"service_url": "http://127.0.0.1:8480/",
                           "api_secret_file": str(secret_file)})
    assert config.service_url == "http://127.0.0.1:8480"
    assert config.api_secret == SECRET
    assert config.web_prefix == "/_synapse/client/mxpolicy"
    for name in ("on_send", "on_media_upload", "on_media_fetch", "on_deactivate"):
        assert config.callback(name).fail_closed, name
    assert not config.callback("on_reactivate").fail_closed
    assert config.callback("on_send").timeout_s == 2.0


def test_config_overrides(secret_file: Path) -> None:
    config = parse_config({
        "service_url": "http://127.0.0.1:8480", "api_secret_file": str(secret_file),
        "admin_token_file": "/etc/token", "admin_api_url": "http://127.0.0.1:8008",
        "callbacks": {"on_send": {"failure": "open", "timeout_ms": 150}},
        "outbox_interval_ms": 500, "server_notices_user": "@notices:hs",
    })
    assert not config.callback("on_send").fail_closed
    assert config.callback("on_send").timeout_ms == 150
    assert config.admin_token_file == Path("/etc/token")
    assert config.outbox_interval_ms == 500
    assert config.server_notices_user == "@notices:hs"


@pytest.mark.parametrize(("change", "key"), [
    ({"service_url": "ftp://x"}, "service_url"),
    ({"service_url": "http://x/?a=1"}, "service_url"),
    ({"port": 1}, "port"),
    ({"callbacks": {"on_fetch": {}}}, "callbacks.on_fetch"),
    ({"callbacks": {"on_send": {"failure": "maybe"}}}, "callbacks.on_send.failure"),
    ({"callbacks": {"on_send": {"timeout_ms": 0}}}, "callbacks.on_send.timeout_ms"),
    ({"callbacks": {"on_send": {"retries": 1}}}, "callbacks.on_send.retries"),
    ({"outbox_interval_ms": True}, "outbox_interval_ms"),
    ({"web_prefix": "/x/"}, "web_prefix"),
    ({"server_notices_user": "server"}, "server_notices_user"),
])
def test_config_errors_name_the_key(secret_file: Path, change: dict[str, Any],
                                    key: str) -> None:
    raw: dict[str, Any] = {"service_url": "http://127.0.0.1:8480",
                           "api_secret_file": str(secret_file), **change}
    with pytest.raises(ConfigError, match=f"`{key}"):
        parse_config(raw)


def test_config_secret_file_is_checked(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match="at least 16"):
        parse_config({"service_url": "http://x", "api_secret_file": str(short)})
    with pytest.raises(ConfigError, match="cannot read"):
        parse_config({"service_url": "http://x", "api_secret_file": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match="`api_secret_file` is required"):
        parse_config({"service_url": "http://x"})


# --- wire -----------------------------------------------------------------------------------


def test_deny_decision_and_error_mapping() -> None:
    decision = parse_decision({
        "generation": 3,
        "outcome": {"verdict": "deny", "errcode": "M_CONSENT_NOT_GIVEN",
                    "message": "agree at https://hs/c", "fields": {"consent_uri": "https://hs/c"}},
        "actions": [{"kind": "send-server-notice", "user": "@a:hs",
                     "content": {"msgtype": "m.server_notice", "body": "b"}}],
        "outbox": [7],
        "failures": [],
        "unanswered": [{"question": "rooms_of_user", "subject": "@a:hs"}],
    })
    assert not decision.allowed and decision.generation == 3
    assert decision.actions == [Action("send-server-notice",
                                       {"user": "@a:hs", "content": {"msgtype": "m.server_notice",
                                                                     "body": "b"}}, 7)]
    assert decision.unanswered == [("rooms_of_user", "@a:hs")]
    assert decision.deny is not None
    error = policy_error(decision.deny)
    assert isinstance(error, SynapseError)
    assert error.code == 403
    assert error.error_dict(None) == {"errcode": "M_CONSENT_NOT_GIVEN",
                                      "error": "agree at https://hs/c",
                                      "consent_uri": "https://hs/c"}


def test_fields_cannot_override_errcode_or_error() -> None:
    deny = Deny("M_FORBIDDEN", "no", {"errcode": "M_OTHER", "error": "x", "extra": 1})
    assert deny.body() == {"errcode": "M_FORBIDDEN", "error": "no", "extra": 1}
    assert policy_error(deny).error_dict(None) == deny.body()


def test_status_follows_errcode() -> None:
    assert [status_for_errcode(c) for c in ("M_CONSENT_NOT_GIVEN", "M_FORBIDDEN", "M_NOT_FOUND",
                                            "M_TOO_LARGE", "M_LIMIT_EXCEEDED", "M_BAD_JSON",
                                            "M_UNKNOWN", "M_WHATEVER")] == \
        [403, 403, 404, 413, 429, 400, 500, 403]
    error = unavailable("send")
    assert error.code == 503 and "policy service is unavailable" in error.msg


def test_allow_and_bad_answers() -> None:
    assert parse_decision({"outcome": {"verdict": "allow"}, "actions": [],
                           "unanswered": []}).allowed
    # Web and serve outcomes have no verdict: not a deny.
    assert parse_decision({"outcome": [], "actions": []}).allowed
    bad: object
    for bad in ([], {"actions": []}, {"outcome": {"verdict": "maybe"}},
                {"outcome": {"verdict": "deny"}}, {"outcome": {"verdict": "allow"},
                                                  "actions": [{"no": "kind"}]}):
        with pytest.raises(WireError):
            parse_decision(bad)


def test_claimed_actions() -> None:
    claimed = parse_claimed({"actions": [
        {"id": 4, "plugin": "erasure", "action": {"kind": "purge-room-history", "room": "!r"}},
        {"id": 5, "plugin": "media", "action": {"kind": "delete-media", "mxc": "mxc://hs/m"}},
    ]})
    assert [(a.kind, a.outbox_id) for a in claimed] == [("purge-room-history", 4),
                                                       ("delete-media", 5)]
    with pytest.raises(WireError):
        parse_claimed({"actions": [{"plugin": "x", "action": {"kind": "y"}}]})


def test_user_kind_members_mxc() -> None:
    assert user_kind("@server:hs", server_notices_user="@server:hs") == "server-notices"
    assert user_kind("@a:hs", server_notices_user="@server:hs") == "regular"
    assert user_kind("@a:hs", server_notices_user=None, appservice=True) == "appservice"
    assert joined_members([("m.room.member", "@b:hs", {"membership": "join"}),
                           ("m.room.member", "@c:hs", {"membership": "leave"}),
                           ("m.room.member", "@a:hs", {"membership": "join"}),
                           ("m.room.name", "", {"name": "x"})]) == ["@a:hs", "@b:hs"]
    assert mxc_parts("mxc://hs/abc") == ("hs", "abc")
    for bad in ("http://hs/abc", "mxc://hs", "mxc://hs/a/b", "mxc:///a"):
        with pytest.raises(ValueError):
            mxc_parts(bad)


# --- facts ----------------------------------------------------------------------------------


def fake_synapse_db() -> sqlite3.Connection:
    """Synapse's tables the facts read (columns as in its schema), with a small history."""
    db = sqlite3.connect(":memory:")
    db.executescript("""
        CREATE TABLE current_state_events(event_id TEXT NOT NULL, room_id TEXT NOT NULL,
            type TEXT NOT NULL, state_key TEXT NOT NULL, membership TEXT);
        CREATE TABLE room_memberships(event_id TEXT NOT NULL, user_id TEXT NOT NULL,
            sender TEXT NOT NULL, room_id TEXT NOT NULL, membership TEXT NOT NULL,
            forgotten INTEGER DEFAULT 0, display_name TEXT, avatar_url TEXT);
        CREATE TABLE erased_users(user_id TEXT NOT NULL);
        INSERT INTO current_state_events VALUES
            ('$1', '!r1', 'm.room.member', '@a:hs', 'join'),
            ('$2', '!r1', 'm.room.member', '@b:hs', 'leave'),
            ('$3', '!r2', 'm.room.member', '@a:hs', 'join'),
            ('$4', '!r2', 'm.room.member', '@c:hs', 'join'),
            ('$5', '!r1', 'm.room.name', '', NULL);
        INSERT INTO room_memberships (event_id, user_id, sender, room_id, membership) VALUES
            ('$1', '@a:hs', '@a:hs', '!r1', 'join'),
            ('$6', '@b:hs', '@b:hs', '!r1', 'join'),
            ('$2', '@b:hs', '@b:hs', '!r1', 'leave'),
            ('$7', '@d:hs', '@a:hs', '!r1', 'invite'),
            ('$3', '@a:hs', '@a:hs', '!r2', 'join'),
            ('$4', '@c:hs', '@c:hs', '!r2', 'join');
        INSERT INTO erased_users VALUES ('@b:hs');
    """)
    return db


def runner(db: sqlite3.Connection) -> Callable[..., Any]:
    """A `run_db_interaction` stand-in: the function runs with a cursor of `db`."""
    async def run(desc: str, func: Callable[..., Any], *args: Any) -> Any:
        return func(db.cursor(), *args)
    return run


def test_facts_from_synapse_tables() -> None:
    facts = FactsSource(runner(fake_synapse_db()))

    async def check() -> None:
        assert await facts.answer("rooms_of_user", "@a:hs") == ["!r1", "!r2"]
        assert await facts.answer("members_of_room", "!r1") == ["@a:hs"]
        # b left, d was only invited.
        assert await facts.answer("ever_joined_members", "!r1") == ["@a:hs", "@b:hs"]
        assert await facts.answer("rooms_of_user", "@nobody:hs") == []
        assert await facts.facts([("rooms_of_user", "@c:hs"), ("members_of_room", "!r2"),
                                  ("bogus", "x")]) == {
            "rooms_of_user": {"@c:hs": ["!r2"]},
            "members_of_room": {"!r2": ["@a:hs", "@c:hs"]},
        }
        assert await facts.is_erased("@b:hs") and not await facts.is_erased("@a:hs")

    asyncio.run(check())


def test_facts_request_checks() -> None:
    good = f"Bearer {SECRET}"
    assert check_facts_request(good, SECRET, "ever_joined_members", "!abc") == \
        ("ever_joined_members", "!abc")
    assert check_facts_request(f"bearer  {SECRET} ", SECRET, "rooms_of_user", "@a:hs") == \
        ("rooms_of_user", "@a:hs")
    cases: list[tuple[str | None, str | None, str | None, int]] = [
        (None, "rooms_of_user", "@a:hs", 401),
        ("Bearer wrong-secret-wrong", "rooms_of_user", "@a:hs", 401),
        (f"Basic {SECRET}", "rooms_of_user", "@a:hs", 401),
        # The secret is checked before anything else is looked at.
        ("Bearer wrong", "bogus", None, 401),
        (good, "bogus", "@a:hs", 400),
        (good, None, "@a:hs", 400),
        (good, "rooms_of_user", "!r:hs", 400),
        (good, "rooms_of_user", "@nohost", 400),
        (good, "members_of_room", "@a:hs", 400),
        (good, "members_of_room", None, 400),
    ]
    for auth, question, subject, status in cases:
        with pytest.raises(FactsRequestError) as caught:
            check_facts_request(auth, SECRET, question, subject)
        assert caught.value.status == status, (auth, question, subject)


# --- actions --------------------------------------------------------------------------------


class FakeAdmin(AdminApi):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.deleted: set[str] = set()

    async def call(self, method: str, path: str, payload: Any | None = None,
                   *, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        self.calls.append((method, path, payload))
        if method == "DELETE":
            if path in self.deleted:
                return 404, {}
            self.deleted.add(path)
        return 200, {"event_id": "$notice"}


class FakeApi:
    def __init__(self) -> None:
        self.deleted_rooms: list[str] = []
        self.left: list[tuple[str, str]] = []

    async def delete_room(self, room_id: str) -> None:
        self.deleted_rooms.append(room_id)

    async def update_room_membership(self, sender: str, target: str, room_id: str,
                                     new_membership: str) -> None:
        self.left.append((target, room_id))


def test_actions_carried_out_with_admin_api_and_module_api() -> None:
    admin, api = FakeAdmin(), FakeApi()

    async def rooms(user: str) -> list[str]:
        return ["!r1", "!r2"]

    async def deactivated(user: str) -> bool:
        return user == "@gone:hs"

    run = ActionRunner(api, admin, "hs", rooms_of_user=rooms, is_deactivated=deactivated)

    async def check() -> None:
        await run.run(Action("send-server-notice", {"user": "@a:hs", "content": {"body": "x"}},
                             1))
        assert admin.calls[-1] == ("POST", "/_synapse/admin/v1/send_server_notice",
                                   {"user_id": "@a:hs", "content": {"body": "x"}})
        await run.run(Action("purge-room-history", {"room": "!lonely"}, 2))
        assert api.deleted_rooms == ["!lonely"]
        assert "deleted" in await run.run(Action("delete-media", {"mxc": "mxc://hs/m1"}, 3))
        assert admin.calls[-1][:2] == ("DELETE", "/_synapse/admin/v1/media/hs/m1")
        assert "already gone" in await run.run(Action("delete-media", {"mxc": "mxc://hs/m1"}, 4))
        assert "remote" in await run.run(Action("delete-media", {"mxc": "mxc://other/m"}, 5))
        await run.run(Action("leave-all-rooms", {"user": "@gone:hs"}, 6))
        assert api.left == []
        await run.run(Action("leave-all-rooms", {"user": "@here:hs"}, 7))
        assert api.left == [("@here:hs", "!r1"), ("@here:hs", "!r2")]
        with pytest.raises(ActionError):
            await run.run(Action("send-server-notice", {"user": "@a:hs"}, 8))

    asyncio.run(check())


def test_failed_action_is_tried_again_after_1_2_4_s_then_left_to_the_lease() -> None:
    from mxpolicy_synapse.actions import RETRY_DELAYS_S, run_retrying

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def failing(times: int) -> Callable[[Action], Awaitable[str]]:
        calls = 0

        async def run(action: Action) -> str:
            nonlocal calls
            calls += 1
            if calls <= times:
                raise ActionError(f"attempt {calls} fails")
            return f"done after {calls}"
        return run

    notice = Action("send-server-notice", {"user": "@a:hs", "content": {}}, 9)
    assert asyncio.run(run_retrying(failing(0), notice, sleep)) == "done after 1"
    assert slept == []
    assert asyncio.run(run_retrying(failing(2), notice, sleep)) == "done after 3"
    assert slept == [1.0, 2.0]
    slept.clear()
    with pytest.raises(ActionError, match="attempt 4 fails"):
        asyncio.run(run_retrying(failing(4), notice, sleep))
    assert slept == list(RETRY_DELAYS_S) == [1.0, 2.0, 4.0]

    async def malformed(action: Action) -> str:
        raise KeyError("user")

    slept.clear()
    with pytest.raises(KeyError):
        asyncio.run(run_retrying(malformed, notice, sleep))
    assert slept == [], "a malformed action is not tried again"


def test_admin_token_file_is_required_and_read_lazily(tmp_path: Path) -> None:
    from mxpolicy_synapse.http import HttpClient

    admin = AdminApi(HttpClient(), "http://127.0.0.1:1", tmp_path / "token")
    with pytest.raises(ActionError, match="token"):
        admin._read_token()
    (tmp_path / "token").write_text("  syt_abc \n")
    assert admin._read_token() == "syt_abc"
    with pytest.raises(ActionError, match="admin_token_file"):
        AdminApi(HttpClient(), "http://x", None)._read_token()
