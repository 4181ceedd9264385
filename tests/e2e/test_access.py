"""Access rules end to end: who may use the running proxy, and what a refused client sees.

Real `s3proxy run` processes with `access.allow_clients` / `access.users`, real clients (boto3 with a proxy
URL, curl with --proxy-user) and raw sockets where the exact bytes matter (a refused CONNECT must be
answered in plain HTTP before any TLS). Also: plain-HTTP S3 requests (absolute-form through HTTP_PROXY)
leave the proxy as HTTPS to the vpce name.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ProxyConnectionError

from e2e.harness import ADMIN, ProxyProcess, S3Backend, admin_proxy, ensure_bucket, sha256
from s3proxy.config import hash_password

USERNAME = "app1"
PASSWORD = "pa:ss w0rd!"  # a ':' in the password: Basic splits user and password at the first one
PASSWORD_HASH = hash_password(PASSWORD, salt=b"e2e-test-salt", iterations=1000)
AUTH_OVERRIDES = {
    "access": {
        "allow_clients": ["127.0.0.0/8"],
        "users": [{"username": USERNAME, "password_hash": PASSWORD_HASH}],
    }
}
BUCKET = "access-e2e"


@dataclass(frozen=True)
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names (last value wins)
    body: bytes


def raw_exchange(port: int, data: bytes, *, source: str | None = None, timeout: float = 10) -> RawResponse:
    """Send `data` to the proxy on one fresh TCP connection and read one HTTP response."""
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
    )
    with sock:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before a response head: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = [*lines[0].split(" ", 2), ""][:3]
        assert version.startswith("HTTP/1."), lines[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        body, extra = rest[:length], rest[length:]
        assert not extra, f"unexpected bytes after the response: {extra[:80]!r}"
        return RawResponse(int(status), reason, headers, body)


def s3_error(body: bytes) -> dict[str, str]:
    root = ET.fromstring(body)
    assert root.tag == "Error", body
    return {child.tag: child.text or "" for child in root}


def connect_bytes(host: str, extra_headers: str = "") -> bytes:
    return f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n{extra_headers}\r\n".encode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def wait_for_log(proxy: ProxyProcess, needle: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = proxy.logs()
        if needle in logs:
            return logs
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in proxy log:\n{logs[-3000:]}")
        time.sleep(0.05)


def presign_get(bucket: str, key: str, *, key_pair: Any = ADMIN) -> str:
    """A SigV4 presigned URL for the legacy global name, made offline exactly as an application would."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=key_pair.access_key_id,
        aws_secret_access_key=key_pair.secret_access_key,
        region_name="us-east-1",
    )
    client = session.client("s3", config=Config(signature_version="s3v4"))
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=600
    )
    return url


def curl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, env=env, timeout=30, check=False
    )


@pytest.fixture(scope="module")
def seeded(s3_backend: S3Backend) -> tuple[str, bytes]:
    """A bucket with one object, created directly in SeaweedFS (not through any proxy under test)."""
    direct = s3_backend.direct_client()
    ensure_bucket(direct, BUCKET)
    body = hashlib.sha256(b"seed").digest() * 5000
    direct.put_object(Bucket=BUCKET, Key="seed/obj 1+~.bin", Body=body)
    return "seed/obj 1+~.bin", body


# --- allow_clients -------------------------------------------------------------------------------------


