"""Helpers for the auth-form and refusal end-to-end tests: a raw HTTP client that talks through the proxy
(so a test controls every header and byte and sees the proxy's raw answer), and SDK-style signing.

Strategy: signing is done by botocore's own signers (S3SigV4Auth, HmacV1QueryAuth, presigners) wherever
botocore can produce the form, so the product is checked against an independent implementation; only the
aws-chunked body, which botocore never sends, is framed with `s3proxy.chunked.encode_signed_chunks` (its
output is checked by SeaweedFS, which verifies each chunk signature itself).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import re
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

from .harness import AccessKey, ProxyProcess, S3Backend, UpstreamRequest

SEAWEED_ROOT = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        n = name.lower()
        return next((v for k, v in self.headers if k.lower() == n), None)

    def error(self) -> dict[str, str]:
        """The S3 error document as {Code, Message, Resource, RequestId, ...}; fails if it is not one."""
        root = ET.fromstring(self.body)
        assert root.tag == "Error", self.body[:500]
        return {child.tag: (child.text or "") for child in root}


def client_context(ca: Path | str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def send(
    proxy: ProxyProcess,
    method: str,
    url: str,
    headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
    body: bytes | Iterable[bytes] | None = None,
    *,
    timeout: float = 30,
    ca: Path | str | None = None,
) -> Reply:
    """One request through the proxy exactly as given (https: CONNECT + TLS; http: absolute-form).

    Only the headers given are sent (no Host, Accept-Encoding or Content-Length is added), so tests
    control what gets signed. An iterable body is sent as it comes (the caller sets the framing headers).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            proxy.host, proxy.port, timeout=timeout, context=client_context(ca or proxy.ca_cert)
        )
        conn.set_tunnel(host, parts.port or 443)
    else:
        conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
        target = f"http://{parts.netloc}{target}"
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in items:
            conn.putheader(k, v)
        conn.endheaders()
        if body is not None:
            for piece in [body] if isinstance(body, bytes) else body:
                conn.send(piece)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, resp.reason, tuple(resp.getheaders()), data)
    finally:
        conn.close()


# --- signing like an SDK -----------------------------------------------------------------------------


def _credentials(key: AccessKey, token: str | None = None) -> Any:
    from botocore.credentials import Credentials

    return Credentials(key.access_key_id, key.secret_access_key, token)


@contextlib.contextmanager
def frozen_clock(when: dt.datetime) -> Iterator[None]:
    """botocore's signers read the time through `get_current_datetime`: pin it (for expired URLs)."""
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        yield


def sigv4_sign(
    key: AccessKey,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes = b"",
    *,
    region: str = "us-east-1",
    payload: str | None = None,
    token: str | None = None,
) -> list[tuple[str, str]]:
    """Headers of `url` signed by botocore's S3SigV4Auth (Host included). `payload` sets
    x-amz-content-sha256 (a marker like UNSIGNED-PAYLOAD); None = SHA-256 of `body`."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    content_sha256 = payload or hashlib.sha256(body).hexdigest()

    class Signer(S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: Any) -> str:
            return content_sha256

    req = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    req.context["client_config"] = None
    Signer(_credentials(key, token), "s3", region).add_auth(req)
    netloc = urlsplit(url).netloc
    return [("Host", netloc), *((k, v) for k, v in req.headers.items())]


def seed_signature(headers: Iterable[tuple[str, str]]) -> tuple[str, str, str]:
    """(signature, x-amz-date, scope) of a signed header set."""
    h = {k.lower(): v for k, v in headers}
    m = re.search(r"Credential=[^/]+/([^,]+), .*Signature=([0-9a-f]{64})", h["authorization"])
    assert m, h["authorization"]
    return m.group(2), h["x-amz-date"], m.group(1)


def boto_presign(
    key: AccessKey,
    method: str,
    bucket: str,
    obj: str,
    *,
    signature_version: str = "s3v4",
    expires: int = 600,
    region: str | None = None,
    token: str | None = None,
    addressing_style: str | None = None,
    when: dt.datetime | None = None,
) -> str:
    """A presigned URL for the default S3 name, made by botocore exactly as an application would."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret_access_key,
        aws_session_token=token,
        region_name=region,
    )
    s3cfg: dict[str, Any] = {}
    if addressing_style:
        s3cfg["addressing_style"] = addressing_style
    client = session.client("s3", config=Config(signature_version=signature_version, s3=s3cfg or None))
    op = {"GET": "get_object", "PUT": "put_object", "HEAD": "head_object"}[method]
    with frozen_clock(when) if when else contextlib.nullcontext():
        url: str = client.generate_presigned_url(op, Params={"Bucket": bucket, "Key": obj}, ExpiresIn=expires)
    return url


# --- curl ---------------------------------------------------------------------------------------------


def curl_args(proxy: ProxyProcess) -> list[str]:
    return ["curl", "-sS", "--proxy", proxy.url, "--cacert", str(proxy.ca_cert), "--max-time", "30"]


