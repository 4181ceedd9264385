"""The configuration: one YAML file validated once into a frozen, typed `Config`.

# Strategy: a small walker (`_Node`) carries the key path of every value it hands out, so each check can
# raise `ConfigError` naming where the bad value sits (`endpoints.eu-west-1.dns_name: ...`). Every section
# has a parse function that accepts only the keys it knows (typos get a did-you-mean) and returns a frozen
# value. Files and the environment are read here, at load time only; nothing later reads them again.
# Secrets never appear in an error message or a repr.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import hmac
import ipaddress
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn, cast

import yaml

from s3proxy.endpoint import REGION_RE, ZONE_RE, Endpoint, parse_endpoint_name
from s3proxy.hosts import UNSUPPORTED_FAMILIES
from s3proxy.policy import Mode as PolicyMode
from s3proxy.policy import Policy, PolicySettings, parse_policy_document

Action = Literal["reject", "passthrough"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration problem; the message names the key path and the bad value (never a secret)."""


# ----------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class KeyEntry:
    access_key_id: str
    secret_access_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SigningConfig:
    mode: Literal["keyring", "proxy-identity"] = "keyring"
    keys: tuple[KeyEntry, ...] = ()
    profiles: tuple[str, ...] = ()
    identity_profile: str | None = None


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 3128
    mode: Literal["regular", "transparent"] = "regular"  # explicit proxy, or iptables REDIRECT


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_dir: Path = Path("~/.s3proxy/ca")
    upstream_ca_bundle: Path | None = None
    # Key type of a CA s3proxy creates (an existing CA is never replaced): "rsa" (2048 bits, every client)
    # or "ecdsa" (P-256: each client TLS handshake costs the proxy ~1 ms less CPU, measured).
    ca_key: Literal["rsa", "ecdsa"] = "rsa"
    # TLS 1.3: AES-128-GCM first (then AES-256-GCM, ChaCha20) for clients and toward endpoints, instead of
    # OpenSSL's AES-256 first: less CPU per byte relayed (s3proxy.ciphers). False: mitmproxy's contexts.
    prefer_aes128: bool = True


@dataclass(frozen=True, slots=True)
class DNSConfig:
    nameservers: tuple[tuple[str, int], ...] = ()  # empty: the system's resolver configuration
    timeout: float = 2.0
    cache_max_ttl: float = 300.0
    negative_ttl: float = 5.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    connect_timeout: float = 5.0  # seconds for TCP connect + TLS handshake to one endpoint address
    bench_seconds: float = 30.0  # an address that failed is skipped this long
    # A new upstream connection first proves its address with a TCP+TLS probe unless one succeeded within
    # this many seconds (0: every new connection), so a dead address is skipped before any request byte.
    verify_interval: float = 0.0
    # A client connection (and its upstream connections) on which no byte moved either way for this long is
    # closed: a response stalled mid-body reaches the client as a cut connection, never as a complete one.
    idle_timeout: float = 120.0
    # Whole-request limit from request headers to the end of the response; 0 = none (a large transfer
    # takes as long as it takes; idle_timeout still catches a stalled one).
    request_timeout: float = 0.0
    # Legacy global host, bucket region unknown (SigV2, anonymous, not in `buckets`): ask S3 with one
    # anonymous `HEAD /BUCKET` at the default region's endpoint (cached) instead of guessing default_region.
    discover_region: bool = True
    region_cache_ttl: float = 3600.0  # learned bucket regions are trusted this long
    region_cache_size: int = 10000  # at most this many buckets (least recently used dropped first)
    # An endpoint connection left idle by a client connection that ended is kept this many seconds for the
    # next client connection to the same endpoint name, which then needs no TCP+TLS handshake (0: off).
    reuse_idle: float = 5.0
    reuse_max: int = 16  # idle endpoint connections kept per endpoint name (per worker)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: tuple[str, int] | None = None  # None: no admin listener
    pac_proxy: str | None = None  # "gw.example:3128" in the PAC file; default: listen host:port


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["json", "text"] = "json"
    redact_keys: bool = False
    level: Literal["error", "warn", "info", "debug"] = "info"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Bounds on what one client request may make the proxy hold or parse (docs/security.md)."""

    max_header_bytes: int = 64 * 1024  # request line + header fields of one request
    max_chunk_size: int = 16 * 1024 * 1024  # one aws-chunked chunk: the re-signer buffers one chunk
    max_trailer_size: int = 16 * 1024  # the trailing headers of an aws-chunked body


@dataclass(frozen=True, slots=True)
class ProxyUser:
    username: str
    password_hash: str = field(repr=False)


_LOOPBACK_NETS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, slots=True)
class AccessConfig:
    allow_clients: tuple[IPNetwork, ...] = _LOOPBACK_NETS
    users: tuple[ProxyUser, ...] = ()

    @property
    def open_to_all(self) -> tuple[IPNetwork, ...]:
        """Networks in allow_clients that admit every address (0.0.0.0/0, ::/0)."""
        return tuple(n for n in self.allow_clients if n.prefixlen == 0)

    @property
    def loopback_only(self) -> bool:
        return all(
            n.network_address.is_loopback and n.broadcast_address.is_loopback for n in self.allow_clients
        )

    @property
    def restricted(self) -> bool:
        """True if these rules really limit who may use the proxy: no catch-all network, and either only
        loopback clients or proxy authentication. proxy-identity signing requires it."""
        return not self.open_to_all and (self.loopback_only or bool(self.users))

    def client_allowed(self, address: str) -> bool:
        """True if the client IP (v4, v6 or v4-mapped v6) is inside one of `allow_clients`."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow_clients)


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


