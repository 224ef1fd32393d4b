"""A failing step of a homeserver story shows the tail of the homeserver's log as a report
section (after the client's transcript, which the captured log holds)."""

from __future__ import annotations

import logging
from collections.abc import Generator

import pytest

from mxpolicy_e2e import report

# httpx logs each request at INFO too; the client's own lines carry the bodies.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                        pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        # The story's `log_tail` is its homeserver's (Synapse's adds the service's).
        story = getattr(item, "funcargs", {}).get("story")
        if story is not None and hasattr(story, "log_tail") and hasattr(story, "log_path"):
            report.sections.append((f"last lines of {story.log_path}", story.log_tail(30)))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in report.lines(terminalreporter.config):
        terminalreporter.write_line(line)
