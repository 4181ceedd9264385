"""The rewrite core, with botocore as the oracle.

Every case prepares the same call twice: as an unmodified client sends it (no endpoint_url: the request the
proxy receives) and as the SDK sends it when configured the way AWS documents for PrivateLink
(endpoint_url=https://bucket.VPCE, accesspoint.VPCE, control.VPCE). `plan()` of the first must equal the
second in host, path and query. A `before-send` handler captures each request; nothing is sent.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config as BotoConfig
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.config import Config, parse_config
from s3proxy.model import Request, split_target
from s3proxy.rewrite import credential_scope_region, is_dns_safe_bucket, plan

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1", "sa-east-1"]


def vpce_domain(region: str) -> str:
    # A different endpoint id per region, so a region mix-up cannot go unnoticed.
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    rid = f"{zlib.crc32(region.encode()):08x}"
    return f"vpce-0{rid}abcdef0-{region[:2]}k3x9q.s3.{region}.vpce.{suffix}"


def make_config(addressing: str = "path", **extra: Any) -> Config:
    data: dict[str, Any] = {
        "endpoints": {r: vpce_domain(r) for r in REGIONS},
        "addressing": addressing,
        **extra,
    }
    return parse_config(data, base_dir=Path("."), environ={})


class _Captured(Exception):
    pass


@functools.cache
def client(
    service: str,
    region: str,
    endpoint_url: str | None,
    style: str | None,
    dualstack: bool = False,
    regional_us_east_1: bool = False,
    sigv4: bool = False,
) -> Any:
    s3cfg: dict[str, Any] = {}
    if style:
        s3cfg["addressing_style"] = style
    if dualstack:
        s3cfg["use_dualstack_endpoint"] = True
    if regional_us_east_1:
        s3cfg["us_east_1_regional_endpoint"] = "regional"
    c = boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=BotoConfig(
            s3=s3cfg or None, retries={"max_attempts": 0}, signature_version="s3v4" if sigv4 else None
        ),
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    c.meta.events.register("before-send", capture)
    return c


def prepared(c: Any, op: str, kwargs: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]]]:
    """(method, url, headers) of the request botocore would send."""
    if op.startswith("presign:"):
        url = c.generate_presigned_url(op.split(":", 1)[1], Params=kwargs, ExpiresIn=900)
        return "GET", url, []
    try:
        getattr(c, op)(**kwargs)
    except _Captured as e:
        r = e.args[0]
        headers = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in r.headers.items()]
        return r.method, r.url, headers
    raise AssertionError("request was not captured")


def to_request(method: str, url: str, headers: list[tuple[str, str]]) -> Request:
    parts = urlsplit(url)
    rest = url.split("://", 1)[1]
    target = rest[rest.find("/") :] if "/" in rest else "/"
    path, query, has_query = split_target(target)
    return Request(
        method, parts.scheme, parts.hostname or "", parts.port, path, query, tuple(headers), has_query
    )


_VOLATILE = ("X-Amz-Signature", "X-Amz-Date", "Signature", "Expires")  # SigV4 and SigV2 presigning


def comparable_query(query: str) -> str:
    """The query with what differs between two signings removed (signature, timestamp, credential date)."""
    out = []
    for param in query.split("&") if query else []:
        name, _, value = param.partition("=")
        if name in _VOLATILE:
            continue
        if name == "X-Amz-Credential":
            akid, _, rest = value.partition("%2F")
            value = akid + "%2F" + rest.partition("%2F")[2]  # drop the date
        out.append(f"{name}={value}" if _ else name)
    return "&".join(out)


def upstream_of(
    method: str, url: str, headers: list[tuple[str, str]], cfg: Config, learned: str | None = None
) -> tuple[str, str, str]:
    # `learned`: the bucket's region as the proxy would have learned it from S3 (x-amz-bucket-region).
    # Only SigV2 presigned URLs on the legacy global name need it: they carry no region at all.
    p = plan(to_request(method, url, headers), cfg, learned_region=lambda _bucket: learned)
    assert p.action == "forward", (url, p.error)
    assert p.upstream_host is not None
    return p.upstream_host, p.upstream_path, comparable_query(p.upstream_query)


def sdk_target(url: str) -> tuple[str, str, str]:
    req = to_request("GET", url, [])
    return req.host, req.path, comparable_query(req.query)


# ------------------------------------------------------------------------------------------ the matrix

BUCKETS = [
    "my-bucket",
    "my.dotted.bucket",
    "bucket123",
    "abc",
    "b" + "0123456789" * 6 + "yz",  # 63 characters
    "192.168.5.4",  # IP-like: never virtual-hosted
    "Legacy_Bucket",  # legacy us-east-1 name: path style only
    "123456",
    "xn--bucket-s3alias",
]
KEYS = [
    "plain.txt",
    "a b",
    "ü/日本語 ファイル.txt",
    "a+b=c",
    "100%",
    "x~y",
    "a//b",
    "a/./b/../c",
    "dir/",
    "/",
    "/leading",
    " ",
    "a?b#c&d=e;f",
    "quote'\"<>`{}|\\^",
    "tab\tand\x7f",
    "%2B%20already-encoded",
]

Op = tuple[str, Callable[[str, str], dict[str, Any]]]
OPS: list[Op] = [
    ("get_object", lambda b, k: {"Bucket": b, "Key": k}),
    ("get_object", lambda b, k: {"Bucket": b, "Key": k, "Range": "bytes=0-9", "VersionId": "v+1/2="}),
    ("put_object", lambda b, k: {"Bucket": b, "Key": k, "Body": b"data"}),
    ("head_object", lambda b, k: {"Bucket": b, "Key": k}),
    ("delete_object", lambda b, k: {"Bucket": b, "Key": k}),
    ("list_objects_v2", lambda b, k: {"Bucket": b, "Prefix": k, "Delimiter": "/"}),
    (
        "list_objects_v2",
        lambda b, k: {"Bucket": b, "Prefix": k, "ContinuationToken": "1x+/a==", "MaxKeys": 7},
    ),
    ("list_objects", lambda b, k: {"Bucket": b, "Marker": k}),
    ("delete_objects", lambda b, k: {"Bucket": b, "Delete": {"Objects": [{"Key": k}]}}),
    ("create_multipart_upload", lambda b, k: {"Bucket": b, "Key": k}),
    (
        "upload_part",
        lambda b, k: {"Bucket": b, "Key": k, "PartNumber": 3, "UploadId": "up+/id=", "Body": b"x"},
    ),
    (
        "complete_multipart_upload",
        lambda b, k: {
            "Bucket": b,
            "Key": k,
            "UploadId": "up id",
            "MultipartUpload": {"Parts": [{"ETag": '"e"', "PartNumber": 1}]},
        },
    ),
    ("get_object_tagging", lambda b, k: {"Bucket": b, "Key": k}),
    (
        "put_object_tagging",
        lambda b, k: {"Bucket": b, "Key": k, "Tagging": {"TagSet": [{"Key": "t", "Value": "v"}]}},
    ),
    ("copy_object", lambda b, k: {"Bucket": b, "Key": k + ".copy", "CopySource": {"Bucket": b, "Key": k}}),
    ("head_bucket", lambda b, k: {"Bucket": b}),
    ("get_bucket_location", lambda b, k: {"Bucket": b}),
    ("get_bucket_versioning", lambda b, k: {"Bucket": b}),
    ("list_object_versions", lambda b, k: {"Bucket": b, "Prefix": k, "KeyMarker": k}),
    ("presign:get_object", lambda b, k: {"Bucket": b, "Key": k}),
    ("presign:put_object", lambda b, k: {"Bucket": b, "Key": k}),
    ("presign:get_object", lambda b, k: {"Bucket": b, "Key": k, "ResponseContentDisposition": "inline; a=b"}),
]

# Client flavours: (name, addressing_style, dualstack, us_east_1_regional, sigv4 presigning)
STYLES = [
    ("default", None, False, False, False),
    ("path", "path", False, False, False),
    ("virtual", "virtual", False, False, False),
    ("auto", "auto", False, False, False),
    ("dualstack", None, True, False, False),
    ("dualstack-path", "path", True, False, False),
    ("regional-us-east-1", None, False, True, False),
    ("sigv4", None, False, False, True),
    ("sigv4-path", "path", False, False, True),
]


@pytest.mark.parametrize("addressing", ["path", "virtual"])
@pytest.mark.parametrize("style", STYLES, ids=[s[0] for s in STYLES])
@pytest.mark.parametrize("region", REGIONS)
def test_bucket_operations_match_botocore_with_vpce_endpoint_url(
    region: str, style: tuple[str, str | None, bool, bool, bool], addressing: str
) -> None:
    _, client_style, dualstack, regional, sigv4 = style
    cfg = make_config(addressing)
    default = client("s3", region, None, client_style, dualstack, regional, sigv4)
    vpce = client("s3", region, f"https://bucket.{vpce_domain(region)}", addressing, sigv4=sigv4)
    mismatches = []
    count = 0
    # Every op with a rotating window of keys and buckets: over the matrix each op meets every key and bucket.
    shift = REGIONS.index(region) * 3 + STYLES.index(style) * 5 + (addressing == "virtual")
    for i, (op, make_kwargs) in enumerate(OPS):
        for j in range(6):
            key = KEYS[(shift + i + j) % len(KEYS)]
            bucket = BUCKETS[(shift + 2 * i + j) % len(BUCKETS)]
            kwargs = make_kwargs(bucket, key)
            sent = prepared(default, op, kwargs)
            want = sdk_target(prepared(vpce, op, kwargs)[1])
            got = upstream_of(*sent, cfg, region)
            count += 1
            if got != want:
                mismatches.append((op, bucket, key, sent[1], got, want))
    assert count == 6 * len(OPS)
    assert not mismatches, "\n".join(map(repr, mismatches[:10]))


@pytest.mark.parametrize("addressing", ["path", "virtual"])
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_every_bucket_name_in_every_region(region: str, bucket: str, addressing: str) -> None:
    cfg = make_config(addressing)
    vpce = client("s3", region, f"https://bucket.{vpce_domain(region)}", addressing)
    for style in ("virtual", "path"):
        default = client("s3", region, None, style)
        for key in ("k", "a b/ü+%", "dir/"):
            for op in ("get_object", "presign:get_object"):
                kwargs = {"Bucket": bucket, "Key": key}
                assert upstream_of(*prepared(default, op, kwargs), cfg, region) == sdk_target(
                    prepared(vpce, op, kwargs)[1]
                )
        kwargs = {"Bucket": bucket, "Prefix": "p/", "Delimiter": "/"}
        sent = prepared(default, "list_objects_v2", kwargs)
        assert upstream_of(*sent, cfg) == sdk_target(prepared(vpce, "list_objects_v2", kwargs)[1])


@pytest.mark.parametrize("style", STYLES, ids=[s[0] for s in STYLES])
@pytest.mark.parametrize("region", REGIONS)
def test_list_buckets(region: str, style: tuple[str, str | None, bool, bool, bool]) -> None:
    _, client_style, dualstack, regional, sigv4 = style
    cfg = make_config()
    sent = prepared(client("s3", region, None, client_style, dualstack, regional, sigv4), "list_buckets", {})
    want = prepared(client("s3", region, f"https://bucket.{vpce_domain(region)}", "path"), "list_buckets", {})
    assert upstream_of(*sent, cfg) == sdk_target(want[1])
    assert plan(to_request(*sent), cfg).family == "list-buckets"


ACCESS_POINT_OPS: list[Op] = [
    ("get_object", lambda a, k: {"Bucket": a, "Key": k}),
    ("put_object", lambda a, k: {"Bucket": a, "Key": k, "Body": b"x"}),
    ("head_object", lambda a, k: {"Bucket": a, "Key": k}),
    ("list_objects_v2", lambda a, k: {"Bucket": a, "Prefix": k}),
    ("delete_objects", lambda a, k: {"Bucket": a, "Delete": {"Objects": [{"Key": k}]}}),
    ("get_object_tagging", lambda a, k: {"Bucket": a, "Key": k}),
    ("presign:get_object", lambda a, k: {"Bucket": a, "Key": k}),
]


@pytest.mark.parametrize("dualstack", [False, True])
@pytest.mark.parametrize("region", REGIONS)
def test_access_point_arns_match_botocore(region: str, dualstack: bool) -> None:
    partition = (
        "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov") else "aws"
    )
    cfg = make_config()
    default = client("s3", region, None, None, dualstack)
    vpce = client("s3", region, f"https://accesspoint.{vpce_domain(region)}", None)
    for name in ("myap", "ap-2-logs"):
        arn = f"arn:{partition}:s3:{region}:123456789012:accesspoint/{name}"
        for op, make_kwargs in ACCESS_POINT_OPS:
            for key in ("k", "a b/ü+%", "x//y/./z"):
                kwargs = make_kwargs(arn, key)
                sent = prepared(default, op, kwargs)
                assert ".s3-accesspoint." in sent[1]
                got = upstream_of(*sent, cfg, region)
                assert got == sdk_target(prepared(vpce, op, kwargs)[1]), (op, sent[1])
                assert plan(to_request(*sent), cfg).family == "access-point"


CONTROL_OPS: list[tuple[str, dict[str, Any]]] = [
    ("list_access_points", {"AccountId": "123456789012"}),
    (
        "list_access_points",
        {"AccountId": "123456789012", "Bucket": "my-bucket", "NextToken": "t+/=", "MaxResults": 5},
    ),
    ("get_public_access_block", {"AccountId": "123456789012"}),
    ("get_access_point", {"AccountId": "123456789012", "Name": "myap"}),
    ("get_access_point_policy", {"AccountId": "123456789012", "Name": "my-ap"}),
    ("create_access_point", {"AccountId": "123456789012", "Name": "myap", "Bucket": "my-bucket"}),
    ("delete_access_point", {"AccountId": "123456789012", "Name": "myap"}),
    ("list_jobs", {"AccountId": "123456789012", "JobStatuses": ["Active", "New"]}),
    ("describe_job", {"AccountId": "123456789012", "JobId": "00e123a4-c0d8-41f4-a0eb-b46f9ba5b07c"}),
]


@pytest.mark.parametrize("dualstack", [False, True])
@pytest.mark.parametrize("region", REGIONS)
def test_s3_control_matches_botocore(region: str, dualstack: bool) -> None:
    cfg = make_config()
    default = client("s3control", region, None, None, dualstack)
    vpce = client("s3control", region, f"https://control.{vpce_domain(region)}", None)
    for op, kwargs in CONTROL_OPS:
        sent = prepared(default, op, kwargs)
        assert ".s3-control." in sent[1]
        assert upstream_of(*sent, cfg) == sdk_target(prepared(vpce, op, kwargs)[1]), (op, sent[1])
        assert plan(to_request(*sent), cfg).family == "s3-control"


# ------------------------------------------------------------------------------------ region choice


def _req(
    host: str, target: str = "/", headers: tuple[tuple[str, str], ...] = (), method: str = "GET"
) -> Request:
    path, query, has_query = split_target(target)
    return Request(method, "https", host, None, path, query, headers, has_query)


def _auth(region: str) -> tuple[tuple[str, str], ...]:
    return (
        (
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/{region}/s3/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        ),
    )


@pytest.mark.parametrize(
    ("host", "target", "headers", "buckets", "learned", "region", "source"),
    [
        ("b-1.s3.amazonaws.com", "/k", _auth("eu-west-1"), {}, None, "eu-west-1", "credential-scope"),
        (
            "s3.amazonaws.com",
            "/b-1/k",
            _auth("sa-east-1"),
            {"b-1": "eu-west-1"},
            None,
            "sa-east-1",
            "credential-scope",
        ),
        ("b-1.s3.amazonaws.com", "/k", (), {"b-1": "eu-west-1"}, "sa-east-1", "eu-west-1", "buckets-map"),
        ("s3.amazonaws.com", "/b-1/k", (), {}, "ap-southeast-2", "ap-southeast-2", "learned"),
        ("s3.amazonaws.com", "/b-1/k", (), {}, None, "us-east-1", "default_region"),
        ("s3.amazonaws.com", "/b-1/k", (), {}, "garbage region", "us-east-1", "default_region"),
        (
            "s3.amazonaws.com",
            "/b-1/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20240101%2Feu-west-1%2Fs3%2Faws4_request",
            (),
            {},
            None,
            "eu-west-1",
            "credential-scope",
        ),
        # SigV2 and SigV4A carry no region: fall through.
        (
            "s3.amazonaws.com",
            "/b-1/k",
            (("Authorization", "AWS AKID:c2lnbmF0dXJl"),),
            {},
            None,
            "us-east-1",
            "default_region",
        ),
        (
            "s3.amazonaws.com",
            "/b-1/k",
            (("Authorization", "AWS4-ECDSA-P256-SHA256 Credential=AKID/20240101/s3/aws4_request, S=x"),),
            {"b-1": "sa-east-1"},
            None,
            "sa-east-1",
            "buckets-map",
        ),
        # A regional name always wins.
        (
            "b-1.s3.eu-west-1.amazonaws.com",
            "/k",
            _auth("sa-east-1"),
            {"b-1": "sa-east-1"},
            None,
            "eu-west-1",
            "host",
        ),
        ("s3-external-1.amazonaws.com", "/b-1/k", (), {"b-1": "sa-east-1"}, None, "us-east-1", "host"),
        ("b-1.s3-sa-east-1.amazonaws.com", "/k", (), {}, None, "sa-east-1", "host"),
        ("s3.amazonaws.com", "/", _auth("ap-southeast-2"), {}, None, "ap-southeast-2", "credential-scope"),
        ("s3.amazonaws.com", "/", (), {}, "eu-west-1", "us-east-1", "default_region"),
    ],
)
def test_region_choice(
    host: str,
    target: str,
    headers: tuple[tuple[str, str], ...],
    buckets: dict[str, str],
    learned: str | None,
    region: str,
    source: str,
) -> None:
    cfg = make_config(buckets=buckets)
    asked: list[str] = []

    def learned_region(bucket: str) -> str | None:
        asked.append(bucket)
        return learned

    p = plan(_req(host, target, headers), cfg, learned_region=learned_region)
    assert (p.region, p.region_source) == (region, source)
    assert p.action == "forward"
    assert p.endpoint is not None and p.endpoint.region == region
    assert p.upstream_host is not None and p.upstream_host.endswith(vpce_domain(region))


def test_default_region_setting() -> None:
    cfg = make_config(default_region="eu-west-1")
    p = plan(_req("s3.amazonaws.com", "/b-1/k"), cfg)
    assert (p.region, p.region_source, p.upstream_host) == (
        "eu-west-1",
        "default_region",
        f"bucket.{vpce_domain('eu-west-1')}",
    )


def test_credential_scope_region_parsing() -> None:
    assert credential_scope_region(_req("s3.amazonaws.com", "/", _auth("eu-west-1"))) == "eu-west-1"
    q = "/k?X-Amz-Credential=AKID%2F20240101%2Fcn-north-1%2Fs3%2Faws4_request"
    assert credential_scope_region(_req("s3.amazonaws.com", q)) == "cn-north-1"
    assert credential_scope_region(_req("s3.amazonaws.com", "/k?X-Amz-Credential=%2F%2F")) is None
    assert (
        credential_scope_region(
            _req("s3.amazonaws.com", "/k?X-Amz-Credential=A/B/not a region/s3/aws4_request")
        )
        is None
    )
    assert (
        credential_scope_region(_req("s3.amazonaws.com", "/k", (("Authorization", "AWS4-HMAC-SHA256 junk"),)))
        is None
    )


# --------------------------------------------------------------------------------- byte preservation


@pytest.mark.parametrize(
    ("host", "target", "addressing", "up_host", "up_target"),
    [
        ("b-1.s3.eu-west-1.amazonaws.com", "/a%2Bb%20c", "path", "bucket.V", "/b-1/a%2Bb%20c"),
        ("b-1.s3.eu-west-1.amazonaws.com", "/a+b", "path", "bucket.V", "/b-1/a+b"),
        ("b-1.s3.eu-west-1.amazonaws.com", "//x/./y/../z/", "path", "bucket.V", "/b-1//x/./y/../z/"),
        ("b-1.s3.eu-west-1.amazonaws.com", "/日本", "path", "bucket.V", "/b-1/日本"),
        ("b-1.s3.eu-west-1.amazonaws.com", "/%E6%97%A5", "virtual", "b-1.bucket.V", "/%E6%97%A5"),
        ("b-1.s3.eu-west-1.amazonaws.com", "/", "path", "bucket.V", "/b-1"),
        ("b-1.s3.eu-west-1.amazonaws.com", "/?", "path", "bucket.V", "/b-1?"),
        ("b-1.s3.eu-west-1.amazonaws.com", "/?delete", "path", "bucket.V", "/b-1?delete"),
        (
            "b-1.s3.eu-west-1.amazonaws.com",
            "/?a=%2b&a=%2B&b&=c",
            "virtual",
            "b-1.bucket.V",
            "/?a=%2b&a=%2B&b&=c",
        ),
        ("b-1.s3.eu-west-1.amazonaws.com", "/k?", "path", "bucket.V", "/b-1/k?"),
        ("b-1.s3.eu-west-1.amazonaws.com", "/~k", "path", "bucket.V", "/b-1/~k"),
        ("s3.eu-west-1.amazonaws.com", "/b-1", "virtual", "b-1.bucket.V", "/"),
        ("s3.eu-west-1.amazonaws.com", "/b-1/", "virtual", "b-1.bucket.V", "/"),
        ("s3.eu-west-1.amazonaws.com", "/b-1/", "path", "bucket.V", "/b-1/"),
        ("s3.eu-west-1.amazonaws.com", "/b-1//", "virtual", "b-1.bucket.V", "//"),
        ("s3.eu-west-1.amazonaws.com", "/b-1/a/../../x", "virtual", "b-1.bucket.V", "/a/../../x"),
        ("s3.eu-west-1.amazonaws.com", "/B_1/k", "virtual", "bucket.V", "/B_1/k"),
        ("s3.eu-west-1.amazonaws.com", "/b%2D1/k", "virtual", "bucket.V", "/b%2D1/k"),
        ("s3.eu-west-1.amazonaws.com", "/a.b/k", "virtual", "bucket.V", "/a.b/k"),
        ("s3.eu-west-1.amazonaws.com", "/1.2.3.4/k", "virtual", "bucket.V", "/1.2.3.4/k"),
        ("a.b.s3.eu-west-1.amazonaws.com", "/k", "virtual", "bucket.V", "/a.b/k"),
        ("B-1.S3.EU-WEST-1.AMAZONAWS.COM", "/K", "path", "bucket.V", "/b-1/K"),
        ("b-1.s3.eu-west-1.amazonaws.com.", "/k", "path", "bucket.V", "/b-1/k"),
        ("b-1.s3.dualstack.eu-west-1.amazonaws.com", "/k", "virtual", "b-1.bucket.V", "/k"),
        ("b-1.s3-eu-west-1.amazonaws.com", "/k", "path", "bucket.V", "/b-1/k"),
        ("s3-eu-west-1.amazonaws.com", "/", "path", "bucket.V", "/"),
        (
            "s3.dualstack.eu-west-1.amazonaws.com",
            "/?x-id=ListBuckets",
            "path",
            "bucket.V",
            "/?x-id=ListBuckets",
        ),
        (
            "myap-123456789012.s3-accesspoint.eu-west-1.amazonaws.com",
            "/k%2F",
            "path",
            "myap-123456789012.accesspoint.V",
            "/k%2F",
        ),
        (
            "123456789012.s3-control.eu-west-1.amazonaws.com",
            "/v20180820/mrap/instances",
            "path",
            "123456789012.control.V",
            "/v20180820/mrap/instances",
        ),
        ("s3-control.eu-west-1.amazonaws.com", "/v20180820/x", "path", "control.V", "/v20180820/x"),
    ],
)
def test_upstream_target_is_byte_exact(
    host: str, target: str, addressing: str, up_host: str, up_target: str
) -> None:
    p = plan(_req(host, target), make_config(addressing))
    assert p.action == "forward", p.error
    assert p.upstream_host == up_host.replace("V", vpce_domain("eu-west-1"))
    assert p.upstream_target == up_target
    assert p.upstream_url == f"https://{p.upstream_host}{up_target}"


def test_plain_http_goes_upstream_as_https() -> None:
    req = Request("PUT", "http", "b-1.s3.eu-west-1.amazonaws.com", 80, "/k", "", ())
    p = plan(req, make_config())
    assert p.upstream_url == f"https://bucket.{vpce_domain('eu-west-1')}/b-1/k"


def test_zonal_preference_does_not_change_the_host_name() -> None:
    cfg = parse_config(
        {
            "endpoints": {
                "eu-west-1": {
                    "dns_name": "*.vpce-0e25b8cdd720f900e-argc85vg.s3.eu-west-1.vpce.amazonaws.com",
                    "zones": ["eu-west-1a", "eu-west-1b"],
                    "prefer_zone": "eu-west-1b",
                }
            }
        },
        base_dir=Path("."),
        environ={},
    )
    p = plan(_req("b-1.s3.eu-west-1.amazonaws.com", "/k"), cfg)
    # SNI and Host use the regional name; zonal names only decide which addresses to dial (resolver).
    assert p.upstream_host == "bucket.vpce-0e25b8cdd720f900e-argc85vg.s3.eu-west-1.vpce.amazonaws.com"


@pytest.mark.parametrize(
    ("bucket", "safe"),
    [
        ("abc", True),
        ("my-bucket", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("ab", False),
        ("my.bucket", False),
        ("My-Bucket", False),
        ("my_bucket", False),
        ("-abc", False),
        ("abc-", False),
        ("1.2.3.4", False),
        ("123", True),
        ("", False),
        ("a%2Db", False),
    ],
)
def test_dns_safe_bucket(bucket: str, safe: bool) -> None:
    assert is_dns_safe_bucket(bucket) is safe


# --------------------------------------------------------------------------------- refusals


UNSUPPORTED_HOSTS = [
    ("s3-fips.us-east-1.amazonaws.com", "fips"),
    ("b-1.s3-fips.us-east-1.amazonaws.com", "fips"),
    ("s3-fips.dualstack.us-gov-west-1.amazonaws.com", "fips"),
    ("s3-fips-us-gov-west-1.amazonaws.com", "fips"),
    ("123456789012.s3-control-fips.us-east-1.amazonaws.com", "fips"),
    ("ap-123456789012.s3-accesspoint-fips.dualstack.us-east-1.amazonaws.com", "fips"),
    ("b-1.s3-website-us-east-1.amazonaws.com", "website"),
    ("b-1.s3-website.eu-west-1.amazonaws.com", "website"),
    ("b-1.s3-accelerate.amazonaws.com", "accelerate"),
    ("b-1.s3-accelerate.dualstack.amazonaws.com", "accelerate"),
    ("mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com", "mrap"),
    ("b--usw2-az1--x-s3.s3express-usw2-az1.us-west-2.amazonaws.com", "s3express"),
    ("s3express-control.us-west-2.amazonaws.com", "s3express"),
    ("b--usw2-az1--x-s3.s3.us-west-2.amazonaws.com", "s3express"),
    ("ap-123456789012.op-01ac5d28a6a232904.s3-outposts.us-west-2.amazonaws.com", "outposts"),
    ("s3-outposts.us-west-2.amazonaws.com", "outposts"),
    ("olap-123456789012.s3-object-lambda.us-east-1.amazonaws.com", "object-lambda"),
    ("olap-123456789012.s3-object-lambda-fips.us-east-1.amazonaws.com", "fips"),
]


@pytest.mark.parametrize(("host", "family"), UNSUPPORTED_HOSTS)
def test_unsupported_families_are_rejected_by_default(host: str, family: str) -> None:
    p = plan(_req(host, "/k"), make_config())
    assert (p.action, p.family) == ("reject", family)
    assert p.error is not None and p.error.status == 400 and p.error.code == "InvalidRequest"
    assert family in p.error.message and "PrivateLink" in p.error.message
    assert f"unsupported.{family}: passthrough" in p.error.message
    assert p.upstream_host is None


def test_fips_message_says_no_silent_downgrade() -> None:
    p = plan(_req("s3-fips.us-east-1.amazonaws.com", "/b/k"), make_config())
    assert p.error is not None
    assert "no FIPS variant" in p.error.message and "downgrade" in p.error.message


@pytest.mark.parametrize(("host", "family"), UNSUPPORTED_HOSTS)
def test_unsupported_passthrough(host: str, family: str) -> None:
    p = plan(_req(host, "/k%2B?x=1"), make_config(unsupported="passthrough"))
    assert (p.action, p.family, p.passthrough_host) == ("passthrough", family, host)
    assert p.upstream_url == f"https://{host}/k%2B?x=1"


def test_unsupported_per_family_actions() -> None:
    cfg = make_config(unsupported={"website": "passthrough"})
    assert plan(_req("b-1.s3-website-us-east-1.amazonaws.com", "/"), cfg).action == "passthrough"
    assert plan(_req("s3-fips.us-east-1.amazonaws.com", "/b/k"), cfg).action == "reject"


@pytest.mark.parametrize(
    "host",
    [
        "b-1.s3.eu-central-1.amazonaws.com",
        "s3.me-south-1.amazonaws.com",
        "x-123456789012.s3-accesspoint.ca-central-1.amazonaws.com",
    ],
)
def test_region_without_endpoint_fails_closed(host: str) -> None:
    p = plan(_req(host, "/b-2/k"), make_config())
    assert p.action == "reject" and p.error is not None
    assert p.error.status == 400 and p.error.code == "InvalidRequest"
    assert p.region is not None and f"endpoints.{p.region}" in p.error.message
    p2 = plan(_req(host, "/b-2/k"), make_config(unknown_region="passthrough"))
    assert (p2.action, p2.passthrough_host, p2.upstream_target) == ("passthrough", host, "/b-2/k")


def test_legacy_global_default_region_without_endpoint() -> None:
    cfg = make_config(default_region="eu-central-1")
    p = plan(_req("s3.amazonaws.com", "/b/k"), cfg)
    assert p.action == "reject" and p.error is not None
    assert "eu-central-1" in p.error.message and "default_region" in p.error.message


GARBAGE_HOSTS = [
    "",
    " ",
    "example.com",
    "127.0.0.1",
    "[::1]",
    "::1",
    "10.0.0.1:443",
    "a" * 300 + ".s3.amazonaws.com",
    ("a" * 63 + ".") * 5 + "s3.amazonaws.com",
    "x" * 100_000,
    "..s3.amazonaws.com",
    "b..c.s3.us-east-1.amazonaws.com",
    "-.s3.amazonaws.com",
    "b c.s3.amazonaws.com",
    "b/c.s3.amazonaws.com",
    "s3.amazonaws.com.evil.example",
    "s3.amazonaws.co",
    "amazonaws.com",
    "ec2.us-east-1.amazonaws.com",
    "s3.cn-north-1.amazonaws.com",  # China regions exist only under amazonaws.com.cn
    "s3.us-east-1.amazonaws.com.cn",
    "vpce-0123-abcd.ec2.us-east-1.vpce.amazonaws.com",
    "s3.not_a_region.amazonaws.com",
    "b.s3.ünïcode.amazonaws.com",
    "\x00.s3.amazonaws.com",
    "s3.amazonaws.com:99999999",
    "a.b.s3-accesspoint.us-east-1.amazonaws.com",
    "notanaccount.s3-control.us-east-1.amazonaws.com",
]


@pytest.mark.parametrize("host", GARBAGE_HOSTS, ids=range(len(GARBAGE_HOSTS)))
def test_garbage_hosts_are_refused_clearly(host: str) -> None:
    p = plan(_req(host, "/b/k"), make_config())
    assert (p.action, p.family) == ("reject", "not-s3")
    assert p.error is not None and p.error.status == 400 and p.error.code == "InvalidRequest"
    assert "S3" in p.error.message and len(p.error.message) < 400


def test_empty_bucket_and_bad_paths() -> None:
    p = plan(_req("s3.us-east-1.amazonaws.com", "//k"), make_config())
    assert p.action == "reject" and p.error is not None and p.error.code == "InvalidBucketName"
    p = plan(_req("b-1.s3.us-east-1.amazonaws.com", "*"), make_config())
    assert p.action == "reject"
    p = plan(Request("GET", "https", "b-1.s3.us-east-1.amazonaws.com", None, "", "", ()), make_config())
    assert p.action == "forward" and p.upstream_target == "/b-1"


def test_vpce_hosts_pass_through_unchanged() -> None:
    host = f"b-1.bucket.{vpce_domain('eu-west-1')}"
    p = plan(_req(host, "/k?x"), make_config())
    assert (p.action, p.family, p.passthrough_host, p.region) == ("passthrough", "vpce", host, "eu-west-1")
    assert p.upstream_url == f"https://{host}/k?x"


_HOSTISH = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[a-zA-Z0-9.\-_]{0,40}\.s3[.\-][a-z0-9.\-]{0,30}amazonaws\.com(\.cn)?\.?", fullmatch=True),
    st.sampled_from([h for h, _ in UNSUPPORTED_HOSTS] + GARBAGE_HOSTS[:10]),
)


@settings(max_examples=300, deadline=None)
@given(
    host=_HOSTISH,
    path=st.text(max_size=60),
    query=st.text(max_size=40),
    auth=st.text(max_size=80),
    addressing=st.sampled_from(["path", "virtual"]),
)
def test_plan_never_raises(host: str, path: str, query: str, auth: str, addressing: str) -> None:
    cfg = _CFGS[addressing]
    p = plan(Request("GET", "https", host, None, path, query, (("Authorization", auth),)), cfg)
    if p.action == "reject":
        assert p.error is not None and p.error.status == 400 and p.upstream_host is None
    elif p.action == "forward":
        assert p.endpoint is not None and p.upstream_host is not None
        assert p.upstream_host.endswith(p.endpoint.domain())
        assert p.upstream_query == query
    else:
        assert p.passthrough_host


_CFGS = {"path": make_config("path"), "virtual": make_config("virtual")}
