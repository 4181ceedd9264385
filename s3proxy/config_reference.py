"""The configuration reference (docs/config-reference.md), generated from the validator so it can't drift.

# Strategy: the set of keys is not written down here; it is read from `parse_config` itself. Unknown keys are
# errors that list the known ones ("known keys: a, b, c"), so probing each mapping with a key that cannot
# exist yields exactly the keys the validator accepts, section by section. Defaults come from the frozen
# dataclasses in `s3proxy.config` where a key maps onto a field, else from `DESCRIPTIONS`. Every key needs
# a description; a key without one is printed as such, and the test of this module fails until it has one.
#
#   python -m s3proxy.config_reference > docs/config-reference.md
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator, Mapping
from pathlib import Path

from s3proxy.config import Config, ConfigError, parse_config

_PROBE = "zz_probe_key_zz"
_MINIMAL_ENDPOINT = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
# Mappings whose keys are names (not a fixed schema) that hold a section: the placeholder shown for the
# name, and the name probed with. Lists of sections are shown as `key[]`.
_NAMED = {"endpoints": ("<region>", "us-east-1")}
_LISTS = {"signing.keys", "access.users"}

MISSING = "*(no description yet)*"

# path -> (default as shown, or None to take it from the dataclasses; description)
DESCRIPTIONS: Mapping[str, tuple[str | None, str]] = {
    "endpoints": (
        "(required)",
        "Region -> S3 interface endpoint: its DNS name (the console's `*.vpce-…` form, zonal names and a "
        "`bucket.` prefix are accepted), or a mapping with the keys below.",
    ),
    "endpoints.<region>.dns_name": ("(required)", "The endpoint's DNS name."),
    "endpoints.<region>.zones": ("[]", "Availability Zones the endpoint has (zonal DNS names are tried)."),
    "endpoints.<region>.prefer_zone": ("—", "Try addresses in this zone first (one of `zones`)."),
    "endpoints.<region>.port": ("443", "HTTPS port of the endpoint (test stand-ins, port forwarding)."),
    "endpoints.<region>.policy": (
        "—",
        "The endpoint's VPC endpoint policy (file, JSON text or mapping), evaluated per `policy_mode`.",
    ),
    "endpoints.<region>.vpc_id": ("—", "The VPC of the endpoint, for `aws:SourceVpc` in policies."),
    "default_region": (None, "Region for the legacy global name when nothing else names one."),
    "addressing": (
        None,
        "Upstream form: `path` (as SDKs send to a vpce name) or `virtual` (DNS-safe buckets).",
    ),
    "buckets": ("{}", "Bucket -> region, for the legacy global name (`s3.amazonaws.com`)."),
    "unsupported": (
        "reject",
        "Families PrivateLink cannot carry: `reject` or `passthrough` for all, or per family (below).",
    ),
    "unsupported.fips": ("reject", "FIPS endpoints (`s3-fips.*`): never downgraded silently."),
    "unsupported.website": ("reject", "Static website endpoints."),
    "unsupported.accelerate": ("reject", "Transfer Acceleration."),
    "unsupported.mrap": ("reject", "Multi-Region Access Points (SigV4A)."),
    "unsupported.s3express": ("reject", "S3 Express One Zone."),
    "unsupported.outposts": ("reject", "S3 on Outposts."),
    "unsupported.object-lambda": ("reject", "S3 Object Lambda."),
    "unknown_region": (None, "A region without an endpoint: `reject` (fail closed) or `passthrough`."),
    "signing": ("", "How requests are re-signed for the endpoint name."),
    "signing.mode": (None, "`keyring` (verify, then re-sign with the client's key) or `proxy-identity`."),
    "signing.keys": ("[]", "Access keys whose secrets the proxy holds."),
    "signing.keys[].access_key_id": ("(required)", "The access key id."),
    "signing.keys[].secret_access_key": ("—", "The secret, inline (prefer the `_env` form or a keys file)."),
    "signing.keys[].secret_access_key_env": ("—", "Environment variable holding the secret (read at load)."),
    "signing.keys_file": ("—", "YAML file with the same `keys:` list; refused unless `chmod 600`."),
    "signing.profiles": ("[]", "AWS profiles (shared config/credentials) whose keys join the keyring."),
    "signing.identity_profile": ("—", "Profile for `proxy-identity` (default: botocore's standard chain)."),
    "listen": ("", "Where applications connect (changing it needs a restart)."),
    "listen.host": (None, "Address to listen on."),
    "listen.port": (None, "Port to listen on (`HTTPS_PROXY=http://HOST:PORT`)."),
    "listen.mode": (None, "`regular` (explicit proxy) or `transparent` (iptables REDIRECT)."),
    "non_s3": ("tunnel", "Other CONNECT targets: `tunnel` (never decrypted) or `deny`."),
    "tls": ("", "Certificates."),
    "tls.ca_dir": (None, "The proxy CA (generated on first run, or your own); clients must trust it."),
    "tls.upstream_ca_bundle": ("system store", "CA bundle to verify the endpoint with."),
    "tls.ca_key": (
        None,
        "Key of a CA s3proxy creates: `rsa` (2048 bits) or `ecdsa` (P-256, cheaper client handshakes); an "
        "existing CA is kept.",
    ),
    "tls.prefer_aes128": (
        None,
        "TLS 1.3 order AES-128-GCM, AES-256-GCM, ChaCha20 (clients and endpoints; ChaCha20 for clients "
        "that list it first); `false`: mitmproxy's TLS contexts unchanged (OpenSSL's order, AES-256 first).",
    ),
    "dns": ("", "Resolving the endpoint names (dnspython; never the system cache)."),
    "dns.nameservers": (
        "system resolver",
        "Nameservers by address: `10.0.0.2`, `127.0.0.1:5353`, `[fd00::2]:53`.",
    ),
    "dns.timeout": (None, "Seconds per query."),
    "dns.cache_max_ttl": (None, "Seconds; answers are never cached longer, whatever their TTL."),
    "dns.negative_ttl": (None, "Seconds a failed lookup is remembered."),
    "access": ("", "Who may use the proxy."),
    "access.allow_clients": (None, "Client networks (CIDR) allowed to use the proxy."),
    "access.users": ("[]", "Optional proxy Basic authentication."),
    "access.users[].username": ("(required)", "User name (no `:`)."),
    "access.users[].password_hash": ("(required)", "`pbkdf2_sha256$…` from `s3proxy.config.hash_password`."),
    "upstream": ("", "Connections to the endpoint."),
    "upstream.connect_timeout": (None, "Seconds for TCP connect + TLS handshake to one endpoint address."),
    "upstream.bench_seconds": (None, "An address that failed is skipped this many seconds."),
    "upstream.verify_interval": (
        None,
        "A new connection first proves its address with a TCP+TLS probe unless one succeeded within this "
        "many seconds (0: always).",
    ),
    "upstream.idle_timeout": (None, "Seconds without a byte either way before a connection is closed."),
    "upstream.request_timeout": (None, "Seconds for a whole request and response; 0: no limit."),
    "upstream.discover_region": (
        None,
        "Legacy global name, bucket region unknown: ask S3 (one anonymous `HEAD /BUCKET`, cached).",
    ),
    "upstream.region_cache_ttl": (None, "Seconds a learned bucket region is trusted."),
    "upstream.region_cache_size": (None, "Buckets whose region is remembered (least recently used dropped)."),
    "upstream.reuse_idle": (
        None,
        "Seconds an idle endpoint connection of a client connection that ended is kept for the next client "
        "connection to the same endpoint (no new TCP+TLS handshake); 0: off.",
    ),
    "upstream.reuse_max": (None, "Idle endpoint connections kept per endpoint name and worker; 0: off."),
    "admin": ("", "The admin listener: `/metrics`, `/healthz`, `/readyz`, `/proxy.pac`."),
    "admin.listen": ("off", "`ADDRESS:PORT` to serve them on; never reachable through the proxy port."),
    "admin.pac_proxy": (
        "listen address",
        "`HOST:PORT` the PAC file names as the proxy (the name clients use).",
    ),
    "log": ("", "Logging (stderr)."),
    "log.format": (None, "Access log lines: `json` (one object per line) or `text` (logfmt)."),
    "log.redact_keys": (None, "Replace object keys in the access log by a SHA-256 prefix."),
    "log.level": (None, "`error`, `warn`, `info` or `debug`; the `S3PROXY_LOG_LEVEL` variable overrides it."),
    "log.access_log": (None, "One line per request on logger `s3proxy.access`."),
    "policy_mode": ("off", "Evaluate endpoint/bucket policies per request: see `s3proxy policy`."),
    "bucket_policies": ("{}", "Bucket -> bucket policy (file, JSON text or mapping) for evaluation."),
    "accounts": ("{}", "Access key id -> account ID or principal ARN, for policy evaluation."),
    "bucket_accounts": ("{}", "Bucket -> owning account ID, for policy evaluation."),
    "limits": ("", "Bounds on what one client request may make the proxy hold."),
    "limits.max_header_bytes": (None, "Request line + header fields of one request."),
    "limits.max_chunk_size": (None, "One aws-chunked chunk (the re-signer buffers one)."),
    "limits.max_trailer_size": (None, "Trailing headers of an aws-chunked body."),
    "tunnel_allow": ("[]", "Networks a non-S3 tunnel may reach although loopback, link-local or this host."),
    "workers": (
        "auto",
        "Proxy processes sharing the listening port (SO_REUSEPORT): `auto` = one per core, 1 = one process.",
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Key:
    path: str  # as shown: `endpoints.<region>.zones`, `signing.keys[].access_key_id`
    default: str
    description: str
    section: bool  # a mapping of further keys


def _nest(parts: tuple[str, ...], leaf: object) -> dict[str, object]:
    value: object = leaf
    for part in reversed(parts):
        value = [value] if part == "[]" else {part: value}
    assert isinstance(value, dict)
    return value


def accepted_keys(parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keys the validator accepts in the mapping at `parts` (None: not a fixed-key mapping)."""
    doc: dict[str, object] = {"endpoints": {"us-east-1": _MINIMAL_ENDPOINT}}
    doc.update(_nest(parts, {_PROBE: 1}))
    where = ".".join(parts).replace(".[]", "[0]")
    try:
        parse_config(doc, base_dir=Path("/"), environ={})
    except ConfigError as e:
        prefix = f"{where + '.' if where else ''}{_PROBE}: unknown key; known keys: "
        if str(e).startswith(prefix):
            return tuple(k.strip() for k in str(e)[len(prefix) :].split(","))
    return None


