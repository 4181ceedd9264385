"""Abuse of the real proxy: not an open relay, not an SSRF hop, not a smuggling relay, not a signing oracle.

Every case talks raw bytes to the real `s3proxy run` (so the test controls every byte, including ones no
HTTP library would send) and checks three things: the exact answer (status and, where the proxy answers,
an S3-style `<Error>` with its Code), that nothing reached the upstream tap (or the stand-in site), and
that the proxy keeps serving. docs/security.md names these tests threat by threat.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.authkit import (
    TinyTlsSite,
    assert_clean_upstream,
    crc32_b64,
    seed_signature,
    send,
    signed_chunked_request,
    sigv4_sign,
)
from e2e.harness import ADMIN, ProxyProcess, S3Backend, ensure_bucket, free_ports
from s3proxy.rewrite import is_dns_safe_bucket

BUCKET = "e2e-abuse"
HOST = f"{BUCKET}.s3.amazonaws.com"
NO_TUNNEL_ALLOW = {"tunnel_allow": None}  # the product default: no exception for loopback


@dataclass(frozen=True)
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def code(self) -> str:
        root = ET.fromstring(self.body)
        assert root.tag == "Error", self.body[:300]
        return root.findtext("Code") or ""

    def message(self) -> str:
        return ET.fromstring(self.body).findtext("Message") or ""


def _read_response(sock: socket.socket | ssl.SSLSocket) -> Raw:
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed before a response head: {buf[:200]!r}")
        buf += piece
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return Raw(status, headers, rest[:length])


def raw_plain(proxy: ProxyProcess, data: bytes) -> Raw:
    with socket.create_connection((proxy.host, proxy.port), timeout=15) as sock:
        sock.sendall(data)
        return _read_response(sock)


def connect(proxy: ProxyProcess, target: str) -> tuple[socket.socket, Raw | None]:
    """CONNECT target; (socket, None) when the tunnel was opened, else (socket, the refusal)."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=15)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    reply = _read_response(sock)
    if reply.status == 200:
        return sock, None
    return sock, reply


def raw_tls(proxy: ProxyProcess, target: str, data: bytes, *, sni: str | None = None) -> Raw:
    """CONNECT target, TLS with `sni` (default: the target's host), send `data`, read one response."""
    sock, refused = connect(proxy, target)
    with sock:
        assert refused is None, refused
        ctx = ssl.create_default_context(cafile=str(proxy.ca_cert))
        ctx.check_hostname = False  # the SNI may deliberately differ from the CONNECT target
        with ctx.wrap_socket(sock, server_hostname=sni or target.rsplit(":", 1)[0]) as tls:
            tls.sendall(data)
            return _read_response(tls)


def assert_refused(reply: Raw, status: int, code: str) -> None:
    assert reply.status == status, reply
    assert reply.headers.get("content-type", "").startswith("application/xml"), reply
    assert reply.code() == code, reply
    assert reply.headers.get("x-amz-request-id"), reply


def good_get(proxy: ProxyProcess) -> None:
    url = f"https://{HOST}/ok"
    reply = send(proxy, "GET", url, sigv4_sign(ADMIN, "GET", url, {}))
    assert (reply.status, reply.body) == (200, b"still serving"), reply


