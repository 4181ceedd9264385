"""Bucket -> region learned from S3's own answers: a bounded cache with expiry.

# Strategy: S3 names a bucket's region in `x-amz-bucket-region` on many responses (HeadBucket, and every
# 301 PermanentRedirect / 400 AuthorizationHeaderMalformed "wrong region" error). The legacy global host
# (`s3.amazonaws.com`), which PrivateLink does not serve, needs that region when the request itself does not
# name one (SigV2, anonymous). Entries expire (`ttl`) because a bucket can be deleted and re-created
# elsewhere, and the cache is an LRU bounded by `max_entries` so a client cycling through bucket names
# cannot grow it without limit. "No region known" answers (e.g. a discovery probe that got no header) are
# remembered for a shorter `negative_ttl` so they are not asked again on every request. Pure: the clock is
# an argument, no I/O, no locking (the proxy uses it from its single event loop).
#
# Discovery before forwarding, not retry after a redirect. When S3 answers "wrong region" the request has
# already gone upstream; replaying it means sending it again on a new upstream connection and answering the
# client from that one. mitmproxy has no way to re-send a flow's request and stream the second response
# back to the original client: a hook could only make its own request and hand back a *buffered* body,
# which breaks "memory does not grow with object size" for GETs, and requests with a body (already
# streamed) could not be replayed at all. So for the one case the proxy must settle itself - the legacy
# global host with no region in the request (SigV2, anonymous; SigV4 carries its credential scope) and no
# `buckets` entry - it asks first: one anonymous `HEAD /BUCKET` at the default region's endpoint, whose
# answer (200, 403 or 301) carries `x-amz-bucket-region`; the result is cached here and concurrent
# requests for one bucket share one probe. Every other wrong-region answer (e.g. a SigV4 client signing for
# the wrong region) reaches the client unchanged, and the SDKs follow it; its region is learned as well.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import quote

from s3proxy.endpoint import REGION_RE

Clock = Callable[[], float]

REGION_HEADER = "x-amz-bucket-region"


class _Entry(NamedTuple):
    region: str | None  # None: asked, S3 did not say
    expires: float


class RegionCache:
    """LRU + TTL map of bucket -> region."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl: float = 3600.0,
        negative_ttl: float = 60.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl < 0 or negative_ttl < 0:
            raise ValueError("ttl and negative_ttl must not be negative")
        self.max_entries = max_entries
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, bucket: str) -> _Entry | None:
        entry = self._entries.get(bucket)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._entries[bucket]
            return None
        self._entries.move_to_end(bucket)
        return entry

    def get(self, bucket: str) -> str | None:
        """The learned region of `bucket`, or None (unknown, expired, or known to be unknown)."""
        entry = self._entry(bucket)
        return None if entry is None else entry.region

    def known(self, bucket: str) -> bool:
        """True when there is a live entry, positive or negative: no need to ask S3 again yet."""
        return self._entry(bucket) is not None

    def learn(self, bucket: str, region: str) -> bool:
        """Remember `region` for `bucket`; False (and nothing stored) when `region` is not a region name."""
        region = region.strip().lower()
        if not bucket or not REGION_RE.match(region):
            return False
        self._put(bucket, _Entry(region, self.clock() + self.ttl))
        return True

    def learn_unknown(self, bucket: str) -> None:
        """Remember that S3 was asked and named no region (a positive entry is never downgraded)."""
        if not bucket or self.get(bucket) is not None:
            return
        self._put(bucket, _Entry(None, self.clock() + self.negative_ttl))

    def forget(self, bucket: str) -> None:
        self._entries.pop(bucket, None)

    def _put(self, bucket: str, entry: _Entry) -> None:
        self._entries[bucket] = entry
        self._entries.move_to_end(bucket)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def region_from_headers(headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str | None:
    """The `x-amz-bucket-region` value of a response, if it is a region name."""
    for name, value in headers:
        if name.lower() == REGION_HEADER:
            v = value.strip().lower()
            return v if REGION_RE.match(v) else None
    return None


def discovery_request(bucket: str, host: str) -> bytes:
    """The anonymous `HEAD /BUCKET` that makes S3 name the bucket's region (connection closed after)."""
    path = "/" + quote(bucket, safe="")
    return (
        f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: s3proxy-region-discovery\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "strict")


def region_from_response_head(head: bytes) -> str | None:
    """`x-amz-bucket-region` of a raw HTTP/1.1 response head (status line + headers), if a region name."""
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1."):
        return None
    fields = [(k.strip(), v) for k, sep, v in (ln.partition(":") for ln in lines[1:]) if sep]
    return region_from_headers(fields)
