"""The proxy auto-config (PAC) file at `/proxy.pac`: S3 names go through s3proxy, everything else DIRECT.

# Strategy: the JavaScript is generated from the same rules `s3proxy.hosts.is_s3_host` applies, written as
# anchored regular expressions (a syntax Python and JavaScript share) over the lower-cased host without its
# trailing dot, plus a per-label validity check. `host_matches` runs those very expressions in Python, so a
# test can hold them against `is_s3_host` on any host. Only the partitions (DNS suffixes) that the config has
# endpoints in are sent to the proxy. Interface endpoint names (`*.vpce.amazonaws.com`) go DIRECT, as the
# proxy tunnels them untouched anyway. There is no `; DIRECT` fallback for S3 names: if the proxy is down, an
# application must not silently reach the public S3 endpoints instead of the interface endpoint.
#
# PAC format: https://developer.mozilla.org/en-US/docs/Web/HTTP/Proxy_servers_and_tunneling/Proxy_Auto-Configuration_PAC_file
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Sequence

from s3proxy.config import Config

CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
SUFFIXES = ("amazonaws.com", "amazonaws.com.cn")

# The label and region syntax of s3proxy.hosts / s3proxy.endpoint.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_ANY = r"[a-z0-9_-]+"  # one label (validity is checked per label separately)
_PREFIX = rf"(?:{_ANY}\.)*"
_DS = r"(?:\.dualstack)?"
_REGION = {
    # A region belongs to one partition: cn-* only under amazonaws.com.cn.
    "amazonaws.com": r"(?!cn-)[a-z]{2}(?:-[a-z]+)+-\d{1,2}",
    "amazonaws.com.cn": r"cn(?:-[a-z]+)+-\d{1,2}",
}
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def _rules(suffix: str) -> list[str]:
    """Anchored patterns for the S3 names of one partition (see s3proxy.hosts.classify_host)."""
    s = re.escape(suffix).replace("\\-", "-")
    r = _REGION[suffix]
    rules = [
        rf"^{_PREFIX}s3-global\.{s}$",  # Multi-Region Access Points
        rf"^{_PREFIX}s3-accelerate{_DS}\.{s}$",  # Transfer Acceleration
        rf"^{_PREFIX}s3-(?:fips-|website-)?{r}\.{s}$",  # s3-REGION, s3-fips-REGION, s3-website-REGION
        # s3, s3-website, s3express*, s3-outposts, s3-object-lambda and any *fips* service, any prefix
        rf"^{_PREFIX}(?:s3|s3-website|s3express[a-z0-9_-]*|s3-outposts|s3-object-lambda|[a-z0-9_-]*fips[a-z0-9_-]*)"
        rf"{_DS}\.{r}\.{s}$",
        rf"^{_ANY}\.s3-accesspoint{_DS}\.{r}\.{s}$",  # NAME-ACCOUNT.s3-accesspoint: exactly one label
        rf"^(?:\d{{12}}\.)?s3-control{_DS}\.{r}\.{s}$",  # [ACCOUNT.]s3-control
    ]
    if suffix == "amazonaws.com":  # the legacy global names exist only in the aws partition
        rules.append(rf"^{_PREFIX}s3(?:-external-1)?\.{s}$")
    return rules


def partitions(config: Config) -> tuple[str, ...]:
    """The DNS suffixes of the configured endpoints, in a fixed order."""
    have = {ep.name.dns_suffix for ep in config.endpoints.values()}
    return tuple(s for s in SUFFIXES if s in have)


def host_matches(host: str, suffixes: Iterable[str]) -> bool:
    """What the generated PAC decides for `host` (True: through the proxy), evaluated in Python."""
    h = host.lower()
    h = h[:-1] if h.endswith(".") else h
    if not h or len(h) > 253 or not all(re.fullmatch(_LABEL, label) for label in h.split(".")):
        return False
    return any(re.search(rule, h) for s in suffixes for rule in _rules(s))


def proxy_address(host: str, port: int) -> str:
    """`host:port` for a PAC `PROXY` entry (IPv6 in brackets). Raises ValueError for anything else."""
    if not 1 <= port <= 65535:
        raise ValueError(f"proxy port {port} is outside 1-65535")
    h = host.strip("[]")
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        if not _HOSTNAME_RE.match(h) or ".." in h:
            raise ValueError("proxy host must be a DNS name or an IP address") from None
        return f"{h}:{port}"
    if ip.is_unspecified:
        raise ValueError(f"proxy host {h} is a wildcard listen address; give the name clients use")
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def proxy_host_for(listen_host: str, requested_host: str | None) -> str:
    """The proxy host to put into the PAC: the listen address, or when that is a wildcard (0.0.0.0, ::), the
    name the client used to fetch the PAC (its Host header, without port), which reaches this machine."""
    try:
        wildcard = not listen_host or ipaddress.ip_address(listen_host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard:
        return listen_host
    if not requested_host:
        raise ValueError("the proxy listens on a wildcard address and the PAC request named no host")
    h = requested_host.strip()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def pac_file(
    config: Config, proxy_host: str, proxy_port: int, fallbacks: Sequence[tuple[str, int]] = ()
) -> str:
    """The PAC JavaScript. `fallbacks`: further s3proxy instances, tried in order (never DIRECT)."""
    proxies = "; ".join(f"PROXY {proxy_address(h, p)}" for h, p in ((proxy_host, proxy_port), *fallbacks))
    suffixes = partitions(config)
    rules = [rule for s in suffixes for rule in _rules(s)]
    domains = " || ".join(f"dnsDomainIs(h, {json.dumps('.' + s)})" for s in suffixes) or "false"
    rule_lines = ",\n".join(f"    /{rule}/" for rule in rules)
    names = ", ".join(suffixes) or "no partition"
    return f"""// s3proxy PAC: S3 names of {names} through s3proxy, everything else DIRECT.
// Generated from the proxy's configuration; served at /proxy.pac on its admin listener.
var S3PROXY = {json.dumps(proxies)};
var S3_RULES = [
{rule_lines}
];
var S3_LABEL = /^{_LABEL}$/;

function s3proxyIsS3(h) {{
  if (h.length === 0 || h.length > 253) return false;
  if (!({domains})) return false;
  var labels = h.split(".");
  for (var i = 0; i < labels.length; i++) {{
    if (!S3_LABEL.test(labels[i])) return false;
  }}
  for (var j = 0; j < S3_RULES.length; j++) {{
    if (S3_RULES[j].test(h)) return true;
  }}
  return false;
}}

function FindProxyForURL(url, host) {{
  var h = String(host).toLowerCase();
  if (h.charAt(h.length - 1) === ".") h = h.substring(0, h.length - 1);
  if (s3proxyIsS3(h)) return S3PROXY;
  return "DIRECT";
}}
"""
