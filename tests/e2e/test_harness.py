"""The harness itself: DNS answers only endpoint names, SeaweedFS serves the vpce names over verified TLS
and really checks the signed Host, the tap records and injects faults. If these fail, every other
end-to-end result is meaningless."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import uuid
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest
import yaml
from botocore.exceptions import ClientError

from .dnsserver import DnsServer
from .harness import (
    ADMIN,
    ENDPOINTS,
    SEAWEED_ONLY,
    USER,
    ProxyProcess,
    S3Backend,
    _RequestHeadObserver,
    base_proxy_config,
    deep_merge,
    direct_client,
    endpoint_sans,
    sha256,
)

pytestmark = pytest.mark.e2e

US, EU, CN = ENDPOINTS


def _resolver(server: DnsServer) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [server.host]
    r.port = server.port
    r.lifetime = 1.5
    r.cache = None
    return r


def _bucket() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


# --- DNS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (US.domain, "127.0.0.1"),
        (f"bucket.{US.domain}", "127.0.0.1"),
        (f"my-bucket.bucket.{US.domain}", "127.0.0.1"),
        (f"bucket.{US.zonal_domain('us-east-1a')}", "127.0.0.2"),
        (f"bucket.{US.zonal_domain('us-east-1b')}", "127.0.0.3"),
        (f"control.{EU.domain}", "127.0.0.1"),
        (f"bucket.{CN.domain}", "127.0.0.1"),
    ],
)
def test_dns_answers_endpoint_names(s3_backend: S3Backend, name: str, expected: str) -> None:
    answer = _resolver(s3_backend.dns).resolve(name, "A")
    assert [r.address for r in answer] == [expected]
    assert answer.rrset is not None and answer.rrset.ttl == s3_backend.dns.ttl


@pytest.mark.parametrize(
    "name",
    [
        "s3.amazonaws.com",
        "my-bucket.s3.us-east-1.amazonaws.com",
        "example.com",
        "vpce.amazonaws.com.evil.example",
        "bucket.vpce-ffffffff-0000.s3.us-east-1.vpce.amazonaws.com",  # an endpoint nobody configured
    ],
)
def test_dns_nxdomain_for_everything_else(s3_backend: S3Backend, name: str) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        _resolver(s3_backend.dns).resolve(name, "A")


def test_dns_tcp_and_aaaa_nodata() -> None:
    with DnsServer() as srv:
        q = dns.message.make_query(f"bucket.{US.domain}", "A")
        resp = dns.query.tcp(q, srv.host, port=srv.port, timeout=2)
        assert resp.rcode() == dns.rcode.NOERROR
        assert [r.address for r in resp.answer[0]] == ["127.0.0.1"]
        resp6 = dns.query.udp(
            dns.message.make_query(f"bucket.{US.domain}", "AAAA"), srv.host, port=srv.port, timeout=2
        )
        assert resp6.rcode() == dns.rcode.NOERROR and resp6.answer == []  # the name exists, no IPv6
        assert [(q.protocol, q.qtype) for q in srv.queries()] == [("tcp", "A"), ("udp", "AAAA")]


def test_dns_modes_and_query_log() -> None:
    with DnsServer({US.domain: ["127.0.0.9"]}) as srv:
        r = _resolver(srv)
        mark = srv.mark()
        assert [a.address for a in r.resolve(f"bucket.{US.domain}", "A")] == ["127.0.0.9"]
        srv.set_mode("nxdomain")
        with pytest.raises(dns.resolver.NXDOMAIN):
            r.resolve(f"bucket.{US.domain}", "A")
        srv.set_mode("servfail")
        with pytest.raises(dns.resolver.NoNameservers):
            r.resolve(f"bucket.{US.domain}", "A")
        srv.set_mode("drop")
        r.lifetime = 0.5
        with pytest.raises(dns.resolver.LifetimeTimeout):
            r.resolve(f"bucket.{US.domain}", "A")
        srv.set_mode("normal")
        srv.set_records(US.zonal_domain("us-east-1a"), ["127.0.0.7"])
        assert [a.address for a in r.resolve(f"bucket.{US.zonal_domain('us-east-1a')}", "A")] == ["127.0.0.7"]
        log = srv.queries(mark)
        assert log[0].rcode == "NOERROR" and log[0].answers == ("127.0.0.9",)
        assert {q.rcode for q in log} >= {"NXDOMAIN", "SERVFAIL", "DROPPED"}
        assert set(srv.names_asked(mark)) == {
            f"bucket.{US.domain}",
            f"bucket.{US.zonal_domain('us-east-1a')}",
        }
        with pytest.raises(ValueError):
            srv.set_mode("bogus")  # type: ignore[arg-type]


# --- certificates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "ok"),
    [
        (f"bucket.{US.domain}", True),
        (f"my-bucket.bucket.{US.domain}", True),
        (f"bucket.{US.zonal_domain('us-east-1a')}", True),
        (f"bucket.{EU.domain}", True),
        (f"bucket.{CN.domain}", True),
        (f"ap-123456789012.accesspoint.{US.domain}", True),
        ("s3.amazonaws.com", False),
        ("127.0.0.1", False),  # no IP SAN: a proxy must verify against the vpce name
        (f"a.b.bucket.{US.domain}", False),  # wildcards cover one label: dotted buckets need path style
    ],
)
def test_upstream_certificate_names(s3_backend: S3Backend, hostname: str, ok: bool) -> None:
    ctx = ssl.create_default_context(cafile=str(s3_backend.ca_cert))
    with socket.create_connection(("127.0.0.1", s3_backend.direct_port), timeout=5) as raw:
        if ok:
            with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname=hostname)


def test_endpoint_sans_cover_bucket_and_zonal_forms() -> None:
    assert endpoint_sans("D") == ["D", "*.D", "*.bucket.D", "*.accesspoint.D", "*.control.D"]


# --- SeaweedFS under the vpce names ------------------------------------------------------------------


@pytest.mark.parametrize("style", ["path", "virtual"])
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_seaweedfs_roundtrip_under_vpce_names(s3_backend: S3Backend, region: str, style: str) -> None:
    client = s3_backend.direct_client(region, addressing_style=style)
    sent: list[str] = []
    client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    bucket = _bucket()
    client.create_bucket(Bucket=bucket)
    data = os.urandom(300_000)
    key = "dir/a b+c%d~e/ünï"
    client.put_object(Bucket=bucket, Key=key, Body=data)
    got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert sha256(got) == sha256(data)
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    # What the other style and the other region's name see is the same object store.
    assert s3_backend.object_sha256(bucket, key) == sha256(data)
    ep = s3_backend.endpoint(region)
    host = f"{bucket}.bucket.{ep.domain}" if style == "virtual" else f"bucket.{ep.domain}"
    assert all(u.startswith(f"https://{host}:{s3_backend.direct_port}/") for u in sent), sent


def test_seaweedfs_serves_zonal_names(s3_backend: S3Backend) -> None:
    bucket = _bucket()
    zonal = s3_backend.direct_client("us-east-1", zone="us-east-1b", addressing_style="virtual")
    zonal.create_bucket(Bucket=bucket)
    zonal.put_object(Bucket=bucket, Key="k", Body=b"zonal")
    assert s3_backend.object_sha256(bucket, "k") == sha256(b"zonal")


def test_seaweedfs_identities(s3_backend: S3Backend) -> None:
    bucket = _bucket()
    s3_backend.direct_client().create_bucket(Bucket=bucket)
    for key in (USER, SEAWEED_ONLY):
        s3_backend.direct_client(key=key).put_object(Bucket=bucket, Key=key.name, Body=b"x")
    bad = type(ADMIN)(ADMIN.access_key_id, "not-the-secret", "bad")
    with pytest.raises(ClientError) as e:
        s3_backend.direct_client(key=bad).put_object(Bucket=bucket, Key="k", Body=b"x")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = type(ADMIN)("AKIANOBODYKNOWSTHIS0", "whatever", "unknown")
    with pytest.raises(ClientError) as e:
        s3_backend.direct_client(key=unknown).head_bucket(Bucket=bucket)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def _swap_host_client(s3_backend: S3Backend, signed_host: str | None, sent_extra: dict[str, str]) -> Any:
    """A direct client whose requests are signed for `signed_host` (None: the real one) and then sent to
    the real vpce host, with `sent_extra` headers added after signing (unsigned)."""
    client = s3_backend.direct_client()

    def before_sign(request: Any, **_: Any) -> None:
        if signed_host is not None:
            request.headers["Host"] = signed_host

    def before_send(request: Any, **_: Any) -> None:
        if signed_host is not None:
            del request.headers["Host"]  # urllib3 then sends the URL's host: bucket.D:port
        for k, v in sent_extra.items():
            request.headers[k] = v

    client.meta.events.register_first("before-sign.s3", before_sign)
    client.meta.events.register("before-send.s3", before_send)
    return client


def test_seaweedfs_checks_the_signed_host(s3_backend: S3Backend) -> None:
    bucket = _bucket()
    s3_backend.direct_client().create_bucket(Bucket=bucket)
    # Control: the same machinery without a host swap works, so the 403 below is about the Host.
    _swap_host_client(s3_backend, None, {}).put_object(Bucket=bucket, Key="ok", Body=b"x")
    # Signed for the public name, sent to the endpoint name: what an unrewritten re-sign would produce.
    bad = _swap_host_client(s3_backend, f"{bucket}.s3.amazonaws.com", {})
    with pytest.raises(ClientError) as e:
        bad.put_object(Bucket=bucket, Key="bad", Body=b"x")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert s3_backend.object_sha256(bucket, "bad") is None


def test_seaweedfs_accepts_host_without_port(s3_backend: S3Backend) -> None:
    """Signed and sent as `Host: bucket.D` (no port) to a non-443 port: accepted, so the proxy may send
    the vpce name with or without the port as long as it signs what it sends."""
    bucket = _bucket()
    s3_backend.direct_client().create_bucket(Bucket=bucket)
    host = f"bucket.{US.domain}"
    client = _swap_host_client(s3_backend, host, {})
    client.meta.events.register(
        "before-send.s3", lambda request, **_: request.headers.__setitem__("Host", host)
    )
    client.put_object(Bucket=bucket, Key="k", Body=b"no-port")
    assert s3_backend.object_sha256(bucket, "k") == sha256(b"no-port")


def test_known_gap_seaweedfs_trusts_x_forwarded_host(s3_backend: S3Backend) -> None:
    """Known SeaweedFS gap (real S3 does not do this): an unsigned X-Forwarded-Host replaces the Host when
    it checks the signature. So upstream-side tests must assert from the tap log that the proxy never
    adds X-Forwarded-* headers; SeaweedFS accepting a request proves nothing about its Host then."""
    bucket = _bucket()
    s3_backend.direct_client().create_bucket(Bucket=bucket)
    forged = f"{bucket}.s3.amazonaws.com"
    client = _swap_host_client(s3_backend, forged, {"X-Forwarded-Host": forged})
    client.put_object(Bucket=bucket, Key="k", Body=b"gap")
    assert s3_backend.object_sha256(bucket, "k") == sha256(b"gap")


def test_known_gap_seaweedfs_ignores_scope_region(s3_backend: S3Backend) -> None:
    """Real S3 rejects a credential scope naming the wrong region (AuthorizationHeaderMalformed);
    SeaweedFS does not check it. Region correction must be asserted from the tap log's Authorization."""
    bucket = _bucket()
    s3_backend.direct_client().create_bucket(Bucket=bucket)
    wrong_region = direct_client(US.domain, s3_backend.direct_port, s3_backend.ca_cert, region="eu-west-1")
    wrong_region.put_object(Bucket=bucket, Key="k", Body=b"region")
    assert s3_backend.object_sha256(bucket, "k") == sha256(b"region")


