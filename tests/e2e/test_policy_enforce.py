"""Policy enforcement end to end: a real `s3proxy run` with an endpoint policy and bucket policies.

`policy_mode: enforce` answers what S3 would deny with 403 AccessDenied naming the deciding statement, and
not one byte of such a request reaches the endpoint (the recording tap sees nothing); allowed requests work
as before. `warn` forwards the same request and logs it; `off` does neither. The endpoint ID the policies
name is the harness's us-east-1 endpoint (vpce-1a2b3c4d-5e6f... -> vpce-1a2b3c4d), as `aws:sourceVpce`
would carry it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e.harness import ProxyProcess, S3Backend, ensure_bucket, sha256

ENDPOINT_ID = "vpce-1a2b3c4d"  # of the harness's us-east-1 endpoint vpce-1a2b3c4d-5e6f.s3.us-east-1...
ALLOWED = "pol-allowed"
OTHER = "pol-other"
VPCE_MINE = "pol-vpce-mine"  # bucket policy: only through vpce-1a2b3c4d (the proxy's endpoint)
VPCE_THEIRS = "pol-vpce-theirs"  # bucket policy: only through vpce-0f0f0f0f (not the proxy's)
KEY = "dir/obj 1+~.bin"
BODY = hashlib.sha256(b"policy").digest() * 4096  # 128 KiB

_GOVERNED = [ALLOWED, VPCE_MINE, VPCE_THEIRS]
ENDPOINT_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "AllowOnlyListedBuckets",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{b}{s}" for b in _GOVERNED for s in ("", "/*")],
        },
        {
            "Sid": "DenyEveryOtherBucket",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "NotResource": [f"arn:aws:s3:::{b}{s}" for b in _GOVERNED for s in ("", "/*")],
        },
    ],
}


def vpce_only(bucket: str, endpoint_id: str) -> dict[str, Any]:
    """The bucket policy of AWS's guide: "Restricting access to a specific VPC endpoint"."""
    return {
        "Version": "2012-10-17",
        "Id": "Policy1415115909152",
        "Statement": [
            {
                "Sid": "Access-to-specific-VPCE-only",
                "Principal": "*",
                "Action": "s3:*",
                "Effect": "Deny",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"StringNotEquals": {"aws:sourceVpce": endpoint_id}},
            }
        ],
    }


def overrides(mode: str) -> dict[str, Any]:
    return {
        "endpoints": {"us-east-1": {"policy": ENDPOINT_POLICY}},
        "policy_mode": mode,
        "bucket_policies": {
            VPCE_MINE: vpce_only(VPCE_MINE, ENDPOINT_ID),
            VPCE_THEIRS: vpce_only(VPCE_THEIRS, "vpce-0f0f0f0f"),
        },
    }


@pytest.fixture(scope="module")
def buckets(s3_backend: S3Backend) -> None:
    """Every bucket with one object, made directly in SeaweedFS (no proxy, no policy)."""
    direct = s3_backend.direct_client()
    for bucket in (ALLOWED, OTHER, VPCE_MINE, VPCE_THEIRS):
        ensure_bucket(direct, bucket)
        direct.put_object(Bucket=bucket, Key=KEY, Body=BODY)


def access_denied(call: Any) -> str:
    """Run a boto3 call that must be refused with 403 AccessDenied; returns the error message."""
    with pytest.raises(ClientError) as e:
        call()
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["Error"]["Code"] == "AccessDenied"
    assert err["ResponseMetadata"]["HTTPHeaders"].get("x-amz-request-id")
    return str(err["Error"]["Message"])


