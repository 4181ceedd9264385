"""Access-log records: operation names (botocore as oracle), fields from real engine decisions, and the
promise that no secret, signature, credential or session token ever reaches a formatted line."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config as BotoConfig
from hypothesis import given
from hypothesis import strategies as st

from s3proxy.accesslog import (
    AccessRecord,
    as_dict,
    build_record,
    format_json,
    format_text,
    operation_name,
    redact_key,
)
from s3proxy.config import parse_config
from s3proxy.engine import Decision, Engine
from s3proxy.errors import S3Error
from s3proxy.hosts import classify
from s3proxy.model import Request
from s3proxy.signing import signer_from_config

AKID = "AKIDEXAMPLEACCESSLOG"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKENdGhpcyBpcyBhIHRva2Vu"
FROZEN = datetime.datetime(2024, 7, 1, 12, 30, 45)
NOW = FROZEN.replace(tzinfo=datetime.UTC)
VPCE = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"

CONFIG = parse_config(
    {
        "endpoints": {
            "us-east-1": VPCE,
            "eu-west-1": "vpce-0e25b8cdd720f900e-argc85vg.s3.eu-west-1.vpce.amazonaws.com",
        },
        "signing": {"keys": [{"access_key_id": AKID, "secret_access_key": SECRET}]},
    },
    base_dir=Path("."),
    environ={},
)
ENGINE = Engine(CONFIG, signer_from_config(CONFIG.signing))
_SESSION = botocore.session.get_session()
FIELDS = {
    "time", "client_address", "client_port", "method", "host", "family", "operation", "bucket", "key",
    "region", "endpoint", "endpoint_id", "endpoint_address", "action", "signing", "status",
    "upstream_status", "bytes_in", "bytes_out", "duration_ms", "request_id", "host_id", "error_code",
    "refusal",
}  # fmt: skip


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        return iter(())

    def read(self, *_: Any, **__: Any) -> bytes:
        return b""


def _client(region: str = "us-east-1", token: str | None = None, **config: Any) -> Any:
    return _SESSION.create_client(
        "s3",
        region_name=region,
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        aws_session_token=token,
        config=BotoConfig(**config),
    )


def request_of(method: str, url: str, headers: tuple[tuple[str, str], ...] = ()) -> Request:
    parts = urlsplit(url)
    assert parts.hostname is not None
    return Request(
        method=method,
        scheme=parts.scheme,
        host=parts.hostname,
        port=parts.port,
        path=parts.path,
        query=parts.query,
        headers=(("Host", parts.netloc), *headers),
        has_query="?" in url,
    )


def capture(call: Callable[[Any], Any], token: str | None = None, **config: Any) -> Request:
    """The request botocore would send for `call(client)`, without sending it."""
    client = _client(token=token, **config)
    sent: list[Request] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        headers = tuple((k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items())
        sent.append(request_of(request.method, request.url, headers))
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register("before-send", before_send)
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        try:
            call(client)
        except Exception:
            pass
    assert sent, "botocore sent nothing"
    return sent[0]


def presigned(method: str, params: dict[str, Any], token: str | None = TOKEN) -> Request:
    client = _client(token=token, signature_version="s3v4")
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        url = str(client.generate_presigned_url(method, Params=params, ExpiresIn=900))
    return request_of("GET" if method == "get_object" else "PUT", url)


# -- operation names: botocore says which operation it is sending ------------------------------------------

B, K = "my-bucket", "dir/a b+c.txt"
PARTS = {"Parts": [{"PartNumber": 1, "ETag": "e"}]}
BOTO_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("ListBuckets", {}),
    ("ListObjectsV2", {"Bucket": B, "Prefix": "dir/"}),
    ("ListObjects", {"Bucket": B}),
    ("ListObjectVersions", {"Bucket": B}),
    ("ListMultipartUploads", {"Bucket": B}),
    ("HeadBucket", {"Bucket": B}),
    ("CreateBucket", {"Bucket": B}),
    ("DeleteBucket", {"Bucket": B}),
    ("GetBucketLocation", {"Bucket": B}),
    ("GetBucketVersioning", {"Bucket": B}),
    ("GetBucketPolicy", {"Bucket": B}),
    ("GetBucketPolicyStatus", {"Bucket": B}),
    ("GetBucketAcl", {"Bucket": B}),
    ("GetBucketTagging", {"Bucket": B}),
    ("PutBucketTagging", {"Bucket": B, "Tagging": {"TagSet": [{"Key": "k", "Value": "v"}]}}),
    ("DeleteBucketTagging", {"Bucket": B}),
    ("GetBucketCors", {"Bucket": B}),
    ("DeleteBucketCors", {"Bucket": B}),
    ("GetBucketLifecycleConfiguration", {"Bucket": B}),
    ("DeleteBucketLifecycle", {"Bucket": B}),
    ("GetBucketEncryption", {"Bucket": B}),
    ("GetPublicAccessBlock", {"Bucket": B}),
    ("GetObjectLockConfiguration", {"Bucket": B}),
    ("GetBucketOwnershipControls", {"Bucket": B}),
    ("GetBucketNotificationConfiguration", {"Bucket": B}),
    ("GetBucketReplication", {"Bucket": B}),
    ("GetBucketAccelerateConfiguration", {"Bucket": B}),
    ("ListBucketInventoryConfigurations", {"Bucket": B}),
    ("GetBucketInventoryConfiguration", {"Bucket": B, "Id": "inv1"}),
    ("DeleteBucketMetricsConfiguration", {"Bucket": B, "Id": "m1"}),
    ("DeleteObjects", {"Bucket": B, "Delete": {"Objects": [{"Key": "a"}]}}),
    ("GetObject", {"Bucket": B, "Key": K}),
    ("HeadObject", {"Bucket": B, "Key": K}),
    ("PutObject", {"Bucket": B, "Key": K, "Body": b"data"}),
    ("DeleteObject", {"Bucket": B, "Key": K}),
    ("CopyObject", {"Bucket": B, "Key": K, "CopySource": {"Bucket": "src", "Key": "s k"}}),
    ("GetObjectAcl", {"Bucket": B, "Key": K}),
    ("PutObjectAcl", {"Bucket": B, "Key": K, "ACL": "private"}),
    ("GetObjectTagging", {"Bucket": B, "Key": K}),
    ("PutObjectTagging", {"Bucket": B, "Key": K, "Tagging": {"TagSet": []}}),
    ("DeleteObjectTagging", {"Bucket": B, "Key": K}),
    ("GetObjectAttributes", {"Bucket": B, "Key": K, "ObjectAttributes": ["ETag"]}),
    ("GetObjectRetention", {"Bucket": B, "Key": K}),
    ("GetObjectLegalHold", {"Bucket": B, "Key": K}),
    ("RestoreObject", {"Bucket": B, "Key": K, "RestoreRequest": {"Days": 1}}),
    ("CreateMultipartUpload", {"Bucket": B, "Key": K}),
    ("UploadPart", {"Bucket": B, "Key": K, "UploadId": "u1", "PartNumber": 1, "Body": b"x"}),
    (
        "UploadPartCopy",
        {"Bucket": B, "Key": K, "UploadId": "u1", "PartNumber": 2, "CopySource": "src/k"},
    ),
    (
        "CompleteMultipartUpload",
        {"Bucket": B, "Key": K, "UploadId": "u1", "MultipartUpload": PARTS},
    ),
    ("AbortMultipartUpload", {"Bucket": B, "Key": K, "UploadId": "u1"}),
    ("ListParts", {"Bucket": B, "Key": K, "UploadId": "u1"}),
]


@pytest.mark.parametrize("style", ["virtual", "path"])
@pytest.mark.parametrize(("op", "params"), BOTO_CALLS, ids=[c[0] for c in BOTO_CALLS])
def test_operation_matches_botocore(op: str, params: dict[str, Any], style: str) -> None:
    method = _SESSION.get_service_model("s3").operation_model(op).name
    snake = botocore.xform_name(method)
    req = capture(lambda c: getattr(c, snake)(**params), s3={"addressing_style": style})
    target = classify(req.host, req.path)
    assert operation_name(req.method, target.family, target.key, req.query, req.headers) == op


@pytest.mark.parametrize(
    ("method", "family", "key", "query", "expected"),
    [
        ("GET", "access-point", None, "list-type=2", "ListObjectsV2"),
        ("GET", "access-point", "k", "", "GetObject"),
        ("POST", "path-style", None, "", "PostObject"),
        ("POST", "virtual-hosted", "k", "", "PostObject"),
        ("POST", "virtual-hosted", "k", "select&select-type=2", "SelectObjectContent"),
        ("GET", "virtual-hosted", None, "session", "CreateSession"),
        ("PATCH", "virtual-hosted", "k", "", None),
        ("GET", "fips", None, "", None),
        ("GET", "not-s3", "k", "", None),
        ("GET", "s3-control", None, "", None),
        ("POST", "list-buckets", None, "", None),
        ("GET", "virtual-hosted", "", "", "ListObjects"),  # `/` on a bucket host: bucket level
        ("GET", "path-style", None, "analytics", "ListBucketAnalyticsConfigurations"),
        ("PUT", "path-style", None, "analytics&id=a", "PutBucketAnalyticsConfiguration"),
        ("GET", "path-style", None, "uploads&prefix=x", "ListMultipartUploads"),
        ("PUT", "path-style", "k", "uploadId=u&partNumber=3", "UploadPart"),
        ("PUT", "path-style", "k", "uploadId=u", "PutObject"),  # no partNumber: not an UploadPart
    ],
)
def test_operation_table(method: str, family: str, key: str | None, query: str, expected: str | None) -> None:
    assert operation_name(method, family, key, query) == expected


# -- records from real decisions -------------------------------------------------------------------------


def decide(req: Request) -> Decision:
    return ENGINE.decide(req, NOW)


def record(req: Request, **kw: Any) -> AccessRecord:
    d = decide(req)
    defaults: dict[str, Any] = {
        "time": NOW,
        "duration": 0.0125,
        "client": ("10.1.2.3", 50123),
        "status": 200,
        "upstream_status": 200,
        "response_headers": (("x-amz-request-id", "4442587FB7D0A2F9"), ("x-amz-id-2", "vlR7PnpV2Ce81l0P")),
        "bytes_in": 4,
        "bytes_out": 1024,
        "endpoint_address": "10.0.1.5:443",
    }
    return build_record(req, d, **{**defaults, **kw})


def test_get_object_record_has_every_field() -> None:
    req = capture(lambda c: c.get_object(Bucket=B, Key=K))
    rec = record(req)
    obj = json.loads(format_json(rec))
    assert set(obj) == FIELDS
    assert obj == {
        "time": "2024-07-01T12:30:45.000Z",
        "client_address": "10.1.2.3",
        "client_port": 50123,
        "method": "GET",
        "host": "my-bucket.s3.amazonaws.com",
        "family": "virtual-hosted",
        "operation": "GetObject",
        "bucket": "my-bucket",
        "key": "dir/a%20b%2Bc.txt",
        "region": "us-east-1",
        "endpoint": f"bucket.{VPCE}",
        "endpoint_id": "vpce-1a2b3c4d",
        "endpoint_address": "10.0.1.5:443",
        "action": "forward",
        "signing": "resigned",
        "status": 200,
        "upstream_status": 200,
        "bytes_in": 4,
        "bytes_out": 1024,
        "duration_ms": 12.5,
        "request_id": "4442587FB7D0A2F9",
        "host_id": "vlR7PnpV2Ce81l0P",
        "error_code": None,
        "refusal": None,
    }


def test_path_style_put() -> None:
    req = capture(lambda c: c.put_object(Bucket=B, Key="k", Body=b"data"), s3={"addressing_style": "path"})
    rec = record(req)
    assert (rec.family, rec.operation, rec.bucket, rec.key) == ("path-style", "PutObject", B, "k")


def test_list_buckets_has_no_bucket_or_key() -> None:
    rec = record(capture(lambda c: c.list_buckets()))
    assert (rec.family, rec.operation, rec.bucket, rec.key) == ("list-buckets", "ListBuckets", None, None)


def test_refused_signature_is_a_refusal_without_endpoint_address() -> None:
    good = capture(lambda c: c.get_object(Bucket=B, Key=K))
    bad_headers = tuple(
        (k, re.sub(r"Signature=[0-9a-f]{64}", "Signature=" + "0" * 64, v)) for k, v in good.headers
    )
    req = dataclasses.replace(good, headers=bad_headers)
    d = decide(req)
    assert d.action == "reject"
    assert d.error is not None
    rec = build_record(req, d, time=NOW, duration=0.001, response_headers=(("x-amz-request-id", "ABC"),))
    assert rec.action == "reject"
    assert (rec.status, rec.error_code, rec.refusal) == (403, "SignatureDoesNotMatch", "signing")
    assert rec.endpoint is None and rec.endpoint_address is None and rec.upstream_status is None
    assert rec.request_id == "ABC"


def test_unsupported_family_refusal() -> None:
    req = request_of("GET", "https://my-bucket.s3-fips.us-east-1.amazonaws.com/k")
    rec = build_record(req, decide(req), time=NOW, duration=0)
    assert (rec.family, rec.action, rec.status, rec.refusal) == ("fips", "reject", 400, "unsupported-fips")


def test_error_after_decision_counts_as_error() -> None:
    req = capture(lambda c: c.get_object(Bucket=B, Key=K))
    dns = S3Error(503, "ServiceUnavailable", "could not resolve")
    rec = build_record(req, decide(req), time=NOW, duration=2.0, error=dns, refusal="dns")
    got = (rec.action, rec.status, rec.error_code, rec.refusal)
    assert got == ("error", 503, "ServiceUnavailable", "dns")


def test_no_decision_classifies_host_and_path() -> None:
    req = request_of("GET", "https://s3.eu-west-1.amazonaws.com/b/k/x")
    rec = build_record(
        req, None, time=NOW, duration=0, error=S3Error(403, "AccessDenied", "client"), refusal="access"
    )
    got = (rec.family, rec.bucket, rec.key, rec.region, rec.operation)
    assert got == ("path-style", "b", "k/x", "eu-west-1", "GetObject")
    assert (rec.action, rec.status, rec.refusal, rec.signing) == ("reject", 403, "access", None)


def test_redacted_keys() -> None:
    req = capture(lambda c: c.get_object(Bucket=B, Key="payroll/2024/alice.csv"))
    rec = record(req, redact_keys=True)
    assert rec.key == redact_key("payroll/2024/alice.csv")
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", rec.key or "")
    for line in (format_json(rec), format_text(rec)):
        assert "alice" not in line and "payroll" not in line
    # Stable: equal keys give equal values, so one object's requests can still be followed.
    assert record(req, redact_keys=True).key == rec.key
    assert record(capture(lambda c: c.get_object(Bucket=B, Key="other")), redact_keys=True).key != rec.key


# -- no secret, no signature -------------------------------------------------------------------------------

SIGNATURE_LIKE = re.compile(
    r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature=|Credential=|AWS4-HMAC-SHA256|"
    r"Authorization|x-amz-content-sha256|[0-9a-f]{64}|AWSAccessKeyId|Expires=",
    re.IGNORECASE,
)


def _secret_requests() -> list[tuple[str, Request]]:
    return [
        ("presigned-get", presigned("get_object", {"Bucket": B, "Key": K})),
        ("presigned-put-path", presigned("put_object", {"Bucket": B, "Key": "x/y"})),
        ("header-auth-token", capture(lambda c: c.get_object(Bucket=B, Key=K), token=TOKEN)),
        ("put-token", capture(lambda c: c.put_object(Bucket=B, Key=K, Body=b"d"), token=TOKEN)),
        ("list-v2", capture(lambda c: c.list_objects_v2(Bucket=B, Prefix="p"), token=TOKEN)),
        ("part", capture(lambda c: c.upload_part(Bucket=B, Key=K, UploadId="u", PartNumber=1, Body=b"x"))),
    ]


@pytest.mark.parametrize("redact", [False, True])
@pytest.mark.parametrize(("name", "req"), _secret_requests(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_secret_or_signature_in_lines(name: str, req: Request, redact: bool) -> None:
    auth = req.header("authorization") or ""
    assert req.query or auth, "the fixture must carry a signature"
    signature = re.search(r"(?:Signature=|X-Amz-Signature=)([0-9a-f]{64})", auth + "&" + req.query)
    assert signature is not None
    for rec in (record(req, redact_keys=redact), build_record(req, None, time=NOW, duration=0)):
        for line in (format_json(rec), format_text(rec)):
            assert "\n" not in line
            assert SIGNATURE_LIKE.search(line) is None, line
            for secret in (SECRET, TOKEN, signature.group(1), AKID, "X-Amz-Date"):
                assert secret not in line
            # The key field is the path only: no query string of any kind.
            assert "?" not in (json.loads(line)["key"] or "") if line.startswith("{") else True


def test_key_never_contains_query_even_if_given_a_target() -> None:
    req = capture(lambda c: c.get_object(Bucket=B, Key="k"))
    bad = dataclasses.replace(req, path="/k?X-Amz-Signature=" + "a" * 64)
    rec = build_record(bad, None, time=NOW, duration=0)
    assert rec.key == "k"


# -- formatting ----------------------------------------------------------------------------------------------


def _logfmt(line: str) -> dict[str, str]:
    pairs = line.split(" ")
    out = dict(p.split("=", 1) for p in pairs)
    assert len(out) == len(pairs)
    return out


def test_text_form() -> None:
    rec = record(capture(lambda c: c.get_object(Bucket=B, Key=K)))
    fields = _logfmt(format_text(rec))
    assert fields["time"] == "2024-07-01T12:30:45.000Z"
    assert fields["client"] == "10.1.2.3:50123"
    assert fields["op"] == "GetObject"
    assert fields["key"] == "dir/a%20b%2Bc.txt"
    assert fields["status"] == "200" and fields["duration_ms"] == "12.500"
    assert fields["error"] == "-"
    v6 = AccessRecord(time=NOW, method="GET", host="h", client_address="::1", client_port=1)
    assert _logfmt(format_text(v6))["client"] == "[::1]:1"


@given(st.text(max_size=1100), st.text(max_size=40), st.text(max_size=300))
def test_any_client_text_stays_one_parseable_line(key: str, method: str, host: str) -> None:
    rec = AccessRecord(time=NOW, method=method, host=host, key=key, bucket="b")
    line = format_json(rec)
    assert "\n" not in line and "\r" not in line
    line.encode("ascii")  # ensure_ascii: valid everywhere, never a lone surrogate byte
    obj = json.loads(line)
    assert set(obj) == FIELDS
    assert len(obj["key"]) <= 3 * 4 * 1024 + 3
    text = format_text(rec)
    assert "\n" not in text and "\r" not in text
    fields = _logfmt(text)
    assert set(fields) >= {"key", "method", "host"}
    text.encode("utf-8")  # no lone surrogates


def test_surrogate_escaped_bytes_become_percent_escapes() -> None:
    raw = b"caf\xe9\n".decode("utf-8", "surrogateescape")
    rec = AccessRecord(time=NOW, method="GET", host="h", key=raw)
    assert as_dict(rec)["key"] == "caf%E9%0A"


def test_time_is_utc_with_milliseconds() -> None:
    t = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    rec = AccessRecord(time=t, method="GET", host="h")
    assert as_dict(rec)["time"] == "2024-01-02T01:04:05.678Z"
