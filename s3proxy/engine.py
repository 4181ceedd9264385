"""What the proxy does with one request, decided from plain values: rewrite, then verify and re-sign.

Strategy: `Engine.decide` is the single decision both the running proxy and `s3proxy explain` use, so what
`explain` prints is what the proxy sends. It does no I/O: DNS and connections belong to the caller, the
clock is an argument, and learned regions come in through a callable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from s3proxy.chunked import ChunkSeed
from s3proxy.config import Config
from s3proxy.endpoint import Endpoint, HostKind
from s3proxy.errors import S3Error
from s3proxy.hosts import classify_host
from s3proxy.model import Headers, Request, replace_header
from s3proxy.policy import PolicyDecision, access_key_of, check_request, denial_message
from s3proxy.rewrite import Plan, credential_scope_region, plan
from s3proxy.signing import Keyring, Signer, SignOutcome, Target, resign

Action = Literal["forward", "reject", "passthrough"]
policy_log = logging.getLogger("s3proxy.policy")
# Families whose bucket/key (or access point) the name and path tell: the policy check knows their resources.
# The others (a vpce name sent directly, FIPS, website, ... passed through) are reported as not checked.
_POLICY_FAMILIES = frozenset({"virtual-hosted", "path-style", "list-buckets", "access-point", "s3-control"})

# Hop-by-hop and proxy headers never go upstream (RFC 9110 7.6.1). `X-Forwarded-*` is never added:
# some S3 implementations trust it when computing the signed host.
_HOP_BY_HOP = frozenset(
    {"proxy-connection", "proxy-authorization", "keep-alive", "te", "upgrade", "proxy-authenticate"}
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request: where it goes and exactly what is sent, or the error answered."""

    action: Action
    plan: Plan
    error: S3Error | None = None
    method: str = ""
    host: str = ""  # upstream Host header / SNI (vpce name, or the public name for passthrough)
    port: int = 443
    path: str = ""
    query: str = ""
    has_query: bool = False
    headers: Headers = ()
    signing: str = ""  # resigned | unchanged | refused | "" when not reached
    signing_note: str = ""
    chunk: ChunkSeed | None = None
    endpoint: Endpoint | None = None
    kind: HostKind = "bucket"
    policy: PolicyDecision | None = None  # None: no policy configured, or not evaluated (policy_mode off)

    @property
    def target(self) -> str:
        if self.query or self.has_query:
            return f"{self.path}?{self.query}"
        return self.path

    @property
    def url(self) -> str:
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://{self.host}{port}{self.target}"


def _kind_of(host: str, endpoint: Endpoint) -> HostKind:
    for kind in ("accesspoint", "control"):
        if host == endpoint.host(kind) or host.endswith("." + endpoint.host(kind)):
            return kind
    return "bucket"


