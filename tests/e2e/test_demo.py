"""`s3proxy demo` end to end, as a user runs it: the console script as a subprocess.

Proves: the demo completes (exit 0) with every step and the proxy's per-request lines; `--keep` serves a
client the user brings with the printed settings; and whatever way it ends (normally, SIGINT once the
proxy is up, SIGTERM while kept running), nothing it started remains: no process whose command line
names its working directory, no listening port, no SeaweedFS socket, no working directory.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .harness import clean_client_env, proxy_executable

pytestmark = pytest.mark.timeout(240)


def demo_processes(workdir: str) -> dict[int, str]:
    """pid -> command line, for every process whose command line names `workdir` (a /proc scan)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if workdir in cmdline:
            found[int(entry.name)] = cmdline
    return found


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass
class DemoRun:
    """`s3proxy demo ARGS` with its output read line by line as it comes."""

    args: tuple[str, ...] = ()
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    _q: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def start(self) -> DemoRun:
        self.proc = subprocess.Popen(
            [proxy_executable(), "demo", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=clean_client_env(),
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float = 120, since: int = 0) -> re.Match[str]:
        """The first line (already seen from index `since` on, or coming) matching `pattern`."""
        rx = re.compile(pattern)
        for line in self.lines[since:]:
            if m := rx.search(line):
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if m := rx.search(line):
                return m
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n{self.output}")

    def finish(self, timeout: float = 120) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        while (line := self._q.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class Footprint:
    """What a running demo holds, recorded while it runs, to prove afterwards that it is all gone."""

    workdir: str
    pids: dict[int, str]
    ports: set[int]
    udp_ports: set[int]

    @classmethod
    def take(cls, run: DemoRun) -> Footprint:
        workdir = run.wait_for(r"working directory (\S+)").group(1)
        endpoint_port = int(run.wait_for(r"interface endpoint stand-in .*:(\d+) ").group(1))
        dns_port = int(run.wait_for(r"DNS for the vpce names +127\.0\.0\.1:(\d+)").group(1))
        proxy_port = int(run.wait_for(r"s3proxy +http://127\.0\.0\.1:(\d+)").group(1))
        pids = demo_processes(workdir)
        # SeaweedFS's other listeners (master, volume, filer, gRPC, admin): from its command line.
        weed_ports = {int(p) for cmd in pids.values() for p in re.findall(r"\.port(?:\.\w+)?=(\d+)", cmd)}
        fp = cls(workdir, pids, {endpoint_port, dns_port, proxy_port} | weed_ports - {0}, {dns_port})
        assert Path(workdir).is_dir()
        assert any("weed" in c for c in pids.values()), pids
        assert any(" run --config " in c for c in pids.values()), pids
        assert tcp_open(proxy_port) and tcp_open(endpoint_port) and tcp_open(dns_port)
        return fp

    def assert_gone(self) -> None:
        # Processes are reaped asynchronously by whoever is their parent; allow a moment.
        deadline = time.monotonic() + 10
        while (left := demo_processes(self.workdir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes left behind: {left}"
        assert not Path(self.workdir).exists(), f"working directory left behind: {self.workdir}"
        assert not [p for p in self.ports if tcp_open(p)], "ports still listening"
        assert not [p for p in self.udp_ports if udp_bound(p)], "DNS UDP port still bound"
        socks = [s for p in self.ports for s in Path("/tmp").glob(f"seaweedfs-*-{p}.sock")]
        assert not socks, f"SeaweedFS sockets left behind: {socks}"


@pytest.fixture
def demo_run() -> Iterator[list[DemoRun]]:
    runs: list[DemoRun] = []
    yield runs
    for r in runs:  # a failed test must not leave a demo running either
        r.kill()


def test_demo_completes_and_leaves_nothing(demo_run: list[DemoRun]) -> None:
    run = DemoRun().start()
    demo_run.append(run)
    footprint = Footprint.take(run)
    t0 = time.monotonic()
    rc = run.finish(timeout=180)
    out = run.output
    assert rc == 0, out
    for expected in (
        "[1/8] AWS CLI: create a bucket",
        "application asked:  PUT https://s3proxy-demo.s3.amazonaws.com/",
        "s3proxy -> upstream: PUT https://bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com:",
        "?uploads",  # the 12 MiB upload really was multipart
        "partNumber=2",
        "downloaded; sha256 matches the upload",
        "boto3 read 12582912 bytes; sha256 matches",
        "fetched the presigned URL through the proxy; sha256 matches",
        "refused 400 InvalidRequest (fips)",
        "Summary: 8/8 steps ok",
        "Quick start on a gateway host",
        f"stopped everything it started and removed {footprint.workdir}",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    # Every upstream line names the vpce endpoint, and no signature value is ever printed.
    upstream = [ln for ln in run.lines if "s3proxy -> upstream: " in ln and "refused" not in ln]
    assert upstream and all("bucket.vpce-1a2b3c4d-5e6f." in ln for ln in upstream)
    assert "X-Amz-Signature=..." in out
    assert not re.search(r"X-Amz-Signature=[0-9a-f]{64}", out)
    assert "Signature=" not in out.replace("X-Amz-Signature=...", "")
    footprint.assert_gone()
    print(f"demo took {time.monotonic() - t0:.1f}s after the proxy was up")


def test_demo_interrupted_with_ctrl_c_cleans_up(demo_run: list[DemoRun]) -> None:
    run = DemoRun().start()
    demo_run.append(run)
    footprint = Footprint.take(run)
    assert run.proc is not None
    # What a terminal's Ctrl-C does: SIGINT to the foreground process group (the demo's children are in
    # their own sessions, so only the demo itself sees it).
    os.killpg(run.proc.pid, signal.SIGINT)
    rc = run.finish(timeout=60)
    assert rc == 128 + signal.SIGINT, run.output
    assert "SIGINT received, stopping" in run.output
    footprint.assert_gone()


def test_demo_keep_serves_own_client_until_sigterm(demo_run: list[DemoRun]) -> None:
    run = DemoRun(("--keep",)).start()
    demo_run.append(run)
    footprint = Footprint.take(run)
    run.wait_for(r"Still running \(--keep\)")
    exports = {}
    for name in ("HTTPS_PROXY", "AWS_CA_BUNDLE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        exports[name] = run.wait_for(rf"^  export {name}=(\S+)").group(1)
    run.wait_for("Requests appear below")
    mark = len(run.lines)  # what comes after this line is the user's own traffic
    # The user's own application, configured with exactly the printed lines.
    env = clean_client_env()
    env.update(exports)
    aws = str(Path(proxy_executable()).parent / "aws")
    listing = subprocess.run(
        [aws, "s3", "ls", "s3://s3proxy-demo/"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listing.returncode == 0, listing.stderr
    assert "demo-12MiB.bin" in listing.stdout
    run.wait_for(
        r"application asked:  GET https://s3proxy-demo\.s3\.amazonaws\.com/\?list-type=2",
        timeout=10,
        since=mark,
    )
    assert run.proc is not None
    os.kill(run.proc.pid, signal.SIGTERM)
    rc = run.finish(timeout=60)
    assert rc == 128 + signal.SIGTERM, run.output
    footprint.assert_gone()
