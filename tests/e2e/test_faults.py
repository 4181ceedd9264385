"""Faults in the middle of a transfer, through the real proxy: nothing is ever presented as complete when it
is not, nothing partial is stored, and the proxy serves the next request.

The tap injects the faults (`TapFault`): cut the connection after N response bytes (the endpoint dies
mid-download), after N request-body bytes (dies mid-upload), or go silent mid-response (a stall, which only
the proxy's idle / whole-request timeouts end). The client side is boto3 (no retries, so the fault is what
it sees), curl, and a raw socket that hangs up mid-upload.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from e2e.authkit import client_context, curl_args, sigv4_sign
from e2e.harness import ADMIN, ProxyProcess, RequestOutcome, S3Backend, TapFault, ensure_bucket

BUCKET = "e2e-faults"
MB = 1024 * 1024
NO_RETRY = Config(retries={"total_max_attempts": 1}, read_timeout=30)
# What a client may see when the connection is cut: a short body (never presented as complete), a
# closed/reset connection, or an S3-style 5xx from the proxy if nothing of the response had been sent.
CUT_ERRORS = (
    IncompleteReadError,
    ResponseStreamingError,
    ConnectionClosedError,
    EndpointConnectionError,
    ProxyConnectionError,  # the proxy reset the connection while the client was still sending
    ClientError,
)


@pytest.fixture(scope="module", autouse=True)
def bucket(s3_backend: S3Backend) -> None:
    ensure_bucket(s3_backend.direct_client(), BUCKET)


@pytest.fixture(autouse=True)
def no_faults_left(s3_backend: S3Backend) -> Any:
    yield
    s3_backend.tap.clear_faults()


@pytest.fixture(scope="module")
def fault_proxy(s3_backend: S3Backend, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from e2e.harness import running_proxy

    with running_proxy(
        s3_backend,
        tmp_path_factory.mktemp("faultproxy"),
        {"upstream": {"idle_timeout": 2, "connect_timeout": 2}},
    ) as proxy:
        yield proxy


def key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_direct(s3_backend: S3Backend, k: str, data: bytes) -> None:
    s3_backend.direct_client().put_object(Bucket=BUCKET, Key=k, Body=data)


def wait_for_outcomes(
    s3_backend: S3Backend, match: Callable[[RequestOutcome], bool], timeout: float = 10
) -> list[RequestOutcome]:
    """The tap's records of requests that ended (it records one when its connection closes)."""
    deadline = time.monotonic() + timeout
    while not (found := [o for o in s3_backend.tap.outcomes() if match(o)]):
        assert time.monotonic() < deadline, "the upstream request was left open"
        time.sleep(0.05)
    return found