class Engine:
    """Rewrite and signing for one loaded config; a reload builds a new Engine.

    Its only state is counters. `explain=True` (for `s3proxy explain`) evaluates the configured policies
    whatever `policy_mode` says, so the decision can be shown, and neither logs nor counts warnings.
    """

    def __init__(self, config: Config, signer: Signer, *, explain: bool = False) -> None:
        self.config = config
        self.signer = signer
        self.explain = explain
        self.policy_warnings = 0  # requests policy_mode: warn let through that S3 would deny
        self.policy_denials = 0  # requests policy_mode: enforce answered with AccessDenied

    def decide(
        self,
        req: Request,
        now: datetime,
        *,
        learned_region: Callable[[str], str | None] | None = None,
    ) -> Decision:
        p = plan(req, self.config, learned_region=learned_region)
        if p.action == "reject":
            assert p.error is not None
            return Decision("reject", p, error=p.error, method=req.method)
        if p.action == "passthrough":
            host = p.passthrough_host or req.host
            headers = _forwardable(replace_header(req.headers, "Host", host))
            d = Decision(
                "passthrough",
                p,
                method=req.method,
                host=host,
                port=443,
                path=req.path,
                query=req.query,
                has_query=req.has_query,
                headers=headers,
                signing="unchanged",
                signing_note="passthrough: forwarded to the public S3 name as sent",
            )
            return self._policy(req, d, now)
        assert p.endpoint is not None and p.upstream_host is not None and p.region is not None
        # Keyring clients sign with keys S3 knows: signed for another region than the regional host names,
        # S3 would refuse them, and so does the proxy. Proxy-identity clients may sign with anything (the
        # proxy signs for them), so their scope's region is not held against them.
        scope = credential_scope_region(req) if p.region_source == "host" else None
        if scope is not None and scope != p.region and isinstance(self.signer, Keyring):
            return Decision(
                "reject",
                p,
                error=_wrong_region(req, scope, p.region),
                method=req.method,
                signing="refused",
                signing_note=f"signed for {scope}, but {req.host} is in {p.region}",
                endpoint=p.endpoint,
            )
        target = Target(
            host=p.upstream_host,
            path=p.upstream_path,
            query=p.upstream_query,
            has_query=p.upstream_has_query,
            region=p.region,
        )
        outcome: SignOutcome = resign(req, target, self.signer, now)
        if outcome.action == "refused":
            assert outcome.error is not None
            return Decision(
                "reject",
                p,
                error=outcome.error,
                method=req.method,
                signing="refused",
                signing_note=outcome.note,
                endpoint=p.endpoint,
            )
        d = Decision(
            "forward",
            p,
            method=req.method,
            host=p.upstream_host,
            port=p.endpoint.port,
            path=p.upstream_path,
            query=outcome.query,
            has_query=p.upstream_has_query or bool(outcome.query),
            headers=_forwardable(outcome.headers),
            signing=outcome.action,
            signing_note=outcome.note,
            chunk=outcome.chunk,
            endpoint=p.endpoint,
            kind=_kind_of(p.upstream_host, p.endpoint),
        )
        return self._policy(req, d, now)

    def _policy(self, req: Request, d: Decision, now: datetime) -> Decision:
        """Evaluate the endpoint and bucket policies on the request as it goes upstream (after re-signing:
        with proxy-identity, S3 sees the proxy's principal), then warn or enforce per `policy_mode`."""
        settings = self.config.policy
        if not settings.configured or (settings.mode == "off" and not self.explain):
            return d
        p = d.plan
        if p.family not in _POLICY_FAMILIES:
            why = f"{p.family} requests: the bucket is not known from the name; not checked"
            return replace(d, policy=PolicyDecision("not-denied", reason=why))
        pd = check_request(
            method=d.method,
            family=p.family,
            bucket=p.bucket,
            key=p.key,
            headers=d.headers,
            query=d.query,
            region=p.region,
            endpoint_id=d.endpoint.endpoint_id if d.endpoint is not None else None,
            settings=settings,
            access_key_id=access_key_of(d.headers, d.query),
            now=now,
            access_point_prefix=classify_host(req.host).prefix if p.family == "access-point" else None,
        )
        d = replace(d, policy=pd)
        if not pd.denied:
            return d
        if settings.mode == "enforce":
            if not self.explain:
                self.policy_denials += 1
            # Nothing goes upstream: the caller answers rejects before any byte is sent.
            return Decision(
                "reject",
                p,
                error=S3Error(403, "AccessDenied", denial_message(pd)),
                method=d.method,
                endpoint=d.endpoint,
                kind=d.kind,
                policy=pd,
            )
        if settings.mode == "warn" and not self.explain:
            self.policy_warnings += 1
            policy_log.warning(
                "policy (warn): S3 would deny %s %s%s: %s%s",
                d.method,
                req.host,
                req.path,
                pd.reason,
                f" (statement {pd.sid!r})" if pd.sid else "",
            )
        return d


def _wrong_region(req: Request, scope: str, region: str) -> S3Error:
    """S3's answer to a request signed for another region than its regional host names. The <Region>
    element (and, for a HEAD, which has no body, the `x-amz-bucket-region` header) is what SDKs (botocore's
    region redirector) re-sign with."""
    if (req.header("authorization") or "").startswith("AWS4-HMAC-SHA256"):
        return S3Error(
            400,
            "AuthorizationHeaderMalformed",
            f"The authorization header is malformed; the region '{scope}' is wrong; expecting '{region}'",
            region=region,
        )
    return S3Error(
        400,
        "AuthorizationQueryParametersError",
        f"Error parsing the X-Amz-Credential parameter; the region '{scope}' is wrong; expecting '{region}'",
        region=region,
    )


def _forwardable(headers: Headers) -> Headers:
    return tuple((k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP)
