"""Where things are: the checkout, the built `mxpolicy` and plugins, the artifacts folder."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout: `MXPOLICY_ROOT`, or the first parent of this file holding ``Cargo.toml``
    and ``integrations/`` (an editable install runs from the checkout)."""
    if "MXPOLICY_ROOT" in os.environ:
        return Path(os.environ["MXPOLICY_ROOT"]).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "Cargo.toml").is_file() and (parent / "integrations").is_dir():
            return parent
    return Path.cwd().resolve()


def mxpolicy_bin() -> Path:
    return Path(os.environ.get("MXPOLICY_BIN", repo_root() / "target/debug/mxpolicy"))


def plugins_dir() -> Path:
    return Path(os.environ.get("MXPOLICY_PLUGINS", repo_root() / "target/plugins"))


def artifacts_dir(homeserver: str) -> Path:
    """``$MXPOLICY_ARTIFACTS/<homeserver>`` (default ``<repo>/target/artifacts/<homeserver>``),
    created."""
    base = Path(os.environ.get("MXPOLICY_ARTIFACTS", repo_root() / "target/artifacts"))
    folder = base / homeserver
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()
