"""Configuration: every value checked once, every error naming its key path and the bad value."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from s3proxy.config import (
    Config,
    ConfigError,
    KeyEntry,
    hash_password,
    load_config,
    parse_config,
    parse_nameserver,
    verify_password,
)

REPO = Path(__file__).resolve().parent.parent
EP = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def parse(data: Any, environ: dict[str, str] | None = None, base_dir: Path = Path("/nonexistent")) -> Config:
    return parse_config(data, base_dir=base_dir, environ=environ or {})


def base(**extra: Any) -> dict[str, Any]:
    return {"endpoints": {"us-east-1": EP}, **extra}


def test_example_config_loads() -> None:
    # The README's first command runs the proxy with this file on a fresh machine: no secret needed.
    env = {"HOME": "/home/op"}
    cfg = load_config(REPO / "config" / "s3proxy.example.yaml", env)
    assert set(cfg.endpoints) == {"us-east-1", "eu-west-1"}
    eu = cfg.endpoints["eu-west-1"]
    assert eu.zone_order() == ("eu-west-1a", "eu-west-1b")
    assert eu.host("bucket") == "bucket.vpce-0e25b8cdd720f900e-argc85vg.s3.eu-west-1.vpce.amazonaws.com"
    assert cfg.signing.keys == ()
    assert cfg.tls.ca_dir == Path("/home/op/.s3proxy/ca")
    assert cfg.buckets["legacy-reports"] == "eu-west-1"


def test_example_key_entry_without_its_env_secret_names_the_variable() -> None:
    # The commented key entry in the example, enabled as an operator would.
    data = {
        "endpoints": {"us-east-1": EP},
        "signing": {"keys": [{"access_key_id": "AKIAIOSFODNN7EXAMPLE",
                              "secret_access_key_env": "S3PROXY_SECRET_AKIAIOSFODNN7EXAMPLE"}]},
    }
    with pytest.raises(
        ConfigError, match=r"signing\.keys\[0\]\.secret_access_key_env: .*S3PROXY_SECRET_AKIAIOSFODNN7EXAMPLE"
    ):
        parse(data)
    cfg = parse(data, {"S3PROXY_SECRET_AKIAIOSFODNN7EXAMPLE": SECRET})
    assert cfg.signing.keys == (KeyEntry("AKIAIOSFODNN7EXAMPLE", SECRET),)
    assert SECRET not in repr(cfg)


def test_defaults() -> None:
    cfg = parse(base())
    assert cfg.default_region == "us-east-1"
    assert cfg.addressing == "path"
    assert cfg.unknown_region == "reject"
    assert all(a == "reject" for a in cfg.unsupported.values()) and "fips" in cfg.unsupported
    assert cfg.signing.mode == "keyring" and cfg.signing.keys == ()
    assert (cfg.listen.host, cfg.listen.port, cfg.listen.mode) == ("127.0.0.1", 3128, "regular")
    assert cfg.non_s3 == "tunnel"
    assert cfg.tls.upstream_ca_bundle is None
    assert cfg.tls.ca_key == "rsa"  # every client can use it; ecdsa is asked for
    assert cfg.tls.prefer_aes128 is True
    assert (cfg.dns.nameservers, cfg.dns.timeout, cfg.dns.cache_max_ttl, cfg.dns.negative_ttl) == (
        (),
        2.0,
        300,
        5,
    )
    assert cfg.access.allow_clients == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert cfg.access.users == ()
    assert cfg.endpoints["us-east-1"].port == 443


def test_config_is_frozen() -> None:
    cfg = parse(base())
    with pytest.raises(AttributeError):
        cfg.addressing = "virtual"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.endpoints["eu-west-1"] = cfg.endpoints["us-east-1"]  # type: ignore[index]


def test_endpoint_forms() -> None:
    cfg = parse(
        {
            "endpoints": {
                "us-east-1": "*.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com",
                "eu-west-1": "bucket.vpce-0e25b8cdd720f900e-argc85vg.s3.eu-west-1.vpce.amazonaws.com.",
                "cn-north-1": {"dns_name": "vpce-0abc-xyz.s3.cn-north-1.vpce.amazonaws.com.cn", "port": 8443},
                "us-gov-west-1": "vpce-0abc-xyz-us-gov-west-1b.s3.us-gov-west-1.vpce.amazonaws.com",
            }
        }
    )
    assert (
        cfg.endpoints["cn-north-1"].host("control")
        == "control.vpce-0abc-xyz.s3.cn-north-1.vpce.amazonaws.com.cn"
    )
    assert cfg.endpoints["cn-north-1"].port == 8443
    gov = cfg.endpoints["us-gov-west-1"]
    assert (gov.zones, gov.prefer_zone) == (("us-gov-west-1b",), "us-gov-west-1b")
    assert gov.host("bucket") == "bucket.vpce-0abc-xyz.s3.us-gov-west-1.vpce.amazonaws.com"


def test_all_options() -> None:
    h = hash_password("pw", b"saltsalt", 1000)
    cfg = parse(
        base(
            default_region="us-east-1",
            addressing="virtual",
            buckets={"Legacy_Bucket": "us-east-1", "a.b": "us-east-1"},
            unsupported={"fips": "reject", "website": "passthrough"},
            unknown_region="passthrough",
            listen={"host": "0.0.0.0", "port": 8080, "mode": "transparent"},
            non_s3="deny",
            dns={
                "nameservers": ["127.0.0.1:5353", "10.0.0.2", "[::1]:53", "::2"],
                "timeout": 0.5,
                "cache_max_ttl": 60,
                "negative_ttl": 0,
            },
            access={
                "allow_clients": ["10.0.0.0/8", "192.0.2.7"],
                "users": [{"username": "app", "password_hash": h}],
            },
        )
    )
    assert cfg.addressing == "virtual"
    assert cfg.unsupported["website"] == "passthrough" and cfg.unsupported["mrap"] == "reject"
    assert cfg.unsupported_action("website") == "passthrough"
    assert cfg.dns.nameservers == (("127.0.0.1", 5353), ("10.0.0.2", 53), ("::1", 53), ("::2", 53))
    assert cfg.dns.timeout == 0.5
    assert cfg.access.client_allowed("10.1.2.3") and cfg.access.client_allowed("::ffff:192.0.2.7")
    assert not cfg.access.client_allowed("127.0.0.1") and not cfg.access.client_allowed("garbage")
    assert cfg.listen == type(cfg.listen)("0.0.0.0", 8080, "transparent")
    assert h not in repr(cfg)


# --------------------------------------------------------------------------------- error messages

ERRORS: list[tuple[str, Any, str]] = [
    ("not a mapping", ["x"], r"^<top level>: must be a mapping"),
    ("no endpoints", {}, r"^endpoints: is required"),
    ("empty endpoints", {"endpoints": {}}, r"^endpoints: must name at least one endpoint"),
    ("unknown top key", base(adressing="path"), r"^adressing: unknown key; did you mean 'addressing'\?"),
    ("unknown top key, no hint", base(zzz=1), r"^zzz: unknown key; known keys: endpoints, "),
    (
        "bad endpoint name",
        {"endpoints": {"eu-west-1": {"dns_name": "vpce-foo"}}},
        r"^endpoints\.eu-west-1\.dns_name: 'vpce-foo' is not an S3 interface endpoint name",
    ),
    (
        "short form bad",
        {"endpoints": {"eu-west-1": "s3.eu-west-1.amazonaws.com"}},
        r"^endpoints\.eu-west-1: 's3\.eu-west-1\.amazonaws\.com' is not an S3",
    ),
    (
        "region mismatch",
        {"endpoints": {"eu-west-1": EP}},
        r"^endpoints\.eu-west-1: '.*' is an endpoint in region 'us-east-1', but it is listed under 'eu-west-1'",  # noqa: E501
    ),
    ("bad region key", {"endpoints": {"europe": EP}}, r"^endpoints\.europe: is not an AWS region name"),
    (
        "null endpoint",
        {"endpoints": {"us-east-1": None}},
        r"^endpoints\.us-east-1: needs the endpoint's DNS name",
    ),
    ("endpoint int", {"endpoints": {"us-east-1": 5}}, r"^endpoints\.us-east-1: must be a mapping"),
    (
        "missing dns_name",
        {"endpoints": {"us-east-1": {"zones": ["us-east-1a"]}}},
        r"^endpoints\.us-east-1\.dns_name: is required",
    ),
    (
        "endpoint typo",
        {"endpoints": {"us-east-1": {"dns_name": EP, "prefer_zones": "x"}}},
        r"^endpoints\.us-east-1\.prefer_zones: unknown key; did you mean 'prefer_zone'",
    ),
    (
        "zone of other region",
        {"endpoints": {"us-east-1": {"dns_name": EP, "zones": ["eu-west-1a"]}}},
        r"^endpoints\.us-east-1\.zones\[0\]: 'eu-west-1a' is not an Availability Zone of us-east-1",
    ),
    (
        "zones not a list",
        {"endpoints": {"us-east-1": {"dns_name": EP, "zones": "us-east-1a"}}},
        r"^endpoints\.us-east-1\.zones: must be a list",
    ),
    (
        "duplicate zone",
        {"endpoints": {"us-east-1": {"dns_name": EP, "zones": ["us-east-1a", "us-east-1a"]}}},
        r"zones\[1\]: 'us-east-1a' is listed twice",
    ),
    (
        "prefer not in zones",
        {"endpoints": {"us-east-1": {"dns_name": EP, "zones": ["us-east-1a"], "prefer_zone": "us-east-1b"}}},
        r"^endpoints\.us-east-1\.prefer_zone: 'us-east-1b' must be one of zones \(us-east-1a\)",
    ),
    (
        "prefer without zones",
        {"endpoints": {"us-east-1": {"dns_name": EP, "prefer_zone": "us-east-1b"}}},
        r"prefer_zone: 'us-east-1b' must be one of zones \(none listed\)",
    ),
    (
        "bad port",
        {"endpoints": {"us-east-1": {"dns_name": EP, "port": 0}}},
        r"^endpoints\.us-east-1\.port: 0 must be between 1 and 65535",
    ),
    (
        "partition mismatch",
        {"endpoints": {"cn-north-1": "vpce-0abc-xyz.s3.cn-north-1.vpce.amazonaws.com"}},
        r"does not belong to partition",
    ),
    (
        "bad default_region",
        base(default_region="moon-1"),
        r"^default_region: 'moon-1' is not an AWS region name",
    ),
    ("default_region type", base(default_region=5), r"^default_region: 5 must be a string"),
    ("bad addressing", base(addressing="vhost"), r"^addressing: 'vhost' must be one of: path, virtual"),
    (
        "bad bucket region",
        base(buckets={"b": "nowhere"}),
        r"^buckets\.b: 'nowhere' is not an AWS region name",
    ),
    (
        "numeric bucket",
        base(buckets={123: "us-east-1"}),
        r"^buckets\.123: key 123 must be a string \(quote it in YAML\)",
    ),
    ("bad bucket name", base(buckets={"b/c": "us-east-1"}), r"^buckets\.b/c: is not a bucket name"),
    (
        "bad unsupported",
        base(unsupported="allow"),
        r"^unsupported: 'allow' must be one of: reject, passthrough",
    ),
    (
        "bad unsupported family",
        base(unsupported={"fibs": "reject"}),
        r"^unsupported\.fibs: unknown key; did you mean 'fips'",
    ),
    (
        "bad unsupported action",
        base(unsupported={"fips": "yes"}),
        r"^unsupported\.fips: 'yes' must be one of",
    ),
    (
        "bad unknown_region",
        base(unknown_region=True),
        r"^unknown_region: True must be one of: reject, passthrough",
    ),
    (
        "bad mode",
        base(signing={"mode": "sigv2"}),
        r"^signing\.mode: 'sigv2' must be one of: keyring, proxy-identity",
    ),
    ("signing typo", base(signing={"key": []}), r"^signing\.key: unknown key; did you mean 'keys'"),
    ("keys not list", base(signing={"keys": {"access_key_id": "A"}}), r"^signing\.keys: must be a list"),
    (
        "missing akid",
        base(signing={"keys": [{"secret_access_key": SECRET}]}),
        r"^signing\.keys\[0\]\.access_key_id: is required",
    ),
    (
        "bad akid",
        base(signing={"keys": [{"access_key_id": "AKID/X", "secret_access_key": SECRET}]}),
        r"^signing\.keys\[0\]\.access_key_id: is not an access key id",
    ),
    (
        "no secret",
        base(signing={"keys": [{"access_key_id": "AKIDEXAMPLE"}]}),
        r"^signing\.keys\[0\]: access key 'AKIDEXAMPLE' needs secret_access_key or secret_access_key_env",
    ),
    (
        "both secrets",
        base(
            signing={
                "keys": [
                    {
                        "access_key_id": "AKIDEXAMPLE",
                        "secret_access_key": SECRET,
                        "secret_access_key_env": "X",
                    }
                ]
            }
        ),
        r"^signing\.keys\[0\]: give either",
    ),
    (
        "missing env",
        base(signing={"keys": [{"access_key_id": "AKIDEXAMPLE", "secret_access_key_env": "NOPE"}]}),
        r"^signing\.keys\[0\]\.secret_access_key_env: environment variable 'NOPE' is not set",
    ),
    (
        "duplicate akid",
        base(
            signing={
                "keys": [
                    {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET},
                    {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET},
                ]
            }
        ),
        r"^signing\.keys\[1\]: access key id 'AKIDEXAMPLE' is listed twice",
    ),
    (
        "secret not string",
        base(signing={"keys": [{"access_key_id": "AKIDEXAMPLE", "secret_access_key": 12345678}]}),
        r"^signing\.keys\[0\]\.secret_access_key: must be a string",
    ),
    ("profiles dup", base(signing={"profiles": ["a", "a"]}), r"^signing\.profiles\[1\]: 'a' is listed twice"),
    ("listen port", base(listen={"port": "3128"}), r"^listen\.port: '3128' must be an integer"),
    ("listen port range", base(listen={"port": 70000}), r"^listen\.port: 70000 must be between 1 and 65535"),
    ("listen bool port", base(listen={"port": True}), r"^listen\.port: True must be an integer"),
    (
        "listen mode",
        base(listen={"mode": "socks"}),
        r"^listen\.mode: 'socks' must be one of: regular, transparent",
    ),
    ("non_s3", base(non_s3="drop"), r"^non_s3: 'drop' must be one of: tunnel, deny"),
    ("tls typo", base(tls={"ca_dr": "x"}), r"^tls\.ca_dr: unknown key; did you mean 'ca_dir'"),
    ("ca key", base(tls={"ca_key": "ed25519"}), r"^tls\.ca_key: 'ed25519' must be one of: rsa, ecdsa"),
    ("aes128", base(tls={"prefer_aes128": "yes"}), r"^tls\.prefer_aes128: 'yes' must be true or false"),
    ("access_log", base(log={"access_log": 1}), r"^log\.access_log: 1 must be true or false"),
    ("discover", base(upstream={"discover_region": "no"}), r"^upstream\.discover_region: 'no' must be true"),
    (
        "missing bundle",
        base(tls={"upstream_ca_bundle": "/nonexistent/ca.pem"}),
        r"^tls\.upstream_ca_bundle: '/nonexistent/ca\.pem' is not a readable file",
    ),
    (
        "nameserver host",
        base(dns={"nameservers": ["dns.example"]}),
        r"^dns\.nameservers\[0\]: 'dns\.example' is not an IP address",
    ),
    (
        "nameserver port",
        base(dns={"nameservers": ["10.0.0.1:x"]}),
        r"^dns\.nameservers\[0\]: '10\.0\.0\.1:x' has a port",
    ),
    (
        "nameserver unquoted v6",
        base(dns={"nameservers": [["::1"]]}),
        r"^dns\.nameservers\[0\]: must be a string: quote",
    ),
    ("dns timeout", base(dns={"timeout": 0}), r"^dns\.timeout: 0 must be at least 0\.001"),
    ("dns ttl", base(dns={"cache_max_ttl": -1}), r"^dns\.cache_max_ttl: -1 must be at least 0"),
    (
        "bad cidr",
        base(access={"allow_clients": ["10.0.0.1/8"]}),
        r"^access\.allow_clients\[0\]: '10\.0\.0\.1/8' is not a CIDR network",
    ),
    (
        "cidr garbage",
        base(access={"allow_clients": ["everyone"]}),
        r"^access\.allow_clients\[0\]: 'everyone' is not a CIDR",
    ),
    (
        "user no hash",
        base(access={"users": [{"username": "u"}]}),
        r"^access\.users\[0\]\.password_hash: is required",
    ),
    (
        "user colon",
        base(access={"users": [{"username": "a:b", "password_hash": "x"}]}),
        r"^access\.users\[0\]\.username: 'a:b' must not contain ':'",
    ),
    (
        "user bad hash",
        base(access={"users": [{"username": "u", "password_hash": "plaintext-pw"}]}),
        r"^access\.users\[0\]\.password_hash: is not a password hash",
    ),
    (
        "identity open to all",
        base(
            signing={"mode": "proxy-identity"},
            access={
                "allow_clients": ["0.0.0.0/0"],
                "users": [{"username": "u", "password_hash": hash_password("p", b"s", 1000)}],
            },
        ),
        r"^signing\.mode: 'proxy-identity' .* admits every address \(0\.0\.0\.0/0\)",
    ),
    (
        "identity open v6",
        base(signing={"mode": "proxy-identity"}, access={"allow_clients": ["::/0"]}),
        r"admits every address \(::/0\)",
    ),
    (
        "identity non-loopback without users",
        base(signing={"mode": "proxy-identity"}, access={"allow_clients": ["10.0.0.0/8"]}),
        r"^signing\.mode: 'proxy-identity' .* access\.users is empty",
    ),
]


@pytest.mark.parametrize(("data", "pattern"), [(e[1], e[2]) for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_config_errors_name_the_key_path(data: Any, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as exc:
        parse(data)
    assert SECRET not in str(exc.value) and "12345678" not in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_secrets_never_in_messages_or_repr() -> None:
    env = {"MY_SECRET": SECRET}
    cfg = parse(
        base(signing={"keys": [{"access_key_id": "AKIDEXAMPLE", "secret_access_key_env": "MY_SECRET"}]}), env
    )
    assert cfg.signing.keys[0].secret_access_key == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.signing)
    with pytest.raises(ConfigError) as exc:
        parse(base(signing={"keys": [{"access_key_id": "AKIDEXAMPLE", "secret_access_key": ["x", SECRET]}]}))
    assert SECRET not in str(exc.value)


def test_proxy_identity_allowed_when_restricted() -> None:
    assert parse(base(signing={"mode": "proxy-identity"})).signing.mode == "proxy-identity"  # loopback only
    h = hash_password("p", b"salt", 1000)
    cfg = parse(
        base(
            signing={"mode": "proxy-identity", "identity_profile": "gw"},
            access={"allow_clients": ["10.0.0.0/8"], "users": [{"username": "u", "password_hash": h}]},
        )
    )
    assert cfg.signing.identity_profile == "gw"
    assert cfg.access.restricted


@pytest.mark.parametrize(
    ("allow", "users", "restricted"),
    [
        (["127.0.0.0/8", "::1/128"], False, True),
        (["127.0.0.1/32"], False, True),
        (["10.0.0.0/8"], False, False),
        (["10.0.0.0/8"], True, True),
        (["0.0.0.0/0"], True, False),
        (["127.0.0.0/8", "::/0"], True, False),
        ([], False, True),
    ],
)
def test_access_restricted(allow: list[str], users: bool, restricted: bool) -> None:
    u = [{"username": "u", "password_hash": hash_password("p", b"s", 1000)}] if users else []
    assert parse(base(access={"allow_clients": allow, "users": u})).access.restricted is restricted


# --------------------------------------------------------------------------------- files


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_keys_file(tmp_path: Path) -> None:
    write(tmp_path / "keys.yaml", f"keys:\n  - access_key_id: AKIDFILE\n    secret_access_key: {SECRET}\n")
    conf = write(
        tmp_path / "s3proxy.yaml",
        f"endpoints:\n  us-east-1: {EP}\nsigning:\n  keys_file: keys.yaml\n"
        "  keys:\n    - {access_key_id: AKIDINLINE, secret_access_key_env: S}\n",
        0o644,
    )
    cfg = load_config(conf, {"S": "inline-secret"})
    assert [k.access_key_id for k in cfg.signing.keys] == ["AKIDINLINE", "AKIDFILE"]


def test_keys_file_permissions_refused(tmp_path: Path) -> None:
    keys = write(
        tmp_path / "keys.yaml",
        f"keys:\n  - {{access_key_id: AKIDFILE, secret_access_key: {SECRET}}}\n",
        0o640,
    )
    with pytest.raises(
        ConfigError,
        match=r"^signing\.keys_file: .*readable or writable by others \(mode 0640\); run: chmod 600 ",
    ) as exc:
        parse(base(signing={"keys_file": str(keys)}))
    assert SECRET not in str(exc.value)


def test_keys_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^signing\.keys_file: .* cannot be read"):
        parse(base(signing={"keys_file": "missing.yaml"}), base_dir=tmp_path)
    write(tmp_path / "k.yaml", "keys:\n  - {access_key_id: A1, secret_access_key_env: NOPE}\n")
    with pytest.raises(ConfigError, match=r"keys\[0\]\.secret_access_key_env: environment variable 'NOPE'"):
        parse(base(signing={"keys_file": "k.yaml"}), base_dir=tmp_path)
    write(tmp_path / "k2.yaml", "kees: []\n")
    with pytest.raises(ConfigError, match=r"kees: unknown key; did you mean 'keys'"):
        parse(base(signing={"keys_file": "k2.yaml"}), base_dir=tmp_path)
    write(tmp_path / "k3.yaml", "keys:\n  - {access_key_id: A1, secret_access_key: s1}\n")
    with pytest.raises(ConfigError, match=r"access key id 'A1' is listed twice"):
        parse(
            base(
                signing={"keys_file": "k3.yaml", "keys": [{"access_key_id": "A1", "secret_access_key": "s2"}]}
            ),
            base_dir=tmp_path,
        )


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    conf = write(
        tmp_path / "c.yaml",
        f"endpoints: {{us-east-1: {EP}}}\ntls: {{ca_dir: ca, upstream_ca_bundle: ca.pem}}\n",
    )
    cwd = os.getcwd()
    try:
        os.chdir("/")
        cfg = load_config(str(conf), {})
    finally:
        os.chdir(cwd)
    assert cfg.tls.ca_dir == tmp_path.resolve() / "ca"
    assert cfg.tls.upstream_ca_bundle == tmp_path.resolve() / "ca.pem"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("endpoints: [", r"^config: .*c\.yaml: line \d+ column \d+"),
        ("endpoints:\n  us-east-1: a\n  us-east-1: b\n", r"line 3: key 'us-east-1' appears twice"),
        ("- a\n- b\n", r"^<top level>: must be a mapping"),
        ("", r"^endpoints: is required"),
        ("dns:\n  nameservers: [[::1]:53]\n", r"^config: .*c\.yaml:"),
        ("endpoints: !!python/object:os.system {}\n", r"^config: "),
    ],
)
def test_yaml_problems(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path / "c.yaml", text), {})


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml", {})
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"not UTF-8"):
        load_config(tmp_path / "bin.yaml", {})


# --------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.2", ("10.0.0.2", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:53", ("::1", 53)),
        ("[fd00::2]", ("fd00::2", 53)),
        ("fd00::2", ("fd00::2", 53)),
    ],
)
def test_parse_nameserver(text: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize(
    "text", ["", "host.example", "1.2.3.4:0", "1.2.3.4:99999", "[::1", "[::1]x", "1.2.3.4:"]
)
def test_parse_nameserver_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_password_hashing() -> None:
    h = hash_password("s3cret pw", b"0123456789abcdef", 2000)
    assert h.startswith("pbkdf2_sha256$2000$")
    assert verify_password("s3cret pw", h)
    assert not verify_password("s3cret pX", h)
    assert not verify_password("s3cret pw", "garbage")
    assert not verify_password("s3cret pw", "pbkdf2_sha256$2000$!!$!!")
    assert not verify_password("", h)
    with pytest.raises(ValueError):
        hash_password("x", b"", 1000)
