"""Decide what goes upstream for one client request: the rewrite core.

# Strategy: classify the host and raw path (`s3proxy.hosts`), settle the region (the host's, or for the
# legacy global name: credential scope > `buckets` map > learned > `default_region`), find that region's
# interface endpoint, then build the upstream host and path the way an AWS SDK does when it is given the
# endpoint as `endpoint_url`: path style (`bucket.VPCE/BUCKET/KEY`) unless `addressing: virtual` and the
# bucket is a DNS-safe label. The key and query are never decoded or re-encoded: S3 signs and interprets
# them exactly as sent, so they are moved around as opaque strings.
#
# Plans are values; nothing here does I/O. The region learned from S3 responses is a callback argument.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from s3proxy.config import Config
from s3proxy.endpoint import REGION_RE, Endpoint
from s3proxy.errors import S3Error
from s3proxy.hosts import Family, Target, classify
from s3proxy.model import Request

PlanAction = Literal["forward", "reject", "passthrough"]
RegionSource = Literal["host", "credential-scope", "buckets-map", "learned", "default_region"]

# A bucket that can be the first label of `BUCKET.bucket.VPCE`: what botocore's endpoint rules call
# virtual-hostable with TLS (no dots: a wildcard certificate covers one label only).
_DNS_SAFE_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_IP_LIKE_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
# `Credential=AKID/DATE/REGION/SERVICE/aws4_request` in an Authorization header or X-Amz-Credential.
_AUTH_CREDENTIAL_RE = re.compile(r"Credential=([^,\s]+)")

# Why each family cannot go through an S3 interface endpoint (AWS PrivateLink for S3 limitations:
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/privatelink-interface-endpoints.html).
_UNSUPPORTED_WHY: dict[str, str] = {
    "fips": "PrivateLink interface endpoints for S3 have no FIPS variant; s3proxy will not silently "
    "downgrade a FIPS request to a non-FIPS endpoint",
    "website": "S3 static website endpoints are not served by PrivateLink interface endpoints for S3",
    "accelerate": "S3 Transfer Acceleration is not available through PrivateLink interface endpoints for S3",
    "mrap": "Multi-Region Access Points (global, SigV4A-signed) are not reachable through a regional "
    "PrivateLink interface endpoint for S3",
    "s3express": "S3 Express One Zone uses its own zonal endpoints, not PrivateLink interface endpoints "
    "for S3",
    "outposts": "S3 on Outposts has its own endpoints, not PrivateLink interface endpoints for S3",
    "object-lambda": "S3 Object Lambda access points are not served by PrivateLink interface endpoints "
    "for S3",
}
_LABEL: dict[str, str] = {
    "fips": "FIPS",
    "website": "static website",
    "accelerate": "Transfer Acceleration",
    "mrap": "Multi-Region Access Point",
    "s3express": "Express One Zone",
    "outposts": "on Outposts",
    "object-lambda": "Object Lambda",
}


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one request. For `forward`, the upstream URL is always https on port 443."""

    action: PlanAction
    family: Family
    region: str | None = None
    region_source: RegionSource | None = None
    bucket: str | None = None
    key: str | None = None  # raw, as sent; None for bucket-level and service requests
    endpoint: Endpoint | None = None
    upstream_host: str | None = None
    upstream_path: str = ""  # raw; "" only in reject plans
    upstream_query: str = ""
    upstream_has_query: bool = False
    error: S3Error | None = None
    passthrough_host: str | None = None

    @property
    def upstream_target(self) -> str:
        """Path plus query, byte for byte as they go upstream."""
        if self.upstream_query or self.upstream_has_query:
            return f"{self.upstream_path}?{self.upstream_query}"
        return self.upstream_path

    @property
    def upstream_url(self) -> str | None:
        if self.action == "reject":
            return None
        host = self.upstream_host if self.action == "forward" else self.passthrough_host
        return f"https://{host}{self.upstream_target}"


def is_dns_safe_bucket(bucket: str) -> bool:
    """True if `bucket` can be used as `BUCKET.bucket.VPCE` (one lower-case DNS label, 3-63, not IP-like)."""
    return bool(_DNS_SAFE_BUCKET_RE.match(bucket)) and not _IP_LIKE_RE.match(bucket)


def credential_scope_region(req: Request) -> str | None:
    """The region of the SigV4 credential scope (Authorization header or X-Amz-Credential), if any."""
    credential: str | None = None
    auth = req.header("authorization")
    if auth is not None and auth.startswith("AWS4-HMAC-SHA256"):
        m = _AUTH_CREDENTIAL_RE.search(auth)
        credential = m.group(1) if m else None
    elif req.query:
        for param in req.query.split("&"):
            name, _, value = param.partition("=")
            if unquote(name) == "X-Amz-Credential":
                credential = unquote(value)
                break
    if credential is None:
        return None
    parts = credential.split("/")
    # AKID/DATE/REGION/SERVICE/aws4_request; SigV4A scopes have no region (AKID/DATE/s3/aws4_request).
    if len(parts) == 5 and parts[4] == "aws4_request" and REGION_RE.match(parts[2]):
        return parts[2]
    return None


def _reject(family: Family, status: int, code: str, message: str, **kw: object) -> Plan:
    return Plan("reject", family, error=S3Error(status, code, message), **kw)  # type: ignore[arg-type]


