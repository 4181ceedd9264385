"""Soak test: many concurrent clients through the real proxy for minutes; nothing may fail or leak.

Starts the stand-in endpoint (SeaweedFS behind the recording TLS tap, test DNS; tests/e2e/harness.py) and
the real `s3proxy run`, then runs `--clients` threads, each its own boto3 client (own connection) told
only about the proxy. Each loops until `--duration` is over: PUT a small object (1-64 KiB) and GET it back,
with probability `--large-ratio` PUT and GET a large one (`--large-mb`) instead, and now and then HEAD,
LIST and DELETE. Every body is checked by SHA-256. With `--reconnect P` a client closes its connection
before an iteration with probability P, so its next request comes on a new client connection (what
clients without keep-alive do; the proxy then reuses an idle endpoint connection, `upstream.reuse_idle`).

Reported: requests, errors (must be 0), request rate, p50/p99 latency per request, proxy RSS (start, peak,
end) and open file descriptors (start, and end after every client closed: must not grow). Exit status 1
when there were errors or descriptors grew by more than `--fd-slack`.

    .venv/bin/python bench/soak.py --clients 200 --duration 180
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

KIB, MIB = 1024, 1024 * 1024


def proc_tree(pid: int) -> list[int]:
    """`pid` and its children: with `workers: N` the proxy is a parent and N worker processes."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                children.append(int(entry))
    return [pid, *children]


def proc_kib(pid: int, field_name: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), in KiB, summed over the proxy's processes."""
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total


def open_fds(pid: int) -> int:
    """Open descriptors of the proxy's processes."""
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


@dataclass
class SoakResult:
    clients: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    bytes_moved: int = 0
    rate_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_start_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_warm_mib: float = 0.0  # a quarter into the run: end minus this is growth under steady load
    rss_end_mib: float = 0.0
    fds_start: int = 0
    fds_peak: int = 0
    fds_end: int = 0

    def text(self) -> str:
        return (
            f"{self.clients} clients, {self.duration_s:.1f} s: {self.requests} requests, "
            f"{self.errors} errors, "
            f"{self.rate_per_s:.1f} req/s, {self.bytes_moved / MIB:.0f} MiB moved, "
            f"latency p50 {self.p50_ms:.1f} ms p99 {self.p99_ms:.1f} ms; proxy RSS start "
            f"{self.rss_start_mib:.0f} MiB, after warm-up {self.rss_warm_mib:.0f} MiB, peak "
            f"{self.rss_peak_mib:.0f} MiB, end {self.rss_end_mib:.0f} MiB; "
            f"open fds start {self.fds_start} peak {self.fds_peak} end {self.fds_end}"
        )


