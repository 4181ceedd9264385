"""Operating the real proxy: /metrics after real traffic, /healthz and /readyz (flipping with DNS),
/proxy.pac, the admin port out of the proxy's reach, the access log (JSON and text, no secret), and reload
(file change and SIGHUP) with a download in flight.

Every test starts its own `s3proxy run` with `admin.listen` on a free port and talks to it like an operator
would: plain HTTP to the admin port, boto3/curl through the proxy, SIGHUP to the process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

from e2e.harness import (
    ADMIN,
    SEAWEED_ONLY,
    USER,
    ProxyProcess,
    S3Backend,
    admin_proxy,
    ensure_bucket,
    write_config,
)

BUCKET = "e2e-ops"
WRONG = dataclasses.replace(ADMIN, secret_access_key="Wrong" + ADMIN.secret_access_key[5:])
NO_RETRY = Config(retries={"total_max_attempts": 1})
ACCESS_FIELDS = (
    "time",
    "client_address",
    "method",
    "family",
    "operation",
    "bucket",
    "key",
    "region",
    "endpoint",
    "endpoint_address",
    "action",
    "signing",
    "status",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "request_id",
)


# --- helpers --------------------------------------------------------------------------------------------


def access_lines(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proxy.logs().splitlines() if line.startswith("{")]


def wait_for_log(proxy: ProxyProcess, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (logs := proxy.logs()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in proxy log:\n{logs[-3000:]}")
        time.sleep(0.05)
    return logs


def raw_proxy_request(proxy: ProxyProcess, data: bytes) -> str:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out.decode("latin-1")


@pytest.fixture(autouse=True)
def _bucket(s3_backend: S3Backend) -> None:
    ensure_bucket(s3_backend.direct_client(), BUCKET)


# --- metrics ----------------------------------------------------------------------------------------------


def test_metrics_count_real_traffic(proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy, admin = admin_proxy(proxy_factory)
    s3 = proxy.boto3_client(region="eu-west-1", config=NO_RETRY)
    ok = {"family": "virtual-hosted", "region": "eu-west-1", "status": "200", "signing": "resigned"}
    before = admin.metrics()
    assert admin.value("s3proxy_requests_total", **ok) == 0
    sizes = {"m/a": 1000, "m/b": 2000, "m/c": 3000}
    for key, size in sizes.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size))
    after_puts = admin.value("s3proxy_request_bytes_total", family="virtual-hosted", region="eu-west-1")
    # What the client sent: at least the bodies (boto3 frames them aws-chunked with a checksum trailer).
    assert sum(sizes.values()) <= after_puts < sum(sizes.values()) + 1024
    out_before = admin.value("s3proxy_response_bytes_total", family="virtual-hosted", region="eu-west-1")
    for key, size in sizes.items():
        assert len(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == size
    out_after = admin.value("s3proxy_response_bytes_total", family="virtual-hosted", region="eu-west-1")
    assert out_after - out_before == sum(sizes.values())
    assert admin.value("s3proxy_requests_total", **ok) == 6
    assert (
        admin.value("s3proxy_request_duration_seconds_count", family="virtual-hosted", region="eu-west-1")
        == 6
    )

    # Refusals, each counted once by reason and as a request with the status the client got.
    bad = proxy.boto3_client(region="eu-west-1", key=WRONG, config=NO_RETRY)
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        bad.get_object(Bucket=BUCKET, Key="m/a")
    unknown = proxy.boto3_client(region="eu-west-1", key=SEAWEED_ONLY, config=NO_RETRY)
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        unknown.get_object(Bucket=BUCKET, Key="m/a")
    fips = proxy.boto3_client(region="us-east-1", config=NO_RETRY.merge(Config(use_fips_endpoint=True)))
    with pytest.raises(ClientError):
        fips.get_object(Bucket=BUCKET, Key="m/a")
    assert admin.value("s3proxy_refusals_total", reason="signing") == 2
    assert admin.value("s3proxy_refusals_total", reason="unsupported-fips") == 1
    assert admin.value("s3proxy_requests_total", region="eu-west-1", status="403", signing="refused") == 2
    assert admin.value("s3proxy_requests_total", family="fips") == 1

    m = admin.metrics()
    assert m[("s3proxy_config_reload_total", frozenset({("result", "success")}))] == 1
    assert m[("s3proxy_config_reload_total", frozenset({("result", "failure")}))] == 0
    assert m[("s3proxy_requests_in_flight", frozenset())] == 0
    assert m[("s3proxy_dns_lookups_total", frozenset())] >= 1
    assert m[("s3proxy_upstream_probes_total", frozenset())] >= 1
    assert m[("s3proxy_upstream_connect_errors_total", frozenset())] == 0
    assert m[("s3proxy_ca_expiry_timestamp_seconds", frozenset())] > time.time() + 86400
    assert before[("s3proxy_ca_expiry_timestamp_seconds", frozenset())] > 0
    assert ("s3proxy_build_info", frozenset({("version", "0.1.0"), ("python", m_python(m))})) in m
    assert admin.get("/healthz")[:1] == (200,)


def m_python(m: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> str:
    return next(dict(ls)["python"] for (n, ls) in m if n == "s3proxy_build_info")


def test_readyz_follows_dns(proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend) -> None:
    # Short caches so the outage shows within a second or two (the test DNS server answers with TTL 1).
    proxy, admin = admin_proxy(
        proxy_factory, {"dns": {"cache_max_ttl": 0.5, "negative_ttl": 0.2, "timeout": 0.3}}
    )
    status, _, body = admin.get("/readyz")
    assert (status, body.strip()) == (200, "ready: 3 endpoint(s) resolvable")
    assert admin.value("s3proxy_ready") == 1
    dns = s3_backend.dns
    try:
        dns.set_mode("servfail")
        deadline = time.monotonic() + 15
        while (r := admin.get("/readyz"))[0] != 503:
            assert time.monotonic() < deadline, f"/readyz stayed {r}"
            time.sleep(0.2)
        assert "not ready" in r[2] and "us-east-1" in r[2] and "eu-west-1" in r[2]
        assert admin.value("s3proxy_ready") == 0
        assert admin.value("s3proxy_dns_failures_total") >= 1
        assert admin.get("/healthz")[0] == 200  # alive all the same: restarting would not help
    finally:
        dns.set_mode("normal")
    deadline = time.monotonic() + 15
    while (r := admin.get("/readyz"))[0] != 200:
        assert time.monotonic() < deadline, f"/readyz stayed {r}"
        time.sleep(0.2)
    assert admin.value("s3proxy_ready") == 1
    s3 = proxy.boto3_client(region="us-east-1")
    s3.put_object(Bucket=BUCKET, Key="ready", Body=b"back")


# --- PAC and the admin port -----------------------------------------------------------------------------

PAC_HOSTS = {
    "my-bucket.s3.amazonaws.com": True,
    "my-bucket.s3.eu-west-1.amazonaws.com": True,
    "s3.us-east-1.amazonaws.com": True,
    "my-bucket.s3.cn-north-1.amazonaws.com.cn": True,
    "MY-BUCKET.S3.AMAZONAWS.COM.": True,
    "example.com": False,
    "sts.amazonaws.com": False,
    "ec2.us-east-1.amazonaws.com": False,
    "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com": False,
    "s3.amazonaws.com.evil.example": False,
}


def run_pac(pac_text: str, hosts: list[str]) -> list[str]:
    """FindProxyForURL for each host, evaluated by node (the PAC helpers it uses defined as browsers do)."""
    script = (
        "function dnsDomainIs(h, d) {\n"
        "  return h.length >= d.length && h.substring(h.length - d.length) === d;\n"
        "}\n"
        + pac_text
        + f"\nfor (const h of {json.dumps(hosts)}) console.log(FindProxyForURL('https://' + h + '/', h));\n"
    )
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.splitlines()


def test_proxy_pac(proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy, admin = admin_proxy(proxy_factory)
    status, ctype, text = admin.get("/proxy.pac")
    assert status == 200 and ctype == "application/x-ns-proxy-autoconfig"
    assert f'"PROXY 127.0.0.1:{proxy.port}"' in text
    try:
        answers = run_pac(text, list(PAC_HOSTS))
    except FileNotFoundError:
        pytest.skip("node is not installed")
    expected = [f"PROXY 127.0.0.1:{proxy.port}" if via else "DIRECT" for via in PAC_HOSTS.values()]
    assert dict(zip(PAC_HOSTS, answers, strict=True)) == dict(zip(PAC_HOSTS, expected, strict=True))


def test_pac_proxy_setting_and_partitions(proxy_factory: Callable[..., ProxyProcess]) -> None:
    # Only the aws partition configured: China names go DIRECT; pac_proxy names the proxy for clients.
    proxy, admin = admin_proxy(proxy_factory, {"endpoints": {"cn-north-1": None}})
    write_config(
        proxy, {**proxy.config, "admin": {**proxy.config["admin"], "pac_proxy": "gw.example.net:3128"}}
    )
    admin.wait_for("s3proxy_config_reload_total", 2, result="success")
    status, _, text = admin.get("/proxy.pac")
    assert status == 200 and '"PROXY gw.example.net:3128"' in text
    try:
        answers = run_pac(text, ["b.s3.cn-north-1.amazonaws.com.cn", "b.s3.us-east-1.amazonaws.com"])
    except FileNotFoundError:
        pytest.skip("node is not installed")
    assert answers == ["DIRECT", "PROXY gw.example.net:3128"]


def test_admin_port_not_reachable_through_proxy(proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy, admin = admin_proxy(proxy_factory)
    p = admin.port
    for host in ("127.0.0.1", "localhost", "127.0.0.2", "[::1]", "0.0.0.0"):
        reply = raw_proxy_request(proxy, f"CONNECT {host}:{p} HTTP/1.1\r\nHost: {host}:{p}\r\n\r\n".encode())
        assert reply.startswith("HTTP/1.1 403"), (host, reply)
    reply = raw_proxy_request(
        proxy, f"GET http://127.0.0.1:{p}/metrics HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n".encode()
    )
    assert reply.startswith("HTTP/1.1 403") and "s3proxy_" not in reply
    env = proxy.env()
    for url in (f"http://127.0.0.1:{p}/metrics", f"http://localhost:{p}/readyz", f"https://127.0.0.1:{p}/"):
        r = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.stdout in ("403", "000"), (url, r.stdout, r.stderr)
    # Refused, logged and counted as refusals; the admin listener itself still answers directly.
    assert admin.value("s3proxy_refusals_total") >= 8
    assert admin.get("/healthz")[0] == 200
    assert not any(
        line.get("status") == 200 and line.get("host") in ("127.0.0.1", "localhost")
        for line in access_lines(proxy)
    )


# --- access log -----------------------------------------------------------------------------------------

TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token//+=" + "x" * 40


def test_access_log_json_fields_and_no_secrets(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    # log.level error: mitmproxy's terminal log is quiet, the access log still writes one line per request.
    proxy = proxy_factory({"log": {"level": "error"}})
    s3 = proxy.boto3_client(region="eu-west-1")
    body = os.urandom(4321)
    s3.put_object(Bucket=BUCKET, Key="log/a b+c.bin", Body=body)
    assert s3.get_object(Bucket=BUCKET, Key="log/a b+c.bin")["Body"].read() == body
    bad = proxy.boto3_client(region="eu-west-1", key=WRONG, config=NO_RETRY)
    with pytest.raises(ClientError):
        bad.head_object(Bucket=BUCKET, Key="log/a b+c.bin")
    # A session token in the header (keyring mode passes it through; the backend may refuse it).
    session = boto3.session.Session(
        aws_access_key_id=USER.access_key_id,
        aws_secret_access_key=USER.secret_access_key,
        aws_session_token=TOKEN,
        region_name="us-east-1",
    )
    v4 = Config(signature_version="s3v4")
    tok = session.client(
        "s3", verify=str(proxy.ca_cert), config=NO_RETRY.merge(Config(proxies={"https": proxy.url})).merge(v4)
    )
    with pytest.raises(ClientError):
        tok.get_object(Bucket=BUCKET, Key="log/a b+c.bin")
    # Presigned URLs carry the signature and the token in the query.
    urls = [
        proxy.boto3_client(region="eu-west-1", config=v4).generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "log/a b+c.bin"}, ExpiresIn=300
        ),
        tok.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "log/a b+c.bin"}),
    ]
    codes = [
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            env=proxy.env(),
            capture_output=True,
            text=True,
        ).stdout
        for url in urls
    ]
    assert codes[0] == "200"
    signatures = [m for url in urls for m in re.findall(r"X-Amz-Signature=([0-9a-f]{64})", url)]
    assert len(signatures) == 2

    deadline = time.monotonic() + 5
    while len(lines := access_lines(proxy)) < 6:
        assert time.monotonic() < deadline, proxy.logs()[-3000:]
        time.sleep(0.05)
    for line in lines:
        assert set(ACCESS_FIELDS) <= set(line), line
    put = next(x for x in lines if x["operation"] == "PutObject")
    get = next(x for x in lines if x["operation"] == "GetObject" and x["status"] == 200 and x["bytes_out"])
    ep = s3_backend.endpoint("eu-west-1")
    assert get["method"] == "GET" and get["family"] == "virtual-hosted" and get["region"] == "eu-west-1"
    assert (get["bucket"], get["key"]) == (BUCKET, "log/a%20b%2Bc.bin")
    assert (
        get["endpoint"] == ep.bucket_host and get["endpoint_id"] == ep.domain.split(".")[0].rsplit("-", 1)[0]
    )
    assert get["endpoint_address"] == f"127.0.0.1:{s3_backend.endpoint_port}"
    assert (get["action"], get["signing"], get["upstream_status"]) == ("forward", "resigned", 200)
    assert get["bytes_out"] == len(body) and get["bytes_in"] == 0
    assert put["bytes_in"] >= len(body) and put["upstream_status"] == 200
    assert get["request_id"] and get["client_address"] == "127.0.0.1" and get["duration_ms"] > 0
    refused = next(x for x in lines if x["signing"] == "refused")
    assert (refused["status"], refused["error_code"], refused["refusal"]) == (
        403,
        "SignatureDoesNotMatch",
        "signing",
    )
    assert refused["upstream_status"] is None and refused["endpoint_address"] is None
    assert sum(1 for x in lines if x["operation"] == "GetObject" and x["status"] == 200) >= 2

    log_text = proxy.logs()
    for secret in (
        ADMIN.secret_access_key,
        USER.secret_access_key,
        WRONG.secret_access_key,
        TOKEN,
        *signatures,
    ):
        assert secret not in log_text
    for needle in (
        "Signature=",
        "X-Amz-Signature",
        "x-amz-signature",
        "X-Amz-Security-Token",
        "X-Amz-Credential",
    ):
        assert needle not in log_text
    # log.level error: nothing but the access lines and the start banner.
    others = [x for x in log_text.splitlines() if x and not x.startswith("{") and "listening on" not in x]
    assert others == []


def test_access_log_text_with_redacted_keys(proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy = proxy_factory({"log": {"format": "text", "redact_keys": True}})
    s3 = proxy.boto3_client(region="eu-west-1")
    s3.put_object(Bucket=BUCKET, Key="payroll/2025 salaries.csv", Body=b"confidential")
    s3.get_object(Bucket=BUCKET, Key="payroll/2025 salaries.csv")["Body"].read()
    key_hash = "sha256:" + hashlib.sha256(b"payroll/2025%20salaries.csv").hexdigest()[:16]
    logs = wait_for_log(proxy, "op=GetObject")
    lines = [x for x in logs.splitlines() if x.startswith("time=")]
    assert len(lines) == 2 and all(f"key={key_hash}" in x for x in lines), lines
    assert "salaries" not in logs and "payroll" not in logs
    assert all(f"bucket={BUCKET}" in x and "status=200" in x and "region=eu-west-1" in x for x in lines)


# --- reload -------------------------------------------------------------------------------------------


class SlowDownload(threading.Thread):
    """Reads a GetObject body in 256 KiB pieces, pausing whenever `gate` is clear."""

    def __init__(self, body: Any) -> None:
        super().__init__(daemon=True)
        self.body = body
        self.gate = threading.Event()
        self.started_reading = threading.Event()
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while chunk := self.body.read(256 * 1024):
                self.digest.update(chunk)
                self.size += len(chunk)
                self.started_reading.set()
                if self.size >= 4 * 1024 * 1024:
                    self.gate.wait()
        except BaseException as e:  # reported to the test
            self.error = e


def test_reload_keeps_inflight_download_and_applies_new_config(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy, admin = admin_proxy(proxy_factory, {"endpoints": {"cn-north-1": None}})
    big = os.urandom(64 * 1024 * 1024)
    s3_backend.direct_client().put_object(Bucket=BUCKET, Key="reload/big.bin", Body=big)
    eu = proxy.boto3_client(region="eu-west-1")
    cn = proxy.boto3_client(region="cn-north-1", config=NO_RETRY)
    eu.head_object(Bucket=BUCKET, Key="reload/big.bin")
    with pytest.raises(ClientError):
        cn.head_object(Bucket=BUCKET, Key="reload/big.bin")  # no endpoint for cn-north-1 yet

    # A 64 MB download through the eu-west-1 endpoint, held after 4 MB while the config changes.
    download = SlowDownload(eu.get_object(Bucket=BUCKET, Key="reload/big.bin")["Body"])
    download.start()
    assert download.started_reading.wait(30)

    old = proxy.config
    new = {**old, "endpoints": {k: v for k, v in old["endpoints"].items() if k != "eu-west-1"}}
    new["endpoints"]["cn-north-1"] = {
        "dns_name": s3_backend.endpoint("cn-north-1").domain,
        "port": s3_backend.endpoint_port,
    }
    write_config(proxy, new)
    admin.wait_for("s3proxy_config_reload_total", 2, result="success")
    assert "config reloaded (config file changed); endpoints: us-east-1, cn-north-1" in proxy.logs()

    # New requests follow the new config at once, on new and on kept-alive client connections.
    mark = s3_backend.mark()
    assert cn.head_object(Bucket=BUCKET, Key="reload/big.bin")["ContentLength"] == len(big)
    with pytest.raises(ClientError) as refused:
        eu.head_object(Bucket=BUCKET, Key="reload/small")  # same client, same pooled proxy connection
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403, 503)
    sent = s3_backend.upstream_requests(mark)
    assert [r.sni for r in sent] == [f"bucket.{s3_backend.endpoint('cn-north-1').domain}"]

    # The download started under the old config completes intact.
    assert download.is_alive() and download.error is None
    download.gate.set()
    download.join(60)
    assert download.error is None and download.size == len(big)
    assert download.digest.hexdigest() == hashlib.sha256(big).hexdigest()

    # A broken config is refused, logged, and the last good one keeps serving.
    write_config(proxy, yaml.safe_dump({**new, "endpoints": {"us-east-1": "vpce-not-an-endpoint"}}))
    admin.wait_for("s3proxy_config_reload_total", 1, result="failure")
    logs = wait_for_log(proxy, "config reload (config file changed) refused")
    assert "endpoints.us-east-1" in logs and "previous config stays in use" in logs
    assert admin.value("s3proxy_config_last_reload_successful") == 0
    assert cn.head_object(Bucket=BUCKET, Key="reload/big.bin")["ContentLength"] == len(big)
    with pytest.raises(ClientError):
        proxy.boto3_client(region="eu-west-1", config=NO_RETRY).head_object(Bucket=BUCKET, Key="x")
    write_config(proxy, "endpoints: [unterminated")
    admin.wait_for("s3proxy_config_reload_total", 2, result="failure")
    assert proxy.alive() and admin.get("/readyz")[0] == 200

    # Fixed again: picked up, and a download through the new endpoint works.
    write_config(proxy, new)
    admin.wait_for("s3proxy_config_reload_total", 3, result="success")
    assert admin.value("s3proxy_config_last_reload_successful") == 1
    assert hashlib.sha256(cn.get_object(Bucket=BUCKET, Key="reload/big.bin")["Body"].read()).digest() == (
        hashlib.sha256(big).digest()
    )


def test_sighup_reloads(proxy_factory: Callable[..., ProxyProcess]) -> None:
    proxy, admin = admin_proxy(proxy_factory)
    assert proxy.proc is not None
    s3 = proxy.boto3_client(region="us-east-1")
    s3.put_object(Bucket=BUCKET, Key="hup", Body=b"before")
    # Unchanged file: only SIGHUP can cause this reload (the watcher reloads on content changes).
    os.kill(proxy.proc.pid, signal.SIGHUP)
    admin.wait_for("s3proxy_config_reload_total", 2, result="success")
    wait_for_log(proxy, "config reloaded (SIGHUP)")
    assert proxy.alive()
    assert s3.get_object(Bucket=BUCKET, Key="hup")["Body"].read() == b"before"  # same client connection
    # SIGHUP with a changed file applies it (whichever of SIGHUP or the watcher sees it first).
    cfg = {
        **proxy.config,
        "unknown_region": "reject",
        "endpoints": {"us-east-1": proxy.config["endpoints"]["us-east-1"]},
    }
    write_config(proxy, cfg)
    os.kill(proxy.proc.pid, signal.SIGHUP)
    admin.wait_for("s3proxy_config_reload_total", 3, result="success")
    with pytest.raises(ClientError):
        proxy.boto3_client(region="eu-west-1", config=NO_RETRY).head_object(Bucket=BUCKET, Key="hup")
    # A broken file on SIGHUP: refused and logged, still serving.
    write_config(proxy, "listen: {port: 'not a port'}\n")
    os.kill(proxy.proc.pid, signal.SIGHUP)
    admin.wait_for("s3proxy_config_reload_total", 1, result="failure")
    assert proxy.alive()
    assert s3.get_object(Bucket=BUCKET, Key="hup")["Body"].read() == b"before"
