"""Lines a test wants shown at the end of the pytest run whatever the outcome (where its
artifacts and logs are), through the config's stash and the `pytest_terminal_summary` hook
of the tests' conftest."""

from __future__ import annotations

import pytest

SUMMARY: pytest.StashKey[list[str]] = pytest.StashKey()


def note(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(SUMMARY, []).append(line)


def lines(config: pytest.Config) -> list[str]:
    return config.stash.get(SUMMARY, [])
