"""The latency Synapse's send path gains with the mxpolicy module (issue 15, performance).

Two Synapses from the same installation (``MXPOLICY_SYNAPSE_PYTHON``, default
``target/synapse-venv/bin/python``), SQLite, loopback, each in its own work folder, the same
config except ``modules:``: one with ``mxpolicy_synapse.MxpolicyModule`` and an ``mxpolicy
serve`` (``MXPOLICY_BIN``, default ``target/debug/mxpolicy``) running `mxpolicy init`'s sample
set (consent, erasure, media ownership, keyword filter), one without. On each: a user, a room
(on the module's Synapse the first createRoom is refused for want of consent and the user
accepts over HTTP, so every measured send runs the whole chain and is allowed), a warm-up, then
``PUT /_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}`` in rounds that alternate
between the servers (which goes first alternates too), one keep-alive client per server, each
call timed from before the request to after the body is read. Bounded by the count and by
``--max-seconds`` (180 s) of warm-up and measurement together.

Also measured, in the same rounds, to see where the time goes: a third Synapse whose only
module is a no-op ``check_event_allowed`` (written into its work folder: registering the
callback makes Synapse load the room's state events for every event, whatever the module
does); the service's on-send hook called directly (``POST /_mxpolicy/v1/hooks/on-send`` with
the body the module sends for these events, from this Python client); and, from each
Synapse's access log, its own processing time and database transactions for the measured
sends.

Run from the test virtualenv (httpx and this package; Synapse runs as a process from its own
virtualenv, nothing here imports it)::

    nice -n 10 target/venv/bin/python -m mxpolicy_e2e.bench_synapse

Every process started is stopped at the end, on an error or on SIGTERM/SIGINT too.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from . import paths
from .consent import CONSENT_NOT_GIVEN, accept_over_http, consent_link_of
from .matrix import MatrixClient, MatrixError, q
from .policy_set import create_sample, set_toml_key, toml_string
from .process import ProcessError
from .service import MxpolicyService
from .synapse import Synapse, synapse_python

USERNAME = "bench"
PASSWORD = "bench password"
ADMIN = "admin"
ADMIN_PASSWORD = "admin password"

#: Synapse's access log line for a request (``synapse.http.site``, 1.163.2): total time,
#: CPU (user, system), database (scheduling wait / transaction time / transaction count),
#: then the status and the request line.
ACCESS_LINE = re.compile(
    r"Processed request: (?P<total>[\d.]+)sec/[-\d.]+sec ru=\((?P<utime>[\d.]+)sec, "
    r"(?P<stime>[\d.]+)sec\) db=\((?P<db_sched>[\d.]+)sec/(?P<db_txn>[\d.]+)sec/"
    r"(?P<db_count>\d+)\) \d+B (?P<status>\d+)!? \"PUT [^\"]*/send/m\.room\.message/"
    r"(?P<txn>[^ \"]+) ")


@dataclass
class Series:
    """One stream of timed calls: durations in seconds."""

    name: str
    seconds: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        """The `p`-th percentile (0-100), linear between the closest ranks."""
        values = sorted(self.seconds)
        if not values:
            return float("nan")
        rank = (len(values) - 1) * p / 100.0
        low = int(rank)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (rank - low)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seconds) if self.seconds else float("nan")


@dataclass
class Target:
    """A Synapse under test, its user's room, and the keep-alive client that times sends."""

    label: str
    synapse: Synapse
    room_id: str = ""
    token: str = ""
    http: httpx.Client | None = None
    txn_prefix: str = ""
    counter: int = 0
    series: Series = field(default_factory=lambda: Series(""))

    def send(self, measured: bool) -> float:
        """One send: its duration (AssertionError unless it is a 200 with an event id)."""
        assert self.http is not None
        self.counter += 1
        txn = f"{self.txn_prefix}{'m' if measured else 'w'}{self.counter}"
        path = f"/_matrix/client/v3/rooms/{q(self.room_id)}/send/m.room.message/{txn}"
        body = {"msgtype": "m.text", "body": f"bench message {self.counter}"}
        started = time.perf_counter()
        response = self.http.put(path, json=body)
        _ = response.content  # read (httpx has read it already: not streamed)
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or "event_id" not in response.text:
            raise AssertionError(f"{self.label}: send {txn}: {response.status_code} "
                                 f"{response.text[:500]}")
        if measured:
            self.series.seconds.append(elapsed)
        return elapsed


