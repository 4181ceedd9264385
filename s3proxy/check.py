"""`s3proxy check`: the config loads, every endpoint name resolves, and every address answers TLS.

It does what the proxy will do for a first request to each endpoint — resolve the candidates in
preference order with the configured nameservers, then open a verified TLS connection with the vpce name as
SNI — and reports each step in plain words, so an operator sees what works before sending traffic.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import TextIO

from s3proxy.config import Config
from s3proxy.resolver import DnsFailure, Resolver, candidates


def tls_context(config: Config) -> ssl.SSLContext:
    """Upstream TLS as the proxy does it: verified, TLS 1.2+, system store or the configured bundle."""
    bundle = config.tls.upstream_ca_bundle
    ctx = ssl.create_default_context(cafile=str(bundle) if bundle else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def probe_tls(address: str, port: int, server_name: str, ctx: ssl.SSLContext, timeout: float) -> str:
    """Connect and handshake; returns the negotiated TLS version. Raises OSError/ssl.SSLError."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            return tls.version() or "TLS"


def make_resolver(config: Config) -> Resolver:
    d = config.dns
    return Resolver(
        d.nameservers, timeout=d.timeout, cache_max_ttl=d.cache_max_ttl, negative_ttl=d.negative_ttl
    )


def report_policies(config: Config, out: TextIO) -> None:
    """The policy settings and `policy lint` warnings: worth fixing, but not a failed check."""
    p = config.policy
    if not p.configured:
        if p.mode != "off":
            print(f"policy: policy_mode {p.mode!r} but no policy is configured: nothing to check", file=out)
        return
    from s3proxy.policy_lint import lint

    print(
        f"policy: mode {p.mode}, {len(p.endpoint_policies)} endpoint policies, "
        f"{len(p.bucket_policies)} bucket policies",
        file=out,
    )
    for w in lint(config, p.bucket_policies, endpoint_policies=p.endpoint_policies, vpc_ids=p.vpc_ids):
        print(f"  warning: {w}", file=out)


def check(config: Config, path: Path, *, out: TextIO, timeout: float = 5.0) -> int:
    print(
        f"config {path}: OK ({len(config.endpoints)} endpoint(s), signing mode {config.signing.mode})",
        file=out,
    )
    if not config.endpoints:
        print("  no endpoints configured: every request would be refused", file=out)
        return 1
    report_policies(config, out)
    try:
        resolver = make_resolver(config)
    except ValueError as e:
        print(f"dns: {e}", file=out)
        return 1
    ctx = tls_context(config)
    failures = 0
    for region, endpoint in sorted(config.endpoints.items()):
        print(f"endpoint {region}: {endpoint.domain()}", file=out)
        server_name = endpoint.host("bucket")
        reachable = 0
        for cand in candidates(endpoint, "bucket"):
            label = f"zone {cand.zone}" if cand.zone else "regional"
            try:
                addresses = resolver.resolve_sync(cand.name)
            except DnsFailure as e:
                print(f"  {label:<22} {cand.name}: DNS {e.reason}", file=out)
                continue
            for address in addresses:
                try:
                    version = probe_tls(address, endpoint.port, server_name, ctx, timeout)
                except ssl.SSLCertVerificationError as e:
                    print(
                        f"  {label:<22} {address}:{endpoint.port}: TLS certificate not trusted: "
                        f"{e.verify_message}",
                        file=out,
                    )
                except (OSError, ssl.SSLError) as e:
                    print(f"  {label:<22} {address}:{endpoint.port}: cannot connect: {e}", file=out)
                else:
                    reachable += 1
                    print(
                        f"  {label:<22} {address}:{endpoint.port}: OK ({version}, certificate valid for "
                        f"{server_name})",
                        file=out,
                    )
        if reachable == 0:
            failures += 1
            print(f"  FAIL: no address of {endpoint.domain()} is reachable", file=out)
    print("all endpoints reachable" if failures == 0 else f"{failures} endpoint(s) unreachable", file=out)
    return 0 if failures == 0 else 1
