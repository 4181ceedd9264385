"""Secrets: refused when stored readable by others, never written to the log, never in an error.

The log test drives real traffic of every kind through the real proxy at debug level (accepted, refused,
presigned, session token, signed chunks, malformed) and then greps every captured line of the proxy's
output for every secret, every signature the clients or the proxy computed, and the session token.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from e2e.authkit import boto_presign, send, signed_chunked_request, sigv4_sign
from e2e.harness import ADMIN, SEAWEED_ONLY, USER, ProxyProcess, S3Backend, ensure_bucket, proxy_executable

BUCKET = "e2e-secrets"
TOKEN = "FQoGZXIvYXdzEXAMPLE-session-token-" + "t" * 40
WRONG = dataclasses.replace(ADMIN, secret_access_key="Wrong" + ADMIN.secret_access_key[5:])


def _run(config: dict[str, object], workdir: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "s3proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [proxy_executable(), "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_ca_key_readable_by_others_refuses_to_start(proxy_config: dict[str, object], tmp_path: Path) -> None:
    ca_dir = Path(str(proxy_config["tls"]["ca_dir"]))  # type: ignore[index]
    from s3proxy.ca import ensure_ca

    ensure_ca(ca_dir)
    key = ca_dir / "mitmproxy-ca.pem"
    assert key.stat().st_mode & 0o077 == 0  # written 0600 by the proxy
    os.chmod(key, 0o640)
    out = _run(proxy_config, tmp_path / "run")
    assert out.returncode == 2, out
    assert "readable by group/others" in out.stderr and f"chmod 600 {key}" in out.stderr, out.stderr
    assert "PRIVATE KEY" not in out.stderr + out.stdout


def test_keys_file_readable_by_others_refuses_to_start(
    proxy_config: dict[str, object], proxy_factory: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {"keys": [{"access_key_id": USER.access_key_id, "secret_access_key": USER.secret_access_key}]}
        )
    )
    os.chmod(keys, 0o644)
    cfg = {**proxy_config, "signing": {"mode": "keyring", "keys_file": str(keys)}}
    out = _run(cfg, tmp_path / "run")
    assert out.returncode != 0
    assert "chmod 600" in out.stderr and "signing.keys_file" in out.stderr, out.stderr
    assert USER.secret_access_key not in out.stderr + out.stdout
    os.chmod(keys, 0o600)  # and with the right mode the same file is accepted
    proxy = proxy_factory({"signing": {"keys": None, "keys_file": str(keys)}})
    assert proxy.boto3_client(key=USER, region="us-east-1").list_buckets()["ResponseMetadata"]


def test_nothing_secret_is_ever_logged(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, tmp_path: Path
) -> None:
    proxy = proxy_factory({"log": {"level": "debug"}}, env={"S3PROXY_LOG_LEVEL": "debug"})
    mark = s3_backend.mark()
    client_signatures: list[str] = []

    s3 = proxy.boto3_client(region="us-east-1")
    ensure_bucket(s3, BUCKET)
    s3.put_object(Bucket=BUCKET, Key="a b+c", Body=b"secret-test" * 100)
    assert s3.get_object(Bucket=BUCKET, Key="a b+c")["Body"].read() == b"secret-test" * 100

    # Presigned URLs (good and with a wrong secret), header auth with a session token and a wrong secret.
    for key in (ADMIN, WRONG):
        url = boto_presign(key, "GET", BUCKET, "a b+c", token=TOKEN)
        client_signatures += re.findall(r"X-Amz-Signature=([0-9a-f]{64})", url)
        send(proxy, "GET", url, [("Host", f"{BUCKET}.s3.amazonaws.com")])
        hurl = f"https://{BUCKET}.s3.amazonaws.com/a%20b%2Bc"
        headers = sigv4_sign(key, "GET", hurl, {}, token=TOKEN)
        client_signatures += re.findall(r"Signature=([0-9a-f]{64})", str(headers))
        send(proxy, "GET", hurl, headers)
    # Unknown key, signed chunks (good and tampered), a malformed request, a refused tunnel.
    unknown_url = f"https://{BUCKET}.s3.amazonaws.com/x"
    headers = sigv4_sign(SEAWEED_ONLY, "GET", unknown_url, {})
    client_signatures += re.findall(r"Signature=([0-9a-f]{64})", str(headers))
    send(proxy, "GET", unknown_url, headers)
    for tamper in (None, 1):
        curl = f"https://{BUCKET}.s3.amazonaws.com/chunked"
        headers, body = signed_chunked_request(ADMIN, curl, b"c" * 200_000, tamper_chunk=tamper)
        client_signatures += re.findall(r"Signature=([0-9a-f]{64})", str(headers))
        client_signatures += [m.decode() for p in body for m in re.findall(rb"signature=([0-9a-f]{64})", p)]
        send(proxy, "PUT", curl, headers, body)
    send(proxy, "GET", unknown_url, [("Host", f"{BUCKET}.s3.amazonaws.com"), ("X-A", "a\x00b")])

    upstream_signatures = [
        m
        for r in s3_backend.upstream_requests(mark)
        for m in re.findall(r"Signature=([0-9a-f]{64})", r.header("authorization") or "")
        + re.findall(r"X-Amz-Signature=([0-9a-f]{64})", r.target)
    ]
    assert upstream_signatures and len(client_signatures) >= 8
    log = proxy.logs()
    assert len(log.splitlines()) >= 10, log  # debug level really logged the traffic
    secrets = [ADMIN.secret_access_key, USER.secret_access_key, WRONG.secret_access_key, TOKEN]
    for n, line in enumerate(log.splitlines()):
        for secret in secrets:
            assert secret not in line, f"line {n}: a secret was logged"
        for sig in client_signatures + upstream_signatures:
            assert sig not in line, f"line {n}: a signature was logged: {line[:300]}"
