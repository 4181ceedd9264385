"""What the interface endpoint saw, checked the same way by every real-client test.

`upstream_guard` (fixture): marks the tap log when a test starts and, when it ends, asserts that every
request the proxy sent upstream during the test had a vpce Host (and SNI) and no `X-Forwarded-*`/`Via`
header — SeaweedFS trusts `X-Forwarded-Host` when checking the signed host, real S3 does not, so an added
header could hide a signing bug. Import it into a test module and use it with
`pytestmark = pytest.mark.usefixtures("upstream_guard")`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator

import pytest

from .harness import S3Backend, UpstreamRequest

_CREDENTIAL_RE = re.compile(r"Credential=([^,\s]+)")


def host_without_port(host: str | None) -> str:
    host = (host or "").lower()
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_vpce_host(host: str | None, backend: S3Backend) -> bool:
    """`bucket.D`, `BUCKET.bucket.D`, `accesspoint.D`, `X.accesspoint.D`, `control.D`, `X.control.D` for
    one of the backend's endpoint domains D (regional or zonal)."""
    h = host_without_port(host)
    for ep in backend.endpoints:
        for d in ep.domains:
            for kind in ("bucket", "accesspoint", "control"):
                base = f"{kind}.{d}"
                if h == base or (h.endswith("." + base) and "." not in h[: -len(base) - 1]):
                    return True
    return False


def scope_region(req: UpstreamRequest) -> str | None:
    """Region of the SigV4 credential scope the proxy signed with (header or query auth)."""
    auth = req.header("authorization") or ""
    m = _CREDENTIAL_RE.search(auth)
    if m is None:
        return None
    parts = m.group(1).split("/")
    return parts[2] if len(parts) == 5 else None


def assert_upstream_clean(requests: Iterable[UpstreamRequest], backend: S3Backend) -> None:
    bad_host = [(r.method, r.target, r.host, r.sni) for r in requests if not is_vpce_host(r.host, backend)]
    assert not bad_host, f"upstream saw non-vpce Host headers: {bad_host}"
    bad_sni = [(r.method, r.target, r.sni) for r in requests if r.sni and not is_vpce_host(r.sni, backend)]
    assert not bad_sni, f"upstream saw non-vpce SNI: {bad_sni}"
    forwarded = [(r.method, r.target, r.forwarded_headers()) for r in requests if r.forwarded_headers()]
    assert not forwarded, f"the proxy added forwarding headers: {forwarded}"


@pytest.fixture
def upstream_guard(s3_backend: S3Backend) -> Iterator[None]:
    start = s3_backend.mark()
    yield
    seen = s3_backend.upstream_requests(start)
    assert seen, "no request reached the upstream during the test"
    assert_upstream_clean(seen, s3_backend)


def unique_bucket(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