# --- upstream assertions -------------------------------------------------------------------------------


def vpce_hosts(backend: S3Backend) -> tuple[str, ...]:
    return tuple(d for ep in backend.endpoints for d in ep.domains)


def assert_clean_upstream(backend: S3Backend, reqs: Iterable[UpstreamRequest]) -> None:
    """Every request the tap saw named an interface endpoint in Host and SNI and carried no X-Forwarded-*."""
    domains = vpce_hosts(backend)
    for r in reqs:
        host = (r.host or "").rsplit(":", 1)[0] if (r.host or "").count(":") == 1 else (r.host or "")
        # bucket., BUCKET.bucket., NAME.accesspoint., ACCOUNT.control. -- always under an endpoint domain.
        assert any(host.endswith(f".{d}") for d in domains), r
        # SNI may be the endpoint-level name of a pooled connection, but always an endpoint name.
        assert r.sni is not None and any(r.sni.endswith(f".{d}") for d in domains), r
        assert r.forwarded_headers() == [], r


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- aws-chunked with signed chunks (what the Java SDK / AWS CLI v1 style clients send) ------------------


def crc32_b64(data: bytes) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def signed_chunked_request(
    key: AccessKey,
    url: str,
    payload: bytes,
    *,
    chunk_size: int = 64 * 1024,
    trailer: bool = False,
    tamper_chunk: int | None = None,
    tamper_trailer: bool = False,
    region: str = "us-east-1",
    token: str | None = None,
) -> tuple[list[tuple[str, str]], list[bytes]]:
    """(headers, body pieces) of a PUT with `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`, signed with
    `key` for `url`'s host. `tamper_chunk`: flip one data byte of that chunk after it was signed;
    `tamper_trailer`: change the trailing checksum after the trailer was signed."""
    from s3proxy.chunked import encode_signed_chunks
    from s3proxy.sigv4 import signing_key

    pieces = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)]
    trailers = [("x-amz-checksum-crc32", crc32_b64(payload))] if trailer else None
    # Signatures have a fixed length, so a dummy encoding gives the Content-Length to sign.
    dummy = encode_signed_chunks(
        pieces,
        signing_key=b"k",
        amz_date="20000101T000000Z",
        scope="s",
        seed_signature="0" * 64,
        trailers=trailers,
    )
    length = sum(len(p) for p in dummy)
    marker = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    extra = {
        "Content-Encoding": "aws-chunked",
        "Content-Length": str(length),
        "x-amz-decoded-content-length": str(len(payload)),
    }
    if trailer:
        extra["x-amz-trailer"] = "x-amz-checksum-crc32"
    headers = sigv4_sign(key, "PUT", url, extra, region=region, payload=marker, token=token)
    sig, amz_date, scope = seed_signature(headers)
    date = scope.split("/")[0]
    body = list(
        encode_signed_chunks(
            pieces,
            signing_key=signing_key(key.secret_access_key, date, region, "s3"),
            amz_date=amz_date,
            scope=scope,
            seed_signature=sig,
            trailers=trailers,
        )
    )
    if tamper_chunk is not None:
        chunk = bytearray(body[tamper_chunk])
        start = chunk.index(b"\r\n") + 2  # first data byte
        chunk[start] ^= 0x01
        body[tamper_chunk] = bytes(chunk)
    if tamper_trailer:
        # Another checksum value of the same length, under the trailer signature made for the real one.
        real = crc32_b64(payload).encode()
        forged = crc32_b64(payload + b"!").encode()
        assert trailer and len(real) == len(forged) and real in body[-1]
        body[-1] = body[-1].replace(real, forged)
    assert sum(len(p) for p in body) == length
    return headers, body


# --- a non-S3 HTTPS site on loopback, with its own CA -------------------------------------------------------


class TinyTlsSite:
    """An HTTPS server on 127.0.0.1 with its own throwaway CA; answers every request with `body` and counts
    TLS handshakes (so a test can tell whether a client ever reached it)."""

    def __init__(self, workdir: Path, body: bytes = b"not s3: hello from the tiny site\n") -> None:
        import threading

        import trustme

        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="tiny site CA")
        leaf = self.ca.issue_cert("localhost", "example.test", "127.0.0.1")
        self.ca_path = workdir / "tiny-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.cert_der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(self.ctx)
        self.body = body
        self.handshakes = 0
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)  # closing a socket does not wake a blocked accept(): poll the flag
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                raw.settimeout(5)
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    self.handshakes += 1
                    data = b""
                    while b"\r\n\r\n" not in data:
                        piece = tls.recv(4096)
                        if not piece:
                            break
                        data += piece
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                        + b"Content-Length: %d\r\n\r\n" % len(self.body)
                        + self.body
                    )
            except (OSError, ssl.SSLError):
                pass
            finally:
                raw.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self._thread.join(timeout=5)
