"""s3proxy.guard: tunnel destinations, request-head abuse and Host/SNI/tunnel agreement (table-driven)."""

from __future__ import annotations

import ipaddress

import pytest

from s3proxy import guard

ALLOW_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(
    ("address", "port", "allow", "local", "says"),
    [
        ("127.0.0.1", 443, (), (), "loopback"),
        ("127.9.9.9", 443, (), (), "loopback"),
        ("::1", 443, (), (), "loopback"),
        ("::ffff:127.0.0.1", 443, (), (), "loopback"),
        ("64:ff9b::7f00:1", 443, (), (), "loopback"),  # NAT64 form of 127.0.0.1
        ("169.254.169.254", 80, (), (), "link-local"),
        ("::ffff:169.254.169.254", 80, (), (), "link-local"),
        ("fe80::1%eth0", 80, (), (), "link-local"),
        ("fd00:ec2::254", 80, (), (), "link-local"),
        ("0.0.0.0", 443, (), (), "not a unicast"),
        ("::", 443, (), (), "not a unicast"),
        ("224.0.0.1", 443, (), (), "not a unicast"),
        ("240.0.0.1", 443, (), (), "not a unicast"),
        ("10.1.2.3", 443, (), ("10.1.2.3",), "own host"),
        ("10.1.2.3", 3128, (), ("10.1.2.3",), "own listener"),
        ("127.0.0.1", 3128, ALLOW_LOOPBACK, (), "own listener"),  # allowed network, still never itself
        ("127.0.0.1", 9090, ALLOW_LOOPBACK, (), "own listener"),
        ("not-an-ip", 443, (), (), "not an IP"),
    ],
)
def test_refused_destinations(
    address: str, port: int, allow: tuple[guard.IPNetwork, ...], local: tuple[str, ...], says: str
) -> None:
    reason = guard.destination_refusal(
        address, port, own_ports=(3128, 9090), allow=allow, is_local=lambda a: a in local
    )
    assert reason is not None and says in reason


@pytest.mark.parametrize(
    ("address", "port", "allow"),
    [
        ("52.216.1.1", 443, ()),  # a public address
        ("10.1.2.3", 443, ()),  # private networks are ordinary destinations on-prem
        ("192.168.1.1", 3128, ()),  # the proxy's port number on another host
        ("127.0.0.1", 8443, ALLOW_LOOPBACK),
        ("169.254.10.10", 80, (ipaddress.ip_network("169.254.10.0/24"),)),
        ("2600:1f18::1", 443, ()),
    ],
)
def test_allowed_destinations(address: str, port: int, allow: tuple[guard.IPNetwork, ...]) -> None:
    assert guard.destination_refusal(address, port, own_ports=(3128,), allow=allow) is None


H = (b"Host", b"b.s3.amazonaws.com")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ([H], None),
        ([H, (b"X-A", b"tab\tis fine")], None),
        ([H, (b"X-Meta", "caf\u00e9".encode())], None),  # obs-text (UTF-8 metadata) passes
        ([H, H], "InvalidRequest"),
        ([H, (b"host", b"evil.example")], "InvalidRequest"),
        ([H, (b"X-A", b"a\r\nX-B: b")], "InvalidArgument"),
        ([H, (b"X-A", b"a\x00")], "InvalidArgument"),
        ([H, (b"X-A", b"a\x7f")], "InvalidArgument"),
        ([H, (b"X A", b"a")], "InvalidArgument"),
        ([H, (b"", b"a")], "InvalidArgument"),
        ([H, (b"X-Big", b"a" * 5000)], "RequestHeaderSectionTooLarge"),
    ],
)
def test_check_head(fields: list[tuple[bytes, bytes]], code: str | None) -> None:
    err = guard.check_head("GET", "/k", fields, 4096)
    assert (err.code if err else None) == code
    if err:
        assert err.status == 400 and "\r" not in err.message and "\x00" not in err.message


@pytest.mark.parametrize(
    ("host", "target", "sni", "ok"),
    [
        ("b.s3.amazonaws.com", "b.s3.amazonaws.com", "b.s3.amazonaws.com", True),
        ("B.S3.amazonaws.com.:443", "b.s3.amazonaws.com", "b.s3.amazonaws.com", True),
        ("b.s3.amazonaws.com", "10.0.0.5", "b.s3.amazonaws.com", True),  # transparent: target is an address
        ("b.s3.amazonaws.com", "10.0.0.5", None, True),
        ("b.s3.amazonaws.com", "b.s3.amazonaws.com", None, True),  # plain HTTP: no SNI
        (None, "b.s3.amazonaws.com", None, True),
        ("evil.example", "b.s3.amazonaws.com", None, False),
        ("b.s3.amazonaws.com", "evil.example", None, False),
        ("b.s3.amazonaws.com", "b.s3.amazonaws.com", "c.s3.amazonaws.com", False),
        ("b.s3.amazonaws.com", "10.0.0.5", "evil.example", False),
        ("[::1]:443", "::1", None, True),
    ],
)
def test_check_authority(host: str | None, target: str, sni: str | None, ok: bool) -> None:
    err = guard.check_authority(host, target, sni)
    assert (err is None) == ok, err
    if err:
        assert (err.status, err.code) == (400, "InvalidRequest")


# --- the config keys these guards read ----------------------------------------------------------------

_EP = {"us-east-1": "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"}


def _parse(extra: dict[str, object]) -> object:
    from pathlib import Path

    from s3proxy.config import parse_config

    return parse_config({"endpoints": _EP, **extra}, base_dir=Path("."), environ={})


def test_limits_and_tunnel_allow_defaults_and_values() -> None:
    from s3proxy.config import Config, LimitsConfig

    c = _parse({})
    assert isinstance(c, Config)
    assert c.limits == LimitsConfig() and c.tunnel_allow == ()
    c = _parse(
        {"limits": {"max_header_bytes": 8192, "max_chunk_size": 65536}, "tunnel_allow": ["10.0.0.0/8"]}
    )
    assert isinstance(c, Config)
    assert (c.limits.max_header_bytes, c.limits.max_chunk_size, c.limits.max_trailer_size) == (
        8192,
        65536,
        16384,
    )
    assert c.tunnel_allow == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"limits": {"max_header_bytes": 10}}, "limits.max_header_bytes"),
        ({"limits": {"max_chunk_size": "big"}}, "limits.max_chunk_size"),
        ({"limits": {"max_trailer": 1}}, "limits.max_trailer"),
        ({"tunnel_allow": ["localhost"]}, "tunnel_allow[0]"),
        ({"tunnel_allow": "127.0.0.0/8"}, "tunnel_allow"),
    ],
)
def test_limits_and_tunnel_allow_errors(extra: dict[str, object], says: str) -> None:
    from s3proxy.config import ConfigError

    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        _parse(extra)
