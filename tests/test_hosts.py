"""Host and path classification, by name only."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3proxy.hosts import (
    S3_CONNECT_PATTERN,
    classify,
    classify_host,
    is_s3_host,
    is_vpce_host,
    normalize_host,
)

# (host, family, region, bucket, prefix, dualstack)
HOSTS = [
    ("s3.amazonaws.com", "service", None, None, None, False),
    ("my-bucket.s3.amazonaws.com", "bucket-host", None, "my-bucket", None, False),
    ("my.dotted.bucket.s3.amazonaws.com", "bucket-host", None, "my.dotted.bucket", None, False),
    ("s3-external-1.amazonaws.com", "service", "us-east-1", None, None, False),
    ("b.s3-external-1.amazonaws.com", "bucket-host", "us-east-1", "b", None, False),
    ("s3.us-east-1.amazonaws.com", "service", "us-east-1", None, None, False),
    ("s3.eu-west-1.amazonaws.com", "service", "eu-west-1", None, None, False),
    ("bkt.s3.eu-west-1.amazonaws.com", "bucket-host", "eu-west-1", "bkt", None, False),
    ("s3-eu-west-1.amazonaws.com", "service", "eu-west-1", None, None, False),
    ("bkt.s3-us-west-2.amazonaws.com", "bucket-host", "us-west-2", "bkt", None, False),
    ("s3.dualstack.ap-southeast-2.amazonaws.com", "service", "ap-southeast-2", None, None, True),
    ("bkt.s3.dualstack.ap-southeast-2.amazonaws.com", "bucket-host", "ap-southeast-2", "bkt", None, True),
    ("s3.s3.us-east-1.amazonaws.com", "bucket-host", "us-east-1", "s3", None, False),
    ("x.s3.s3.us-east-1.amazonaws.com", "bucket-host", "us-east-1", "x.s3", None, False),
    ("s3.cn-north-1.amazonaws.com.cn", "service", "cn-north-1", None, None, False),
    ("bkt.s3.cn-northwest-1.amazonaws.com.cn", "bucket-host", "cn-northwest-1", "bkt", None, False),
    ("bkt.s3.dualstack.cn-north-1.amazonaws.com.cn", "bucket-host", "cn-north-1", "bkt", None, True),
    ("s3.us-gov-west-1.amazonaws.com", "service", "us-gov-west-1", None, None, False),
    ("bkt.s3-us-gov-west-1.amazonaws.com", "bucket-host", "us-gov-west-1", "bkt", None, False),
    (
        "ap-123456789012.s3-accesspoint.eu-west-1.amazonaws.com",
        "access-point",
        "eu-west-1",
        None,
        "ap-123456789012",
        False,
    ),
    (
        "ap-123456789012.s3-accesspoint.dualstack.cn-north-1.amazonaws.com.cn",
        "access-point",
        "cn-north-1",
        None,
        "ap-123456789012",
        True,
    ),
    (
        "123456789012.s3-control.us-east-1.amazonaws.com",
        "s3-control",
        "us-east-1",
        None,
        "123456789012",
        False,
    ),
    (
        "123456789012.s3-control.dualstack.us-gov-east-1.amazonaws.com",
        "s3-control",
        "us-gov-east-1",
        None,
        "123456789012",
        True,
    ),
    ("s3-control.eu-west-1.amazonaws.com", "s3-control", "eu-west-1", None, None, False),
    ("bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", "vpce", "us-east-1", None, None, False),
    (
        "b.bucket.vpce-1a2b3c4d-5e6f-us-east-1a.s3.us-east-1.vpce.amazonaws.com",
        "vpce",
        "us-east-1",
        None,
        None,
        False,
    ),
    (
        "control.vpce-1a2b3c4d-5e6f.s3.cn-north-1.vpce.amazonaws.com.cn",
        "vpce",
        "cn-north-1",
        None,
        None,
        False,
    ),
    ("s3-fips.us-east-1.amazonaws.com", "fips", "us-east-1", None, None, False),
    ("s3-fips.dualstack.us-east-1.amazonaws.com", "fips", "us-east-1", None, None, True),
    ("b.s3-fips.us-gov-west-1.amazonaws.com", "fips", "us-gov-west-1", None, None, False),
    ("s3-fips-us-gov-west-1.amazonaws.com", "fips", "us-gov-west-1", None, None, False),
    ("s3-control-fips.us-east-1.amazonaws.com", "fips", "us-east-1", None, None, False),
    ("a-123456789012.s3-accesspoint-fips.us-east-1.amazonaws.com", "fips", "us-east-1", None, None, False),
    ("b.s3-website-us-east-1.amazonaws.com", "website", "us-east-1", None, None, False),
    ("b.s3-website.eu-central-1.amazonaws.com", "website", "eu-central-1", None, None, False),
    ("b.s3-accelerate.amazonaws.com", "accelerate", None, None, None, False),
    ("b.s3-accelerate.dualstack.amazonaws.com", "accelerate", None, None, None, False),
    ("mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com", "mrap", None, None, None, False),
    (
        "b--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com",
        "s3express",
        "us-east-1",
        None,
        None,
        False,
    ),
    ("s3express-control.us-east-1.amazonaws.com", "s3express", "us-east-1", None, None, False),
    (
        "a-1.op-01ac5d28a6a232904.s3-outposts.us-west-2.amazonaws.com",
        "outposts",
        "us-west-2",
        None,
        None,
        False,
    ),
    ("b--op-s3.s3.us-west-2.amazonaws.com", "outposts", "us-west-2", "b--op-s3", None, False),
    (
        "olap-123456789012.s3-object-lambda.us-east-1.amazonaws.com",
        "object-lambda",
        "us-east-1",
        None,
        None,
        False,
    ),
    ("example.com", "not-s3", None, None, None, False),
    ("ec2.us-east-1.amazonaws.com", "not-s3", None, None, None, False),
    ("sts.amazonaws.com", "not-s3", None, None, None, False),
    ("s3.example.com", "not-s3", None, None, None, False),
    ("vpce-1a2b3c4d-5e6f.ec2.us-east-1.vpce.amazonaws.com", "not-s3", None, None, None, False),
    ("s3.amazonaws.com.cn", "not-s3", None, None, None, False),
    ("s3.cn-north-1.amazonaws.com", "not-s3", None, None, None, False),
    ("s3.eu-west-1.amazonaws.com.cn", "not-s3", None, None, None, False),
]


@pytest.mark.parametrize(
    ("host", "family", "region", "bucket", "prefix", "dualstack"), HOSTS, ids=[h[0] for h in HOSTS]
)
def test_classify_host(
    host: str, family: str, region: str | None, bucket: str | None, prefix: str | None, dualstack: bool
) -> None:
    hc = classify_host(host)
    assert hc.family == family, hc.reason
    if family != "not-s3":
        assert (hc.region, hc.prefix, hc.dualstack) == (region, prefix, dualstack)
        if bucket is not None:
            assert hc.bucket == bucket
    assert is_s3_host(host) is (family not in ("not-s3", "vpce"))
    assert is_vpce_host(host) is (family == "vpce")


@pytest.mark.parametrize(
    ("host", "family", "region", "bucket", "prefix", "dualstack"), HOSTS, ids=[h[0] for h in HOSTS]
)
def test_connect_pattern_agrees_with_is_s3_host(
    host: str, family: str, region: str | None, bucket: str | None, prefix: str | None, dualstack: bool
) -> None:
    # mitmproxy matches allow_hosts against "host:port" with re.search, ignoring case.
    matched = bool(re.search(S3_CONNECT_PATTERN, f"{host.upper()}:443", re.IGNORECASE))
    if is_s3_host(host):
        assert matched
    # Known over-matches: S3-shaped names in the wrong partition (they do not exist; decrypted, then refused).
    over = {"s3.cn-north-1.amazonaws.com", "s3.amazonaws.com.cn", "s3.eu-west-1.amazonaws.com.cn"}
    if family in ("vpce", "not-s3") and host not in over:
        assert not matched


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("B.S3.Amazonaws.COM", "b.s3.amazonaws.com"),
        ("b.s3.amazonaws.com.", "b.s3.amazonaws.com"),
        ("b.s3.amazonaws.com:443", "b.s3.amazonaws.com"),
        ("b.s3.amazonaws.com.:8443", "b.s3.amazonaws.com"),
        (" b.s3.amazonaws.com ", "b.s3.amazonaws.com"),
        ("", None),
        (".", None),
        ("[::1]:443", None),
        ("::1", None),
        ("x" * 254, None),
        ("a:b:c", None),
    ],
)
def test_normalize_host(raw: str, normal: str | None) -> None:
    assert normalize_host(raw) == normal


@pytest.mark.parametrize(
    ("host", "path", "family", "bucket", "key"),
    [
        ("s3.us-east-1.amazonaws.com", "/", "list-buckets", None, None),
        ("s3.us-east-1.amazonaws.com", "", "list-buckets", None, None),
        ("s3.us-east-1.amazonaws.com", "/b", "path-style", "b", None),
        ("s3.us-east-1.amazonaws.com", "/b/", "path-style", "b", ""),
        ("s3.us-east-1.amazonaws.com", "/b/k/x%20y", "path-style", "b", "k/x%20y"),
        ("s3.us-east-1.amazonaws.com", "/b//", "path-style", "b", "/"),
        ("s3.us-east-1.amazonaws.com", "/My_B/k", "path-style", "My_B", "k"),
        ("b.s3.us-east-1.amazonaws.com", "/", "virtual-hosted", "b", None),
        ("b.s3.us-east-1.amazonaws.com", "//", "virtual-hosted", "b", "/"),
        ("b.s3.us-east-1.amazonaws.com", "/k%2B", "virtual-hosted", "b", "k%2B"),
        ("a-123456789012.s3-accesspoint.us-east-1.amazonaws.com", "/k", "access-point", None, "k"),
        (
            "123456789012.s3-control.us-east-1.amazonaws.com",
            "/v20180820/accesspoint",
            "s3-control",
            None,
            None,
        ),
        ("s3-fips.us-east-1.amazonaws.com", "/b/k", "fips", None, None),
        ("nothing.example", "/b/k", "not-s3", None, None),
    ],
)
def test_classify_with_path(host: str, path: str, family: str, bucket: str | None, key: str | None) -> None:
    t = classify(host, path)
    assert (t.family, t.bucket, t.key) == (family, bucket, key)


@given(st.text(max_size=300), st.text(max_size=50))
def test_classify_never_raises(host: str, path: str) -> None:
    t = classify(host, path)
    assert t.family
    assert is_s3_host(host) in (True, False)


@given(st.from_regex(r"[a-z0-9.\-:\[\]_]{0,300}", fullmatch=True))
def test_host_like_garbage_never_raises(host: str) -> None:
    hc = classify_host(host)
    if hc.family != "not-s3":
        assert hc.dns_suffix in ("amazonaws.com", "amazonaws.com.cn")
        assert len(hc.host) <= 253


def test_absurdly_long_host_is_cheap() -> None:
    import time

    start = time.perf_counter()
    for _ in range(100):
        assert classify_host("a." * 500_000 + "s3.amazonaws.com").family == "not-s3"
        assert not re.search(S3_CONNECT_PATTERN, "a." * 5000 + "x:443", re.IGNORECASE)
    assert time.perf_counter() - start < 2
