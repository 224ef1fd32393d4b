"""A Synapse process for the tests: its config (SQLite, loopback, no federation listener,
``trusted_key_servers: []``, server notices, open registration without verification, the
mxpolicy module), start and wait, stop, restart, shared-secret registration of an admin, and
Synapse's admin API.

Synapse runs from its own virtualenv (``MXPOLICY_SYNAPSE_PYTHON``, default
``target/synapse-venv/bin/python``, which ``scripts/synapse-env.sh`` makes), where the module
package ``mxpolicy_synapse`` is installed too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from .paths import repo_root
from .process import HttpServer, ManagedProcess, ProcessError

#: Synapse's first start creates its database schema.
START_TIMEOUT_S = 120.0

SERVER_NAME = "localhost"
#: `server_notices.system_mxid_localpart` below: the sender of server notices.
NOTICES_LOCALPART = "server"
SERVER_USER = f"@{NOTICES_LOCALPART}:{SERVER_NAME}"
NOTICES_ROOM_NAME = "Server Notices"


def synapse_python() -> Path:
    return Path(os.environ.get("MXPOLICY_SYNAPSE_PYTHON",
                               repo_root() / "target/synapse-venv/bin/python"))


def json_yaml(value: Any) -> str:
    """YAML is a superset of JSON: the config is written as JSON, one key per line."""
    return json.dumps(value, indent=2)


class Synapse(HttpServer):
    """Synapse on ``127.0.0.1:port`` with its database, config, media and log under
    `workdir`; the mxpolicy module talks to the service at `service_url`."""

    start_timeout_s = START_TIMEOUT_S

    def __init__(self, workdir: Path, port: int, *, service_url: str, api_secret_file: Path,
                 python: Path | None = None, module: bool = True,
                 module_config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.python = python or synapse_python()
        self.service_url = service_url
        self.api_secret_file = api_secret_file
        self.module = module
        self.module_config = dict(module_config or {})
        self.config_path = workdir / "homeserver.yaml"
        self.database_path = workdir / "homeserver.db"
        self.media_dir = workdir / "media_store"
        self.admin_token_file = workdir / "admin-token"
        self.registration_secret = hashlib.sha256(str(workdir).encode()).hexdigest()
        super().__init__("Synapse", ManagedProcess(
            "synapse", [str(self.python), "-m", "synapse.app.homeserver", "-c",
                        str(self.config_path)],
            workdir / "synapse.log", cwd=workdir), port,
            ready_path="/_matrix/client/versions", port_variable="MXPOLICY_SYNAPSE_PORT")

    @property
    def web_prefix(self) -> str:
        return "/_synapse/client/mxpolicy"

    @property
    def facts_url(self) -> str:
        return f"{self.base_url}{self.web_prefix}/facts"

    @property
    def consent_baseurl(self) -> str:
        """The consent plugin's ``public_baseurl``: its links are
        ``<this>_mxpolicy/consent/?...``, which the module proxies to the service."""
        return f"{self.base_url}{self.web_prefix}/"

    def config(self) -> dict[str, Any]:
        high = {"per_second": 1000, "burst_count": 1000}
        config: dict[str, Any] = {
            "server_name": SERVER_NAME,
            "public_baseurl": f"{self.base_url}/",
            "pid_file": str(self.workdir / "homeserver.pid"),
            "listeners": [{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                "tls": False, "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": {"name": "sqlite3", "args": {"database": str(self.database_path)}},
            "log_config": str(self.workdir / "log.yaml"),
            "media_store_path": str(self.media_dir),
            "signing_key_path": str(self.workdir / "signing.key"),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "registration_shared_secret": self.registration_secret,
            "macaroon_secret_key": self.registration_secret + "-macaroon",
            "form_secret": self.registration_secret + "-form",
            "server_notices": {
                "system_mxid_localpart": NOTICES_LOCALPART,
                "system_mxid_display_name": "Server Notices",
                "room_name": NOTICES_ROOM_NAME,
                "auto_join": True,
            },
            "rc_message": high,
            "rc_registration": high,
            "rc_joins": {"local": high, "remote": high},
            "rc_login": {"address": high, "account": high, "failed_attempts": high},
            "rc_admin_redaction": high,
            "rc_invites": {"per_room": high, "per_user": high, "per_issuer": high},
            "rc_media_create": high,
            "federation_domain_whitelist": [],
        }
        if self.module:
            config["modules"] = [{
                "module": "mxpolicy_synapse.MxpolicyModule",
                "config": {
                    "service_url": self.service_url,
                    "api_secret_file": str(self.api_secret_file),
                    "admin_token_file": str(self.admin_token_file),
                    "admin_api_url": self.base_url,
                    "outbox_interval_ms": 1000,
                    **self.module_config,
                },
            }]
        return config

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.media_dir.mkdir(exist_ok=True)
        (self.workdir / "log.yaml").write_text(json_yaml({
            "version": 1,
            "formatters": {"plain": {
                "format": "%(asctime)s %(name)s %(levelname)s %(request)s %(message)s"}},
            "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter",
                                    "request": ""}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                                     "filters": ["context"], "stream": "ext://sys.stdout"}},
            "loggers": {"synapse": {"level": "INFO"}, "mxpolicy_synapse": {"level": "INFO"},
                        "synapse.access.http": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["console"]},
            "disable_existing_loggers": False,
        }) + "\n")
        self.config_path.write_text(json_yaml(self.config()) + "\n")
        if not (self.workdir / "signing.key").exists():
            import subprocess

            result = subprocess.run(
                [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_path),
                 "--generate-keys"], capture_output=True, text=True, check=False,
                cwd=self.workdir)
            if result.returncode != 0:
                raise ProcessError(f"synapse --generate-keys failed:\n{result.stderr[-3000:]}")

    def prepare(self) -> None:
        if not self.python.is_file():
            raise ProcessError(f"{self.python} does not exist: run scripts/synapse-env.sh "
                               "(or set MXPOLICY_SYNAPSE_PYTHON)")
        if not self.config_path.exists():
            self.write_config()

    # --- registration and the admin API -------------------------------------------------------

    def register_admin(self, username: str, password: str) -> dict[str, Any]:
        """Shared-secret registration (``/_synapse/admin/v1/register``) of an admin: the
        answer (``access_token``, ``user_id``)."""
        url = f"{self.base_url}/_synapse/admin/v1/register"
        nonce = httpx.get(url, timeout=30).json()["nonce"]
        mac = hmac.new(self.registration_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), username.encode(), password.encode(), b"admin"]))
        answer = httpx.post(url, timeout=30, json={
            "nonce": nonce, "username": username, "password": password, "admin": True,
            "mac": mac.hexdigest()})
        if answer.status_code != 200:
            raise ProcessError(f"shared-secret registration of {username}: "
                               f"{answer.status_code} {answer.text}")
        body: dict[str, Any] = answer.json()
        return body

    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout_s: float = 30.0) -> httpx.Response:
        """A call to Synapse's admin API as the test's admin (the raw response)."""
        return httpx.request(method, f"{self.base_url}{path}", json=body, timeout=timeout_s,
                             headers={"Authorization": f"Bearer {self.admin_token()}"})

    def media_file(self, media_id: str) -> Path:
        """Where Synapse's local media store keeps an original upload
        (``local_content/ab/cd/efgh...``, `MediaFilePaths.local_media_filepath`)."""
        return self.media_dir / "local_content" / media_id[0:2] / media_id[2:4] / media_id[4:]

    def held_locks(self) -> list[tuple[str, str]]:
        """The (name, key) of every read-write lock Synapse holds, read from its own
        ``worker_read_write_locks`` table (read-only, beside the running Synapse)."""
        with sqlite3.connect(f"file:{self.database_path}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute("SELECT lock_name, lock_key FROM worker_read_write_locks").fetchall()
        return [(str(name), str(key)) for name, key in rows]
