"""SigV2 requests are forwarded with their signature untouched, so the upstream path must be exactly the
resource the client signed. For a virtual-hosted bucket-level request that is `/BUCKET/` (SigV2's
CanonicalizedResource), not the `/BUCKET` an SDK sends when it re-signs with SigV4."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3proxy.config import parse_config
from s3proxy.model import Request, split_target
from s3proxy.rewrite import plan

VPCE = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
CONFIG = parse_config({"endpoints": {"us-east-1": VPCE}}, base_dir=Path("."), environ={})
V4 = (
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
)
V2 = ("Authorization", "AWS AKID:c2lnbmF0dXJl")
V2_QUERY = "AWSAccessKeyId=AKID&Expires=1700000000&Signature=c2ln%2Bbg%3D"


def _req(host: str, target: str, headers: tuple[tuple[str, str], ...]) -> Request:
    path, query, has_query = split_target(target)
    return Request("GET", "https", host, None, path, query, headers, has_query)


@pytest.mark.parametrize(
    ("host", "target", "headers", "expected"),
    [
        # bucket-level, virtual-hosted: SigV2 keeps the signed `/BUCKET/`; SigV4 is re-signed, SDK form.
        ("my-bucket.s3.amazonaws.com", "/", (V2,), "/my-bucket/"),
        ("my-bucket.s3.amazonaws.com", "/?list-type=2", (V2,), "/my-bucket/?list-type=2"),
        ("my-bucket.s3.us-east-1.amazonaws.com", f"/?{V2_QUERY}", (), f"/my-bucket/?{V2_QUERY}"),
        ("my-bucket.s3.us-east-1.amazonaws.com", "/", (V4,), "/my-bucket"),
        ("my-bucket.s3.us-east-1.amazonaws.com", "/", (), "/my-bucket"),  # anonymous
        # object-level and path-style requests are unchanged either way.
        ("my-bucket.s3.amazonaws.com", "/a%20b", (V2,), "/my-bucket/a%20b"),
        ("s3.amazonaws.com", "/my-bucket", (V2,), "/my-bucket"),
        ("s3.amazonaws.com", "/my-bucket/", (V2,), "/my-bucket/"),
    ],
)
def test_sigv2_bucket_level_keeps_signed_resource(
    host: str, target: str, headers: tuple[tuple[str, str], ...], expected: str
) -> None:
    p = plan(_req(host, target, headers), CONFIG)
    assert p.action == "forward"
    assert p.upstream_host == f"bucket.{VPCE}"
    assert p.upstream_target == expected
