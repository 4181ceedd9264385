"""A request the proxy refuses at its head is answered at once, as S3 does: before its body, without a
"100 Continue" first, without keeping the body in memory, and with the connection closed once the request
has ended. A refused HEAD is answered with headers only, so the connection stays usable.

Clients here are raw TLS sockets through the proxy's CONNECT (to control when each byte goes out) and
http.client (keep-alive); the upstream is SeaweedFS behind the recording tap, which must see none of it.
"""

from __future__ import annotations

import dataclasses
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.authkit import assert_clean_upstream, client_context, send, sigv4_sign
from e2e.harness import ADMIN, ProxyProcess, S3Backend, ensure_bucket

BUCKET = "e2e-early-refusal"
HOST = f"{BUCKET}.s3.us-east-1.amazonaws.com"
WRONG = dataclasses.replace(ADMIN, secret_access_key="Wrong" + ADMIN.secret_access_key[5:])
MIB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def bucket(proxy: ProxyProcess) -> None:
    s3 = proxy.boto3_client(region="us-east-1")
    ensure_bucket(s3, BUCKET)
    s3.put_object(Bucket=BUCKET, Key="ok", Body=b"still serving")


@pytest.fixture(autouse=True)
def clean_upstream(s3_backend: S3Backend) -> Iterator[None]:
    mark = s3_backend.mark()
    yield
    assert_clean_upstream(s3_backend, s3_backend.upstream_requests(mark))


def tunnel(proxy: ProxyProcess) -> ssl.SSLSocket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    sock.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(4096)
        assert more, head
        head += more
    assert head.startswith(b"HTTP/1.1 200"), head
    return client_context(proxy.ca_cert).wrap_socket(sock, server_hostname=HOST)


def refused_put_head(size: int, extra: dict[str, str] | None = None, key: Any = WRONG) -> bytes:
    """The head of a PUT of `size` bytes signed with `key` (the wrong secret: refused at its head)."""
    url = f"https://{HOST}/refused"
    headers = {"Content-Length": str(size), **(extra or {})}
    signed = sigv4_sign(key, "PUT", url, headers, payload="UNSIGNED-PAYLOAD")
    lines = ["PUT /refused HTTP/1.1", *(f"{k}: {v}" for k, v in signed)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, what came after the head) of the next response on `sock`."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        assert more, buf
        buf += more
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def read_body(sock: ssl.SSLSocket, rest: bytes, length: int) -> bytes:
    while len(rest) < length:
        more = sock.recv(65536)
        assert more, rest
        rest += more
    return rest


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def assert_still_serving(proxy: ProxyProcess) -> None:
    url = f"https://{HOST}/ok"
    reply = send(proxy, "GET", url, sigv4_sign(ADMIN, "GET", url, {}))
    assert (reply.status, reply.body) == (200, b"still serving"), reply


def test_refused_upload_is_answered_before_its_body(proxy: ProxyProcess) -> None:
    with tunnel(proxy) as sock:
        sock.sendall(refused_put_head(64 * MIB))
        sock.settimeout(5)  # the answer comes without a byte of the body sent
        status, headers, rest = read_head(sock)
        assert status == 403
        assert headers["connection"] == "close"
        body = read_body(sock, rest, int(headers["content-length"]))
        assert b"<Code>SignatureDoesNotMatch</Code>" in body
        # The client goes on sending some of the body and gives up: nothing is stored, the proxy serves on.
        sock.sendall(b"x" * (4 * MIB))
    assert_still_serving(proxy)


def test_refused_upload_with_expect_gets_the_answer_instead_of_100(proxy: ProxyProcess) -> None:
    with tunnel(proxy) as sock:
        sock.sendall(refused_put_head(16 * MIB, {"Expect": "100-continue"}))
        sock.settimeout(5)
        status, headers, rest = read_head(sock)
        assert status == 403, (status, headers)  # not 100: the body is not invited
        assert headers["connection"] == "close"
        assert b"SignatureDoesNotMatch" in read_body(sock, rest, int(headers["content-length"]))
    assert_still_serving(proxy)


