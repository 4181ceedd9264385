"""The PAC file: decides like `s3proxy.hosts.is_s3_host` (per configured partition), in Python and in a real
JavaScript engine (node, when installed)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.config import Config, parse_config
from s3proxy.hosts import is_s3_host
from s3proxy.pac import host_matches, pac_file, partitions, proxy_address, proxy_host_for

COM = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
CN = "vpce-0a1b2c3d-4e5f.s3.cn-north-1.vpce.amazonaws.com.cn"


def config(*names: str) -> Config:
    endpoints = {name.split(".")[2]: name for name in names}
    return parse_config({"endpoints": endpoints}, base_dir=Path("."), environ={})


BOTH = config(COM, CN)
ONLY_COM = config(COM)
ONLY_CN = config(CN)

HOSTS: list[tuple[str, bool]] = [
    # (host, is an S3 name the proxy handles)
    ("s3.amazonaws.com", True),
    ("my-bucket.s3.amazonaws.com", True),
    ("my.dotted.bucket.s3.amazonaws.com", True),
    ("My-Bucket.S3.Amazonaws.COM.", True),
    ("s3.us-east-1.amazonaws.com", True),
    ("bucket.s3.eu-west-1.amazonaws.com", True),
    ("bucket.s3.dualstack.eu-west-1.amazonaws.com", True),
    ("s3.dualstack.ap-southeast-4.amazonaws.com", True),
    ("s3-us-west-2.amazonaws.com", True),
    ("bucket.s3-eu-west-1.amazonaws.com", True),
    ("s3-external-1.amazonaws.com", True),
    ("ap-111122223333.s3-accesspoint.us-west-2.amazonaws.com", True),
    ("ap-111122223333.s3-accesspoint.dualstack.us-west-2.amazonaws.com", True),
    ("a.b.s3-accesspoint.us-west-2.amazonaws.com", False),
    ("s3-accesspoint.us-west-2.amazonaws.com", False),
    ("111122223333.s3-control.us-east-1.amazonaws.com", True),
    ("s3-control.us-east-1.amazonaws.com", True),
    ("bucket.s3-control.us-east-1.amazonaws.com", False),
    ("bucket.s3-fips.us-east-1.amazonaws.com", True),
    ("s3-fips-us-gov-west-1.amazonaws.com", True),
    ("bucket.s3-website-us-east-1.amazonaws.com", True),
    ("bucket.s3-website.eu-west-1.amazonaws.com", True),
    ("bucket.s3-accelerate.amazonaws.com", True),
    ("bucket.s3-accelerate.dualstack.amazonaws.com", True),
    ("mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com", True),
    ("bucket--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com", True),
    ("s3-outposts.us-west-2.amazonaws.com", True),
    ("ap-111122223333.s3-object-lambda.us-east-1.amazonaws.com", True),
    ("s3.us-gov-west-1.amazonaws.com", True),
    ("bucket.s3.cn-north-1.amazonaws.com.cn", True),
    ("s3.cn-northwest-1.amazonaws.com.cn", True),
    ("s3.amazonaws.com.cn", False),  # the legacy global name exists only in the aws partition
    ("s3.cn-north-1.amazonaws.com", False),  # region and partition disagree
    ("s3.us-east-1.amazonaws.com.cn", False),
    # Interface endpoint names: already right, tunnelled untouched: DIRECT.
    (f"bucket.{COM}", False),
    (f"my-bucket.bucket.{COM}", False),
    ("bucket.vpce-1a2b3c4d-5e6f-us-east-1a.s3.us-east-1.vpce.amazonaws.com", False),
    # Other AWS services and everything else.
    ("ec2.us-east-1.amazonaws.com", False),
    ("sts.amazonaws.com", False),
    ("dynamodb.us-east-1.amazonaws.com", False),
    ("s3.amazonaws.com.evil.example", False),
    ("evil-s3.amazonaws.com.example", False),
    ("s3.us-east-1.amazonaws.com.example.org", False),
    ("example.com", False),
    ("localhost", False),
    ("10.0.0.1", False),
    ("", False),
    ("bucket_with_underscore.s3.amazonaws.com", True),
    ("-bad-.s3.amazonaws.com", False),
    ("a" * 64 + ".s3.amazonaws.com", False),
    ("a." * 120 + "s3.amazonaws.com", False),  # longer than 253
    ("xs3.us-east-1.amazonaws.com", False),
    ("s3.us-east-1a.amazonaws.com", False),
]


@pytest.mark.parametrize(("host", "expected"), HOSTS)
def test_table_matches_hosts_module(host: str, expected: bool) -> None:
    assert is_s3_host(host) is expected  # the table is right about the proxy itself
    assert host_matches(host, partitions(BOTH)) is expected


@pytest.mark.parametrize(("host", "expected"), HOSTS)
def test_only_configured_partitions(host: str, expected: bool) -> None:
    h = host.lower().rstrip(".")
    assert host_matches(host, partitions(ONLY_COM)) is (expected and not h.endswith(".cn"))
    assert host_matches(host, partitions(ONLY_CN)) is (expected and h.endswith(".cn"))


_VOCAB = [
    "s3", "dualstack", "us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "us-east-1a",
    "s3-accesspoint", "s3-control", "123456789012", "12345", "s3-fips", "fips", "s3-accesspoint-fips",
    "s3-website", "s3-website-us-east-1", "s3-website-cn-north-1", "s3-us-west-2", "s3-cn-north-1",
    "s3-external-1", "s3-global", "mrap", "accesspoint", "s3-accelerate", "s3express-use1-az4", "s3-outposts",
    "s3-object-lambda", "vpce", "vpce-1a2b3c4d-5e6f", "bucket", "my-bucket", "b--x-s3", "b--op-s3",
    "amazonaws", "com", "cn", "-bad", "UP", "s3-fips-us-gov-west-1", "example", "x_y", "ec2", "s3express",
]  # fmt: skip
_SUFFIXES = ["amazonaws.com", "amazonaws.com.cn", "example.com", "amazonaws.com.", "vpce.amazonaws.com", ""]

hosts = st.builds(
    lambda labels, suffix: ".".join([*labels, suffix] if suffix else labels),
    st.lists(st.sampled_from(_VOCAB), min_size=0, max_size=5),
    st.sampled_from(_SUFFIXES),
)


@settings(max_examples=3000)
@given(hosts)
def test_pac_rules_equal_is_s3_host(host: str) -> None:
    assert host_matches(host, partitions(BOTH)) == is_s3_host(host)


def _random_hosts(n: int) -> list[str]:
    rng = random.Random(6)  # fixed: the same hosts every run
    out = [h for h, _ in HOSTS]
    for _ in range(n):
        labels = [rng.choice(_VOCAB) for _ in range(rng.randint(0, 5))]
        suffix = rng.choice(_SUFFIXES)
        out.append(".".join([*labels, suffix] if suffix else labels))
    return out


# The PAC runtime functions the file uses, as browsers define them.
_SHIMS = """
function dnsDomainIs(host, domain) {
  return host.length >= domain.length && host.substring(host.length - domain.length) === domain;
}
function isPlainHostName(host) { return host.indexOf(".") < 0; }
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node (a JavaScript engine) is not installed")
@pytest.mark.parametrize("cfg", [BOTH, ONLY_COM, ONLY_CN], ids=["both", "com", "cn"])
def test_pac_in_javascript_engine(tmp_path: Path, cfg: Config) -> None:
    hosts_list = _random_hosts(3000)
    pac = pac_file(cfg, "gw.example", 3128)
    script = tmp_path / "run.js"
    script.write_text(
        _SHIMS
        + pac
        + "\nconst hosts = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));\n"
        + "process.stdout.write(JSON.stringify(hosts.map(h => FindProxyForURL('https://' + h + '/', h))));\n"
    )
    data = tmp_path / "hosts.json"
    data.write_text(json.dumps(hosts_list))
    run = ["node", str(script), str(data)]
    answers = json.loads(subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout)
    proxy = "PROXY gw.example:3128"
    assert set(answers) == {proxy, "DIRECT"}
    suffixes = partitions(cfg)

    def expected(h: str) -> bool:
        partition = "amazonaws.com.cn" if h.lower().rstrip(".").endswith(".cn") else "amazonaws.com"
        return is_s3_host(h) and partition in suffixes

    wrong = [(h, a) for h, a in zip(hosts_list, answers, strict=True) if (a == proxy) != expected(h)]
    assert not wrong, wrong[:10]