def test_client_outside_allow_clients_is_refused_before_tls(proxy_factory, seeded):
    proxy = proxy_factory({"access": {"allow_clients": ["10.9.9.0/24"]}})
    host = f"{BUCKET}.s3.amazonaws.com"

    # A refused CONNECT is answered in plain HTTP at once: the client never gets to send a ClientHello,
    # and no certificate from the proxy's CA is ever shown to it.
    r = raw_exchange(proxy.port, connect_bytes(host))
    assert r.status == 403
    assert r.headers["content-type"] == "application/xml"
    err = s3_error(r.body)
    assert err["Code"] == "AccessDenied"
    assert "127.0.0.1" in err["Message"] and "allow_clients" in err["Message"]
    assert "proxy-authenticate" not in r.headers
    logs = wait_for_log(proxy, "refused client 127.0.0.1")
    assert "client-address" in logs

    # Plain-HTTP (absolute-form) requests are refused the same way.
    r = raw_exchange(proxy.port, f"GET http://{host}/k HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert r.status == 403 and s3_error(r.body)["Code"] == "AccessDenied"

    # A real client sees the refusal too, and the proxy keeps serving (and refusing) afterwards.
    s3 = proxy.boto3_client(region="us-east-1", config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ProxyConnectionError):
        s3.list_objects_v2(Bucket=BUCKET)
    assert proxy.alive()
    assert raw_exchange(proxy.port, connect_bytes(host)).status == 403


def test_allow_clients_admits_only_listed_addresses(proxy_factory, s3_backend, seeded):
    """127.0.0.2 is allowed, 127.0.0.1 is not: the rule is per client address, not all-or-nothing."""
    key, body = seeded
    proxy = proxy_factory({"access": {"allow_clients": ["10.9.9.0/24", "127.0.0.2/32"]}})
    url = presign_get(BUCKET, key)
    env = proxy.env()
    since = s3_backend.mark()
    ok = curl("--proxy", proxy.url, "--cacert", str(proxy.ca_cert), "--interface", "127.0.0.2", url, env=env)
    assert ok.returncode == 0, ok.stderr
    assert sha256(ok.stdout) == sha256(body)
    seen = s3_backend.upstream_requests(since)
    assert seen and all(r.host and r.host.endswith(".vpce.amazonaws.com") for r in seen)

    refused = curl(
        "--proxy",
        proxy.url,
        "--cacert",
        str(proxy.ca_cert),
        "--interface",
        "127.0.0.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
        url,
        env=env,
    )
    assert refused.returncode != 0
    assert refused.stdout.decode() == "403"
    wait_for_log(proxy, "refused client 127.0.0.1")


# --- proxy authentication ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_proxy(s3_backend, tmp_path_factory, seeded):
    from e2e.harness import running_proxy

    with running_proxy(s3_backend, tmp_path_factory.mktemp("authproxy"), AUTH_OVERRIDES) as p:
        yield p


@pytest.mark.parametrize(
    "proxy_authorization",
    [
        None,
        basic(USERNAME, "wrong"),
        basic("nobody", PASSWORD),
        basic(USERNAME, PASSWORD.split(":")[0]),  # only the part before the password's own ':'
        "Basic !!!not-base64",
        "Bearer abc",
        "Basic " + base64.b64encode(USERNAME.encode()).decode(),  # no ':' at all
    ],
    ids=[
        "missing",
        "wrong-password",
        "unknown-user",
        "truncated-password",
        "bad-base64",
        "bearer",
        "no-colon",
    ],
)
def test_proxy_auth_required(auth_proxy, proxy_authorization):
    host = f"{BUCKET}.s3.amazonaws.com"
    extra = f"Proxy-Authorization: {proxy_authorization}\r\n" if proxy_authorization else ""
    for request in (
        connect_bytes(host, extra),
        f"GET http://{host}/k HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode(),
    ):
        r = raw_exchange(auth_proxy.port, request)
        assert r.status == 407, r
        assert r.headers["proxy-authenticate"].lower().startswith("basic realm=")
        err = s3_error(r.body)
        assert err["Code"] == "ProxyAuthenticationRequired"
        assert USERNAME not in err["Message"]  # a refused client never learns which users exist
    reason = "proxy-auth-missing" if proxy_authorization is None else "proxy-auth-failed"
    wait_for_log(auth_proxy, reason)
    assert auth_proxy.alive()


def test_proxy_auth_refusal_comes_before_tls(auth_proxy):
    """Without credentials the CONNECT gets 407 in clear text; a TLS ClientHello sent after it is not
    answered with a certificate."""
    host = f"{BUCKET}.s3.amazonaws.com"
    sock = socket.create_connection(("127.0.0.1", auth_proxy.port), timeout=5)
    with sock:
        sock.sendall(connect_bytes(host))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk, "closed without an answer"
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 407"), buf[:100]
        ctx = ssl.create_default_context(cafile=str(auth_proxy.ca_cert))
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                tls.recv(1)


def test_proxy_auth_boto3_with_credentials_in_proxy_url(auth_proxy, s3_backend, seeded):
    key, body = seeded
    user_url = (
        f"http://{USERNAME}:{PASSWORD.replace(':', '%3A').replace(' ', '%20')}@127.0.0.1:{auth_proxy.port}"
    )
    s3 = auth_proxy.boto3_client(
        region="us-east-1", config=Config(proxies={"https": user_url, "http": user_url})
    )
    since = s3_backend.mark()
    got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert sha256(got) == sha256(body)
    new = b"written through an authenticated proxy" * 1000
    s3.put_object(Bucket=BUCKET, Key="via-auth/put.bin", Body=new)
    assert s3_backend.object_sha256(BUCKET, "via-auth/put.bin") == sha256(new)
    seen = s3_backend.upstream_requests(since)
    assert len(seen) >= 2
    for r in seen:
        assert r.header("proxy-authorization") is None  # the proxy credentials never travel upstream
        assert r.sni and r.sni.endswith(".vpce.amazonaws.com")

    # Without credentials the same client is refused with 407.
    anon = auth_proxy.boto3_client(region="us-east-1", config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ProxyConnectionError):
        anon.get_object(Bucket=BUCKET, Key=key)


def test_proxy_auth_curl_proxy_user(auth_proxy, s3_backend, seeded):
    key, body = seeded
    url = presign_get(BUCKET, key)
    env = auth_proxy.env()
    common = ["--proxy", auth_proxy.url, "--cacert", str(auth_proxy.ca_cert)]
    ok = curl(*common, "--proxy-user", f"{USERNAME}:{PASSWORD}", url, env=env)
    assert ok.returncode == 0, ok.stderr
    assert sha256(ok.stdout) == sha256(body)

    bad = curl(
        *common, "--proxy-user", f"{USERNAME}:nope", "-o", "/dev/null", "-w", "%{http_connect}", url, env=env
    )
    assert bad.returncode != 0 and bad.stdout.decode() == "407"
    none = curl(*common, "-o", "/dev/null", "-w", "%{http_connect}", url, env=env)
    assert none.returncode != 0 and none.stdout.decode() == "407"

    # Plain HTTP through the proxy (absolute-form) with credentials works as well.
    http_url = url.replace("https://", "http://", 1)
    since = s3_backend.mark()
    plain = curl("--proxy", auth_proxy.url, "--proxy-user", f"{USERNAME}:{PASSWORD}", http_url, env=env)
    assert plain.returncode == 0, plain.stderr
    assert sha256(plain.stdout) == sha256(body)
    seen = s3_backend.upstream_requests(since)
    assert len(seen) == 1
    # In absolute-form the credentials sit in the request itself: they must not travel upstream.
    assert seen[0].header("proxy-authorization") is None
    assert seen[0].sni and seen[0].sni.endswith(".vpce.amazonaws.com")


# --- plain HTTP is upgraded to HTTPS upstream ----------------------------------------------------------


def test_plain_http_absolute_form_is_upgraded_to_https(proxy, s3_backend, seeded):
    key, body = seeded
    url = presign_get(BUCKET, key).replace("https://", "http://", 1)
    assert url.startswith(f"http://{BUCKET}.s3.amazonaws.com/")
    env = proxy.env()
    env.pop("HTTPS_PROXY")
    env.pop("https_proxy")  # only http_proxy: curl sends `GET http://BUCKET.s3.amazonaws.com/... HTTP/1.1`
    before = len(s3_backend.tap.connections())
    since = s3_backend.mark()
    r = curl("-o", "-", "-w", "", url, env=env)
    assert r.returncode == 0, r.stderr
    assert sha256(r.stdout) == sha256(body)
    seen = s3_backend.upstream_requests(since)
    assert [r.method for r in seen] == ["GET"]
    ep = s3_backend.endpoint("us-east-1")
    assert seen[0].host == ep.bucket_host
    assert seen[0].sni == ep.bucket_host  # TLS to the tap, with the vpce name as SNI
    assert seen[0].forwarded_headers() == []
    conns = s3_backend.tap.connections()[before:]
    assert conns and all(c.ok and c.sni == ep.bucket_host for c in conns)


def test_plain_http_boto3_use_ssl_false(proxy, s3_backend, seeded):
    """boto3 with use_ssl=False sends every call as plain HTTP to the proxy; S3 still only sees HTTPS."""
    s3 = proxy.boto3_client(region="us-east-1", use_ssl=False)
    body = b"plain http from the client, https upstream" * 2000
    since = s3_backend.mark()
    s3.put_object(Bucket=BUCKET, Key="plain/http obj+~", Body=body)
    got = s3.get_object(Bucket=BUCKET, Key="plain/http obj+~")["Body"].read()
    assert sha256(got) == sha256(body)
    assert s3_backend.object_sha256(BUCKET, "plain/http obj+~") == sha256(body)
    seen = s3_backend.upstream_requests(since)
    assert [r.method for r in seen] == ["PUT", "GET"]
    for r in seen:
        assert r.sni and r.sni.endswith(".vpce.amazonaws.com")
        assert r.host and r.host.endswith(".vpce.amazonaws.com")
        assert r.forwarded_headers() == []


def test_proxy_auth_cost_is_paid_once_per_credential(proxy_factory):
    """Checking a password hash at the recommended strength (600k PBKDF2 rounds, ~0.4 s) on every new
    connection would stall the proxy's event loop for every client connection; a verified credential is
    remembered, so only the first connection pays. s3proxy_proxy_auth_password_checks_total counts the
    checks."""
    strong = hash_password(PASSWORD, salt=b"strong-salt")  # the default (production) iteration count
    proxy, admin = admin_proxy(
        proxy_factory,
        {
            "access": {
                "allow_clients": ["127.0.0.0/8"],
                "users": [{"username": USERNAME, "password_hash": strong}],
            }
        },
    )
    request = connect_bytes(
        f"{BUCKET}.s3.amazonaws.com", f"Proxy-Authorization: {basic(USERNAME, PASSWORD)}\r\n"
    )
    checks = "s3proxy_proxy_auth_password_checks_total"
    assert admin.value(checks) == 0
    for _ in range(5):
        r = raw_exchange(proxy.port, request)  # a new TCP connection each time
        assert r.status == 200, r
    assert admin.value(checks) == 1
    # A wrong password is still checked (and refused) every time.
    wrong = connect_bytes(f"{BUCKET}.s3.amazonaws.com", f"Proxy-Authorization: {basic(USERNAME, 'x')}\r\n")
    for _ in range(2):
        assert raw_exchange(proxy.port, wrong).status == 407
    assert admin.value(checks) == 3