def wait_for_log(proxy: ProxyProcess, needle: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = proxy.logs()
        if needle in logs:
            return logs
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in proxy log:\n{logs[-3000:]}")
        time.sleep(0.05)


def test_enforce_answers_locally_and_nothing_reaches_upstream(
    proxy_factory: Any, s3_backend: S3Backend, buckets: None
) -> None:
    proxy = proxy_factory(overrides("enforce"))
    s3 = proxy.boto3_client("s3", region="us-east-1")

    # Allowed by the endpoint policy: works as without policies, and reaches the endpoint.
    since = s3_backend.mark()
    s3.put_object(Bucket=ALLOWED, Key="up.bin", Body=BODY)
    got = s3.get_object(Bucket=ALLOWED, Key=KEY)["Body"].read()
    assert sha256(got) == sha256(BODY)
    assert s3_backend.object_sha256(ALLOWED, "up.bin") == sha256(BODY)
    assert len(s3_backend.upstream_requests(since)) >= 2

    # Another bucket: the endpoint policy's Deny decides, named in the message; the tap sees nothing.
    since = s3_backend.mark()
    msg = access_denied(lambda: s3.get_object(Bucket=OTHER, Key=KEY))
    assert "'DenyEveryOtherBucket'" in msg
    assert f"s3:GetObject on resource arn:aws:s3:::{OTHER}/{KEY}" in msg
    assert f"VPC endpoint policy of {ENDPOINT_ID}" in msg
    # An upload (boto3's aws-chunked body) is refused before any of its bytes go anywhere.
    msg = access_denied(lambda: s3.put_object(Bucket=OTHER, Key="new.bin", Body=BODY * 8))
    assert "'DenyEveryOtherBucket'" in msg and "s3:PutObject" in msg
    access_denied(lambda: s3.list_objects_v2(Bucket=OTHER))
    assert s3_backend.upstream_requests(since) == []
    assert s3_backend.object_sha256(OTHER, "new.bin") is None

    # aws:sourceVpce: the bucket restricted to the proxy's endpoint works through it ...
    since = s3_backend.mark()
    assert sha256(s3.get_object(Bucket=VPCE_MINE, Key=KEY)["Body"].read()) == sha256(BODY)
    assert s3_backend.upstream_requests(since)
    # ... the one restricted to another endpoint is denied by its bucket policy's statement.
    since = s3_backend.mark()
    msg = access_denied(lambda: s3.get_object(Bucket=VPCE_THEIRS, Key=KEY))
    assert "'Access-to-specific-VPCE-only'" in msg and f"bucket policy of {VPCE_THEIRS}" in msg
    assert s3_backend.upstream_requests(since) == []


def test_enforce_with_the_aws_cli(
    proxy_factory: Any, s3_backend: S3Backend, buckets: None, tmp_path: Path
) -> None:
    proxy = proxy_factory(overrides("enforce"))
    aws = str(Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "aws")
    if not Path(aws).exists():
        aws = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "aws")
    since = s3_backend.mark()
    denied = subprocess.run(
        [aws, "s3api", "get-object", "--bucket", OTHER, "--key", KEY, str(tmp_path / "out")],
        env=proxy.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode != 0
    assert "AccessDenied" in denied.stderr and "DenyEveryOtherBucket" in denied.stderr
    assert not (tmp_path / "out").exists()
    assert s3_backend.upstream_requests(since) == []
    ok = subprocess.run(
        [aws, "s3", "cp", f"s3://{ALLOWED}/{KEY}", str(tmp_path / "ok.bin")],
        env=proxy.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert sha256((tmp_path / "ok.bin").read_bytes()) == sha256(BODY)


def test_warn_forwards_logs_and_off_stays_silent(
    proxy_factory: Any, s3_backend: S3Backend, buckets: None
) -> None:
    warn = proxy_factory(overrides("warn"))
    s3 = warn.boto3_client("s3", region="us-east-1")
    since = s3_backend.mark()
    assert sha256(s3.get_object(Bucket=OTHER, Key=KEY)["Body"].read()) == sha256(BODY)
    assert [r.method for r in s3_backend.upstream_requests(since)] == ["GET"]
    logs = wait_for_log(warn, "policy (warn): S3 would deny GET")
    line = next(ln for ln in logs.splitlines() if "policy (warn)" in ln)
    assert (
        OTHER in line and "'DenyEveryOtherBucket'" in line and f"VPC endpoint policy of {ENDPOINT_ID}" in line
    )
    # Allowed requests are not reported.
    s3.get_object(Bucket=ALLOWED, Key=KEY)["Body"].read()
    time.sleep(0.2)
    assert warn.logs().count("policy (warn)") == 1

    off = proxy_factory(overrides("off"))
    s3 = off.boto3_client("s3", region="us-east-1")
    assert sha256(s3.get_object(Bucket=OTHER, Key=KEY)["Body"].read()) == sha256(BODY)
    time.sleep(0.2)
    assert "policy (warn)" not in off.logs()
