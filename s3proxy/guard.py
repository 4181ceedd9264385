"""Checks that keep the proxy from being an open relay, an SSRF hop or a request-smuggling relay.

Strategy: pure functions over plain values. The addon feeds them what mitmproxy parsed (header fields as
bytes, the tunnel target, the TLS server name) and what the OS said (resolved addresses, whether an address
belongs to this host); they answer an `S3Error` (or a refusal reason) or None. Every check is applied
before anything is decrypted, signed or forwarded. See docs/security.md for the threat model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from s3proxy.errors import S3Error

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services that are not in a link-local range (AWS IMDS over IPv6).
_METADATA = (ipaddress.ip_network("fd00:ec2::254/128"),)
# NAT64 well-known prefix: 64:ff9b::7f00:1 reaches 127.0.0.1 through a NAT64 gateway.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# RFC 9110 token characters (header names) and the control characters no header value may contain
# (HTAB is allowed; CR, LF and NUL are what splitting and smuggling need).
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CTL = frozenset(c for c in range(32) if c != 9) | {0x7F}


def _plain(ip: IPAddress) -> IPAddress:
    """The IPv4 address behind IPv4-mapped (::ffff:a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) forms."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (optionally `[v6]`, with a `%zone`), or None if `text` is a name."""
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        return ipaddress.ip_address(t.split("%", 1)[0])
    except ValueError:
        return None


def destination_refusal(
    address: str,
    port: int,
    *,
    own_ports: Iterable[int] = (),
    allow: Sequence[IPNetwork] = (),
    is_local: Callable[[str], bool] = lambda _a: False,
) -> str | None:
    """Why a tunnel (non-S3 CONNECT, or a transparent connection the proxy does not decrypt) must not be
    opened to the resolved `address`:`port`, or None if it may.

    Refused unless the address is inside `allow` (`tunnel_allow` in the config): loopback, link-local
    (cloud instance metadata, 169.254.169.254), unspecified, multicast and reserved addresses, the metadata
    service's IPv6 address, and every address of this host (`is_local`). One of the proxy's own ports
    (`own_ports`: listen, admin) on this host is refused even when allowed: a client must never reach the
    admin listener or loop the proxy into itself through a tunnel.
    """
    ip = parse_address(address)
    if ip is None:
        return f"{address!r} is not an IP address"
    plain = _plain(ip)
    local = plain.is_loopback or plain.is_unspecified or is_local(str(ip))
    if local and port in set(own_ports):
        return f"{address} port {port} is this proxy's own listener"
    if any(plain in n or ip in n for n in allow):
        return None
    if plain.is_loopback:
        return f"{address} is a loopback address"
    if plain.is_link_local or any(ip in n for n in _METADATA):
        return f"{address} is link-local (instance metadata lives there)"
    if plain.is_unspecified or plain.is_multicast or plain.is_reserved:
        return f"{address} is not a unicast address"
    if is_local(str(ip)):
        return f"{address} is an address of the proxy's own host"
    return None


def check_head(
    method: str,
    target: str,
    fields: Sequence[tuple[bytes, bytes]],
    max_header_bytes: int,
) -> S3Error | None:
    """Header abuse mitmproxy lets through: an oversized head, more than one Host, names that are not
    tokens, and CR/LF/NUL (or other control characters) inside values. Each is a 400 with an S3 code."""
    size = len(method) + len(target) + len(" HTTP/1.1\r\n") + 2
    size += sum(len(k) + len(v) + 4 for k, v in fields)
    if size > max_header_bytes:
        return S3Error(
            400,
            "RequestHeaderSectionTooLarge",
            f"Your request header section exceeds the maximum allowed size ({size} bytes; this proxy's "
            f"limits.max_header_bytes is {max_header_bytes}).",
        )
    hosts = sum(1 for k, _ in fields if k.lower() == b"host")
    if hosts > 1:
        return S3Error(400, "InvalidRequest", "The request has more than one Host header.")
    for k, v in fields:
        if not k or not set(k) <= _TOKEN:
            return S3Error(400, "InvalidArgument", "A header name contains a character that is not allowed.")
        if not _CTL.isdisjoint(v):
            name = k.decode("ascii")
            return S3Error(
                400,
                "InvalidArgument",
                f"Header {name} contains a control character (CR, LF, NUL ...), which is not allowed.",
            )
    return None


def normalize_authority(text: str) -> str:
    """Lower-case host of `host[:port]` / `[v6]:port` without port and trailing dot."""
    t = text.strip().lower()
    if t.startswith("["):
        end = t.find("]")
        return t[1:end] if end > 0 else t
    if t.count(":") == 1:
        t = t.partition(":")[0]
    return t.rstrip(".")


def check_authority(host_header: str | None, target_host: str, sni: str | None) -> S3Error | None:
    """Inside one connection the client may talk to one name only: the Host header must be the name the
    tunnel was opened for (CONNECT target, or the absolute-form URL's host) and the TLS server name.

    `target_host` that is an IP literal (transparent mode: the original destination address) is not
    compared; the SNI is then what names the destination.
    """
    if not host_header:
        return None
    host = normalize_authority(host_header)
    if sni and normalize_authority(sni) != host:
        return S3Error(
            400,
            "InvalidRequest",
            f"The Host header ({host[:255]}) does not match the TLS server name ({sni[:255]}).",
        )
    target = normalize_authority(target_host)
    # Compared first: parsing an address (an exception for every name) is needed only when they differ.
    if target and target != host and parse_address(target) is None:
        return S3Error(
            400,
            "InvalidRequest",
            f"The Host header ({host[:255]}) does not match the host this connection was opened "
            f"for ({target[:255]}).",
        )
    return None
