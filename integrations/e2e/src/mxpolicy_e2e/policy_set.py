"""The sample policy set of `mxpolicy init`, edited for a test.

`mxpolicy init DIR --port PORT --plugins PLUGINS` writes ``policy-set.toml`` (consent,
erasure, media ownership, keyword filter), ``consent.toml`` and the secrets. The functions here
change it the way an admin would: by editing the files (a change is written to a new file
and renamed into place, so a watcher never reads half a file).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The placeholder the consent policy replaces with the user's link.
CONSENT_URI_PLACEHOLDER = "{consent_uri}"


class PolicySetError(RuntimeError):
    pass


def toml_string(value: str) -> str:
    """`value` as a TOML basic string (JSON's escapes are valid TOML escapes)."""
    return json.dumps(value, ensure_ascii=False)


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a new file in the same folder, renamed into place."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


@dataclass(frozen=True)
class PolicySet:
    """A policy-set folder: ``policy-set.toml`` and ``consent.toml``."""

    directory: Path

    @property
    def path(self) -> Path:
        return self.directory / "policy-set.toml"

    @property
    def consent_path(self) -> Path:
        return self.directory / "consent.toml"

    def load(self) -> dict[str, Any]:
        return tomllib.loads(self.path.read_text())

    def load_consent(self) -> dict[str, Any]:
        return tomllib.loads(self.consent_path.read_text())

    def plugin(self, wasm_name: str) -> dict[str, Any]:
        """The ``[[plugin]]`` entry whose path ends with ``/<wasm_name>``."""
        entries = [p for p in self.load().get("plugin", [])
                   if str(p.get("path", "")).endswith("/" + wasm_name)]
        if len(entries) != 1:
            raise PolicySetError(f"{self.path}: {len(entries)} plugin entries for {wasm_name}")
        entry: dict[str, Any] = entries[0]
        return entry

    def set_plugin_config(self, wasm_name: str, config_toml: str) -> None:
        """Give the ``[[plugin]]`` entry of `wasm_name` the line ``config = <config_toml>``
        (an inline table). The entry must not have a config yet."""
        if "config" in self.plugin(wasm_name) or "config_file" in self.plugin(wasm_name):
            raise PolicySetError(f"{self.path}: {wasm_name} already has a config")
        text = self.path.read_text()
        pattern = re.compile(r'^(path = ".*/' + re.escape(wasm_name) + r'")$', re.MULTILINE)
        new_text, count = pattern.subn(lambda m: f"{m.group(1)}\nconfig = {config_toml}", text)
        if count != 1:
            raise PolicySetError(f"{self.path}: found {count} path lines for {wasm_name}")
        tomllib.loads(new_text)
        replace_file(self.path, new_text)

    def set_grace_period(self, grace_period_ms: int,
                         wasm_names: tuple[str, ...] = ("erasure.wasm", "media-ownership.wasm"),
                         ) -> None:
        """``config = { grace_period_ms = N }`` for the erasure and media-ownership entries
        (their default is 30 days)."""
        for name in wasm_names:
            self.set_plugin_config(name, f"{{ grace_period_ms = {int(grace_period_ms)} }}")

    def set_deadline(self, deadline_ms: int) -> None:
        """``deadline_ms = N`` for every ``[[plugin]]`` entry that has none (the host's default
        is 10 ms per call)."""
        text = self.path.read_text()
        new_text, count = re.subn(r'^(path = ".*\.wasm")$',
                                  lambda m: f"{m.group(1)}\ndeadline_ms = {int(deadline_ms)}",
                                  text, flags=re.MULTILINE)
        if count != len(self.load().get("plugin", [])):
            raise PolicySetError(f"{self.path}: {count} path lines for the plugin entries")
        if any("deadline_ms" in p for p in self.load().get("plugin", [])):
            raise PolicySetError(f"{self.path}: a plugin entry already has a deadline_ms")
        tomllib.loads(new_text)
        replace_file(self.path, new_text)

    def set_server_notice(self, body: str, msgtype: str = "m.text") -> None:
        """The consent policy's ``server_notice_content``; `body` must hold the placeholder."""
        if CONSENT_URI_PLACEHOLDER not in body and "%(consent_uri)s" not in body:
            raise PolicySetError("a server notice body must contain the consent_uri placeholder")
        if "server_notice_content" in self.load_consent():
            raise PolicySetError(f"{self.consent_path} already has server_notice_content")
        text = self.consent_path.read_text().rstrip("\n") + (
            "\n\n[server_notice_content]\n"
            f"msgtype = {toml_string(msgtype)}\n"
            f"body = {toml_string(body)}\n"
        )
        tomllib.loads(text)
        replace_file(self.consent_path, text)

    def consent_version(self) -> str:
        return str(self.load_consent()["version"])

    def set_consent_version(self, version: str) -> None:
        """Change the consent policy's ``version``: a new file, renamed into place (what a
        running homeserver's watcher sees as one change)."""
        text = self.consent_path.read_text()
        pattern = re.compile(r'^version = ".*"$', re.MULTILINE)
        new_text, count = pattern.subn(lambda _: f"version = {toml_string(version)}", text, count=1)
        if count != 1:
            raise PolicySetError(f"{self.consent_path}: no top-level version line")
        if tomllib.loads(new_text)["version"] != version:
            raise PolicySetError(f"{self.consent_path}: the version did not change to {version}")
        replace_file(self.consent_path, new_text)


def create_sample(mxpolicy_bin: Path, directory: Path, *, port: int, plugins: Path) -> PolicySet:
    """`mxpolicy init DIRECTORY --port PORT --plugins PLUGINS`: the sample set, whose consent
    links point at ``http://127.0.0.1:PORT/``."""
    if not mxpolicy_bin.is_file():
        raise PolicySetError(f"{mxpolicy_bin} does not exist: run `cargo build -p mxpolicy`")
    if not (plugins / "consent.wasm").is_file():
        raise PolicySetError(f"{plugins}/consent.wasm does not exist: run `cargo xtask build-plugins`")
    result = subprocess.run(
        [str(mxpolicy_bin), "init", str(directory), "--port", str(port), "--plugins", str(plugins)],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PolicySetError(f"mxpolicy init failed ({result.returncode}):\n{result.stderr}")
    policy_set = PolicySet(directory)
    baseurl = policy_set.load_consent().get("public_baseurl")
    if baseurl != f"http://127.0.0.1:{port}/":
        raise PolicySetError(f"{policy_set.consent_path}: public_baseurl is {baseurl!r}")
    return policy_set


def set_toml_key(path: Path, section: str | None, key: str, value_toml: str) -> None:
    """Set ``key = value_toml`` in `section` (``None``: the top level, before any table) of a
    TOML file, replacing the key's line if it is there; renamed into place."""
    lines = path.read_text().splitlines()
    current: str | None = None
    start = 0 if section is None else None
    end = len(lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            if current == section and start is not None and i > start:
                end = i
                break
            current = stripped.strip("[]").strip()
            if section is None:
                end = i
                break
            if current == section:
                start = i + 1
    if start is None:
        raise PolicySetError(f"{path}: no [{section}] section")
    for i in range(start, end):
        if re.match(rf"^{re.escape(key)}\s*=", lines[i]):
            lines[i] = f"{key} = {value_toml}"
            break
    else:
        insert = end
        while insert > start and not lines[insert - 1].strip():
            insert -= 1
        lines.insert(insert, f"{key} = {value_toml}")
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)
    replace_file(path, text)
