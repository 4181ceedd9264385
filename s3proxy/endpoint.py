"""Interface VPC endpoint names for S3 (AWS PrivateLink) and the hostnames derived from them.

An S3 interface endpoint has one regional DNS name and one per Availability Zone, e.g.

    *.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com              (regional; console form)
    *.vpce-1a2b3c4d-5e6f-us-east-1a.s3.us-east-1.vpce.amazonaws.com   (zonal)

and S3 answers `bucket.`, `accesspoint.` and `control.` under either of them
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/privatelink-interface-endpoints.html).
The endpoint ID is the `vpce-<hex>` part; what follows it up to the zone is a DNS suffix AWS chooses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Regions and zones: us-east-1, us-gov-west-1, cn-north-1, ap-southeast-4; zone = region + letter.
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
_NAME_RE = re.compile(
    rf"^(?:(?:\*|bucket|accesspoint|control)\.)?"
    rf"(?P<name>vpce-[0-9a-z]+-[0-9a-z]+?)"
    rf"(?:-(?P<zone>{_REGION}[a-z]))?"
    rf"\.s3\.(?P<region>{_REGION})\.vpce\.(?P<suffix>amazonaws\.com(?:\.cn)?)$"
)
REGION_RE = re.compile(rf"^{_REGION}$")
ZONE_RE = re.compile(rf"^{_REGION}[a-z]$")

HostKind = Literal["bucket", "accesspoint", "control"]


@dataclass(frozen=True, slots=True)
class EndpointName:
    """The parts of an S3 interface endpoint DNS name."""

    name: str  # "vpce-1a2b3c4d-5e6f": endpoint ID plus AWS's DNS suffix
    region: str
    dns_suffix: str  # "amazonaws.com" or "amazonaws.com.cn"
    zone: str | None = None  # set when the name given was a zonal one

    @property
    def endpoint_id(self) -> str:
        """`vpce-1a2b3c4d` — the ID that `aws:sourceVpce` conditions name."""
        return "-".join(self.name.split("-")[:2])


def parse_endpoint_name(text: str) -> EndpointName:
    """Parse a regional or zonal S3 interface endpoint DNS name, with or without `*.`/`bucket.` prefix.

    Raises ValueError saying what is wrong; the message does not repeat the input (callers add the key path).
    """
    candidate = text.strip().lower().rstrip(".")
    m = _NAME_RE.match(candidate)
    if m is None:
        raise ValueError(
            "is not an S3 interface endpoint name "
            "(expected like 'vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com')"
        )
    return EndpointName(m["name"], m["region"], m["suffix"], m["zone"])


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One configured S3 interface endpoint: which region it serves and the names to reach it by."""

    region: str
    name: EndpointName
    zones: tuple[str, ...] = ()
    prefer_zone: str | None = None
    # HTTPS port of the endpoint: 443 on AWS; other values only for test stand-ins and port-forwarding.
    port: int = 443

    @property
    def endpoint_id(self) -> str:
        return self.name.endpoint_id

    def domain(self, zone: str | None = None) -> str:
        """The regional (zone None) or zonal endpoint domain, without a `bucket.`-style prefix."""
        n = self.name
        label = f"{n.name}-{zone}" if zone else n.name
        return f"{label}.s3.{n.region}.vpce.{n.dns_suffix}"

    def host(self, kind: HostKind, zone: str | None = None) -> str:
        """`bucket.VPCE`, `accesspoint.VPCE` or `control.VPCE` (the regional name unless a zone is given)."""
        return f"{kind}.{self.domain(zone)}"

    def zone_order(self) -> tuple[str, ...]:
        """Zones in the order to try them: the preferred zone first, then the others as configured."""
        if self.prefer_zone and self.prefer_zone in self.zones:
            return (self.prefer_zone, *(z for z in self.zones if z != self.prefer_zone))
        return self.zones
