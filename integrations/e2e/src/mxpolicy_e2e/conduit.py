"""A Conduit process for the tests: its config (SQLite, loopback, no federation, the policy
set), start and wait, stop (SIGTERM, then SIGKILL), restart on the same database, and where
it keeps media files."""

from __future__ import annotations

from pathlib import Path

from .policy_set import PolicySet, toml_string
from .process import HttpServer, ManagedProcess

#: A debug Conduit's first start compiles the plugins (later starts read the compile cache).
START_TIMEOUT_S = 120.0

SERVER_NAME = "localhost"
#: Conduit's server user (`services().globals.server_user()`), the sender of server notices.
SERVER_USER = f"@conduit:{SERVER_NAME}"


def config_toml(*, database_path: Path, port: int, policy_set: Path) -> str:
    return "\n".join([
        "[global]",
        f"server_name = {toml_string(SERVER_NAME)}",
        'log = "warn,conduit::service::mxpolicy=info"',
        'database_backend = "sqlite"',
        f"database_path = {toml_string(str(database_path))}",
        'address = "127.0.0.1"',
        f"port = {port}",
        "allow_registration = true",
        "allow_federation = false",
        "allow_check_for_updates = false",
        "trusted_servers = []",
        f"mxpolicy_policy_set = {toml_string(str(policy_set))}",
        "",
    ])


def media_file_path(media_dir: Path, sha256_hex: str) -> Path:
    """Where Conduit's file-system media backend keeps a file: its default ``Deep`` directory
    structure (length 2, depth 2) splits the hex SHA-256 of the content, so
    ``<media>/ab/cd/ef01…`` (src/service/globals/mod.rs, `split_media_path`)."""
    return media_dir / sha256_hex[0:2] / sha256_hex[2:4] / sha256_hex[4:]


class Conduit(HttpServer):
    """Conduit on ``127.0.0.1:port`` with its database, config and log under `workdir`."""

    start_timeout_s = START_TIMEOUT_S

    def __init__(self, binary: Path, workdir: Path, port: int, policy_set: PolicySet) -> None:
        self.binary = binary
        self.workdir = workdir
        self.policy_set = policy_set
        self.database_path = workdir / "db"
        self.config_path = workdir / "conduit.toml"
        super().__init__("Conduit", ManagedProcess(
            "conduit", [str(binary)], workdir / "conduit.log",
            env={"CONDUIT_CONFIG": str(self.config_path)}), port,
            ready_path="/_matrix/client/versions", port_variable="MXPOLICY_CONDUIT_PORT")

    @property
    def media_dir(self) -> Path:
        return self.database_path / "media"

    @property
    def sqlite_path(self) -> Path:
        return self.database_path / "conduit.db"

    def media_file(self, sha256_hex: str) -> Path:
        return media_file_path(self.media_dir, sha256_hex)

    def write_config(self) -> None:
        self.database_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_toml(
            database_path=self.database_path, port=self.port, policy_set=self.policy_set.path))

    def prepare(self) -> None:
        if not self.config_path.exists():
            self.write_config()