def signed_head(method: str, url: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    """A correctly signed request head (what a real client sends), as raw bytes, plus `extra` lines."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in sigv4_sign(ADMIN, method, url, {}, payload="UNSIGNED-PAYLOAD")]
    lines += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture(scope="module")
def strict(s3_backend: S3Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A proxy with the product defaults for tunnels (no tunnel_allow) and small limits."""
    from e2e.harness import running_proxy

    overrides = {
        **NO_TUNNEL_ALLOW,
        "limits": {"max_header_bytes": 8192, "max_chunk_size": 16384, "max_trailer_size": 256},
    }
    with running_proxy(s3_backend, tmp_path_factory.mktemp("strict"), overrides) as p:
        s3 = p.boto3_client(region="us-east-1")
        ensure_bucket(s3, BUCKET)
        s3.put_object(Bucket=BUCKET, Key="ok", Body=b"still serving")
        yield p


@pytest.fixture(autouse=True)
def clean_upstream(s3_backend: S3Backend) -> Iterator[None]:
    mark = s3_backend.mark()
    yield
    assert_clean_upstream(s3_backend, s3_backend.upstream_requests(mark))


@pytest.fixture
def tiny_site(tmp_path: Path) -> Iterator[TinyTlsSite]:
    site = TinyTlsSite(tmp_path / "site")
    try:
        yield site
    finally:
        site.close()


class PlainSite:
    """A plain-HTTP server on loopback that counts connections (was it ever reached?)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nopen")

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def plain_site() -> Iterator[PlainSite]:
    site = PlainSite()
    try:
        yield site
    finally:
        site.close()


# --- not an SSRF hop: tunnel destinations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("127.0.0.1:{site}", "loopback"),
        ("localhost:{site}", "loopback"),  # a name that resolves to loopback is refused like the literal
        ("2130706433:{site}", "loopback"),  # 127.0.0.1 written as one decimal number
        ("[::ffff:127.0.0.1]:{site}", "loopback"),
        ("[::1]:{site}", "loopback"),
        ("0.0.0.0:{site}", "not a unicast"),
        ("169.254.169.254:80", "link-local"),  # cloud instance metadata
        ("[fd00:ec2::254]:80", "link-local"),  # the metadata service over IPv6
        ("127.0.0.1:{proxy}", "own listener"),
    ],
)
def test_connect_to_internal_destinations_is_refused(
    strict: ProxyProcess, tiny_site: TinyTlsSite, target: str, says: str
) -> None:
    t = target.format(site=tiny_site.port, proxy=strict.port)
    sock, refused = connect(strict, t)
    sock.close()
    assert refused is not None, f"tunnel to {t} was opened"
    assert_refused(refused, 403, "AccessDenied")
    assert says in refused.message() and "tunnel_allow" in refused.message()
    assert tiny_site.handshakes == 0
    good_get(strict)


def test_tunnel_allow_opens_loopback_but_never_the_proxy_itself(
    proxy_factory: Callable[..., ProxyProcess], tiny_site: TinyTlsSite
) -> None:
    admin_port = free_ports(1)[0]
    proxy = proxy_factory({"tunnel_allow": ["127.0.0.0/8"], "admin": {"listen": f"127.0.0.1:{admin_port}"}})
    # Allowed: tunnelled untouched (the site's own certificate; the proxy never decrypts it).
    sock, refused = connect(proxy, f"127.0.0.1:{tiny_site.port}")
    assert refused is None
    ctx = ssl.create_default_context(cafile=str(tiny_site.ca_path))
    with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        assert tls.getpeercert(binary_form=True) == tiny_site.cert_der
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert tiny_site.body in tls.recv(4096) + tls.recv(4096)
    # The proxy's own listener and the admin listener stay refused even inside an allowed network.
    for port in (proxy.port, admin_port):
        sock, refused = connect(proxy, f"127.0.0.1:{port}")
        sock.close()
        assert refused is not None and refused.status == 403 and "own listener" in refused.message()


def test_configured_endpoint_names_are_still_tunnelled(strict: ProxyProcess, s3_backend: S3Backend) -> None:
    """A client that already uses the vpce name (endpoint_url) gets a plain tunnel to the endpoint,
    although the endpoint resolves to loopback here: configured endpoints are trusted destinations."""
    import boto3
    from botocore.config import Config

    ep = s3_backend.endpoint("us-east-1")
    client = boto3.session.Session(
        aws_access_key_id=ADMIN.access_key_id, aws_secret_access_key=ADMIN.secret_access_key
    ).client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"https://{ep.bucket_host}:{s3_backend.endpoint_port}",
        verify=str(s3_backend.ca_cert),
        config=Config(proxies={"https": strict.url}),
    )
    assert client.get_object(Bucket=BUCKET, Key="ok")["Body"].read() == b"still serving"


def test_non_s3_deny_refuses_every_other_connect(
    proxy_factory: Callable[..., ProxyProcess], tiny_site: TinyTlsSite
) -> None:
    proxy = proxy_factory({"non_s3": "deny"})  # tunnel_allow lists loopback: deny still wins
    for target in (f"127.0.0.1:{tiny_site.port}", f"localhost:{tiny_site.port}", "example.com:443"):
        sock, refused = connect(proxy, target)
        sock.close()
        assert refused is not None
        assert_refused(refused, 403, "AccessDenied")
    assert tiny_site.handshakes == 0


# --- not an open relay: plain HTTP and the Host inside a tunnel ---------------------------------------------


def test_plain_http_to_a_non_s3_host_is_refused_not_forwarded(
    proxy_factory: Callable[..., ProxyProcess], plain_site: PlainSite
) -> None:
    """`non_s3: tunnel` is about CONNECT; an absolute-form request to another host would make the proxy an
    open HTTP relay, so it is refused in both modes, even to a destination tunnel_allow lists."""
    proxy = proxy_factory()
    for host in (f"127.0.0.1:{plain_site.port}", f"localhost:{plain_site.port}", "example.com"):
        reply = raw_plain(proxy, f"GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert_refused(reply, 403, "AccessDenied")
    assert plain_site.connections == 0


@pytest.mark.parametrize(
    ("url_host", "host_header"),
    [
        (HOST, "evil.example"),  # forwarded by the URL's name, but Host names another site
        ("evil.example", HOST),  # the other way round
        (HOST, "other.s3.amazonaws.com"),  # both S3, still not the same
    ],
)
def test_plain_http_host_must_match_the_url(strict: ProxyProcess, url_host: str, host_header: str) -> None:
    reply = raw_plain(strict, f"GET http://{url_host}/ok HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode())
    assert reply.status in (400, 403), reply
    assert reply.code() in ("InvalidRequest", "AccessDenied")
    good_get(strict)


@pytest.mark.parametrize(
    ("connect_to", "sni", "host_header", "says"),
    [
        (f"{HOST}:443", HOST, "evil.example", "TLS server name"),  # inner Host is not S3
        (f"{HOST}:443", HOST, "other-bucket.s3.amazonaws.com", "TLS server name"),  # another S3 name
        (f"{HOST}:443", "other-bucket.s3.amazonaws.com", HOST, "TLS server name"),  # SNI differs
        (f"{HOST}:443", "evil.example", "evil.example", "opened for"),  # SNI = Host, not the CONNECT
    ],
)
def test_decrypted_tunnel_serves_only_its_own_name(
    strict: ProxyProcess, s3_backend: S3Backend, connect_to: str, sni: str, host_header: str, says: str
) -> None:
    mark = s3_backend.mark()
    url = f"https://{host_header}/ok"
    head = signed_head("GET", url)  # correctly signed for the name in Host: only the routing is abused
    reply = raw_tls(strict, connect_to, head, sni=sni)
    assert_refused(reply, 400, "InvalidRequest")
    assert says in reply.message()
    assert s3_backend.upstream_requests(mark) == []
    good_get(strict)


# --- request smuggling and header abuse ---------------------------------------------------------------------

_H = f"Host: {HOST}\r\n"
SMUGGLING = [
    pytest.param(
        f"POST /ok HTTP/1.1\r\n{_H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "InvalidRequest",
        id="cl-and-te",
    ),
    pytest.param(
        f"POST /ok HTTP/1.1\r\n{_H}Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "InvalidRequest",
        id="two-content-lengths",
    ),
    pytest.param(
        f"POST /ok HTTP/1.1\r\n{_H}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        "0\r\n\r\n",
        "InvalidRequest",
        id="two-transfer-encodings",
    ),
    pytest.param(
        f"POST /ok HTTP/1.1\r\n{_H}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "InvalidRequest",
        id="unknown-transfer-encoding",
    ),
    pytest.param(
        f"POST /ok HTTP/1.1\r\n{_H}Content-Length: -1\r\n\r\n", "InvalidRequest", id="negative-length"
    ),
    pytest.param(f"POST /ok HTTP/1.1\r\n{_H}Content-Length: 0x10\r\n\r\n", "InvalidRequest", id="hex-length"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}{_H}\r\n", "InvalidRequest", id="duplicate-host"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}Host: evil.example\r\n\r\n", "InvalidRequest", id="second-host"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}X-A: a\x00b\r\n\r\n", "InvalidArgument", id="nul-in-value"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}X-A: a\rb\r\n\r\n", "InvalidArgument", id="bare-cr-in-value"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}X-A: a\x0bb\r\n\r\n", "InvalidArgument", id="vt-in-value"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}X-A: a\r\n b\r\n\r\n", "InvalidArgument", id="obs-fold"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}X A: b\r\n\r\n", "InvalidRequest", id="space-in-name"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}X-A\x00: b\r\n\r\n", "InvalidRequest", id="nul-in-name"),
    pytest.param(f"GET /ok HTTP/1.1\r\n{_H}: b\r\n\r\n", "InvalidRequest", id="empty-name"),
    pytest.param(f"GET /o\rk HTTP/1.1\r\n{_H}\r\n", "InvalidRequest", id="cr-in-target"),
    pytest.param(f"GET /o k HTTP/1.1\r\n{_H}\r\n", "InvalidRequest", id="space-in-target"),
    pytest.param(
        f"GET /ok HTTP/1.1\r\n{_H}X-Big: {'a' * 9000}\r\n\r\n",
        "RequestHeaderSectionTooLarge",
        id="oversized-head",
    ),
]


@pytest.mark.parametrize(("head", "code"), SMUGGLING)
@pytest.mark.parametrize("via", ["tls", "plain"])
def test_malformed_heads_are_s3_style_400s(
    strict: ProxyProcess, s3_backend: S3Backend, head: str, code: str, via: str
) -> None:
    mark = s3_backend.mark()
    data = head.encode("latin-1")
    if via == "plain":  # absolute-form, as an HTTP_PROXY client sends it
        first, rest = data.split(b"\r\n", 1)
        method, target, version = first.split(b" ", 2) if first.count(b" ") == 2 else (b"", b"", b"")
        if not method:
            pytest.skip("the request line itself is what is malformed: covered through TLS")
        data = method + b" http://" + HOST.encode() + target + b" " + version + b"\r\n" + rest
        reply = raw_plain(strict, data)
    else:
        reply = raw_tls(strict, f"{HOST}:443", data)
    assert reply.status == 400, reply
    assert reply.headers.get("content-type", "").startswith("application/xml"), reply
    assert reply.code() == code, reply
    assert b"<html" not in reply.body.lower()
    assert s3_backend.upstream_requests(mark) == []
    good_get(strict)


def test_a_head_that_never_ends_is_cut_off(strict: ProxyProcess, s3_backend: S3Backend) -> None:
    """mitmproxy buffers an incomplete request head without limit; the proxy stops at max_header_bytes."""
    mark = s3_backend.mark()
    with socket.create_connection((strict.host, strict.port), timeout=15) as sock:
        sock.sendall(f"GET http://{HOST}/ok HTTP/1.1\r\n{_H}".encode())
        reply: Raw | None = None
        try:
            for _ in range(64):  # 64 x 1 KiB, far past the 8 KiB limit; never the blank line
                sock.sendall(b"X-Pad: " + b"p" * 1016 + b"\r\n")
        except OSError:
            pass  # the proxy closed the connection while we were still sending
        reply = _read_response(sock)
    assert_refused(reply, 400, "RequestHeaderSectionTooLarge")
    assert s3_backend.upstream_requests(mark) == []
    good_get(strict)
    assert "has crashed" not in strict.logs()  # the cut-off ends the connection cleanly


# --- bucket names and keys that try to change where the request goes ----------------------------------------


ABUSIVE_PATHS = (
    "/evil.example%23/k",
    "/evil.example%2F..%2F/k",
    "/a@evil.example/k",
    "/evil.example:443/k",
    "/e2e-abuse/%0D%0AHost:%20evil.example",
    "/e2e-abuse/..%2F..%2Fx",
    "//evil.example/k",
)


@pytest.mark.parametrize("addressing", ["path", "virtual"])
def test_bucket_and_key_never_change_the_upstream_host(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, addressing: str
) -> None:
    proxy = proxy_factory({"addressing": addressing})
    bucket_host = s3_backend.endpoint("us-east-1").bucket_host
    for path in ABUSIVE_PATHS:
        mark = s3_backend.mark()
        url = f"https://s3.amazonaws.com{path}"
        reply = send(proxy, "GET", url, sigv4_sign(ADMIN, "GET", url, {}))
        assert reply.status < 500, (path, reply)
        seen = s3_backend.upstream_requests(mark)
        assert_clean_upstream(s3_backend, seen)  # Host and SNI always a vpce name
        bucket, _, rest = path[1:].partition("/")
        for r in seen:
            host = (r.host or "").rsplit(":", 1)[0]
            if host == bucket_host:  # path style: the path goes up byte for byte
                assert r.target == path, r
            else:  # virtual: only a DNS-safe bucket label may ever become part of the host
                assert host == f"{bucket}.{bucket_host}" and is_dns_safe_bucket(bucket), r
                assert r.target == f"/{rest}", r


def test_key_with_crlf_is_stored_under_that_key(strict: ProxyProcess, s3_backend: S3Backend) -> None:
    s3 = strict.boto3_client(region="us-east-1")
    key = "a\r\nHost: evil.example\r\n\r\nb"
    body = b"crlf key"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert s3_backend.object_sha256(BUCKET, key) == hashlib.sha256(body).hexdigest()


# --- aws-chunked limits -------------------------------------------------------------------------------------


def _put_chunked(proxy: ProxyProcess, key: str, headers: list[tuple[str, str]], body: list[bytes]) -> Any:
    return send(proxy, "PUT", f"https://{HOST}/{key}", headers, body)


def test_chunk_larger_than_max_chunk_size_is_refused(strict: ProxyProcess, s3_backend: S3Backend) -> None:
    url = f"https://{HOST}/big-chunk"
    headers, body = signed_chunked_request(ADMIN, url, b"x" * 40000, chunk_size=20000)
    reply = _put_chunked(strict, "big-chunk", headers, body)
    assert reply.status == 400, reply
    err = reply.error()
    assert err["Code"] == "InvalidRequest" and "16384" in err["Message"], err
    assert s3_backend.object_sha256(BUCKET, "big-chunk") is None
    good_get(strict)


def test_absurd_chunk_size_is_refused(strict: ProxyProcess, s3_backend: S3Backend) -> None:
    url = f"https://{HOST}/absurd"
    headers, body = signed_chunked_request(ADMIN, url, b"y" * 100, chunk_size=100)
    forged = b"ffffffffffffffff" + body[0][body[0].index(b";") :]
    reply = _put_chunked(strict, "absurd", headers, [forged, *body[1:]])
    assert reply.status == 400, reply
    assert reply.error()["Code"] == "InvalidRequest"
    assert s3_backend.object_sha256(BUCKET, "absurd") is None
    good_get(strict)


def test_trailer_larger_than_max_trailer_size_is_refused(strict: ProxyProcess, s3_backend: S3Backend) -> None:
    """A signed trailer section of 300 bytes against a 256-byte limit: refused, nothing stored."""
    from s3proxy.chunked import encode_signed_chunks
    from s3proxy.sigv4 import signing_key

    url = f"https://{HOST}/big-trailer"
    payload = b"z" * 1000
    trailers = [("x-amz-checksum-crc32", crc32_b64(payload)), ("x-amz-meta-pad", "p" * 300)]
    dummy = encode_signed_chunks(
        [payload],
        signing_key=b"k",
        amz_date="20000101T000000Z",
        scope="s",
        seed_signature="0" * 64,
        trailers=trailers,
    )
    extra = {
        "Content-Encoding": "aws-chunked",
        "Content-Length": str(sum(len(p) for p in dummy)),
        "x-amz-decoded-content-length": str(len(payload)),
        "x-amz-trailer": "x-amz-checksum-crc32",
    }
    headers = sigv4_sign(ADMIN, "PUT", url, extra, payload="STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
    sig, amz_date, scope = seed_signature(headers)
    body = list(
        encode_signed_chunks(
            [payload],
            signing_key=signing_key(ADMIN.secret_access_key, scope.split("/")[0], "us-east-1", "s3"),
            amz_date=amz_date,
            scope=scope,
            seed_signature=sig,
            trailers=trailers,
        )
    )
    reply = _put_chunked(strict, "big-trailer", headers, body)
    assert reply.status == 400, reply
    assert "256" in reply.error()["Message"]
    assert s3_backend.object_sha256(BUCKET, "big-trailer") is None
    good_get(strict)


# --- a malicious S3 look-alike ------------------------------------------------------------------------------


def test_endpoint_with_an_untrusted_certificate_gets_no_request(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, tiny_site: TinyTlsSite
) -> None:
    """DNS spoofing or a look-alike at the endpoint's address: its certificate does not chain to the
    trusted CA (here: the proxy trusts another CA than the one the endpoint's certificate is from), so
    the TLS handshake fails and not one byte of the request (Authorization, body) is sent to it."""
    proxy = proxy_factory({"tls": {"upstream_ca_bundle": str(tiny_site.ca_path)}})
    mark = s3_backend.mark()
    url = f"https://{HOST}/ok"
    reply = send(proxy, "GET", url, sigv4_sign(ADMIN, "GET", url, {}))
    assert reply.status == 503, reply
    assert reply.error()["Code"] == "ServiceUnavailable"
    assert s3_backend.upstream_requests(mark) == []


def test_chunked_body_with_http_trailers_ends_the_connection_and_stores_nothing(
    strict: ProxyProcess, s3_backend: S3Backend
) -> None:
    # mitmproxy has no HTTP trailers: it used to crash on them and leave the connection hanging until its
    # idle timeout. Now it is a protocol error like a malformed chunk: connection closed, nothing stored.
    url = f"https://{HOST}/with-trailers"
    head = signed_head("PUT", url, [("Transfer-Encoding", "chunked")])
    sock, refused = connect(strict, f"{HOST}:443")
    assert refused is None, refused
    ctx = ssl.create_default_context(cafile=str(strict.ca_cert))
    with sock, ctx.wrap_socket(sock, server_hostname=HOST) as tls:
        tls.settimeout(5)  # well before the idle timeout
        tls.sendall(head + b"5\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while tls.recv(65536):
                pass
    assert s3_backend.object_sha256(BUCKET, "with-trailers") is None
    assert "has crashed" not in strict.logs()
    good_get(strict)