@dataclass
class HookProbe:
    """`POST /_mxpolicy/v1/hooks/on-send` straight to the service, with the body the module
    sends for the bench user's messages (its context and the room's members)."""

    http: httpx.Client
    body: dict[str, Any]
    series: Series = field(default_factory=lambda: Series("service on-send, direct"))

    def call(self, measured: bool) -> float:
        started = time.perf_counter()
        response = self.http.post("/_mxpolicy/v1/hooks/on-send", json=self.body)
        _ = response.content
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise AssertionError(f"on-send: {response.status_code} {response.text[:500]}")
        verdict = response.json().get("outcome", {}).get("verdict")
        if verdict != "allow":
            raise AssertionError(f"on-send: not allowed: {response.text[:500]}")
        if measured:
            self.series.seconds.append(elapsed)
        return elapsed


#: The no-op third-party-rules module of the third Synapse.
NOOP_MODULE = '''"""check_event_allowed that allows everything: what registering the callback costs."""
from typing import Any


class NoopModule:
    def __init__(self, config: Any, api: Any) -> None:
        api.register_third_party_rules_callbacks(check_event_allowed=self.check_event_allowed)

    @staticmethod
    def parse_config(config: Any) -> Any:
        return config

    async def check_event_allowed(self, event: Any, state_events: Any) -> tuple[bool, None]:
        return True, None
'''


class NoopSynapse(Synapse):
    """A Synapse whose only module is `NOOP_MODULE` (on its PYTHONPATH: its work folder)."""

    def __init__(self, workdir: Path, port: int, *, service_url: str, api_secret_file: Path,
                 python: Path) -> None:
        super().__init__(workdir, port, service_url=service_url,
                         api_secret_file=api_secret_file, python=python, module=False)
        self.process.env["PYTHONPATH"] = str(workdir)

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["modules"] = [{"module": "mxpolicy_bench_noop.NoopModule", "config": {}}]
        return config

    def write_config(self) -> None:
        super().write_config()
        (self.workdir / "mxpolicy_bench_noop.py").write_text(NOOP_MODULE)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synapse_version(python: Path) -> str:
    # The distribution's version (`synapse.__version__` appends the git state of the folder
    # it is installed in: here the mxpolicy checkout's, which says nothing about Synapse).
    result = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                             "print(m.version('matrix-synapse'))"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or f"unknown ({result.stderr.strip()[-200:]})"


def binary_kind(binary: Path) -> str:
    parent = binary.resolve().parent.name
    return {"debug": "debug build", "release": "release build"}.get(parent, str(binary))


@contextmanager
def stopping(name: str, stop: Callable[[], int | None]) -> Iterator[None]:
    """Stop a started process when the block ends, however it ends."""
    try:
        yield
    finally:
        try:
            status = stop()
            print(f"stopped {name} (status {status})", flush=True)
        except Exception as e:  # keep stopping the others
            print(f"could not stop {name}: {e}", file=sys.stderr, flush=True)