# --- the tap -----------------------------------------------------------------------------------------


def _tap_client(s3_backend: S3Backend, domain: str, address: str, **kw: Any) -> Any:
    return direct_client(
        domain,
        s3_backend.endpoint_port,
        s3_backend.ca_cert,
        address=address,
        retries={"total_max_attempts": 1},
        **kw,
    )


def test_tap_records_what_the_upstream_saw(s3_backend: S3Backend) -> None:
    bucket = _bucket()
    s3_backend.direct_client().create_bucket(Bucket=bucket)
    zonal = US.zonal_domain("us-east-1a")
    client = _tap_client(s3_backend, zonal, s3_backend.addresses[zonal], addressing_style="virtual")
    mark = s3_backend.mark()
    data = os.urandom(2_000_000)
    client.put_object(
        Bucket=bucket, Key="k", Body=data
    )  # streamed body, then another request on the connection
    assert sha256(client.get_object(Bucket=bucket, Key="k")["Body"].read()) == sha256(data)
    reqs = s3_backend.upstream_requests(mark)
    assert [(r.method, r.target) for r in reqs] == [("PUT", "/k"), ("GET", "/k")]
    for r in reqs:
        assert r.address == "127.0.0.2"
        assert r.sni == f"{bucket}.bucket.{zonal}"
        assert r.host == f"{bucket}.bucket.{zonal}:{s3_backend.endpoint_port}"
        auth = r.header("authorization") or ""
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ADMIN.access_key_id}/")
        assert r.forwarded_headers() == []
    # SeaweedFS closes the connection after an aws-chunked PUT, so the GET may come on a new connection; what
    # matters here is that the tap parsed both requests (the body did not confuse its request parsing).
    assert all(r.connection is not None for r in reqs)