def assert_serves_next(proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    k, data = key(), os.urandom(300_000)
    s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    s3.put_object(Bucket=BUCKET, Key=k, Body=data)
    assert sha(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) == sha(data)


# --- upstream closes before answering -------------------------------------------------------------------


def test_get_whose_upstream_connection_closes_before_answering_is_sent_again(
    fault_proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    """The endpoint closes the connection a GET went out on without a byte of response (as a server closing
    a kept-alive connection at that moment does): the proxy sends it once more on a new connection and the
    client, which does not retry, gets the object."""
    k, data = key(), os.urandom(200_000)
    put_direct(s3_backend, k, data)
    s3 = fault_proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    mark = s3_backend.tap.mark()
    s3_backend.tap.add_fault(TapFault("cut-response", 0, match=k))
    assert sha(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) == sha(data)
    assert s3.head_object(Bucket=BUCKET, Key=k)["ContentLength"] == len(data)
    gets = [r for r in s3_backend.tap.requests(mark) if r.method == "GET" and k in r.target]
    assert len(gets) == 2 and gets[0].connection != gets[1].connection
    assert len(s3_backend.tap.fired()) >= 1


def test_get_is_sent_again_only_once(fault_proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    k, data = key(), os.urandom(1000)
    put_direct(s3_backend, k, data)
    s3 = fault_proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    mark = s3_backend.tap.mark()
    s3_backend.tap.add_fault(TapFault("cut-response", 0, match=k, times=3))
    with pytest.raises(ClientError) as err:
        s3.get_object(Bucket=BUCKET, Key=k)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert len([r for r in s3_backend.tap.requests(mark) if r.method == "GET" and k in r.target]) == 2
    s3_backend.tap.clear_faults()
    assert_serves_next(fault_proxy, s3_backend)


def test_put_whose_connection_closes_before_answering_is_not_sent_again(
    fault_proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    """A request with a body already streamed upstream cannot be sent again by the proxy: the client gets
    the error (and an SDK's own retry sends the body again)."""
    k = key()
    s3 = fault_proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    mark = s3_backend.tap.mark()
    s3_backend.tap.add_fault(TapFault("cut-response", 0, match=k))
    with pytest.raises(CUT_ERRORS):
        s3.put_object(Bucket=BUCKET, Key=k, Body=b"x" * 5000)
    assert len([r for r in s3_backend.tap.requests(mark) if r.method == "PUT" and k in r.target]) == 1
    assert_serves_next(fault_proxy, s3_backend)


# --- upstream dies mid-download --------------------------------------------------------------------------


@pytest.mark.parametrize("after", [100, MB + 5])  # inside the response head / inside the body
def test_upstream_cut_mid_get_is_an_error_never_a_short_body(
    fault_proxy: ProxyProcess, s3_backend: S3Backend, after: int
) -> None:
    k, data = key(), os.urandom(4 * MB)
    put_direct(s3_backend, k, data)
    s3_backend.tap.add_fault(TapFault("cut-response", after, match=k))
    s3 = fault_proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    with pytest.raises(CUT_ERRORS):
        s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
    assert len(s3_backend.tap.fired()) >= 1
    # curl: a non-zero exit, never a "successful" short file.
    s3_backend.tap.add_fault(TapFault("cut-response", after, match=k))
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": k})
    out = subprocess.run(
        [*curl_args(fault_proxy), "-f", "-o", "-", url], capture_output=True, env=fault_proxy.env(None)
    )
    assert out.returncode != 0, (len(out.stdout), out.stderr)
    assert len(out.stdout) < len(data)
    # Unharmed: the object is intact and the proxy serves the next request.
    assert sha(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) == sha(data)
    assert_serves_next(fault_proxy, s3_backend)


# --- upstream dies mid-upload ----------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [True, False])
def test_upstream_cut_mid_put_stores_nothing_partial(
    fault_proxy: ProxyProcess, s3_backend: S3Backend, existing: bool
) -> None:
    k = key()
    old = os.urandom(500_000)
    if existing:
        put_direct(s3_backend, k, old)
    new = os.urandom(6 * MB)
    s3_backend.tap.add_fault(TapFault("cut-request", 2 * MB, match=k))
    s3 = fault_proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    started = time.monotonic()
    with pytest.raises(CUT_ERRORS):
        s3.put_object(Bucket=BUCKET, Key=k, Body=new)
    # At once, not when the client's own 30 s timeout gives up on a connection nobody reads any more.
    assert time.monotonic() - started < 5
    (outcome,) = wait_for_outcomes(s3_backend, lambda o: o.target.endswith(k) and o.method == "PUT")
    assert not outcome.complete and outcome.body_passed < len(new)
    # The old object intact, or none at all - never a truncated one.
    assert s3_backend.object_sha256(BUCKET, k) == (sha(old) if existing else None)
    assert_serves_next(fault_proxy, s3_backend)


def test_multipart_part_cut_fails_alone(fault_proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    k = key()
    s3 = fault_proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=k)["UploadId"]
    part1, part2 = os.urandom(5 * MB), os.urandom(2 * MB)
    e1 = s3.upload_part(Bucket=BUCKET, Key=k, UploadId=upload, PartNumber=1, Body=part1)["ETag"]
    s3_backend.tap.add_fault(TapFault("cut-request", MB, match="partNumber=2"))
    started = time.monotonic()
    with pytest.raises(CUT_ERRORS):
        s3.upload_part(Bucket=BUCKET, Key=k, UploadId=upload, PartNumber=2, Body=part2)
    assert time.monotonic() - started < 5
    assert s3_backend.object_sha256(BUCKET, k) is None  # nothing visible yet
    # The failed part is simply sent again; part 1 was not affected.
    e2 = s3.upload_part(Bucket=BUCKET, Key=k, UploadId=upload, PartNumber=2, Body=part2)["ETag"]
    s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key=k,
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]},
    )
    assert s3_backend.object_sha256(BUCKET, k) == sha(part1 + part2)


# --- the client hangs up mid-upload ----------------------------------------------------------------------


def test_client_disconnect_mid_upload_aborts_the_upstream_request(
    fault_proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    k = key()
    size = 8 * MB
    url = f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{k}"
    headers = sigv4_sign(ADMIN, "PUT", url, {"Content-Length": str(size)}, payload="UNSIGNED-PAYLOAD")
    conn = http.client.HTTPSConnection(
        fault_proxy.host, fault_proxy.port, timeout=10, context=client_context(fault_proxy.ca_cert)
    )
    conn.set_tunnel(f"{BUCKET}.s3.us-east-1.amazonaws.com", 443)
    conn.putrequest("PUT", f"/{k}", skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(os.urandom(MB))
    deadline = time.monotonic() + 10
    while not [r for r in s3_backend.upstream_requests() if r.target.endswith(k)]:
        assert time.monotonic() < deadline, "the upload never reached the endpoint"
        time.sleep(0.05)
    assert conn.sock is not None
    conn.sock.close()  # hang up with 7 MB still to send
    # The proxy ends the upstream request: the tap sees that connection close mid-body.
    (outcome,) = wait_for_outcomes(s3_backend, lambda o: o.target.endswith(k))
    assert not outcome.complete and outcome.body_passed < size
    assert s3_backend.object_sha256(BUCKET, k) is None
    assert_serves_next(fault_proxy, s3_backend)


# --- timeouts --------------------------------------------------------------------------------------------


def test_response_stalled_mid_body_is_cut_by_the_idle_timeout(
    fault_proxy: ProxyProcess, s3_backend: S3Backend
) -> None:
    k, data = key(), os.urandom(3 * MB)
    put_direct(s3_backend, k, data)
    s3_backend.tap.add_fault(TapFault("stall-response", MB, match=k))
    s3 = fault_proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    started = time.monotonic()
    with pytest.raises((*CUT_ERRORS, ReadTimeoutError)):
        s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
    took = time.monotonic() - started
    assert took < 10, took  # idle_timeout is 2 s; the client's own read timeout is 30 s
    s3_backend.tap.release()
    assert_serves_next(fault_proxy, s3_backend)


def test_request_timeout_ends_a_transfer_that_keeps_trickling(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend
) -> None:
    proxy = proxy_factory({"upstream": {"request_timeout": 2, "idle_timeout": 60}})
    k, data = key(), os.urandom(3 * MB)
    put_direct(s3_backend, k, data)
    s3_backend.tap.add_fault(TapFault("stall-response", MB, match=k))
    s3 = proxy.boto3_client(region="us-east-1", config=NO_RETRY)
    started = time.monotonic()
    with pytest.raises((*CUT_ERRORS, ReadTimeoutError)):
        s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
    took = time.monotonic() - started
    assert 1.5 < took < 10, took
    assert "upstream.request_timeout" in proxy.logs()
    s3_backend.tap.release()
    assert_serves_next(proxy, s3_backend)
