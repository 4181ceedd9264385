"""Which S3 request family a hostname (and path) belongs to, decided purely from the names.

# Strategy: normalise the host (case, port, trailing dot), refuse anything that is not a plain DNS name,
# split off the partition suffix (`amazonaws.com`, `amazonaws.com.cn`), then read the service labels from the
# right: `s3.REGION`, `s3-REGION`, `s3.dualstack.REGION`, `s3-accesspoint[.dualstack].REGION`, ... Whatever is
# left of the service labels is the bucket (virtual-hosted) or the access point / account prefix. Label
# arithmetic rather than one large regex keeps each form readable and the cost linear in the host length.

Host forms: https://docs.aws.amazon.com/general/latest/gr/s3.html and the S3 endpoint rule set in botocore
(`botocore/data/s3/*/endpoint-rule-set-1.json`), which is what the SDKs actually produce.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal, get_args

from s3proxy.endpoint import REGION_RE

HostFamily = Literal[
    "bucket-host",  # BUCKET.s3.REGION..., BUCKET.s3.amazonaws.com: virtual-hosted bucket
    "service",  # s3.REGION..., s3.amazonaws.com: path style or ListBuckets
    "access-point",  # NAME-ACCOUNT.s3-accesspoint[.dualstack].REGION...
    "s3-control",  # [ACCOUNT.]s3-control[.dualstack].REGION...
    "vpce",  # already an interface endpoint name
    "fips",
    "website",
    "accelerate",
    "mrap",
    "s3express",
    "outposts",
    "object-lambda",
    "not-s3",
]

UnsupportedFamily = Literal["fips", "website", "accelerate", "mrap", "s3express", "outposts", "object-lambda"]
UNSUPPORTED_FAMILIES: tuple[UnsupportedFamily, ...] = get_args(UnsupportedFamily)

# The request families a (host, path) pair resolves to; `plan()` reports these.
Family = Literal[
    "virtual-hosted",
    "path-style",
    "list-buckets",
    "access-point",
    "s3-control",
    "vpce",
    "fips",
    "website",
    "accelerate",
    "mrap",
    "s3express",
    "outposts",
    "object-lambda",
    "not-s3",
]

_MAX_INPUT = 1024  # longer than any DNS name plus port: refuse before doing any work on it
_MAX_NAME = 253  # RFC 1035 limit on a name in text form (without the trailing dot)
# Labels as they occur in S3 names; underscores appear in legacy us-east-1 bucket names.
_LABEL_RE = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PORT_RE = re.compile(r"^(?P<host>[^:\[\]]*)(?::(?P<port>\d{1,5}))?$")
_DASH_REGION_RE = re.compile(r"^s3-(?P<region>[a-z]{2}(?:-[a-z]+)+-\d{1,2})$")
_LEGACY_FIPS_RE = re.compile(r"^s3-fips-[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
_WEBSITE_DASH_RE = re.compile(r"^s3-website-[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
_VPCE_ID_RE = re.compile(r"^vpce-[0-9a-z]+-[0-9a-z-]+$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")

_PARTITIONS = (("amazonaws", "com", "cn"), ("amazonaws", "com"))


@dataclass(frozen=True, slots=True)
class HostClass:
    """What a hostname says about a request, before looking at the path."""

    family: HostFamily
    host: str = ""  # normalised: lower case, no port, no trailing dot
    region: str | None = None  # None: the legacy global name, or not stated by the name
    dns_suffix: str | None = None  # "amazonaws.com" | "amazonaws.com.cn"
    bucket: str | None = None  # virtual-hosted bucket from the name
    prefix: str | None = None  # access point `NAME-ACCOUNT` or control `ACCOUNT`
    dualstack: bool = False
    reason: str = ""  # why a name is not S3, for messages


def normalize_host(host: str) -> str | None:
    """Lower-cased host without port and trailing dot, or None if it is not a plausible DNS name."""
    if not host or len(host) > _MAX_INPUT:
        return None
    h = host.strip().lower()
    m = _PORT_RE.match(h)
    if m is None:  # IPv6 literal or several colons
        return None
    h = m["host"]
    if h.endswith("."):
        h = h[:-1]
    if not h or len(h) > _MAX_NAME:
        return None
    return h


def _not_s3(host: str, reason: str) -> HostClass:
    return HostClass("not-s3", host=host, reason=reason)


# A request's host is classified several times (CONNECT, request, rewrite, access log); the answer is
# immutable and depends on the string alone. Bounded, so hosts that vary per request only cost the lookup.
@functools.lru_cache(maxsize=1024)
def classify_host(host: str) -> HostClass:
    """Classify a hostname (port and trailing dot allowed, any case). Never raises."""
    h = normalize_host(host)
    if h is None:
        return _not_s3(host[:80], "not a valid DNS name")
    labels = h.split(".")
    if not all(_LABEL_RE.match(label) for label in labels):
        return _not_s3(h, "not a valid DNS name")
    if labels[-1].isdigit():
        return _not_s3(h, "an IP address, not an S3 hostname")
    for part in _PARTITIONS:
        if tuple(labels[-len(part) :]) == part:
            return _classify_service(h, labels[: -len(part)], ".".join(part))
    return _not_s3(h, "not an Amazon S3 hostname")


def _make(
    h: str,
    suffix: str,
    family: HostFamily,
    region: str | None,
    *,
    bucket: str | None = None,
    prefix: str | None = None,
    dualstack: bool = False,
) -> HostClass:
    # A region belongs to exactly one partition: cn-* only under amazonaws.com.cn.
    if region is not None and region.startswith("cn-") != suffix.endswith(".cn"):
        return _not_s3(h, f"region {region!r} does not exist in partition {suffix}")
    return HostClass(family, h, region, suffix, bucket, prefix, dualstack)


def _classify_service(h: str, rest: list[str], suffix: str) -> HostClass:
    """`rest`: the labels before the partition suffix."""
    if not rest:
        return _not_s3(h, "not an Amazon S3 hostname")
    china = suffix.endswith(".cn")
    last = rest[-1]

    if last == "vpce":
        # [PREFIX.]vpce-ID[-ZONE].s3.REGION.vpce.amazonaws.com: a client already configured with an endpoint.
        if len(rest) >= 4 and rest[-3] == "s3" and REGION_RE.match(rest[-2]) and _VPCE_ID_RE.match(rest[-4]):
            return _make(h, suffix, "vpce", rest[-2])
        return _not_s3(h, "an interface endpoint name of a service other than S3")
    # Names without a region label.
    if last == "s3-global":  # Multi-Region Access Points: ALIAS.mrap.accesspoint.s3-global.amazonaws.com
        return _make(h, suffix, "mrap", None)
    if last == "s3-accelerate" or rest[-2:] == ["s3-accelerate", "dualstack"]:
        return _make(h, suffix, "accelerate", None)
    if last == "s3" and not china:  # legacy global endpoint
        return _bucket_or_service(h, suffix, rest[:-1], None, dualstack=False)
    if last == "s3-external-1" and not china:  # legacy us-east-1 alias
        return _bucket_or_service(h, suffix, rest[:-1], "us-east-1", dualstack=False)
    if _LEGACY_FIPS_RE.match(last):  # s3-fips-us-gov-west-1.amazonaws.com
        return _make(h, suffix, "fips", last[len("s3-fips-") :])
    if _WEBSITE_DASH_RE.match(last):  # BUCKET.s3-website-us-east-1.amazonaws.com
        return _make(h, suffix, "website", last[len("s3-website-") :])
    m = _DASH_REGION_RE.match(last)
    if m:  # s3-us-west-2.amazonaws.com (dash form, older regions)
        return _bucket_or_service(h, suffix, rest[:-1], m["region"], dualstack=False)

    if not REGION_RE.match(last) or len(rest) < 2:
        return _not_s3(h, "not an Amazon S3 hostname")
    region = last
    service = rest[-2]
    before = rest[:-2]
    dualstack = False
    if service == "dualstack" and len(rest) >= 3:
        dualstack = True
        service = rest[-3]
        before = rest[:-3]
    if "fips" in service:  # s3-fips, s3-accesspoint-fips, s3-control-fips, s3-object-lambda-fips, ...
        return _make(h, suffix, "fips", region, dualstack=dualstack)
    if service == "s3":
        return _bucket_or_service(h, suffix, before, region, dualstack=dualstack)
    if service == "s3-accesspoint":
        if len(before) != 1:
            return _not_s3(h, "an access point name is one label: NAME-ACCOUNT.s3-accesspoint.REGION")
        return _make(h, suffix, "access-point", region, prefix=before[0], dualstack=dualstack)
    if service == "s3-control":
        if len(before) > 1 or (before and not _ACCOUNT_RE.match(before[0])):
            return _not_s3(h, "an S3 control name is ACCOUNT.s3-control.REGION (12-digit account)")
        prefix = before[0] if before else None
        return _make(h, suffix, "s3-control", region, prefix=prefix, dualstack=dualstack)
    if service == "s3-website":
        return _make(h, suffix, "website", region)
    if service.startswith("s3express"):
        return _make(h, suffix, "s3express", region, dualstack=dualstack)
    if service == "s3-outposts":
        return _make(h, suffix, "outposts", region, dualstack=dualstack)
    if service == "s3-object-lambda":
        return _make(h, suffix, "object-lambda", region, dualstack=dualstack)
    return _not_s3(h, "not an Amazon S3 hostname")


def _bucket_or_service(
    h: str, suffix: str, before: list[str], region: str | None, *, dualstack: bool
) -> HostClass:
    if not before:
        return _make(h, suffix, "service", region, dualstack=dualstack)
    bucket = ".".join(before)
    if bucket.endswith("--x-s3"):  # S3 Express One Zone directory bucket
        return _make(h, suffix, "s3express", region, bucket=bucket, dualstack=dualstack)
    if bucket.endswith("--op-s3"):  # S3 on Outposts bucket alias
        return _make(h, suffix, "outposts", region, bucket=bucket, dualstack=dualstack)
    return _make(h, suffix, "bucket-host", region, bucket=bucket, dualstack=dualstack)


# For mitmproxy's `allow_hosts` (re.search over "host:port", case-insensitive): the default S3 names that
# `is_s3_host` accepts, so only those CONNECTs are decrypted. It may match a few more names of the same shape
# (any `s3-*` service label); the addon still classifies each request. Interface endpoint names (`...vpce...`)
# do not match: they are already right and are tunnelled untouched.
S3_CONNECT_PATTERN = (
    r"^(?:[a-z0-9_-]+\.)*(?:s3(?:-[a-z0-9-]+)?|s3express[a-z0-9-]*)(?:\.dualstack)?"
    r"(?:\.[a-z]{2}(?:-[a-z]+)+-\d{1,2})?\.amazonaws\.com(?:\.cn)?\.?(?::\d+)?$"
)


def is_s3_host(host: str) -> bool:
    """True for the default S3 names the proxy handles itself (rewrites, or answers with an S3 error), so
    a CONNECT to them is decrypted. False for interface endpoint names (already right: tunnel them) and
    for everything else."""
    return classify_host(host).family not in ("not-s3", "vpce")


def is_vpce_host(host: str) -> bool:
    """True for names under an S3 interface endpoint (`*.vpce-….s3.REGION.vpce.amazonaws.com`)."""
    return classify_host(host).family == "vpce"


@dataclass(frozen=True, slots=True)
class Target:
    """A request's family with the bucket and key taken from host and raw path (nothing decoded)."""

    family: Family
    host: HostClass
    bucket: str | None = None
    key: str | None = None  # None: a bucket-level request; "" for `/BUCKET/`


def classify(host: str, path: str) -> Target:
    """Classify a request by host and raw path. Never raises."""
    hc = classify_host(host)
    fam = hc.family
    if fam == "bucket-host":
        key = path[1:] if len(path) > 1 else None
        return Target("virtual-hosted", hc, hc.bucket, key)
    if fam == "service":
        if path in ("", "/"):
            return Target("list-buckets", hc)
        bucket, sep, key = path[1:].partition("/")
        return Target("path-style", hc, bucket, key if sep else None)
    if fam == "access-point":
        return Target("access-point", hc, None, path[1:] if len(path) > 1 else None)
    return Target(fam, hc, hc.bucket)