def _default_unsupported() -> Mapping[str, Action]:
    return MappingProxyType(dict.fromkeys(UNSUPPORTED_FAMILIES, "reject"))


@dataclass(frozen=True, slots=True)
class Config:
    endpoints: Mapping[str, Endpoint] = field(default_factory=_empty_mapping)
    default_region: str = "us-east-1"
    addressing: Literal["path", "virtual"] = "path"
    buckets: Mapping[str, str] = field(default_factory=_empty_mapping)
    # One action per unsupported family (every family present).
    unsupported: Mapping[str, Action] = field(default_factory=_default_unsupported)
    unknown_region: Action = "reject"
    signing: SigningConfig = SigningConfig()
    listen: ListenConfig = ListenConfig()
    non_s3: Literal["tunnel", "deny"] = "tunnel"
    tls: TLSConfig = TLSConfig()
    dns: DNSConfig = DNSConfig()
    access: AccessConfig = AccessConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    policy: PolicySettings = field(default_factory=PolicySettings)
    limits: LimitsConfig = LimitsConfig()
    # Destinations a non-S3 tunnel may reach although they are loopback, link-local or this host's own.
    tunnel_allow: tuple[IPNetwork, ...] = ()
    # Proxy processes sharing the listening port (SO_REUSEPORT); None: one per CPU core the process may
    # use (s3proxy.runner.default_workers).
    workers: int | None = None

    def unsupported_action(self, family: str) -> Action:
        return self.unsupported.get(family, "reject")

    def endpoint_for(self, region: str) -> Endpoint | None:
        return self.endpoints.get(region)