def plan(req: Request, cfg: Config, *, learned_region: Callable[[str], str | None] | None = None) -> Plan:
    """The plan for `req` under `cfg`. Never raises for any input; refusals are `reject` plans."""
    path = req.path or "/"
    target = classify(req.host, path)
    fam, hc = target.family, target.host
    if fam == "not-s3":
        return _reject(
            fam,
            400,
            "InvalidRequest",
            f"{hc.host!r}: {hc.reason}; s3proxy only handles requests to Amazon S3",
        )
    if fam == "vpce":
        # The client already names the interface endpoint: that is the right upstream, unchanged.
        return _passthrough(req, target, hc.region, "host")
    if not path.startswith("/"):
        return _reject(fam, 400, "InvalidRequest", "the request-target must be an absolute path")

    region, source = _region(req, target, cfg, learned_region)
    if fam in _UNSUPPORTED_WHY:
        if cfg.unsupported_action(fam) == "passthrough":
            return _passthrough(req, target, region, source)
        return _reject(
            fam,
            400,
            "InvalidRequest",
            f"{hc.host} is an S3 {_LABEL[fam]} endpoint (family '{fam}'): {_UNSUPPORTED_WHY[fam]}. "
            "Use a regional S3 endpoint, "
            f"or set unsupported.{fam}: passthrough to send such requests to AWS unchanged",
            region=region,
            region_source=source,
            bucket=target.bucket,
        )

    endpoint = cfg.endpoints.get(region)
    if endpoint is None:
        if cfg.unknown_region == "passthrough":
            return _passthrough(req, target, region, source)
        return _reject(
            fam,
            400,
            "InvalidRequest",
            f"s3proxy has no S3 interface endpoint for region {region} (region from {source}); add "
            f"endpoints.{region} to its configuration",
            region=region,
            region_source=source,
            bucket=target.bucket,
        )

    if fam in ("path-style", "virtual-hosted") and not target.bucket:
        return _reject(fam, 400, "InvalidBucketName", "the request names an empty bucket")
    up_host, up_path = _upstream(target, path, endpoint, cfg, req)
    return Plan(
        "forward",
        fam,
        region=region,
        region_source=source,
        bucket=target.bucket,
        key=target.key,
        endpoint=endpoint,
        upstream_host=up_host,
        upstream_path=up_path,
        upstream_query=req.query,
        upstream_has_query=req.has_query or bool(req.query),
    )


def _passthrough(req: Request, target: Target, region: str | None, source: RegionSource | None) -> Plan:
    return Plan(
        "passthrough",
        target.family,
        region=region,
        region_source=source,
        bucket=target.bucket,
        key=target.key,
        upstream_path=req.path or "/",
        upstream_query=req.query,
        upstream_has_query=req.has_query or bool(req.query),
        passthrough_host=target.host.host,
    )


def _region(
    req: Request, target: Target, cfg: Config, learned: Callable[[str], str | None] | None
) -> tuple[str, RegionSource]:
    if target.host.region is not None:
        return target.host.region, "host"
    # Legacy global name (s3.amazonaws.com), which PrivateLink does not serve: find the bucket's region.
    scope = credential_scope_region(req)
    if scope is not None:
        return scope, "credential-scope"
    bucket = target.bucket
    if bucket:
        mapped = cfg.buckets.get(bucket)
        if mapped is not None:
            return mapped, "buckets-map"
        if learned is not None:
            found = learned(bucket)
            if found is not None and REGION_RE.match(found):
                return found, "learned"
    return cfg.default_region, "default_region"


def _is_sigv2(req: Request) -> bool:
    """SigV2 header (`AWS AKID:sig`) or query (`AWSAccessKeyId=…&Signature=…`) authentication."""
    auth = req.header("authorization")
    if auth is not None:
        return auth.startswith("AWS ")
    names = {unquote(p.partition("=")[0]) for p in req.query.split("&")}
    return "AWSAccessKeyId" in names and "Signature" in names


def _is_get_bucket_location(req: Request, target: Target) -> bool:
    return (
        req.method == "GET"
        and target.key in (None, "")
        and any(p.partition("=")[0] == "location" for p in req.query.split("&"))
    )


def _upstream(target: Target, path: str, endpoint: Endpoint, cfg: Config, req: Request) -> tuple[str, str]:
    """(host, path) as an SDK configured with the endpoint as `endpoint_url` sends them."""
    fam = target.family
    if fam == "list-buckets":
        return endpoint.host("bucket"), path
    if fam == "access-point":
        return f"{target.host.prefix}.{endpoint.host('accesspoint')}", path
    if fam == "s3-control":
        prefix = target.host.prefix
        control = endpoint.host("control")
        return (f"{prefix}.{control}" if prefix else control), path
    bucket = target.bucket
    assert bucket is not None
    # botocore always sends GetBucketLocation path style (its region is what the caller doesn't know yet).
    virtual = (
        cfg.addressing == "virtual"
        and is_dns_safe_bucket(bucket)
        and not _is_get_bucket_location(req, target)
    )
    if fam == "virtual-hosted":
        # `/` is a bucket-level request: the SDK sends `/BUCKET` (no trailing slash) in path style. A SigV2
        # signature is forwarded as is and signed the resource `/BUCKET/`: keep that slash so the path is
        # exactly the signed resource (servers that take the resource from the path refuse `/BUCKET`).
        if virtual:
            return f"{bucket}.{endpoint.host('bucket')}", path
        if path == "/":
            return endpoint.host("bucket"), f"/{bucket}/" if _is_sigv2(req) else f"/{bucket}"
        return endpoint.host("bucket"), f"/{bucket}{path}"
    # Path style from the client: the path already is `/BUCKET[/KEY]`.
    if virtual:
        rest = path[1 + len(bucket) :]
        return f"{bucket}.{endpoint.host('bucket')}", rest or "/"
    return endpoint.host("bucket"), path