def test_refused_upload_body_is_dropped_not_kept(proxy: ProxyProcess) -> None:
    size = 256 * MIB
    before = rss_mib(proxy.proc.pid)
    chunk = b"x" * MIB
    with tunnel(proxy) as sock:
        sock.sendall(refused_put_head(size))
        sock.settimeout(30)
        status, headers, rest = read_head(sock)
        assert status == 403
        read_body(sock, rest, int(headers["content-length"]))
        for _ in range(size // MIB):  # a client that sends its whole body before it reads the answer
            sock.sendall(chunk)
        # All of it sent: the proxy ends the connection (Connection: close) once the request has ended.
        deadline = time.monotonic() + 30
        while sock.recv(65536):
            assert time.monotonic() < deadline
    grown = rss_mib(proxy.proc.pid) - before
    assert grown < 64, f"proxy memory grew by {grown:.0f} MiB for a refused {size // MIB} MiB body"
    assert_still_serving(proxy)


def test_refused_head_has_no_body_and_the_connection_goes_on(proxy: ProxyProcess) -> None:
    conn = http.client.HTTPSConnection(
        proxy.host, proxy.port, timeout=10, context=client_context(proxy.ca_cert)
    )
    conn.set_tunnel(HOST, 443)
    url = f"https://{HOST}/ok"
    try:
        for key, method, want in (
            (WRONG, "HEAD", 403),
            (ADMIN, "GET", 200),
            (WRONG, "HEAD", 403),
            (ADMIN, "HEAD", 200),
        ):
            conn.putrequest(method, "/ok", skip_host=True, skip_accept_encoding=True)
            for k, v in sigv4_sign(key, method, url, {}):
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == want, (method, resp.status, body[:200])
            if method == "GET":
                assert body == b"still serving"
            else:
                assert body == b""
            if want == 403:
                assert resp.getheader("x-amz-request-id")
                assert int(resp.getheader("content-length") or 0) > 0  # the size a GET's error would have
    finally:
        conn.close()


def test_body_is_not_read_while_the_proxy_waits_for_dns(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    # The endpoint's name server never answers: the request waits in the proxy for the DNS timeout, then is
    # refused (503). Meanwhile the client sends its whole body at once; the proxy must not read it into
    # memory while it waits (mitmproxy queues what it reads during a hook), and drops it after the answer.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        proxy = proxy_factory(
            {"dns": {"nameservers": [f"127.0.0.1:{silent.getsockname()[1]}"], "timeout": 1.5}}
        )
        size = 256 * MIB
        before = peak = rss_mib(proxy.proc.pid)
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, rss_mib(proxy.proc.pid))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        chunk = b"x" * MIB
        with tunnel(proxy) as sock:
            sock.settimeout(30)
            sock.sendall(refused_put_head(size, key=ADMIN))  # correctly signed: refused for DNS only
            for _ in range(size // MIB):
                sock.sendall(chunk)
            status, headers, rest = read_head(sock)
            assert status == 503, (status, headers)
            assert b"ServiceUnavailable" in read_body(sock, rest, int(headers["content-length"]))
        done.set()
        watcher.join()
        assert peak - before < 64, f"proxy memory grew by {peak - before:.0f} MiB while DNS was failing"
    finally:
        silent.close()


def test_refused_chunked_upload_is_answered_at_once_and_closed_at_its_end(proxy: ProxyProcess) -> None:
    url = f"https://{HOST}/refused"
    signed = sigv4_sign(WRONG, "PUT", url, {"Transfer-Encoding": "chunked"}, payload="UNSIGNED-PAYLOAD")
    head = "\r\n".join(["PUT /refused HTTP/1.1", *(f"{k}: {v}" for k, v in signed)]) + "\r\n\r\n"
    with tunnel(proxy) as sock:
        sock.sendall(head.encode())
        sock.settimeout(5)
        status, headers, rest = read_head(sock)
        assert (status, headers["connection"]) == (403, "close")
        read_body(sock, rest, int(headers["content-length"]))
        for _ in range(8):
            sock.sendall(b"100000\r\n" + b"x" * 0x100000 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        assert sock.recv(65536) == b""  # the request has ended: the proxy closes
    assert_still_serving(proxy)


def test_client_gone_mid_body_after_the_answer(proxy: ProxyProcess) -> None:
    for _ in range(3):
        sock = tunnel(proxy)
        sock.sendall(refused_put_head(64 * MIB))
        sock.settimeout(5)
        assert read_head(sock)[0] == 403
        sock.sendall(b"x" * MIB)
        sock.close()  # without the rest of the body
    assert_still_serving(proxy)
    assert "Traceback" not in proxy.logs()
