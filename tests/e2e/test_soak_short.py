"""Load in the suite: a short version of bench/soak.py, and back-pressure for a slow reader.

- 50 concurrent clients for ~15 s mixing small and large objects: 0 errors, and once they have closed their
  connections the proxy's open descriptors are back where they started (no leak per connection).
- 30 clients for ~10 s that close their connection before about half of their requests: every such
  request comes on a new client connection and takes an idle endpoint connection another client connection
  left (`upstream.reuse_idle`): 0 errors, bodies intact, and no descriptor left once the kept connections
  expire.
- A client reading a 200 MiB object slowly: the proxy's memory must not grow with the object (it must stop
  reading from the endpoint while the client is behind, not buffer the object).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from e2e.authkit import client_context, sigv4_sign
from e2e.harness import ADMIN, ProxyProcess, S3Backend, admin_proxy, ensure_bucket

BUCKET = "e2e-soak"
MIB = 1024 * 1024


def load_soak() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("s3proxy_bench_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def bucket(s3_backend: S3Backend) -> None:
    ensure_bucket(s3_backend.direct_client(), BUCKET)


def test_short_soak_no_errors_no_fd_growth(proxy_factory: Any) -> None:
    soak = load_soak()
    proxy: ProxyProcess = proxy_factory()
    assert proxy.proc is not None
    result = soak.soak(proxy, BUCKET, clients=50, duration=12, large_mb=4, large_ratio=0.03)
    print(result.text())
    assert result.errors == 0, result.error_samples
    assert result.requests > 100
    assert result.fds_peak > result.fds_start + 50  # the clients really were concurrent
    fds_end = soak.wait_for_fds(proxy.proc.pid, result.fds_start + 5, 10)
    assert fds_end <= result.fds_start + 5, result.text()
    # And it still serves.
    s3 = proxy.boto3_client(region="us-east-1")
    s3.put_object(Bucket=BUCKET, Key="after-soak", Body=b"ok")
    assert s3.get_object(Bucket=BUCKET, Key="after-soak")["Body"].read() == b"ok"


def test_short_soak_with_new_client_connections_sharing_endpoint_connections(proxy_factory: Any) -> None:
    soak = load_soak()
    proxy, admin = admin_proxy(proxy_factory)
    assert proxy.proc is not None
    fds_before = soak.open_fds(proxy.proc.pid)
    result = soak.soak(proxy, BUCKET, clients=30, duration=10, large_mb=2, large_ratio=0.03, reconnect=0.5)
    print(result.text())
    assert result.errors == 0, result.error_samples
    assert result.requests > 100
    assert admin.value("s3proxy_upstream_connections_reused_total") > 50
    # Kept connections expire (upstream.reuse_idle, 5 s): then nothing is left open.
    fds_end = soak.wait_for_fds(proxy.proc.pid, fds_before + 5, 15)
    assert fds_end <= fds_before + 5, result.text()
    assert admin.value("s3proxy_upstream_idle_connections") == 0


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_slow_reader_of_a_large_object_does_not_grow_proxy_memory(
    proxy_factory: Any, s3_backend: S3Backend
) -> None:
    size = 200 * MIB
    data = os.urandom(size)
    s3_backend.direct_client().put_object(Bucket=BUCKET, Key="big", Body=data)
    want = hashlib.sha256(data).hexdigest()
    del data
    proxy: ProxyProcess = proxy_factory()
    assert proxy.proc is not None
    pid = proxy.proc.pid
    # Warm up (TLS, imports, first connection) before the baseline.
    warm = proxy.boto3_client(region="us-east-1")
    warm.put_object(Bucket=BUCKET, Key="warm", Body=b"x" * 100_000)
    warm.get_object(Bucket=BUCKET, Key="warm")["Body"].read()
    baseline = vm_rss_mib(pid)
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, vm_rss_mib(pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    url = f"https://{BUCKET}.s3.us-east-1.amazonaws.com/big"
    conn = http.client.HTTPSConnection(
        proxy.host, proxy.port, timeout=60, context=client_context(proxy.ca_cert)
    )
    conn.set_tunnel(f"{BUCKET}.s3.us-east-1.amazonaws.com", 443)
    try:
        conn.putrequest("GET", "/big", skip_host=True, skip_accept_encoding=True)
        for name, value in sigv4_sign(ADMIN, "GET", url, {}):
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 200
        digest, got, started = hashlib.sha256(), 0, time.monotonic()
        while piece := resp.read(256 * 1024):
            digest.update(piece)
            got += len(piece)
            # ~40 MiB/s: far slower than SeaweedFS and the proxy can deliver over loopback.
            time.sleep(0.006)
        took = time.monotonic() - started
    finally:
        conn.close()
        stop.set()
        sampler.join()
    assert got == size and digest.hexdigest() == want
    growth = peak - baseline
    print(f"slow read of {size // MIB} MiB in {took:.1f} s: proxy RSS {baseline:.0f} -> peak {peak:.0f} MiB")
    assert growth < 64, f"proxy RSS grew by {growth:.0f} MiB while streaming a {size // MIB} MiB object"
