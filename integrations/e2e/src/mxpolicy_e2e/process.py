"""A server process under test: started with its output in a log file, stopped with SIGTERM
then SIGKILL, and waited for over HTTP; `HttpServer`, such a process serving HTTP on a
loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


class ProcessError(RuntimeError):
    """The process exited or did not become ready; the message ends with its log's tail."""


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ("" if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on `host`:`port` (then a server started there
    would fail to bind, and its readiness check would be answered by the other one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


class ManagedProcess:
    """One run of `argv` at a time; its stdout and stderr are appended to `log_path`, so a
    restart keeps the earlier runs' lines (each run starts with a marker line)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.alive:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.runs += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n===== mxpolicy-e2e: start {self.name}, run {self.runs} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.cwd,
                                         env={**os.environ, **self.env})

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`: the exit status (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def failure(self, message: str) -> ProcessError:
        return ProcessError(f"{message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}")

    def wait_http(self, url: str, timeout_s: float) -> float:
        """Poll `url` until it answers 200: the seconds waited. Raises `ProcessError` (with the
        log's tail) if the process exits or the time runs out."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc is not None else None
                raise self.failure(f"{self.name} exited (status {code}) before {url} answered")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise self.failure(f"{self.name}: {url} did not answer within {timeout_s:.0f} s")
            time.sleep(0.25)


class HttpServer:
    """A server on ``127.0.0.1:port`` run by `process`, ready once `ready_path` answers 200:
    start and wait, stop, restart on the same files, its log. A subclass checks or writes what
    the process needs before a start (`prepare`)."""

    #: `start`'s default wait for `ready_path`.
    start_timeout_s = 120.0

    def __init__(self, what: str, process: ManagedProcess, port: int, *, ready_path: str,
                 port_variable: str) -> None:
        self.what = what
        self.process = process
        self.port = port
        self.ready_path = ready_path
        self.port_variable = port_variable
        self.log_path = process.log_path
        self.started_at: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.alive

    def prepare(self) -> None:
        """Before each start: check or write what the process needs."""

    def start(self, timeout_s: float | None = None) -> float:
        """Start and wait for `ready_path`: the seconds it took."""
        self.prepare()
        if port_in_use(self.port):
            raise ProcessError(f"127.0.0.1:{self.port} is already in use: another server would "
                               f"answer for this {self.what} (set {self.port_variable})")
        self.process.start()
        waited = self.process.wait_http(f"{self.base_url}{self.ready_path}",
                                        self.start_timeout_s if timeout_s is None else timeout_s)
        self.started_at = time.time()
        return waited

    def stop(self) -> int | None:
        return self.process.stop()

    def restart(self, timeout_s: float | None = None) -> float:
        """Stop, then start again on the same files."""
        self.stop()
        return self.start(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
