"""What the GDPR stories through a homeserver (tests/test_conduit.py, tests/test_synapse.py)
share: the `Story` one step leaves for the next, its set-up (the work folder, the sample
policy set), and the checks and waits of the steps.

Environment: ``MXPOLICY_E2E_WORK`` (the work folder; default a new temporary one),
``MXPOLICY_E2E_DEADLINE_MS`` (500: each plugin's per-call deadline, see `DEADLINE_MS`).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
import pytest

from . import browser, paths, report
from .consent import ConsentLink, accept_over_http, consent_link_of
from .matrix import MatrixClient, MatrixError
from .policy_set import PolicySet, create_sample
from .process import HttpServer

#: Each plugin's per-call deadline: 500 ms by default, not the host's 10 ms: the server under
#: test runs a debug build (the host and wasmtime unoptimised around the compiled plugins) on a
#: 2-core CI machine that is building and testing meanwhile; a timed-out call fails closed (a
#: 500 on a send or on the consent page), which would make the story flaky without testing
#: anything it is about.
DEADLINE_MS = int(os.environ.get("MXPOLICY_E2E_DEADLINE_MS") or "500")
#: How long after the grace period's end the purge and the deletion may take.
AFTER_GRACE_S = 75.0
NOTICE_BODY = "Please review and accept our privacy policy: {consent_uri}"

T = TypeVar("T")
S = TypeVar("S", bound=HttpServer)


@dataclass(kw_only=True)
class Story(Generic[S]):
    """What the steps leave for the next ones, with the homeserver they run against and the
    clients they opened (``anonymous`` the first)."""

    server: S
    policy_set: PolicySet
    artifacts: Path
    #: The erasure's grace period the policy set was given.
    grace_ms: int
    anonymous: MatrixClient = field(init=False)
    clients: list[MatrixClient] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.anonymous = self.client()

    def client(self) -> MatrixClient:
        c = MatrixClient(self.server.base_url)
        self.clients.append(c)
        return c

    def new_user(self, name: str, password: str) -> MatrixClient:
        """A client registered as `name`, left for the next steps under that key."""
        c = self.client()
        c.register(name, password)
        self.put(name, c)
        return c

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value

    def get(self, key: str, kind: type[T]) -> T:
        if key not in self.values:
            pytest.fail(f"an earlier step did not complete: it should have left {key!r}")
        value = self.values[key]
        assert isinstance(value, kind)
        return value

    def grace_end(self) -> float:
        """When the grace period of alice's erasure ends (the time since the epoch)."""
        return self.get("deactivated_at", float) + self.grace_ms / 1000

    def after_grace_s(self) -> float:
        """The seconds from now to the grace period's end + `AFTER_GRACE_S` (at least 1)."""
        return max(self.grace_end() + AFTER_GRACE_S - time.time(), 1)

    @property
    def log_path(self) -> Path:
        """For conftest's report section: the homeserver's log."""
        return self.server.log_path

    def log_tail(self, lines: int = 30) -> str:
        return self.server.log_tail(lines)

    def close(self) -> None:
        for c in self.clients:
            c.close()


def work_dir(prefix: str) -> Path:
    """``MXPOLICY_E2E_WORK`` (which must be empty or not exist), else a new temporary folder."""
    work = Path(os.environ.get("MXPOLICY_E2E_WORK") or tempfile.mkdtemp(prefix=prefix))
    if work.exists() and any(work.iterdir()):
        pytest.fail(f"MXPOLICY_E2E_WORK={work} is not empty", pytrace=False)
    work.mkdir(parents=True, exist_ok=True)
    return work


def sample_policy_set(directory: Path, port: int, grace_ms: int) -> PolicySet:
    """The sample set served on `port`, with the grace period, the server notice
    (`NOTICE_BODY`) and the plugin deadline (`DEADLINE_MS`) of the stories."""
    policy_set = create_sample(paths.mxpolicy_bin(), directory, port=port,
                               plugins=paths.plugins_dir())
    policy_set.set_grace_period(grace_ms)
    policy_set.set_server_notice(NOTICE_BODY)
    policy_set.set_deadline(DEADLINE_MS)
    return policy_set


def announce(config: pytest.Config, *lines: str) -> None:
    """Print `lines` now and show them again at the end of the run."""
    for line in lines:
        print(line)
        report.note(config, line)


def refusal(call: Callable[[], object]) -> MatrixError:
    """The `MatrixError` a call must raise."""
    try:
        result = call()
    except MatrixError as e:
        return e
    pytest.fail(f"expected a refusal, got {result!r}")


def consent_refusal(call: Callable[[], object]) -> MatrixError:
    """The 403 ``M_CONSENT_NOT_GIVEN`` a call must raise."""
    error = refusal(call)
    assert (error.status, error.errcode) == (403, "M_CONSENT_NOT_GIVEN"), error
    return error


def consenting(client: MatrixClient, call: Callable[[], T]) -> T:
    """`call`; if refused for want of consent, accept the linked version and call again."""
    try:
        return call()
    except MatrixError as e:
        if e.errcode != "M_CONSENT_NOT_GIVEN":
            raise
        accept_over_http(consent_link_of(e))
        return call()


def poll(what: str, timeout_s: float, check: Callable[[], T | None],
         interval_s: float = 0.5) -> T:
    """`check()` until it returns a value other than None, for at most `timeout_s` (at least
    one call, even if `timeout_s` has already run out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within the time allowed ({timeout_s:.0f} s from the "
                        "start of this wait)")
        time.sleep(interval_s)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 100 and data.startswith(browser.PNG_SIGNATURE), f"{path} is not a PNG"


def consent_page(uri: str) -> httpx.Response:
    """The consent page at `uri`, checked: HTML with the accept form, not framable."""
    page = httpx.get(uri, timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, csp
    assert '<form method="post"' in page.text
    return page


# --- steps b1 and b2, the same in every story -------------------------------------------------


def browser_accepts(story: Story[Any]) -> None:
    """Step b1: alice accepts version 1.0 in headless Chromium, screenshots in the story's
    artifacts."""
    link = story.get("alice_link", ConsentLink)
    print(f"\nscreenshots: {story.artifacts}")
    result = browser.accept_consent(link.uri, story.artifacts, prefix="alice-consent")
    assert result.before == story.artifacts / "alice-consent-page.png"
    assert result.after == story.artifacts / "alice-consent-accepted.png"
    assert_png(result.before)
    assert_png(result.after)
    assert result.text.startswith("You (@alice:localhost) accepted the Privacy Policy "
                                  "(version 1.0) on "), result.text
    story.put("alice_accepted_in_browser", True)


def first_event_after_consent(story: Story[Any]) -> None:
    """Step b2: the createRoom refused in a1 now succeeds, and she sends a message. If b1
    failed, she accepts over HTTP so that the story goes on, and this step fails saying so."""
    alice = story.get("alice", MatrixClient)
    in_browser = "alice_accepted_in_browser" in story.values
    if not in_browser:
        accept_over_http(story.get("alice_link", ConsentLink))
    room_id = alice.create_room(name="after consent", preset="public_chat")
    alice.send_text(room_id, "hello")
    story.put("room", room_id)
    if not in_browser:
        pytest.fail("step b1 (the browser) failed: alice accepted over HTTP instead")