class _Sampler(threading.Thread):
    """Samples the proxy's RSS and open descriptors until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.rss_peak_kib = 0
        self.samples: list[tuple[float, int]] = []  # (monotonic time, RSS KiB)
        self.fds_peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                rss = proc_kib(self.pid, "VmRSS")
                self.samples.append((time.monotonic(), rss))
                self.rss_peak_kib = max(self.rss_peak_kib, rss)
                self.fds_peak = max(self.fds_peak, open_fds(self.pid))
            except OSError:
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def make_clients(proxy: Any, n: int) -> list[Any]:
    """n boto3 clients (one connection each) that know only the proxy and its CA."""
    import boto3
    from botocore.config import Config
    from e2e.harness import ADMIN

    session = boto3.session.Session(
        aws_access_key_id=ADMIN.access_key_id,
        aws_secret_access_key=ADMIN.secret_access_key,
        region_name="us-east-1",
    )
    cfg = Config(
        proxies={"https": proxy.url, "http": proxy.url},
        connect_timeout=20,
        read_timeout=120,
        max_pool_connections=1,
        retries={"total_max_attempts": 1},  # an error is an error: nothing hidden by retries
    )
    return [session.client("s3", verify=str(proxy.ca_cert), config=cfg) for _ in range(n)]


def soak(
    proxy: Any,
    bucket: str,
    *,
    clients: int,
    duration: float,
    large_mb: float = 8,
    large_ratio: float = 0.02,
    seed: int = 1,
    settle: float = 1.0,
    reconnect: float = 0.0,
) -> SoakResult:
    """Run the mixed workload through `proxy` (a started e2e.harness.ProxyProcess) against `bucket`."""
    assert proxy.proc is not None
    pid = proxy.proc.pid
    result = SoakResult(clients, duration)
    result.fds_start = open_fds(pid)
    result.rss_start_mib = proc_kib(pid, "VmRSS") / KIB
    pool = random.Random(seed).randbytes(int(large_mb * MIB) + 64 * KIB)
    s3s = make_clients(proxy, clients)
    latencies: list[float] = []
    lock = threading.Lock()
    sampler = _Sampler(pid)
    sampler.start()
    deadline = time.monotonic() + duration

    def worker(i: int, s3: Any) -> None:
        rng = random.Random(seed * 1000 + i)
        own: list[float] = []
        moved = 0
        errors: list[str] = []
        n = 0
        while time.monotonic() < deadline:
            if reconnect and rng.random() < reconnect:
                s3.close()  # the next request opens a new connection to the proxy
            large = rng.random() < large_ratio
            size = int(large_mb * MIB) if large else rng.randint(KIB, 64 * KIB)
            start = rng.randrange(0, len(pool) - size + 1)
            body = pool[start : start + size]
            key = f"soak/{i}/{n % 4}"
            n += 1
            try:
                t = time.monotonic()
                s3.put_object(Bucket=bucket, Key=key, Body=body)
                own.append(time.monotonic() - t)
                t = time.monotonic()
                got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                own.append(time.monotonic() - t)
                if hashlib.sha256(got).digest() != hashlib.sha256(body).digest():
                    raise AssertionError(f"{key}: body differs ({len(got)} of {size} bytes)")
                moved += 2 * size
                r = rng.random()
                t = time.monotonic()
                if r < 0.1:
                    s3.head_object(Bucket=bucket, Key=key)
                elif r < 0.15:
                    s3.list_objects_v2(Bucket=bucket, Prefix=f"soak/{i}/", MaxKeys=10)
                elif r < 0.2:
                    s3.delete_object(Bucket=bucket, Key=key)
                else:
                    continue
                own.append(time.monotonic() - t)
            except Exception as e:  # every failure counts; keep a few for the report
                errors.append(f"client {i}: {type(e).__name__}: {e}"[:300])
        with lock:
            latencies.extend(own)
            result.bytes_moved += moved
            result.errors += len(errors)
            result.error_samples.extend(errors[: max(0, 10 - len(result.error_samples))])

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i, s3), daemon=True) for i, s3 in enumerate(s3s)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    for s3 in s3s:
        s3.close()
    del s3s
    # Connections the clients closed must be gone from the proxy too (client and upstream side).
    time.sleep(settle)
    sampler.stop()
    result.duration_s = elapsed
    result.requests = len(latencies)
    result.rate_per_s = len(latencies) / elapsed if elapsed else 0.0
    if latencies:
        ordered = sorted(latencies)
        result.p50_ms = ordered[len(ordered) // 2] * 1000
        result.p99_ms = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    result.rss_peak_mib = max(sampler.rss_peak_kib, proc_kib(pid, "VmRSS")) / KIB
    result.rss_end_mib = proc_kib(pid, "VmRSS") / KIB
    warm = started + elapsed / 4
    result.rss_warm_mib = next((kib for t, kib in sampler.samples if t >= warm), 0) / KIB
    result.fds_peak = sampler.fds_peak
    result.fds_end = open_fds(pid)
    return result


def wait_for_fds(pid: int, limit: int, timeout: float) -> int:
    """Open descriptors of `pid` once they are at most `limit` (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while (n := open_fds(pid)) > limit and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=180, help="seconds")
    ap.add_argument("--large-mb", type=float, default=8)
    ap.add_argument("--large-ratio", type=float, default=0.02)
    ap.add_argument("--fd-slack", type=int, default=10)
    ap.add_argument(
        "--reconnect",
        type=float,
        default=0.0,
        help="probability that a client closes its connection before an iteration (new client connections)",
    )
    ap.add_argument("--workers", type=int, default=1, help="proxy worker processes (`workers:`)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the load this many times on one proxy: RSS after each "
        "round should level off (a leak keeps growing)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = ap.parse_args()

    from e2e.harness import S3Backend, running_proxy

    with tempfile.TemporaryDirectory(prefix="s3proxy-soak-") as tmp:
        with S3Backend(Path(tmp) / "backend") as backend:
            backend.direct_client().create_bucket(Bucket="soak")
            overrides = {"workers": args.workers}
            with running_proxy(backend, Path(tmp) / "proxy", overrides) as proxy:
                assert proxy.proc is not None
                fds_before = open_fds(proxy.proc.pid)
                failed = False
                for n in range(args.rounds):
                    result = soak(
                        proxy,
                        "soak",
                        clients=args.clients,
                        duration=args.duration,
                        large_mb=args.large_mb,
                        large_ratio=args.large_ratio,
                        seed=n + 1,
                        reconnect=args.reconnect,
                    )
                    result.fds_end = wait_for_fds(proxy.proc.pid, fds_before + args.fd_slack, 10)
                    print(f"round {n + 1}: {result.text()}", flush=True)
                    for sample in result.error_samples:
                        print("  error:", sample)
                    if args.json:
                        print(json.dumps(asdict(result)))
                    failed |= result.errors > 0 or result.fds_end > fds_before + args.fd_slack
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