def _default(path: str) -> str:
    value: object = Config()
    for part in path.split("."):
        if not dataclasses.is_dataclass(value) or part not in {f.name for f in dataclasses.fields(value)}:
            return "—"
        value = getattr(value, part)
    return _show(value)


def _show(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{}" if not value else "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def walk(parts: tuple[str, ...] = (), shown: str = "") -> Iterator[Key]:
    """Every key the validator accepts, depth first, in the validator's order."""
    for name in accepted_keys(parts) or ():
        path = f"{shown}.{name}" if shown else name
        probe = (*parts, name)
        if name in _NAMED and not parts:
            placeholder, example = _NAMED[name]
            yield _key(path, section=True)
            yield from walk((*probe, example), f"{path}.{placeholder}")
        elif path in _LISTS:
            yield _key(path, section=True)
            yield from walk((*probe, "[]"), f"{path}[]")
        else:
            sub = accepted_keys(probe)
            yield _key(path, section=sub is not None)
            if sub is not None:
                yield from walk(probe, path)


def _key(path: str, *, section: bool) -> Key:
    default, description = DESCRIPTIONS.get(path, (None, MISSING))
    return Key(path, _default(path) if default is None else default, description, section)


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m s3proxy.config_reference > docs/config-reference.md` from the",
        "     validator in s3proxy/config.py; tests/test_config_reference.py fails when it is stale. -->",
        "",
        "One YAML file (`s3proxy run --config FILE`, or `$S3PROXY_CONFIG`), validated when it is loaded and",
        "on every reload; unknown keys are errors. Relative paths are resolved against the file's directory.",
        "`config/s3proxy.example.yaml` shows every key with a comment.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    for k in walk():
        name = f"**`{k.path}`**" if k.section else f"`{k.path}`"
        default, description = (text.replace("|", r"\|") for text in (k.default, k.description))
        lines.append(f"| {name} | {default} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