@pytest.mark.parametrize("mode", ["refuse", "reset", "hang"])
def test_tap_fault_modes(s3_backend: S3Backend, mode: str) -> None:
    zonal = US.zonal_domain("us-east-1b")
    addr = s3_backend.addresses[zonal]
    ctx = ssl.create_default_context(cafile=str(s3_backend.ca_cert))
    s3_backend.tap.set_mode(mode, [addr])  # type: ignore[arg-type]
    try:
        if mode == "refuse":
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((addr, s3_backend.endpoint_port), timeout=2)
        else:
            # reset: ECONNRESET (on loopback often already from connect()) or EOF; hang: TLS timeout.
            with pytest.raises((ssl.SSLError, OSError)):
                with socket.create_connection((addr, s3_backend.endpoint_port), timeout=1) as raw:
                    ctx.wrap_socket(raw, server_hostname=f"bucket.{zonal}")
            if mode == "hang":
                assert s3_backend.tap.connections()[-1].address == addr  # TCP was accepted, then silence
        # Other addresses are unaffected.
        regional = _tap_client(s3_backend, US.domain, "127.0.0.1")
        regional.list_buckets()
    finally:
        s3_backend.tap.set_mode("up", [addr])
    _tap_client(s3_backend, zonal, addr).list_buckets()


