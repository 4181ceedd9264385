"""What the proxy does with one request, decided from plain values: rewrite, then verify and re-sign.

Strategy: `Engine.decide` is the single decision both the running proxy and `s3proxy explain` use, so what
`explain` prints is what the proxy sends. It does no I/O: DNS and connections belong to the caller, the
clock is an argument, and learned regions come in through a callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from s3proxy.chunked import ChunkSeed
from s3proxy.config import Config
from s3proxy.endpoint import Endpoint, HostKind
from s3proxy.errors import S3Error
from s3proxy.model import Headers, Request, replace_header
from s3proxy.rewrite import Plan, plan
from s3proxy.signing import Signer, SignOutcome, Target, resign

Action = Literal["forward", "reject", "passthrough"]

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
    """Rewrite and signing for one loaded config. Immutable; a reload builds a new Engine."""

    def __init__(self, config: Config, signer: Signer) -> None:
        self.config = config
        self.signer = signer

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
            return Decision(
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
        assert p.endpoint is not None and p.upstream_host is not None and p.region is not None
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
        return Decision(
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


def _forwardable(headers: Headers) -> Headers:
    return tuple((k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP)