def terminate_on_signal() -> None:
    """SIGTERM ends the run like Ctrl-C does: through the `finally` blocks that stop the
    processes."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def prepare_user(synapse: Synapse, expect_consent: bool) -> tuple[str, str, str]:
    """Register the bench user and create its room; on the module's Synapse the first
    createRoom must be refused for want of consent, then the user accepts. The token, the
    room id and the room version."""
    with MatrixClient(synapse.base_url) as client:
        client.register(USERNAME, PASSWORD)
        try:
            room_id = client.create_room(name="bench", preset="private_chat")
            refused = False
        except MatrixError as e:
            if e.errcode != CONSENT_NOT_GIVEN:
                raise
            refused = True
            accept_over_http(consent_link_of(e))
            room_id = client.create_room(name="bench", preset="private_chat")
        if refused != expect_consent:
            raise AssertionError(f"{synapse.base_url}: createRoom before consent was "
                                 f"{'refused' if refused else 'allowed'}: the module is "
                                 f"{'not ' if expect_consent else ''}in the send path")
        version = str(client.state(room_id, "m.room.create").get("room_version", "1"))
        assert client.token is not None
        return client.token, room_id, version


def access_log_stats(log_text: str, txn_marker: str) -> dict[str, Series]:
    """Synapse's own view of the measured sends (txn ids containing `txn_marker`): total
    processing time, CPU time (user + system), database transaction time, and the count."""
    out = {name: Series(name) for name in ("total", "cpu", "db_txn", "db_count")}
    for match in ACCESS_LINE.finditer(log_text):
        if txn_marker not in match.group("txn") or match.group("status") != "200":
            continue
        out["total"].seconds.append(float(match.group("total")))
        out["cpu"].seconds.append(float(match.group("utime")) + float(match.group("stime")))
        out["db_txn"].seconds.append(float(match.group("db_txn")))
        out["db_count"].seconds.append(float(match.group("db_count")))
    return out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def run(args: argparse.Namespace) -> int:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mxpolicy-bench-syn-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"--work {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    binary = paths.mxpolicy_bin()
    python = synapse_python()
    load_before = os.getloadavg()
    print(f"work folder: {work}", flush=True)

    policy_set = create_sample(binary, work / "with-module" / "set", port=args.serve_port,
                               plugins=paths.plugins_dir())
    policy_set.set_deadline(args.deadline_ms)
    service = MxpolicyService(binary, policy_set, args.serve_port,
                              work / "with-module" / "mxpolicy-serve.log")
    with_module = Synapse(work / "with-module" / "synapse", args.port_with,
                          service_url=service.base_url, api_secret_file=service.secret_file,
                          python=python, module=True)
    # Unused without the module, but the same constructor: the configs differ only in
    # `modules:` (and the paths and port).
    without_module = Synapse(work / "without-module" / "synapse", args.port_without,
                             service_url=service.base_url,
                             api_secret_file=service.secret_file, python=python,
                             module=False)
    synapses: list[Synapse] = [with_module, without_module]
    if args.noop:
        synapses.append(NoopSynapse(work / "noop-module" / "synapse", args.port_noop,
                                    service_url=service.base_url,
                                    api_secret_file=service.secret_file, python=python))
    set_toml_key(policy_set.consent_path, None, "public_baseurl",
                 toml_string(with_module.consent_baseurl))
    set_toml_key(policy_set.path, "service", "facts_url", toml_string(with_module.facts_url))

    with ExitStack() as stack:
        # Each stop is registered before its start: a failure or a signal during a start
        # still stops the process.
        stack.enter_context(stopping("mxpolicy serve", service.stop))
        service.start()
        labels = ["with module", "without module", "no-op module"]
        for synapse, label in zip(synapses, labels):
            synapse.write_config()
            stack.enter_context(stopping(f"Synapse :{synapse.port}", synapse.stop))
            waited = synapse.start()
            print(f"Synapse :{synapse.port} ({label}) answered after {waited:.1f} s",
                  flush=True)
            admin = synapse.register_admin(ADMIN, ADMIN_PASSWORD)
            synapse.admin_token_file.write_text(str(admin["access_token"]) + "\n")

        targets = [Target(label, synapse) for synapse, label in zip(synapses, labels)]
        room_version = ""
        for target in targets:
            target.token, target.room_id, room_version = prepare_user(
                target.synapse, expect_consent=target.synapse is with_module)
            target.http = stack.enter_context(httpx.Client(
                base_url=target.synapse.base_url, timeout=30.0,
                headers={"Authorization": f"Bearer {target.token}"}))
            target.txn_prefix = f"bench{os.getpid()}"
            target.series = Series(target.label)

        user_id = f"@{USERNAME}:localhost"
        probe: HookProbe | None = None
        if args.probe_service:
            probe_http = stack.enter_context(httpx.Client(
                base_url=service.base_url, timeout=30.0,
                headers={"Authorization": f"Bearer {service.secret()}"}))
            probe = HookProbe(probe_http, {
                "context": {
                    "sender": user_id, "sender_kind": "regular",
                    "room_id": targets[0].room_id, "room_version": room_version,
                    "event_type": "m.room.message",
                    "content": {"msgtype": "m.text", "body": "bench message"},
                    "origin_server_ts": int(time.time() * 1000),
                    "is_server_notices_room": False,
                },
                "facts": {"members_of_room": {targets[0].room_id: [user_id]}},
            })

        # Let the consent acceptance's notice and the outbox settle before timing.
        time.sleep(args.settle_seconds)
        deadline = time.monotonic() + args.max_seconds
        for _ in range(args.warmup):
            for target in targets:
                target.send(measured=False)
            if probe is not None:
                probe.call(measured=False)
        measure_started = time.monotonic()
        rounds_done = 0
        out_of_time = False
        for r in range(args.rounds):
            # Who goes first rotates from round to round.
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for target in order:
                for _ in range(args.per_round):
                    if time.monotonic() > deadline:
                        out_of_time = True
                        break
                    target.send(measured=True)
            if probe is not None:
                for _ in range(args.per_round):
                    if time.monotonic() > deadline:
                        out_of_time = True
                        break
                    probe.call(measured=True)
            if out_of_time:
                break
            rounds_done += 1
        measure_s = time.monotonic() - measure_started
        load_after = os.getloadavg()

        # The access log is written as the request ends; give the last line a moment.
        time.sleep(0.5)
        server_side = {t.label: access_log_stats(t.synapse.log_text(), f"{t.txn_prefix}m")
                       for t in targets}

        print()
        print(f"Synapse {synapse_version(python)} ({python}), SQLite, loopback; mxpolicy "
              f"serve {binary} ({binary_kind(binary)}), sample set of `mxpolicy init` "
              f"(consent, erasure, media ownership, keyword filter), deadline_ms "
              f"{args.deadline_ms}; room version {room_version}")
        print(f"machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}")
        print(f"load average 1/5/15 min: before {load_before[0]:.2f}/{load_before[1]:.2f}/"
              f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/"
              f"{load_after[2]:.2f}")
        print(f"warm-up {args.warmup} sends per server; {rounds_done} full rounds of "
              f"{args.per_round} sends per server, interleaved, in {measure_s:.1f} s"
              + (" (stopped at the time limit)" if out_of_time else ""))
        print()
        print(f"{'client-side, ms':34} {'calls':>6} {'p50':>8} {'p99':>8} {'mean':>8} "
              f"{'min':>8} {'max':>8}")
        rows = [t.series for t in targets] + ([probe.series] if probe is not None else [])
        for s in rows:
            print(f"{s.name:34} {len(s.seconds):6d} {ms(s.percentile(50))} "
                  f"{ms(s.percentile(99))} {ms(s.mean)} {ms(min(s.seconds, default=0.0))} "
                  f"{ms(max(s.seconds, default=0.0))}")
        wo = targets[1].series
        for t in targets[0:1] + targets[2:]:
            w = t.series
            print()
            for name, a, b in (("p50", w.percentile(50), wo.percentile(50)),
                               ("p99", w.percentile(99), wo.percentile(99)),
                               ("mean", w.mean, wo.mean)):
                print(f"{t.label}/without {name:4}: {a / b:5.2f}x  ({(a - b) * 1000:+.2f} ms)")
        print()
        print(f"{'Synapse access log (server-side)':34} {'calls':>6} {'total':>8} {'cpu':>8} "
              f"{'db txn':>8} {'db #':>5}   (medians; ms, count)")
        for label, stats in server_side.items():
            print(f"{label:34} {len(stats['total'].seconds):6d} "
                  f"{ms(stats['total'].percentile(50))} {ms(stats['cpu'].percentile(50))} "
                  f"{ms(stats['db_txn'].percentile(50))} "
                  f"{stats['db_count'].percentile(50):5.0f}")
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mxpolicy_e2e.bench_synapse",
        description="Send latency of Synapse with and without the mxpolicy module.")
    parser.add_argument("--port-with", type=int, default=8601,
                        help="Synapse with the module (127.0.0.1; default 8601)")
    parser.add_argument("--port-without", type=int, default=8602,
                        help="Synapse without the module (default 8602)")
    parser.add_argument("--serve-port", type=int, default=8603,
                        help="mxpolicy serve (default 8603)")
    parser.add_argument("--port-noop", type=int, default=8604,
                        help="Synapse with the no-op module (default 8604)")
    parser.add_argument("--no-noop", dest="noop", action="store_false",
                        help="no third Synapse with a no-op check_event_allowed")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up sends per server (30)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (10)")
    parser.add_argument("--per-round", type=int, default=50,
                        help="sends per server per round (50)")
    parser.add_argument("--max-seconds", type=float, default=180.0,
                        help="time limit of warm-up and measurement together (180)")
    parser.add_argument("--settle-seconds", type=float, default=3.0,
                        help="pause after the set-up, before the warm-up (3)")
    parser.add_argument("--deadline-ms", type=int, default=500,
                        help="each plugin's per-call deadline_ms (500, as the e2e test: a "
                             "debug build on a busy machine)")
    parser.add_argument("--no-probe-service", dest="probe_service", action="store_false",
                        help="do not also time on-send called straight at the service")
    parser.add_argument("--work", help="an empty or new work folder (default: a new one in "
                                       "/tmp)")
    args = parser.parse_args(argv)
    terminate_on_signal()
    try:
        return run(args)
    except (ProcessError, AssertionError, MatrixError, httpx.HTTPError) as e:
        print(f"bench_synapse: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
