"""`mxpolicy serve --config SET` as a separate process (what a homeserver that does not embed
the host talks to): start and wait for ``/health``, stop (SIGTERM), restart on the same store,
and its API (hooks, admin) with the set's secret."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from .policy_set import PolicySet
from .process import HttpServer, ManagedProcess, ProcessError


class MxpolicyService(HttpServer):
    """`mxpolicy serve` on ``127.0.0.1:port`` for the policy set; its log beside the set."""

    def __init__(self, binary: Path, policy_set: PolicySet, port: int, log_path: Path) -> None:
        self.binary = binary
        self.policy_set = policy_set
        super().__init__("mxpolicy serve", ManagedProcess(
            "mxpolicy-serve", [str(binary), "serve", "--config", str(policy_set.path)],
            log_path, env={"RUST_LOG": "info"}), port,
            ready_path="/health", port_variable="MXPOLICY_SERVE_PORT")

    @property
    def secret_file(self) -> Path:
        return self.policy_set.directory / "api-secret"

    def secret(self) -> str:
        return self.secret_file.read_text().strip()

    def prepare(self) -> None:
        if not self.binary.is_file():
            raise ProcessError(f"{self.binary} does not exist: run `cargo build -p mxpolicy`")

    def admin_command(self, instance: str, command: str, args: dict[str, Any]) -> Any:
        answer = httpx.post(f"{self.base_url}/_mxpolicy/v1/admin/plugins/{instance}/commands/"
                            f"{command}", json=args, timeout=30,
                            headers={"Authorization": f"Bearer {self.secret()}"})
        if answer.status_code != 200:
            raise AssertionError(f"admin {instance} {command}: {answer.status_code} "
                                 f"{answer.text}")
        return answer.json()

    def wait_generation_change(self, before: int, timeout_s: float = 10.0) -> int:
        """Wait until the chain's generation is past `before` (a hot swap applied)."""
        deadline = time.monotonic() + timeout_s
        while True:
            generation = self.generation()
            if generation > before:
                return generation
            if time.monotonic() > deadline:
                raise AssertionError(f"the chain stayed at generation {generation}")
            time.sleep(0.2)

    def generation(self) -> int:
        answer = httpx.get(f"{self.base_url}/_mxpolicy/v1/admin/chain", timeout=10,
                           headers={"Authorization": f"Bearer {self.secret()}"})
        answer.raise_for_status()
        return int(answer.json()["generation"])