# ---------------------------------------------------------------------------------------------- walker


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class _Node:
    """A value from the YAML document together with its key path."""

    path: str
    value: Any
    secret: bool = False

    def fail(self, message: str, *, show: bool = True) -> NoReturn:
        shown = "" if (self.secret or not show) else f"{_show(self.value)} "
        raise ConfigError(f"{self.path or '<top level>'}: {shown}{message}")

    def child(self, key: str | int, value: Any, *, secret: bool = False) -> _Node:
        if isinstance(key, int):
            return _Node(f"{self.path}[{key}]", value, secret)
        return _Node(f"{self.path}.{key}" if self.path else key, value, secret)

    def mapping(self, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(self.value, dict):
            self.fail(f"must be a mapping, not {_type_name(self.value)}", show=False)
        for k in self.value:
            if not isinstance(k, str):
                self.child(str(k), None).fail(
                    f"key {_show(k)} must be a string (quote it in YAML)", show=False
                )
            if allowed is not None and k not in allowed:
                hint = difflib.get_close_matches(k, allowed, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(allowed)}"
                self.child(k, None).fail(f"unknown key{extra}", show=False)
        return cast(dict[str, Any], self.value)

    def items(self, allowed: tuple[str, ...] | None = None) -> Iterator[tuple[str, _Node]]:
        for k, v in self.mapping(allowed).items():
            yield k, self.child(k, v)

    def get(self, key: str, allowed: tuple[str, ...]) -> _Node | None:
        m = self.mapping(allowed)
        if key not in m or m[key] is None:
            return None
        return self.child(key, m[key])

    def as_list(self) -> list[_Node]:
        if not isinstance(self.value, list):
            self.fail(f"must be a list, not {_type_name(self.value)}", show=False)
        return [self.child(i, v) for i, v in enumerate(self.value)]

    def as_str(self) -> str:
        if not isinstance(self.value, str):
            what = _type_name(self.value)
            self.fail(f"must be a string, not {what}" + ("" if self.secret else " (quote it in YAML)"))
        if not self.value.strip():
            self.fail("must not be empty")
        return self.value

    def choice[T: str](self, options: tuple[T, ...]) -> T:
        if not isinstance(self.value, str) or self.value not in options:
            self.fail(f"must be one of: {', '.join(options)}")
        return self.value

    def number(self, *, minimum: float, maximum: float | None = None, integer: bool = False) -> float:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.fail("must be " + ("an integer" if integer else "a number"))
        if v < minimum or (maximum is not None and v > maximum):
            bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
            self.fail(f"must be {bound}")
        return float(v)


# ------------------------------------------------------------------------------------------- sections

_TOP_KEYS = (
    "endpoints",
    "default_region",
    "addressing",
    "buckets",
    "unsupported",
    "unknown_region",
    "signing",
    "listen",
    "non_s3",
    "tls",
    "dns",
    "access",
    "upstream",
    "admin",
    "log",
    "policy_mode",
    "bucket_policies",
    "accounts",
    "bucket_accounts",
    "limits",
    "tunnel_allow",
    "workers",
)
_ENDPOINT_KEYS = ("dns_name", "zones", "prefer_zone", "port", "policy", "vpc_id")
_SIGNING_KEYS = ("mode", "keys", "keys_file", "profiles", "identity_profile")
_KEY_KEYS = ("access_key_id", "secret_access_key", "secret_access_key_env")
_ACTIONS: tuple[Action, ...] = ("reject", "passthrough")


def _region(node: _Node) -> str:
    value = node.as_str()
    if not REGION_RE.match(value):
        node.fail("is not an AWS region name (like 'us-east-1', 'eu-west-1', 'cn-north-1')")
    return value


def _endpoint(node: _Node, region: str) -> Endpoint:
    port_node: _Node | None = None
    if isinstance(node.value, str):
        name_node, zones_node, prefer_node = node, None, None
    else:
        m = node.mapping(_ENDPOINT_KEYS)
        if m.get("dns_name") is None:
            node.child("dns_name", None).fail("is required", show=False)
        name_node = node.child("dns_name", m["dns_name"])
        zones_node = node.get("zones", _ENDPOINT_KEYS)
        prefer_node = node.get("prefer_zone", _ENDPOINT_KEYS)
        port_node = node.get("port", _ENDPOINT_KEYS)
    try:
        name = parse_endpoint_name(name_node.as_str())
    except ValueError as e:
        name_node.fail(str(e))
    if name.region != region:
        name_node.fail(f"is an endpoint in region {name.region!r}, but it is listed under {region!r}")
    if name.region.startswith("cn-") != name.dns_suffix.endswith(".cn"):
        name_node.fail(f"region {name.region!r} does not belong to partition {name.dns_suffix!r}")
    zones: list[str] = []
    for zn in zones_node.as_list() if zones_node else []:
        z = zn.as_str()
        if not ZONE_RE.match(z) or z[:-1] != region:
            zn.fail(f"is not an Availability Zone of {region} (like '{region}a')")
        if z in zones:
            zn.fail("is listed twice")
        zones.append(z)
    prefer = prefer_node.as_str() if prefer_node else None
    if name.zone is not None:
        # A zonal name was given: its zone is where the operator wants traffic to go.
        if zones and name.zone not in zones:
            name_node.fail(f"is the zonal name for {name.zone}, which is not in zones")
        if not zones:
            zones = [name.zone]
        prefer = prefer or name.zone
    if prefer is not None and prefer not in zones:
        assert prefer_node is not None
        prefer_node.fail(f"must be one of zones ({', '.join(zones) or 'none listed'})")
    port = int(port_node.number(minimum=1, maximum=65535, integer=True)) if port_node else 443
    return Endpoint(region=region, name=name, zones=tuple(zones), prefer_zone=prefer, port=port)


def _unsupported(node: _Node) -> Mapping[str, Action]:
    if isinstance(node.value, str):
        action = node.choice(_ACTIONS)
        return MappingProxyType(dict.fromkeys(UNSUPPORTED_FAMILIES, action))
    actions: dict[str, Action] = dict.fromkeys(UNSUPPORTED_FAMILIES, "reject")
    for fam, child in node.items(UNSUPPORTED_FAMILIES):
        actions[fam] = child.choice(_ACTIONS)
    return MappingProxyType(actions)


_AKID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def _key_entry(node: _Node, environ: Mapping[str, str]) -> KeyEntry:
    m = node.mapping(_KEY_KEYS)
    if m.get("access_key_id") is None:
        node.child("access_key_id", None).fail("is required", show=False)
    akid_node = node.child("access_key_id", m["access_key_id"])
    akid = akid_node.as_str()
    # The key id sits in `Credential=AKID/DATE/...`: no '/', ',', '=' or spaces can be part of it.
    if len(akid) > 128 or not set(akid) <= _AKID_CHARS:
        # Not echoed: a value that is no key id is often the secret pasted into the wrong field.
        akid_node.fail(
            "is not an access key id (letters and digits, like 'AKIAIOSFODNN7EXAMPLE')",
            show=False,
        )
    inline, env = m.get("secret_access_key"), m.get("secret_access_key_env")
    if inline is not None and env is not None:
        node.fail("give either secret_access_key or secret_access_key_env, not both", show=False)
    if inline is not None:
        secret = node.child("secret_access_key", inline, secret=True).as_str()
    elif env is not None:
        env_node = node.child("secret_access_key_env", env)
        var = env_node.as_str()
        secret = environ.get(var, "")
        if not secret:
            env_node.fail(f"environment variable {var!r} is not set or empty", show=False)
    else:
        node.fail(f"access key {akid!r} needs secret_access_key or secret_access_key_env", show=False)
    return KeyEntry(akid, secret)


def _keys_file(node: _Node, base_dir: Path, environ: Mapping[str, str]) -> list[KeyEntry]:
    path = _path(node, base_dir, environ)
    try:
        st = path.stat()
    except OSError as e:
        node.fail(f"cannot be read: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        node.fail("is not a regular file")
    if st.st_mode & 0o077:
        node.fail(
            f"holds secrets but is readable or writable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    doc = _read_yaml(path, node.path)
    keys_node = _Node(f"{node.path}({path.name}).keys", None)
    top = _Node(f"{node.path}({path.name})", doc if doc is not None else {})
    k = top.get("keys", ("keys",))
    if k is None:
        keys_node.fail("is required", show=False)
    return [_key_entry(n, environ) for n in k.as_list()]


def _signing(node: _Node | None, base_dir: Path, environ: Mapping[str, str]) -> SigningConfig:
    if node is None:
        return SigningConfig()
    node.mapping(_SIGNING_KEYS)
    mode_node = node.get("mode", _SIGNING_KEYS)
    mode: Literal["keyring", "proxy-identity"] = (
        mode_node.choice(("keyring", "proxy-identity")) if mode_node else "keyring"
    )
    entries: list[tuple[_Node, KeyEntry]] = []
    keys_node = node.get("keys", _SIGNING_KEYS)
    for kn in keys_node.as_list() if keys_node else []:
        entries.append((kn, _key_entry(kn, environ)))
    file_node = node.get("keys_file", _SIGNING_KEYS)
    if file_node is not None:
        entries.extend((file_node, e) for e in _keys_file(file_node, base_dir, environ))
    seen: set[str] = set()
    for where, entry in entries:
        if entry.access_key_id in seen:
            where.fail(f"access key id {entry.access_key_id!r} is listed twice", show=False)
        seen.add(entry.access_key_id)
    profiles: list[str] = []
    prof_node = node.get("profiles", _SIGNING_KEYS)
    for pn in prof_node.as_list() if prof_node else []:
        p = pn.as_str()
        if p in profiles:
            pn.fail("is listed twice")
        profiles.append(p)
    ident_node = node.get("identity_profile", _SIGNING_KEYS)
    identity = ident_node.as_str() if ident_node else None
    return SigningConfig(mode, tuple(e for _, e in entries), tuple(profiles), identity)


def _flag(node: _Node | None, default: bool) -> bool:
    if node is None:
        return default
    if not isinstance(node.value, bool):
        node.fail("must be true or false")
    return bool(node.value)


def _path(node: _Node, base_dir: Path, environ: Mapping[str, str]) -> Path:
    text = node.as_str()
    if text == "~" or text.startswith("~/"):
        home = environ.get("HOME")
        if home:
            p = Path(home + text[1:])
        else:
            # No HOME given: ask the OS (passwd database) rather than keep a literal '~' directory name.
            try:
                p = Path(text).expanduser()
            except RuntimeError:
                node.fail("starts with '~' but the home directory is unknown; give an absolute path")
    else:
        p = Path(text)
    return p if p.is_absolute() else base_dir / p


def _listen(node: _Node | None) -> ListenConfig:
    if node is None:
        return ListenConfig()
    keys = ("host", "port", "mode")
    node.mapping(keys)
    host_node, port_node, mode_node = node.get("host", keys), node.get("port", keys), node.get("mode", keys)
    host = host_node.as_str() if host_node else "127.0.0.1"
    port = int(port_node.number(minimum=1, maximum=65535, integer=True)) if port_node else 3128
    mode: Literal["regular", "transparent"] = (
        mode_node.choice(("regular", "transparent")) if mode_node else "regular"
    )
    return ListenConfig(host, port, mode)


def _tls(node: _Node | None, base_dir: Path, environ: Mapping[str, str]) -> TLSConfig:
    keys = ("ca_dir", "upstream_ca_bundle", "ca_key", "prefer_aes128")
    default_ca = _path(_Node("tls.ca_dir", "~/.s3proxy/ca"), base_dir, environ)
    if node is None:
        return TLSConfig(ca_dir=default_ca)
    node.mapping(keys)
    ca_node, bundle_node = node.get("ca_dir", keys), node.get("upstream_ca_bundle", keys)
    ca_dir = _path(ca_node, base_dir, environ) if ca_node else default_ca
    if ca_node and ca_dir.exists() and not ca_dir.is_dir():
        ca_node.fail("exists and is not a directory")
    bundle = None
    if bundle_node is not None:
        bundle = _path(bundle_node, base_dir, environ)
        if not bundle.is_file():
            bundle_node.fail(f"is not a readable file ({bundle})")
    key_node = node.get("ca_key", keys)
    ca_key: Literal["rsa", "ecdsa"] = key_node.choice(("rsa", "ecdsa")) if key_node is not None else "rsa"
    return TLSConfig(ca_dir, bundle, ca_key, _flag(node.get("prefer_aes128", keys), True))


def parse_nameserver(text: str) -> tuple[str, int]:
    """`10.0.0.2`, `127.0.0.1:5353`, `::1`, `[::1]:53` -> (address, port). Raises ValueError."""
    host, port = text.strip(), 53
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError("has an unclosed '['")
        rest = host[end + 1 :]
        host = host[1:end]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError("must be ADDRESS, ADDRESS:PORT or [IPv6]:PORT")
            port = int(rest[1:])
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        if not p.isdigit():
            raise ValueError("has a port that is not a number")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("is not an IP address (nameservers are given by address)") from None
    if not 1 <= port <= 65535:
        raise ValueError("has a port outside 1-65535")
    return host, port


def _dns(node: _Node | None) -> DNSConfig:
    if node is None:
        return DNSConfig()
    keys = ("nameservers", "timeout", "cache_max_ttl", "negative_ttl")
    node.mapping(keys)
    servers: list[tuple[str, int]] = []
    ns_node = node.get("nameservers", keys)
    for sn in ns_node.as_list() if ns_node else []:
        if isinstance(sn.value, list):
            sn.fail("must be a string: quote '[IPv6]:PORT' entries in YAML", show=False)
        try:
            servers.append(parse_nameserver(sn.as_str()))
        except ValueError as e:
            sn.fail(str(e))
    d = DNSConfig()

    def num(key: str, default: float, minimum: float) -> float:
        n = node.get(key, keys) if node else None
        return n.number(minimum=minimum) if n else default

    timeout = num("timeout", d.timeout, 0.001)
    return DNSConfig(
        tuple(servers),
        timeout,
        num("cache_max_ttl", d.cache_max_ttl, 0),
        num("negative_ttl", d.negative_ttl, 0),
    )


def _upstream(node: _Node | None) -> UpstreamConfig:
    if node is None:
        return UpstreamConfig()
    keys = (
        "connect_timeout",
        "bench_seconds",
        "verify_interval",
        "idle_timeout",
        "request_timeout",
        "discover_region",
        "region_cache_ttl",
        "region_cache_size",
        "reuse_idle",
        "reuse_max",
    )
    node.mapping(keys)
    d = UpstreamConfig()

    def num(key: str, default: float, minimum: float) -> float:
        n = node.get(key, keys)
        return n.number(minimum=minimum) if n else default

    size = node.get("region_cache_size", keys)
    reuse_max = node.get("reuse_max", keys)
    reuse_idle = node.get("reuse_idle", keys)
    return UpstreamConfig(
        num("connect_timeout", d.connect_timeout, 0.01),
        num("bench_seconds", d.bench_seconds, 0),
        num("verify_interval", d.verify_interval, 0),
        idle_timeout=num("idle_timeout", d.idle_timeout, 1),
        request_timeout=num("request_timeout", d.request_timeout, 0),
        discover_region=_flag(node.get("discover_region", keys), d.discover_region),
        region_cache_ttl=num("region_cache_ttl", d.region_cache_ttl, 0),
        region_cache_size=int(size.number(minimum=1, integer=True)) if size else d.region_cache_size,
        # Kept connections are never older than reuse.MAX_AGE (60 s) anyway.
        reuse_idle=reuse_idle.number(minimum=0, maximum=60) if reuse_idle else d.reuse_idle,
        reuse_max=int(reuse_max.number(minimum=0, integer=True)) if reuse_max else d.reuse_max,
    )


def _admin(node: _Node | None) -> AdminConfig:
    if node is None:
        return AdminConfig()
    keys = ("listen", "pac_proxy")
    node.mapping(keys)
    ln = node.get("listen", keys)
    listen: tuple[str, int] | None = None
    if ln is not None and ln.value is not None:
        text = ln.as_str()
        try:
            if not text.rstrip().rpartition(":")[2].isdigit() or text.rstrip().endswith("]"):
                raise ValueError("has no port")
            listen = parse_nameserver(text)
        except ValueError as e:
            ln.fail(f"{e} (expected ADDRESS:PORT, e.g. '127.0.0.1:9090' or '[::1]:9090')")
    pn = node.get("pac_proxy", keys)
    pac_proxy = pn.as_str() if pn is not None and pn.value is not None else None
    return AdminConfig(listen, pac_proxy)


def _log(node: _Node | None) -> LogConfig:
    if node is None:
        return LogConfig()
    keys = ("format", "redact_keys", "level", "access_log")
    node.mapping(keys)
    d = LogConfig()
    fn = node.get("format", keys)
    rn = node.get("redact_keys", keys)
    lv = node.get("level", keys)
    an = node.get("access_log", keys)
    return LogConfig(
        fn.choice(("json", "text")) if fn else d.format,
        _flag(rn, d.redact_keys),
        lv.choice(("error", "warn", "info", "debug")) if lv else d.level,
        _flag(an, d.access_log),
    )


def _limits(node: _Node | None) -> LimitsConfig:
    if node is None:
        return LimitsConfig()
    keys = ("max_header_bytes", "max_chunk_size", "max_trailer_size")
    node.mapping(keys)
    d = LimitsConfig()

    def size(key: str, default: int, minimum: int, maximum: int) -> int:
        n = node.get(key, keys)
        return int(n.number(minimum=minimum, maximum=maximum, integer=True)) if n else default

    return LimitsConfig(
        size("max_header_bytes", d.max_header_bytes, 1024, 1024 * 1024),
        size("max_chunk_size", d.max_chunk_size, 8 * 1024, 1024 * 1024 * 1024),
        size("max_trailer_size", d.max_trailer_size, 256, 1024 * 1024),
    )


def _networks(node: _Node | None) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for cn in node.as_list() if node else []:
        try:
            nets.append(ipaddress.ip_network(cn.as_str(), strict=True))
        except ValueError as e:
            cn.fail(f"is not a CIDR network like '127.0.0.1/32' ({e})")
    return tuple(nets)


# ------------------------------------------------------------------------------------ proxy passwords

_HASH_SCHEME = "pbkdf2_sha256"


def hash_password(password: str, salt: bytes, iterations: int = 600_000) -> str:
    """`pbkdf2_sha256$ITERATIONS$SALT_B64$HASH_B64` for `access.users[].password_hash` (OWASP 2023 count)."""
    if iterations < 1 or not salt:
        raise ValueError("iterations must be positive and salt non-empty")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join(
        (_HASH_SCHEME, str(iterations), base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    )


def _parse_hash(stored: str) -> tuple[int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != _HASH_SCHEME or not parts[1].isdigit():
        raise ValueError("is not a password hash of the form pbkdf2_sha256$ITERATIONS$SALT_B64$HASH_B64")
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except ValueError:
        raise ValueError("has salt or hash that is not valid base64") from None
    iterations = int(parts[1])
    if iterations < 1000 or not salt or len(digest) != 32:
        raise ValueError("needs at least 1000 iterations, a salt and a 32-byte SHA-256 hash")
    return iterations, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` string; False if `stored` is malformed."""
    try:
        iterations, salt, digest = _parse_hash(stored)
    except ValueError:
        return False
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations), digest)


def _access(node: _Node | None) -> AccessConfig:
    if node is None:
        return AccessConfig()
    keys = ("allow_clients", "users")
    node.mapping(keys)
    nets: list[IPNetwork] = []
    nets_node = node.get("allow_clients", keys)
    if nets_node is not None:
        for cn in nets_node.as_list():
            try:
                nets.append(ipaddress.ip_network(cn.as_str(), strict=True))
            except ValueError as e:
                cn.fail(f"is not a CIDR network like '10.0.0.0/8' ({e})")
    users: list[ProxyUser] = []
    users_node = node.get("users", keys)
    for un in users_node.as_list() if users_node else []:
        ukeys = ("username", "password_hash")
        m = un.mapping(ukeys)
        for k in ukeys:
            if m.get(k) is None:
                un.child(k, None).fail("is required", show=False)
        name_node = un.child("username", m["username"])
        name = name_node.as_str()
        if ":" in name:
            name_node.fail("must not contain ':' (Basic authentication separates user and password by it)")
        if any(u.username == name for u in users):
            name_node.fail("is listed twice")
        hash_node = un.child("password_hash", m["password_hash"], secret=True)
        try:
            _parse_hash(hash_node.as_str())
        except ValueError as e:
            hash_node.fail(f"{e}; make one with s3proxy.config.hash_password")
        users.append(ProxyUser(name, m["password_hash"]))
    allow = tuple(nets) if nets_node is not None else AccessConfig().allow_clients
    return AccessConfig(allow, tuple(users))


def _check_identity_guarded(signing: SigningConfig, access: AccessConfig) -> None:
    """proxy-identity signs with the proxy's own credentials: anyone who can reach it acts with them, so it
    is refused unless the access rules really restrict who that is."""
    if signing.mode != "proxy-identity":
        return
    open_nets = [str(n) for n in access.open_to_all]
    if open_nets:
        raise ConfigError(
            f"signing.mode: 'proxy-identity' signs every request with the proxy's own AWS identity, but "
            f"access.allow_clients admits every address ({', '.join(open_nets)}); list only the client "
            f"networks that may use that identity"
        )
    if not access.restricted:
        raise ConfigError(
            "signing.mode: 'proxy-identity' signs every request with the proxy's own AWS identity, but "
            "access.allow_clients admits non-loopback clients and access.users is empty; add access.users "
            "(proxy authentication) or restrict allow_clients to loopback"
        )


# ------------------------------------------------------------------------------------------- policies

_VPC_ID_RE = re.compile(r"^vpc-[0-9a-f]+$")
_ACCOUNT_ID_RE = re.compile(r"^\d{12}$")
_PRINCIPAL_ARN_RE = re.compile(r"^arn:aws(?:-cn|-us-gov)?:(?:iam|sts)::\d{12}:\S+$")
# AWS caps bucket and endpoint policies at 20 KB; anything far larger is the wrong file.
_MAX_POLICY_BYTES = 1 << 20
_POLICY_MODES: tuple[PolicyMode, ...] = ("off", "warn", "enforce")


def _policy_document(node: _Node, base_dir: Path, environ: Mapping[str, str]) -> Policy:
    """An inline mapping, JSON text (a string starting with `{`), or a JSON/YAML file relative to the
    config directory, read now (policies are evaluated per request, never re-read)."""
    value: object = node.value
    label = ""
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        path = _path(node, base_dir, environ)
        try:
            with path.open("rb") as f:
                value = f.read(_MAX_POLICY_BYTES + 1)
        except OSError as e:
            node.fail(f"cannot read policy file {path}: {e.strerror or e}", show=False)
        if len(value) > _MAX_POLICY_BYTES:
            node.fail(f"policy file {path} is larger than 1 MiB (AWS allows 20 KB)", show=False)
        label = f"{path.name}: "
    elif not isinstance(value, (str, dict)):
        node.fail(
            f"must be a policy document (a mapping), its JSON text or a file path, not {_type_name(value)}",
            show=False,
        )
    try:
        return parse_policy_document(value)
    except ValueError as e:
        node.fail(f"{label}{e}", show=False)


def _endpoint_policy(
    node: _Node, base_dir: Path, environ: Mapping[str, str]
) -> tuple[Policy | None, str | None]:
    """`policy` and `vpc_id` of one `endpoints` entry (only the mapping form has them)."""
    if not isinstance(node.value, dict):
        return None, None
    pn, vn = node.get("policy", _ENDPOINT_KEYS), node.get("vpc_id", _ENDPOINT_KEYS)
    policy = _policy_document(pn, base_dir, environ) if pn else None
    vpc: str | None = None
    if vn is not None:
        vpc = vn.as_str()
        if not _VPC_ID_RE.match(vpc):
            vn.fail("is not a VPC ID (like 'vpc-1a2b3c4d')")
    return policy, vpc


def _bucket_name(node: _Node, bucket: str) -> None:
    if not 3 <= len(bucket) <= 255 or not set(bucket) <= _BUCKET_CHARS:
        node.fail("is not a bucket name", show=False)


def _policy_settings(
    get: Callable[[str], _Node | None],
    endpoint_policies: Mapping[str, Policy],
    vpc_ids: Mapping[str, str],
    base_dir: Path,
    environ: Mapping[str, str],
) -> PolicySettings:
    mode: PolicyMode = "off"
    mn = get("policy_mode")
    if mn is not None:
        # YAML 1.1 reads an unquoted `off` as false: accept it as the mode it was meant to be.
        mode = "off" if mn.value is False else mn.choice(_POLICY_MODES)
    bucket_policies: dict[str, Policy] = {}
    bn = get("bucket_policies")
    for bucket, pn in bn.items() if bn else iter(()):
        _bucket_name(pn, bucket)
        if pn.value is None:
            pn.fail("needs a policy document or a file path", show=False)
        bucket_policies[bucket] = _policy_document(pn, base_dir, environ)
    accounts: dict[str, str] = {}
    an = get("accounts")
    for akid, who in an.items() if an else iter(()):
        if len(akid) > 128 or not set(akid) <= _AKID_CHARS:
            who.fail("is not an access key id (letters and digits, like 'AKIAIOSFODNN7EXAMPLE')", show=False)
        text = who.as_str()
        if not (_ACCOUNT_ID_RE.match(text) or _PRINCIPAL_ARN_RE.match(text)):
            who.fail("must be a 12-digit account ID ('111122223333') or an IAM/STS principal ARN")
        accounts[akid] = text
    bucket_accounts: dict[str, str] = {}
    ban = get("bucket_accounts")
    for bucket, owner in ban.items() if ban else iter(()):
        _bucket_name(owner, bucket)
        text = owner.as_str()
        if not _ACCOUNT_ID_RE.match(text):
            owner.fail("must be the 12-digit account ID of the bucket owner, quoted ('111122223333')")
        bucket_accounts[bucket] = text
    return PolicySettings(
        mode=mode,
        endpoint_policies=MappingProxyType(dict(endpoint_policies)),
        vpc_ids=MappingProxyType(dict(vpc_ids)),
        bucket_policies=MappingProxyType(bucket_policies),
        accounts=MappingProxyType(accounts),
        bucket_accounts=MappingProxyType(bucket_accounts),
    )


# ---------------------------------------------------------------------------------------------- entry


def parse_config(data: object, *, base_dir: Path, environ: Mapping[str, str]) -> Config:
    """Validate a parsed YAML document (None = empty file) into a `Config`. Raises ConfigError."""
    root = _Node("", {} if data is None else data)
    root.mapping(_TOP_KEYS)

    def get(key: str) -> _Node | None:
        return root.get(key, _TOP_KEYS)

    endpoints: dict[str, Endpoint] = {}
    endpoint_policies: dict[str, Policy] = {}  # by endpoint ID, what aws:sourceVpce names
    vpc_ids: dict[str, str] = {}
    ep_node = get("endpoints")
    if ep_node is None:
        root.child("endpoints", None).fail(
            "is required: map each region to its S3 interface endpoint name", show=False
        )
    for region, en in ep_node.items():
        if not REGION_RE.match(region):
            en.fail("is not an AWS region name (like 'us-east-1')", show=False)
        if en.value is None:
            en.fail("needs the endpoint's DNS name", show=False)
        endpoints[region] = _endpoint(en, region)
        policy, vpc = _endpoint_policy(en, base_dir, environ)
        if policy is not None:
            endpoint_policies[endpoints[region].endpoint_id] = policy
        if vpc is not None:
            vpc_ids[endpoints[region].endpoint_id] = vpc
    if not endpoints:
        ep_node.fail("must name at least one endpoint", show=False)

    dr = get("default_region")
    default_region = _region(dr) if dr else "us-east-1"
    ad = get("addressing")
    addressing: Literal["path", "virtual"] = ad.choice(("path", "virtual")) if ad else "path"

    buckets: dict[str, str] = {}
    bn = get("buckets")
    for bucket, rn in bn.items() if bn else iter(()):
        if not 1 <= len(bucket) <= 255 or not set(bucket) <= _BUCKET_CHARS:
            rn.fail("is not a bucket name", show=False)
        buckets[bucket] = _region(rn)

    un = get("unsupported")
    unsupported = _unsupported(un) if un else _default_unsupported()
    ur = get("unknown_region")
    unknown_region: Action = ur.choice(_ACTIONS) if ur else "reject"
    ns = get("non_s3")
    non_s3: Literal["tunnel", "deny"] = ns.choice(("tunnel", "deny")) if ns else "tunnel"

    signing = _signing(get("signing"), base_dir, environ)
    access = _access(get("access"))
    _check_identity_guarded(signing, access)
    return Config(
        endpoints=MappingProxyType(endpoints),
        default_region=default_region,
        addressing=addressing,
        buckets=MappingProxyType(buckets),
        unsupported=unsupported,
        unknown_region=unknown_region,
        signing=signing,
        listen=_listen(get("listen")),
        non_s3=non_s3,
        tls=_tls(get("tls"), base_dir, environ),
        dns=_dns(get("dns")),
        access=access,
        upstream=_upstream(get("upstream")),
        admin=_admin(get("admin")),
        log=_log(get("log")),
        policy=_policy_settings(get, endpoint_policies, vpc_ids, base_dir, environ),
        limits=_limits(get("limits")),
        tunnel_allow=_networks(get("tunnel_allow")),
        workers=_workers(get("workers")),
    )


def _workers(node: _Node | None) -> int | None:
    if node is None or node.value in (None, "auto"):
        return None
    return int(node.number(minimum=1, maximum=256, integer=True))


_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"line {mark.line + 1}: key {key!r} appears twice in the same mapping")
        seen.add(key) if isinstance(key, (str, int, float, bool)) else None
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path, label: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"{label}: cannot read {path}: {reason}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{label}: {path}: {e}") from None
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1} column {mark.column + 1}"
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{label}: {path}:{where}: {problem}") from None


def load_config(path: str | Path, environ: Mapping[str, str]) -> Config:
    """Read and validate the YAML config file at `path`. Raises ConfigError."""
    p = Path(path)
    data = _read_yaml(p, "config")
    return parse_config(data, base_dir=p.resolve().parent, environ=environ)