def _feed_all_ways(data: bytes) -> list[list[tuple[str, str]]]:
    results = []
    for step in (len(data), 1, 7):
        heads: list[tuple[str, str]] = []

        def on_head(method: str, target: str, _h: object, heads: list[tuple[str, str]] = heads) -> None:
            heads.append((method, target))

        obs = _RequestHeadObserver(on_head)
        for i in range(0, len(data), step):
            obs.feed(data[i : i + step])
        assert not obs.broken
        results.append(heads)
    return results


def test_request_head_observer_framing() -> None:
    stream = (
        b"PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nGET /"
        b"PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nx-amz-checksum-crc32: AAAA\r\n\r\n"
        b"HEAD /c HTTP/1.1\r\nHost: h\r\n\r\n"
        b"PUT /d HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    )
    expected = [("PUT", "/a"), ("PUT", "/b"), ("HEAD", "/c"), ("PUT", "/d")]
    assert _feed_all_ways(stream) == [expected] * 3


# --- proxy config plumbing (the proxy itself is exercised by the other e2e tests) ---------------------


def test_proxy_config_and_client_env(s3_backend: S3Backend, tmp_path: Any) -> None:
    cfg = deep_merge(
        base_proxy_config(s3_backend, tmp_path, 3999),
        {"dns": {"timeout": 1}, "signing": None, "non_s3": "deny"},
    )
    proxy = ProxyProcess(cfg, tmp_path)
    assert proxy.url == "http://127.0.0.1:3999"
    assert proxy.ca_cert == tmp_path / "ca" / "mitmproxy-ca-cert.pem"
    assert cfg["endpoints"]["eu-west-1"] == {"dns_name": EU.domain, "port": s3_backend.endpoint_port}
    assert cfg["dns"] == {"nameservers": [s3_backend.dns.address], "timeout": 1}
    assert "signing" not in cfg and cfg["non_s3"] == "deny"
    assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg
    env = proxy.env(key=USER)
    assert env["HTTPS_PROXY"] == env["http_proxy"] == proxy.url and env["NO_PROXY"] == ""
    assert env["AWS_ACCESS_KEY_ID"] == USER.access_key_id and env["AWS_CA_BUNDLE"] == str(proxy.ca_cert)
    assert not {"AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"} & env.keys()
    assert env["AWS_CONFIG_FILE"] == "/dev/null" and env["AWS_EC2_METADATA_DISABLED"] == "true"
    # A subprocess client really sees only that.
    out = subprocess.run(
        ["env"], env=proxy.env(), capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert f"HTTPS_PROXY={proxy.url}" in out


def test_base_proxy_config_is_valid_for_s3proxy(s3_backend: S3Backend, tmp_path: Any) -> None:
    config = pytest.importorskip("s3proxy.config")
    cfg = base_proxy_config(s3_backend, tmp_path, 3999)
    parsed = config.parse_config(cfg, base_dir=tmp_path, environ={})
    assert {r: e.port for r, e in parsed.endpoints.items()} == dict.fromkeys(
        (ep.region for ep in ENDPOINTS), s3_backend.endpoint_port
    )
