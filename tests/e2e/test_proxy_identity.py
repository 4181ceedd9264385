"""proxy-identity signing end to end: the proxy signs every admitted request as its own AWS identity.

The proxy's identity comes from the standard credential chain -- here the environment variables
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of the `s3proxy run` process -- and is the SEAWEED_ONLY key, which
SeaweedFS knows and the clients do not. Clients sign with keys nobody knows, or not at all, and still succeed;
the tap shows that S3 only ever saw the proxy's access key and never the client's session token. A proxy
configured with proxy-identity and open access rules must refuse to start.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml
from botocore import UNSIGNED
from botocore.config import Config

from e2e.authkit import send, sigv4_sign
from e2e.harness import (
    SEAWEED_ONLY,
    AccessKey,
    base_proxy_config,
    clean_client_env,
    deep_merge,
    ensure_bucket,
    free_ports,
    proxy_executable,
    sha256,
)
from s3proxy.config import hash_password

STRANGER = AccessKey("AKIASTRANGERNOBODY01", "Stranger/SecretNobodyKnowsAtAll0000000001", "stranger")
BUCKET = "identity-e2e"
IDENTITY_ENV = {
    "AWS_ACCESS_KEY_ID": SEAWEED_ONLY.access_key_id,
    "AWS_SECRET_ACCESS_KEY": SEAWEED_ONLY.secret_access_key,
}
IDENTITY_OVERRIDES = {
    "signing": {"mode": "proxy-identity", "keys": None},
    "access": {"allow_clients": ["127.0.0.0/8"]},
}


def credential_key(authorization: str | None) -> str | None:
    """The access key id in `AWS4-HMAC-SHA256 Credential=AKID/...`."""
    if not authorization or "Credential=" not in authorization:
        return None
    return authorization.split("Credential=", 1)[1].split("/", 1)[0]


@pytest.fixture(scope="module")
def identity_proxy(s3_backend, tmp_path_factory):
    from e2e.harness import running_proxy

    with running_proxy(
        s3_backend, tmp_path_factory.mktemp("identity"), IDENTITY_OVERRIDES, env=IDENTITY_ENV
    ) as p:
        yield p


@pytest.fixture(scope="module")
def bucket(s3_backend) -> str:
    ensure_bucket(s3_backend.direct_client(), BUCKET)
    return BUCKET


def assert_signed_as_proxy(requests, *, min_count: int = 1) -> None:
    assert len(requests) >= min_count, requests
    for r in requests:
        assert credential_key(r.header("authorization")) == SEAWEED_ONLY.access_key_id, r.headers
        assert STRANGER.access_key_id not in repr(r.headers)
        assert r.header("x-amz-security-token") is None  # the proxy's identity has no session token
        assert r.host and r.host.endswith(".vpce.amazonaws.com")
        assert r.forwarded_headers() == []


def test_unknown_client_key_is_resigned_as_proxy(identity_proxy, s3_backend, bucket):
    s3 = identity_proxy.boto3_client(region="us-east-1", key=STRANGER)
    body = hashlib.sha256(b"identity").digest() * 40000  # > 1 MiB, boto3's default streaming upload
    since = s3_backend.mark()
    s3.put_object(Bucket=bucket, Key="stranger/a b+c~.bin", Body=body)
    got = s3.get_object(Bucket=bucket, Key="stranger/a b+c~.bin")["Body"].read()
    assert sha256(got) == sha256(body)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="stranger/")
    assert [o["Key"] for o in listed["Contents"]] == ["stranger/a b+c~.bin"]
    assert s3_backend.object_sha256(bucket, "stranger/a b+c~.bin") == sha256(body)
    assert_signed_as_proxy(s3_backend.upstream_requests(since), min_count=3)


def test_client_signing_for_another_region_than_the_host_is_still_served(identity_proxy, s3_backend, bucket):
    # With keyring, such a request is refused as S3 refuses it; here the proxy signs for the client, whose
    # scope (a tool's default region, dummy keys) is not held against it.
    s3_backend.direct_client().put_object(Bucket=bucket, Key="stranger/region", Body=b"served")
    url = f"https://{bucket}.s3.us-east-1.amazonaws.com/stranger/region"
    since = s3_backend.mark()
    reply = send(identity_proxy, "GET", url, sigv4_sign(STRANGER, "GET", url, {}, region="eu-west-1"))
    assert (reply.status, reply.body) == (200, b"served"), reply
    assert_signed_as_proxy(s3_backend.upstream_requests(since))


def test_client_session_token_is_removed(identity_proxy, s3_backend, bucket):
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="ASIASTRANGERSESSION1",
        aws_secret_access_key=STRANGER.secret_access_key,
        aws_session_token="FwoGZXIvYXdzEClientSessionTokenTheProxyMustNotForward",
        region_name="us-east-1",
    )
    s3 = session.client(
        "s3",
        verify=str(identity_proxy.ca_cert),
        config=Config(proxies={"https": identity_proxy.url, "http": identity_proxy.url}),
    )
    since = s3_backend.mark()
    s3.put_object(Bucket=bucket, Key="token/obj", Body=b"with a client session token")
    assert s3.get_object(Bucket=bucket, Key="token/obj")["Body"].read() == b"with a client session token"
    seen = s3_backend.upstream_requests(since)
    assert_signed_as_proxy(seen, min_count=2)
    assert all("ClientSessionToken" not in repr(r.headers) for r in seen)


def test_anonymous_client_is_signed_as_proxy(identity_proxy, s3_backend, bucket):
    s3 = identity_proxy.boto3_client(region="us-east-1", config=Config(signature_version=UNSIGNED))
    body = b"anonymous client, signed by the proxy" * 100
    since = s3_backend.mark()
    s3.put_object(Bucket=bucket, Key="anon/obj", Body=body)
    assert sha256(s3.get_object(Bucket=bucket, Key="anon/obj")["Body"].read()) == sha256(body)
    s3.head_object(Bucket=bucket, Key="anon/obj")
    s3.delete_object(Bucket=bucket, Key="anon/obj")
    assert s3_backend.object_sha256(bucket, "anon/obj") is None
    assert_signed_as_proxy(s3_backend.upstream_requests(since), min_count=4)


def test_presigned_url_from_unknown_key_with_curl(identity_proxy, s3_backend, bucket):
    import boto3

    s3_backend.direct_client().put_object(Bucket=bucket, Key="presigned/obj", Body=b"presigned body")
    session = boto3.session.Session(
        aws_access_key_id=STRANGER.access_key_id,
        aws_secret_access_key=STRANGER.secret_access_key,
        region_name="us-east-1",
    )
    url = session.client("s3", config=Config(signature_version="s3v4")).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "presigned/obj"}, ExpiresIn=300
    )
    since = s3_backend.mark()
    r = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "--proxy",
            identity_proxy.url,
            "--cacert",
            str(identity_proxy.ca_cert),
            url,
        ],
        capture_output=True,
        env=identity_proxy.env(key=None),
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout == b"presigned body"
    seen = s3_backend.upstream_requests(since)
    assert len(seen) == 1
    assert f"X-Amz-Credential={SEAWEED_ONLY.access_key_id}%2F" in seen[0].target
    assert STRANGER.access_key_id not in seen[0].target


def test_aws_cli_with_unknown_key(identity_proxy, s3_backend, bucket, tmp_path):
    src = tmp_path / "cli.bin"
    src.write_bytes(hashlib.sha256(b"cli").digest() * 1000)
    env = identity_proxy.env(key=STRANGER)
    aws = str(Path(proxy_executable()).parent / "aws")
    since = s3_backend.mark()
    cp = subprocess.run(
        [aws, "s3", "cp", str(src), f"s3://{bucket}/cli/obj.bin"], env=env, capture_output=True, timeout=60
    )
    assert cp.returncode == 0, cp.stderr.decode()
    assert s3_backend.object_sha256(bucket, "cli/obj.bin") == sha256(src.read_bytes())
    assert_signed_as_proxy(s3_backend.upstream_requests(since))


# --- refusing to start -----------------------------------------------------------------------------------


def run_expecting_failure(s3_backend, tmp_path: Path, overrides: dict) -> subprocess.CompletedProcess[str]:
    port = free_ports(1)[0]
    cfg = deep_merge(base_proxy_config(s3_backend, tmp_path, port), overrides)
    path = tmp_path / "s3proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = clean_client_env()
    env.update(IDENTITY_ENV)
    return subprocess.run(
        [proxy_executable(), "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("access", "needle"),
    [
        ({"allow_clients": ["0.0.0.0/0"]}, "0.0.0.0/0"),
        ({"allow_clients": ["127.0.0.0/8", "::/0"]}, "::/0"),
        ({"allow_clients": ["10.0.0.0/8"]}, "access.users"),
    ],
    ids=["ipv4-any", "ipv6-any", "private-net-without-users"],
)
def test_refuses_to_start_with_open_access(s3_backend, tmp_path, access, needle):
    r = run_expecting_failure(
        s3_backend, tmp_path, {"signing": {"mode": "proxy-identity", "keys": None}, "access": access}
    )
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "proxy-identity" in out and needle in out, out
    assert "Traceback" not in out
    assert SEAWEED_ONLY.secret_access_key not in out


def test_private_net_with_proxy_users_is_accepted(proxy_factory, s3_backend, bucket):
    """Non-loopback clients are fine for proxy-identity once proxy authentication is required."""
    pw_hash = hash_password("pw", salt=b"salt-e2e", iterations=1000)
    proxy = proxy_factory(
        {
            "signing": {"mode": "proxy-identity", "keys": None},
            "access": {
                "allow_clients": ["127.0.0.0/8", "10.0.0.0/8"],
                "users": [{"username": "u", "password_hash": pw_hash}],
            },
        },
        env=IDENTITY_ENV,
    )
    url = f"http://u:pw@127.0.0.1:{proxy.port}"
    s3 = proxy.boto3_client(region="us-east-1", key=STRANGER, config=Config(proxies={"https": url}))
    since = s3_backend.mark()
    s3.put_object(Bucket=bucket, Key="users/obj", Body=b"x")
    assert_signed_as_proxy(s3_backend.upstream_requests(since))


def test_refuses_to_start_without_credentials(s3_backend, tmp_path):
    port = free_ports(1)[0]
    cfg = deep_merge(base_proxy_config(s3_backend, tmp_path, port), IDENTITY_OVERRIDES)
    path = tmp_path / "s3proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [proxy_executable(), "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean_client_env(),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "credentials" in out.lower() and "Traceback" not in out, out