def test_pac_text() -> None:
    pac = pac_file(ONLY_COM, "10.0.0.5", 3128, fallbacks=[("gw2.example", 3128), ("fd00::5", 8080)])
    assert "function FindProxyForURL(url, host)" in pac
    assert '"PROXY 10.0.0.5:3128; PROXY gw2.example:3128; PROXY [fd00::5]:8080"' in pac
    assert "DIRECT" in pac and "; DIRECT" not in pac  # no silent fallback to the public endpoints
    assert "amazonaws\\.com\\.cn" not in pac
    assert "amazonaws\\.com\\.cn" in pac_file(BOTH, "gw", 1)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("gw.example", 3128, "gw.example:3128"),
        ("10.0.0.5", 3128, "10.0.0.5:3128"),
        ("::1", 3128, "[::1]:3128"),
        ("[fd00::5]", 80, "[fd00::5]:80"),
        ("gw.example; DIRECT", 1, None),
        ('gw"+alert(1)+"', 1, None),
        ("0.0.0.0", 3128, None),
        ("::", 3128, None),
        ("gw", 0, None),
        ("gw", 70000, None),
        ("a..b", 1, None),
        ("", 1, None),
    ],
)
def test_proxy_address(host: str, port: int, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            proxy_address(host, port)
    else:
        assert proxy_address(host, port) == expected


@pytest.mark.parametrize(
    ("listen", "requested", "expected"),
    [
        ("10.0.0.5", "other:9090", "10.0.0.5"),
        ("gw.example", None, "gw.example"),
        ("0.0.0.0", "gw.example:9090", "gw.example"),
        ("::", "[fd00::5]:9090", "fd00::5"),
        ("0.0.0.0", "gw.example", "gw.example"),
        ("", "10.1.1.1:9090", "10.1.1.1"),
    ],
)
def test_proxy_host_for(listen: str, requested: str | None, expected: str) -> None:
    assert proxy_host_for(listen, requested) == expected


def test_proxy_host_for_wildcard_needs_a_name() -> None:
    with pytest.raises(ValueError):
        proxy_host_for("0.0.0.0", None)
