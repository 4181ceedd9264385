"""`workers: N`: several proxy processes share the listening port; the parent supervises them.

Which worker served a connection is read from the kernel (/proc: the worker whose file table holds the
proxy-side socket of that client connection), so the test needs nothing from the product but its PIDs.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from .authkit import client_context, sigv4_sign
from .harness import ADMIN, free_ports

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT (Linux)")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(int(m.group(1)))
    return inodes


def tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state hex, inode) of every IPv4 TCP socket."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        rows.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), f[3], int(f[9])))
    return rows


def listening_workers(port: int, pids: list[int]) -> set[int]:
    listeners = {inode for lport, _, state, inode in tcp_table() if lport == port and state == "0A"}
    return {pid for pid in pids if socket_inodes(pid) & listeners}


def wait_for_workers(proxy, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = children(proxy.proc.pid)
        if len(pids) == count and len(listening_workers(proxy.port, pids)) == count:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"workers {pids} not all listening:\n{proxy.logs()[-3000:]}")
        time.sleep(0.05)


def open_request(proxy) -> tuple[http.client.HTTPSConnection, int]:
    """A ListBuckets request through the proxy on a connection that stays open; (connection, status)."""
    url = "https://s3.us-east-1.amazonaws.com/"
    headers = sigv4_sign(ADMIN, "GET", url, {})
    conn = http.client.HTTPSConnection(
        proxy.host, proxy.port, timeout=30, context=client_context(proxy.ca_cert)
    )
    conn.set_tunnel("s3.us-east-1.amazonaws.com", 443)
    conn.putrequest("GET", "/", skip_host=True, skip_accept_encoding=True)
    for k, v in headers:
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    return conn, resp.status


def owner(proxy_port: int, client_port: int, pids: list[int]) -> int | None:
    inodes = {i for lport, rport, _, i in tcp_table() if lport == proxy_port and rport == client_port}
    return next((pid for pid in pids if socket_inodes(pid) & inodes), None)


def test_connections_spread_over_workers_and_data_intact(proxy_factory):
    proxy = proxy_factory({"workers": 2})
    pids = wait_for_workers(proxy, 2)
    conns = []
    try:
        owners = []
        for _ in range(24):
            conn, status = open_request(proxy)
            conns.append(conn)
            assert status == 200
            owners.append(owner(proxy.port, conn.sock.getsockname()[1], pids))
        # 24 connections hashed over 2 sockets: all on one would be a 2^-23 accident.
        assert set(owners) == set(pids), owners
    finally:
        for c in conns:
            c.close()
    # A real SDK through the workers: bytes intact end to end.
    s3 = proxy.boto3_client("s3", region="us-east-1")
    s3.create_bucket(Bucket="workers-bucket")
    body = os.urandom(3 * 1024 * 1024 + 17)
    s3.put_object(Bucket="workers-bucket", Key="k", Body=body)
    got = s3.get_object(Bucket="workers-bucket", Key="k")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert "with 2 workers" in proxy.logs()


def test_sigterm_stops_every_worker(proxy_factory):
    proxy = proxy_factory({"workers": 2})
    pids = wait_for_workers(proxy, 2)
    os.kill(proxy.proc.pid, signal.SIGTERM)  # the parent only, as systemd or `kill` would
    assert proxy.proc.wait(15) == 0
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() for p in pids):
        assert time.monotonic() < deadline, "a worker outlived the parent"
        time.sleep(0.05)


def test_killed_worker_is_replaced(proxy_factory):
    proxy = proxy_factory({"workers": 2})
    pids = wait_for_workers(proxy, 2)
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = children(proxy.proc.pid)
        if len(now) == 2 and pids[0] not in now and len(listening_workers(proxy.port, now)) == 2:
            break
        assert time.monotonic() < deadline, f"worker not replaced:\n{proxy.logs()[-3000:]}"
        time.sleep(0.05)
    assert "worker 0 was killed by SIGKILL; starting it again" in proxy.logs()
    for _ in range(8):
        conn, status = open_request(proxy)
        conn.close()
        assert status == 200


def test_admin_metrics_cover_every_worker(proxy_factory):
    admin_port = free_ports(1)[0]
    proxy = proxy_factory({"workers": 2, "admin": {"listen": f"127.0.0.1:{admin_port}"}})
    pids = wait_for_workers(proxy, 2)
    conns = []
    try:
        for _ in range(16):
            conn, status = open_request(proxy)
            conns.append(conn)
            assert status == 200
        served = {owner(proxy.port, c.sock.getsockname()[1], pids) for c in conns}
        assert served == set(pids)
    finally:
        for c in conns:
            c.close()
    deadline = time.monotonic() + 15
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()
        counts = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^s3proxy_requests_total\{[^}]*worker="(\d)"[^}]*\} (\S+)$', text, re.M)
        }
        # Every worker's requests are counted under its own label (the others publish every 2 s).
        if set(counts) == {"0", "1"} and sum(counts.values()) >= 16:
            break
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.2)
    assert text.count("# TYPE s3proxy_requests_total counter") == 1
    # The admin port stays out of reach through every worker.
    for _ in range(6):
        conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
        conn.request("GET", f"http://127.0.0.1:{admin_port}/metrics")
        assert conn.getresponse().status == 403
        conn.close()


def test_port_in_use_is_refused_before_forking(proxy_factory):
    # SO_REUSEPORT would let a second s3proxy silently share the port; the parent checks first.
    first = proxy_factory({"workers": 2})
    wait_for_workers(first, 2)
    second = proxy_factory({"workers": 2, "listen": {"host": "127.0.0.1", "port": first.port}})
    assert second.proc.wait(20) == 1
    assert f"cannot listen on 127.0.0.1:{first.port}: Address already in use" in second.logs()
    assert children(first.proc.pid) and len(listening_workers(first.port, children(first.proc.pid))) == 2
