"""Who may use the proxy: client address rules and optional proxy authentication (RFC 7617 Basic).

Strategy: pure checks over plain values; the addon calls them once per client connection and answers the
refusal. A refused client learns only that it was refused, never which users exist.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from s3proxy.config import AccessConfig, verify_password


class Refusal(NamedTuple):
    status: int  # 403 (address not allowed) or 407 (proxy authentication required / failed)
    reason: str  # short machine-readable reason for logs and metrics
    message: str  # what the client is told


def client_allowed(address: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def basic_user(header: str | None, access: AccessConfig) -> str | None:
    """The user a `Proxy-Authorization: Basic ...` header authenticates, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep:
        return None
    # Exactly one password hash is computed whether or not the username exists (an unknown name is checked
    # against the first entry's hash and always fails), so timing does not reveal which usernames exist.
    wanted = username.encode("utf-8", "surrogateescape")
    match = next((u for u in access.users if hmac.compare_digest(u.username.encode(), wanted)), None)
    if match is None:
        if access.users:
            verify_password(password, access.users[0].password_hash)
        return None
    return username if verify_password(password, match.password_hash) else None


def check_client(address: str, access: AccessConfig) -> Refusal | None:
    if not client_allowed(address, access.allow_clients):
        return Refusal(403, "client-address", f"client {address} is not in access.allow_clients")
    return None


def check_proxy_auth(header: str | None, access: AccessConfig) -> Refusal | None:
    if not access.users:
        return None
    if basic_user(header, access) is None:
        reason = "proxy-auth-missing" if not header else "proxy-auth-failed"
        return Refusal(407, reason, "proxy authentication required (Proxy-Authorization: Basic)")
    return None
