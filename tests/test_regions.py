"""RegionCache: LRU bound, expiry (positive and negative), validation; region_from_headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3proxy.regions import (
    RegionCache,
    discovery_request,
    region_from_headers,
    region_from_response_head,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: object) -> tuple[RegionCache, FakeClock]:
    clock = FakeClock()
    return RegionCache(clock=clock, **kw), clock  # type: ignore[arg-type]


def test_learn_and_expire() -> None:
    cache, clock = make(ttl=10, negative_ttl=2)
    assert cache.get("b") is None and not cache.known("b")
    assert cache.learn("b", "eu-west-1")
    assert cache.get("b") == "eu-west-1" and cache.known("b")
    clock.now += 9.9
    assert cache.get("b") == "eu-west-1"
    clock.now += 0.1
    assert cache.get("b") is None and not cache.known("b")
    assert len(cache) == 0


def test_negative_entries_are_short_and_never_downgrade() -> None:
    cache, clock = make(ttl=10, negative_ttl=2)
    cache.learn_unknown("n")
    assert cache.known("n") and cache.get("n") is None
    clock.now += 2
    assert not cache.known("n")
    cache.learn("p", "us-west-2")
    cache.learn_unknown("p")
    assert cache.get("p") == "us-west-2"
    cache.learn_unknown("n")
    cache.learn("n", "ap-southeast-4")  # a real answer replaces a negative one at once
    assert cache.get("n") == "ap-southeast-4"


@pytest.mark.parametrize(
    ("region", "stored"),
    [
        ("eu-west-1", "eu-west-1"),
        (" EU-WEST-1 ", "eu-west-1"),
        ("us-gov-west-1", "us-gov-west-1"),
        ("", None),
        ("EU", None),
        ("eu-west-1\r\nx: y", None),
        ("../../etc", None),
    ],
)
def test_only_region_names_are_learned(region: str, stored: str | None) -> None:
    cache, _ = make()
    assert cache.learn("b", region) is (stored is not None)
    assert cache.get("b") == stored


def test_lru_bound_keeps_recently_used() -> None:
    cache, _ = make(max_entries=3)
    for b in ("a", "b", "c"):
        cache.learn(b, "eu-west-1")
    assert cache.get("a") == "eu-west-1"  # touch: a is now the most recent
    cache.learn("d", "eu-west-1")
    assert len(cache) == 3
    assert cache.get("b") is None  # the least recently used went
    assert [cache.get(x) for x in ("a", "c", "d")] == ["eu-west-1"] * 3


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.booleans()), max_size=200))
def test_never_exceeds_bound(ops: list[tuple[str, bool]]) -> None:
    cache, clock = make(max_entries=4, ttl=5, negative_ttl=1)
    for bucket, positive in ops:
        clock.now += 0.3
        if positive:
            cache.learn(bucket, "eu-central-1")
        else:
            cache.learn_unknown(bucket)
        assert len(cache) <= 4


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RegionCache(max_entries=0)
    with pytest.raises(ValueError):
        RegionCache(ttl=-1)


@pytest.mark.parametrize(
    ("headers", "region"),
    [
        ([("X-Amz-Bucket-Region", "eu-west-1")], "eu-west-1"),
        ([("content-type", "x"), ("x-amz-bucket-region", "us-east-1")], "us-east-1"),
        ([("x-amz-bucket-region", "not a region")], None),
        ([], None),
    ],
)
def test_region_from_headers(headers: list[tuple[str, str]], region: str | None) -> None:
    assert region_from_headers(headers) == region


def test_discovery_request_is_an_anonymous_bodyless_head() -> None:
    raw = discovery_request("my.bucket_X", "bucket.vpce-1.s3.us-east-1.vpce.amazonaws.com:8443")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rest == b""
    lines = head.decode().split("\r\n")
    assert lines[0] == "HEAD /my.bucket_X HTTP/1.1"
    assert "Host: bucket.vpce-1.s3.us-east-1.vpce.amazonaws.com:8443" in lines
    assert not any(ln.lower().startswith("authorization") for ln in lines)
    with pytest.raises(UnicodeEncodeError):
        discovery_request("b", "h\u00e9")  # never a non-ASCII head


@pytest.mark.parametrize(
    ("head", "region"),
    [
        (b"HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: eu-west-1\r\n\r\n", "eu-west-1"),
        (b"HTTP/1.1 403 Forbidden\r\nX-Amz-Bucket-Region:us-west-2\r\nServer: AmazonS3\r\n\r\n", "us-west-2"),
        (b"HTTP/1.1 403 Forbidden\r\nServer: SeaweedFS\r\n\r\n", None),
        (b"SSH-2.0-x\r\nx-amz-bucket-region: eu-west-1\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n", None),
    ],
)
def test_region_from_response_head(head: bytes, region: str | None) -> None:
    assert region_from_response_head(head) == region
