"""The GDPR story through a real patched Conduit (issue 14, item 2), one test per step.

The steps share one running Conduit (a module-scoped fixture) and one `Story` that carries
what a step leaves for the next; pytest runs them in file order. A step that needs something
an earlier step did not leave fails saying which step.

Environment: ``MXPOLICY_CONDUIT_BIN`` (required: the patched conduit binary; without it every
step fails), ``MXPOLICY_CONDUIT_PORT`` (6167), ``MXPOLICY_BIN``, ``MXPOLICY_PLUGINS``,
``MXPOLICY_ARTIFACTS`` (screenshots go to its ``conduit/``), ``MXPOLICY_E2E_WORK`` (the work
folder; default a new temporary one), ``MXPOLICY_E2E_GRACE_MS`` (45000: the erasure's grace
period, which must end after the restart of step e), ``MXPOLICY_E2E_DEADLINE_MS`` (500: each
plugin's per-call deadline, instead of the host's default 10 ms, see
``mxpolicy_e2e.story.DEADLINE_MS``).

Steps marked CONTRACT check what Conduit is to carry out from the policies' actions (server
notices, media deletion, room purge).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mxpolicy_e2e import images, paths
from mxpolicy_e2e.conduit import SERVER_USER, Conduit
from mxpolicy_e2e.consent import ConsentLink, accept_over_http, consent_link_of
from mxpolicy_e2e.matrix import JsonObject, MatrixClient, MatrixError, room_state_events, \
    timeline_events
from mxpolicy_e2e.sqlite_ro import kv_count_containing, kv_has_key
from mxpolicy_e2e.story import AFTER_GRACE_S, Story, announce, browser_accepts, \
    consent_page, consent_refusal, consenting, first_event_after_consent, poll, refusal, \
    sample_policy_set, work_dir

PORT = int(os.environ.get("MXPOLICY_CONDUIT_PORT", "6167"))
GRACE_MS = int(os.environ.get("MXPOLICY_E2E_GRACE_MS", "45000"))
#: How long a server notice may take to arrive (a long-poll loop: a passing run stops early).
NOTICE_WAIT_S = 30.0
SECRET = "my secret, before erasure"
LONELY = "lonely secret"
#: A 64x64 PNG, unique to this run (its file on disk is named by its hash).
PNG = images.png(64, 64, seed=int(time.time()) % 251)

ConduitStory = Story[Conduit]


@pytest.fixture(scope="module")
def story(request: pytest.FixtureRequest) -> Iterator[ConduitStory]:
    binary = os.environ.get("MXPOLICY_CONDUIT_BIN", "")
    if not binary:
        pytest.fail("MXPOLICY_CONDUIT_BIN is not set: it must name the patched conduit binary "
                    "(scripts/conduit.sh builds it and sets it)", pytrace=False)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"MXPOLICY_CONDUIT_BIN={binary} is not an executable file", pytrace=False)
    work = work_dir("mxpolicy-e2e-")
    policy_set = sample_policy_set(work / "set", PORT, GRACE_MS)
    conduit = Conduit(Path(binary).resolve(), work, PORT, policy_set)
    artifacts = paths.artifacts_dir("conduit")
    announce(request.config, f"Conduit work folder: {work}", f"Conduit log: {conduit.log_path}",
             f"Conduit screenshots: {artifacts}")
    waited = conduit.start()
    print(f"Conduit answered after {waited:.1f} s")
    s = Story(server=conduit, policy_set=policy_set, artifacts=artifacts, grace_ms=GRACE_MS)
    try:
        yield s
    finally:
        s.close()
        code = conduit.stop()
        print(f"\nConduit stopped (status {code}); log: {conduit.log_path}")


def alice_messages(events: list[JsonObject]) -> list[JsonObject]:
    return [e for e in events
            if e.get("sender") == "@alice:localhost" and e.get("type") == "m.room.message"]


def sync_timeline(client: MatrixClient, room_id: str) -> list[JsonObject]:
    answer = client.sync(filter_={"room": {"timeline": {"limit": 50}}})
    return timeline_events(answer, room_id)


# --- a. a new user is refused at her first event, and notified ------------------------------


def test_a1_first_event_refused_with_consent_uri(story: ConduitStory) -> None:
    alice = story.new_user("alice", "correct horse")
    error = consent_refusal(lambda: alice.create_room(name="before consent"))
    link = consent_link_of(error)
    assert link.uri.startswith(f"{story.server.base_url}/_mxpolicy/consent/?"), link.uri
    assert (link.user, link.version) == ("@alice:localhost", "1.0")
    story.put("alice_link", link)

    page = consent_page(link.uri)
    # The page's own CSP, not Conduit's blanket `sandbox` one (which forbids the form).
    csp = page.headers.get("content-security-policy", "")
    assert "sandbox" not in csp, csp


def test_a2_server_notice_with_the_link_reaches_her(story: ConduitStory) -> None:
    """@conduit:localhost creates a room named "Server Notices", joins alice to it (she takes
    no step: the server invites her and joins her itself, as Conduit does with its first user
    in the admin room) and sends an m.server_notice whose body holds the consent_uri; she
    sees it in /sync."""
    alice = story.get("alice", MatrixClient)
    link = story.get("alice_link", ConsentLink)
    seen: list[str] = []

    # As a client does: an initial sync, then incremental ones from its `next_batch` (Conduit
    # answers a repeated initial sync from its cache, so polling it would never see news).
    since: str | None = None

    def notice_room() -> str | None:
        nonlocal since
        answer = alice.sync(filter_={"room": {"timeline": {"limit": 50}}}, since=since,
                            timeout_ms=0 if since is None else 1000)
        since = str(answer.get("next_batch"))
        for room_id in answer.get("rooms", {}).get("join", {}):
            for event in timeline_events(answer, room_id):
                content = event.get("content", {})
                if content.get("msgtype") == "m.server_notice":
                    seen.append(f"{room_id}: {event.get('sender')}: {content.get('body')!r}")
                    if event.get("sender") == SERVER_USER and link.uri in content.get("body", ""):
                        return str(room_id)
        return None

    # Long polls: a passing run waits no longer for the generous deadline, and a notice whose
    # first attempt failed is retried after 1, 2 and 4 s.
    deadline = time.monotonic() + NOTICE_WAIT_S
    room_id = notice_room()
    while room_id is None and time.monotonic() < deadline:
        room_id = notice_room()
    assert room_id is not None, (
        f"no m.server_notice from {SERVER_USER} with {link.uri} in alice's joined rooms' "
        f"timelines within {NOTICE_WAIT_S:.0f} s; notices seen: {seen}")
    answer = alice.sync(filter_={"room": {"timeline": {"limit": 50}}})
    names = [e["content"].get("name") for e in room_state_events(answer, room_id)
             if e.get("type") == "m.room.name"]
    assert "Server Notices" in names, f"the notice room's names: {names}"
    # Joined by the server: she is in the room's joined members without having joined it.
    members = alice.call("GET", f"/_matrix/client/v3/rooms/{room_id}/joined_members")
    assert alice.user_id in members.get("joined", {}), f"alice is not joined: {members}"


# --- b. she accepts in a browser; her first event now succeeds --------------------------------


def test_b1_browser_accepts(story: ConduitStory) -> None:
    browser_accepts(story)


def test_b2_first_event_now_succeeds(story: ConduitStory) -> None:
    first_event_after_consent(story)


# --- c. a conversation, an image, an erasure ----------------------------------------------------


def test_c1_conversation_and_image(story: ConduitStory) -> None:
    alice = story.get("alice", MatrixClient)
    room_id = story.get("room", str)
    bob = story.new_user("bob", "bob password")
    error = consent_refusal(lambda: bob.join(room_id))
    assert accept_over_http(consent_link_of(error)).startswith("You (@bob:localhost) accepted")
    assert bob.join(room_id) == room_id
    bob.send_text(room_id, "hi alice")
    alice.send_text(room_id, "hi bob")

    mxc = alice.upload(PNG, content_type="image/png", filename="pixel.png")
    assert mxc.startswith("mxc://localhost/")
    story.put("mxc", mxc)
    alice.send(room_id, {"msgtype": "m.image", "body": "pixel.png", "url": mxc,
                         "info": {"mimetype": "image/png", "size": len(PNG)}})
    story.put("secret_id", alice.send_text(room_id, SECRET))

    answer = bob.download(mxc, version="v1")
    assert (answer.status_code, answer.content) == (200, PNG), "bob, v1 download"
    assert bob.thumbnail(mxc, version="v1").status_code == 200, "bob, v1 thumbnail"
    # Conduit serves media uploaded since its "media freeze" only through the authenticated
    # (v1) routes: its legacy v3 routes answer as for a missing mxc, before any erasure.
    missing = f"mxc://localhost/doesnotexist{int(time.time())}"
    legacy, not_found = bob.download(mxc, version="v3"), bob.download(missing, version="v3")
    assert (legacy.status_code, legacy.content) == (not_found.status_code, not_found.content)
    media_file = story.server.media_file(hashlib.sha256(PNG).hexdigest())
    assert media_file.is_file() and media_file.read_bytes() == PNG, (
        f"the image is not where Conduit keeps media files: {media_file}")
    story.put("media_file", media_file)

    # A room only alice ever joins: public and world-readable, so that carol can look into it
    # without joining (step c4) and join it after the purge (step e4).
    lonely = alice.create_room(name="lonely", preset="public_chat", initial_state=[{
        "type": "m.room.history_visibility", "state_key": "",
        "content": {"history_visibility": "world_readable"}}])
    lonely_id = alice.send_text(lonely, LONELY)
    assert kv_has_key(story.server.sqlite_path, "eventid_pduid", lonely_id.encode()), (
        "the lonely message is not in Conduit's eventid_pduid table")
    # What step e4 expects gone is there now.
    assert kv_count_containing(story.server.sqlite_path, "pduid_pdu", "value",
                               LONELY.encode()) == 1, "the lonely message's text is not stored"
    assert kv_count_containing(story.server.sqlite_path, "tokenids", "key", b"lonely") >= 1, (
        "the lonely message's words are not in Conduit's search index")
    story.put("lonely_room", lonely)
    story.put("lonely_id", lonely_id)


def test_c2_alice_deactivates_with_erase(story: ConduitStory) -> None:
    alice = story.get("alice", MatrixClient)
    story.get("lonely_id", str)
    # Taken before the call: the grace period starts while the request is handled, so the
    # grace end the later steps compute is never later than the policies' own.
    story.put("deactivated_at", time.time())
    alice.deactivate(erase=True)
    error = refusal(lambda: alice.sync())
    assert error.status == 401, "her token should be gone"


def test_c3_bob_still_sees_her_messages_whole(story: ConduitStory) -> None:
    bob = story.get("bob", MatrixClient)
    room_id = story.get("room", str)
    mxc = story.get("mxc", str)
    chunk = bob.messages(room_id)["chunk"]
    bodies = [e["content"].get("body") for e in alice_messages(chunk)]
    assert SECRET in bodies and "hi bob" in bodies and "pixel.png" in bodies, bodies
    image = [e for e in alice_messages(chunk) if e["content"].get("msgtype") == "m.image"]
    assert image and image[0]["content"]["url"] == mxc
    timeline = alice_messages(sync_timeline(bob, room_id))
    assert SECRET in [e["content"].get("body") for e in timeline]


def check_carol_sees_redacted(story: ConduitStory) -> None:
    carol = story.get("carol", MatrixClient)
    room_id = story.get("room", str)
    secret_id = story.get("secret_id", str)
    room_version = carol.state(room_id, "m.room.create").get("room_version", "1")

    def assert_redacted(where: str, events: list[JsonObject], at_least: int) -> None:
        mine = alice_messages(events)
        assert len(mine) >= at_least, f"{where}: {len(mine)} of alice's messages, {mine}"
        for e in mine:
            assert "body" not in e["content"], f"{where}: not redacted: {e}"
            if room_version == "12":
                assert e["content"] == {}, f"{where}: room version 12, content: {e}"

    chunk = carol.messages(room_id)["chunk"]
    # hello, hi bob, the image, the secret (and any earlier ones).
    assert_redacted("/messages", chunk, 4)
    assert secret_id in [e["event_id"] for e in chunk]
    assert_redacted("/event", [carol.event(room_id, secret_id)], 1)
    context = carol.context(room_id, secret_id)
    events = context.get("events_before", []) + [context["event"]] + context.get("events_after", [])
    assert_redacted("/context", events, 2)
    assert_redacted("/sync", sync_timeline(carol, room_id), 1)


def test_c4_carol_joins_later_and_sees_her_messages_redacted(story: ConduitStory) -> None:
    room_id = story.get("room", str)
    carol = story.new_user("carol", "carol password")
    assert consenting(carol, lambda: carol.join(room_id)) == room_id
    check_carol_sees_redacted(story)
    # The lonely room is world-readable: before the purge, its message is there for carol
    # (redacted), without joining. Step e4 shows it gone.
    lonely_room, lonely_id = story.get("lonely_room", str), story.get("lonely_id", str)
    lonely = carol.event(lonely_room, lonely_id)
    assert lonely["event_id"] == lonely_id and "body" not in lonely["content"], lonely


def check_image_refused(story: ConduitStory) -> None:
    """Every fetch of alice's image is answered exactly as the same fetch of an mxc that does
    not exist: status and body."""
    mxc = story.get("mxc", str)
    missing = f"mxc://localhost/doesnotexist{int(time.time())}"
    who = [story.get("carol", MatrixClient), story.get("bob", MatrixClient), story.anonymous]
    fetches: list[tuple[str, Callable[[MatrixClient, str], httpx.Response]]] = [
        ("v1 download", lambda c, m: c.download(m, version="v1")),
        ("v3 download", lambda c, m: c.download(m, version="v3")),
        ("v1 thumbnail", lambda c, m: c.thumbnail(m, version="v1")),
        ("v3 thumbnail", lambda c, m: c.thumbnail(m, version="v3")),
    ]
    for client in who:
        for name, fetch in fetches:
            answer, not_found = fetch(client, mxc), fetch(client, missing)
            assert (answer.status_code, answer.content) == (not_found.status_code,
                                                            not_found.content), (
                f"{client.who}, {name}: {answer.status_code} {answer.text!r}, for a missing "
                f"mxc {not_found.status_code} {not_found.text!r}")
            if client.token is not None or name.startswith("v3"):
                assert answer.status_code == 404, f"{client.who}, {name}"
                assert answer.json()["errcode"] == "M_NOT_FOUND"


def test_c5_the_image_is_refused_like_missing_media(story: ConduitStory) -> None:
    check_image_refused(story)


# --- d. a new policy version while Conduit runs ----------------------------------------------------


def test_d_new_consent_version_applies_while_running(story: ConduitStory) -> None:
    bob = story.get("bob", MatrixClient)
    room_id = story.get("room", str)
    bob.send_text(room_id, "still allowed under 1.0")
    story.policy_set.set_consent_version("2.0")
    assert story.policy_set.consent_version() == "2.0"

    def refused() -> MatrixError | None:
        try:
            bob.send_text(room_id, "hello again")
        except MatrixError as e:
            return e
        return None

    error = poll("bob's send refused after the version change", 10, refused, 0.25)
    assert (error.status, error.errcode) == (403, "M_CONSENT_NOT_GIVEN"), error
    link = consent_link_of(error)
    assert link.version == "2.0" and "v=2.0" in link.uri, link.uri
    # He accepts 2.0 now; step e checks that this survives a restart.
    assert "(version 2.0)" in accept_over_http(link)
    bob.send_text(room_id, "hello under 2.0")
    story.put("bob_accepted_2", True)


# --- e. a restart; the grace period ends ---------------------------------------------------------


def test_e1_restart_keeps_consent_and_erasure(story: ConduitStory) -> None:
    bob = story.get("bob", MatrixClient)
    room_id = story.get("room", str)
    story.get("bob_accepted_2", bool)
    # The timers are in the store: one due while Conduit is down fires at the restarted
    # Conduit's first pass. What matters is that the grace period ends after the stop.
    stopping = time.time()
    waited = story.server.restart()
    print(f"\nConduit restarted in {waited:.1f} s; the grace period ends in "
          f"{story.grace_end() - time.time():.1f} s")
    assert stopping < story.grace_end(), (
        f"the grace period ({GRACE_MS} ms) ended before Conduit was stopped: raise "
        "MXPOLICY_E2E_GRACE_MS so that the timers fire after the restart")
    bob.send_text(room_id, "after the restart")
    check_carol_sees_redacted(story)
    check_image_refused(story)


def log_after_restart(story: ConduitStory) -> str:
    marker = "===== mxpolicy-e2e: start conduit, run 2 ====="
    text = story.server.log_text()
    assert marker in text, "step e1 did not restart Conduit"
    return text.split(marker, 1)[1]


def test_e2_grace_period_ends_after_the_restart(story: ConduitStory) -> None:
    """The erasure's and media policy's timers fire in the restarted Conduit; carol's view
    and the refusal of the image are unchanged."""

    def fired() -> bool | None:
        # A pass that failed (ok: false) is retried: wait for the one that succeeds.
        lines = [line for line in log_after_restart(story).splitlines() if "ok: true" in line]
        ok = all(any(f"of {instance} fired" in line for line in lines)
                 for instance in ("erasure", "media"))
        return True if ok else None

    poll("the erasure's and media's grace-period timers fire", story.after_grace_s(), fired)
    lines = [line for line in log_after_restart(story).splitlines() if " fired (" in line]
    print("\n" + "\n".join(lines))
    for instance in ("erasure", "media"):
        assert any(f"of {instance} fired" in line and "ok: true" in line for line in lines), (
            f"{instance}'s timer did not fire with ok: true: {lines}")
    check_carol_sees_redacted(story)
    check_image_refused(story)


def test_e3_media_file_deleted_at_grace_end(story: ConduitStory) -> None:
    """CONTRACT: at the grace period's end Conduit deletes the image's file."""
    media_file = story.get("media_file", Path)
    poll(f"{media_file} deleted by the grace period's end + {AFTER_GRACE_S:.0f} s",
         story.after_grace_s(),
         lambda: True if not media_file.exists() else None)
    check_image_refused(story)


def test_e4_room_only_alice_joined_is_purged(story: ConduitStory) -> None:
    """At the grace period's end Conduit purges the room only alice ever joined: its message
    is gone from the database (the event, its text, its words in the search index) and from
    what anyone is served. Nobody can join the room any more to look (no local member is left,
    so Conduit would need a remote server to join through); the room is world-readable, so
    carol asks without joining, as step c4 did before the purge."""
    lonely_room = story.get("lonely_room", str)
    lonely_id = story.get("lonely_id", str)
    carol = story.get("carol", MatrixClient)
    db = story.server.sqlite_path
    poll(f"{lonely_id} gone from eventid_pduid by the grace period's end + {AFTER_GRACE_S:.0f} s",
         story.after_grace_s(),
         lambda: True if not kv_has_key(db, "eventid_pduid", lonely_id.encode()) else None)
    assert kv_count_containing(db, "pduid_pdu", "value", LONELY.encode()) == 0, (
        "the lonely message's text is still in Conduit's pduid_pdu table")
    assert kv_count_containing(db, "tokenids", "key", b"lonely") == 0, (
        "the lonely message's words are still in Conduit's search index (tokenids)")
    error = refusal(lambda: carol.event(lonely_room, lonely_id))
    assert (error.status, error.errcode) == (404, "M_NOT_FOUND"), error
