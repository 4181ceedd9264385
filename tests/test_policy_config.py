"""Policy configuration: endpoint `policy`/`vpc_id`, `policy_mode`, `bucket_policies`, `accounts`,
`bucket_accounts` — parsed into `Config.policy`, every error naming its key path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from s3proxy.config import Config, ConfigError, load_config, parse_config

EP = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
EP_ID = "vpce-1a2b3c4d"
EU = "vpce-0e25b8cdd720f900e-argc85vg.s3.eu-west-1.vpce.amazonaws.com"
EU_ID = "vpce-0e25b8cdd720f900e"

BUCKET_ONLY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Access-to-specific-bucket-only",
            "Principal": "*",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Effect": "Allow",
            "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket1", "arn:aws:s3:::amzn-s3-demo-bucket1/*"],
        }
    ],
}
VPCE_ONLY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Access-to-specific-VPCE-only",
            "Principal": "*",
            "Action": "s3:*",
            "Effect": "Deny",
            "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket2", "arn:aws:s3:::amzn-s3-demo-bucket2/*"],
            "Condition": {"StringNotEquals": {"aws:sourceVpce": EP_ID}},
        }
    ],
}


def parse(data: Any, base_dir: Path = Path("/nonexistent")) -> Config:
    return parse_config(data, base_dir=base_dir, environ={})


def endpoint(**extra: Any) -> dict[str, Any]:
    return {"endpoints": {"us-east-1": {"dns_name": EP, **extra}}}


def sids(cfg: Config, endpoint_id: str) -> list[str]:
    return [s.sid for s in cfg.policy.endpoint_policies[endpoint_id].statements]


def test_defaults_check_nothing() -> None:
    cfg = parse({"endpoints": {"us-east-1": EP}})
    p = cfg.policy
    assert p.mode == "off"
    assert not p.configured
    assert dict(p.endpoint_policies) == dict(p.bucket_policies) == dict(p.accounts) == {}
    assert dict(p.vpc_ids) == dict(p.bucket_accounts) == {}


def test_endpoint_policy_inline_mapping_keyed_by_endpoint_id() -> None:
    cfg = parse(
        {
            "endpoints": {
                "us-east-1": {"dns_name": EP, "policy": BUCKET_ONLY, "vpc_id": "vpc-0abc123"},
                "eu-west-1": {"dns_name": f"*.{EU}", "zones": ["eu-west-1a"]},
            }
        }
    )
    assert set(cfg.policy.endpoint_policies) == {EP_ID}  # the ID aws:sourceVpce names, not the DNS label
    assert sids(cfg, EP_ID) == ["Access-to-specific-bucket-only"]
    assert dict(cfg.policy.vpc_ids) == {EP_ID: "vpc-0abc123"}
    assert cfg.policy.configured


def test_endpoint_policy_as_json_text() -> None:
    cfg = parse(endpoint(policy=json.dumps(BUCKET_ONLY, indent=2)))
    assert sids(cfg, EP_ID) == ["Access-to-specific-bucket-only"]
    # Leading whitespace before the brace, as a YAML block scalar gives it.
    cfg = parse(endpoint(policy="\n  " + json.dumps(BUCKET_ONLY)))
    assert sids(cfg, EP_ID) == ["Access-to-specific-bucket-only"]


def test_policy_files_relative_to_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "endpoint.json").write_text(json.dumps(BUCKET_ONLY))
    # YAML policy files work too (the Version date unquoted, as people write it).
    (tmp_path / "policies" / "bucket2.yaml").write_text(
        "Version: 2012-10-17\n"
        "Statement:\n"
        "  - Sid: Access-to-specific-VPCE-only\n"
        "    Principal: '*'\n"
        "    Action: 's3:*'\n"
        "    Effect: Deny\n"
        "    Resource: ['arn:aws:s3:::amzn-s3-demo-bucket2', 'arn:aws:s3:::amzn-s3-demo-bucket2/*']\n"
        "    Condition: {StringNotEquals: {'aws:sourceVpce': vpce-1a2b3c4d}}\n"
    )
    (tmp_path / "s3proxy.yaml").write_text(
        f"endpoints:\n"
        f"  us-east-1:\n"
        f"    dns_name: {EP}\n"
        f"    policy: policies/endpoint.json\n"
        f"policy_mode: enforce\n"
        f"bucket_policies:\n"
        f"  amzn-s3-demo-bucket2: policies/bucket2.yaml\n"
        f"  amzn-s3-demo-bucket1:\n"
        f"    Version: '2012-10-17'\n"
        f"    Statement:\n"
        f"      - {{Sid: AllowAll, Effect: Allow, Principal: '*', Action: 's3:*', Resource: '*'}}\n"
    )
    cfg = load_config(tmp_path / "s3proxy.yaml", {})
    assert cfg.policy.mode == "enforce"
    assert sids(cfg, EP_ID) == ["Access-to-specific-bucket-only"]
    bp = cfg.policy.bucket_policies
    assert set(bp) == {"amzn-s3-demo-bucket1", "amzn-s3-demo-bucket2"}
    assert bp["amzn-s3-demo-bucket2"].statements[0].sid == "Access-to-specific-VPCE-only"
    assert bp["amzn-s3-demo-bucket1"].statements[0].sid == "AllowAll"


@pytest.mark.parametrize(
    ("value", "mode"),
    [("off", "off"), (False, "off"), ("warn", "warn"), ("enforce", "enforce")],
)
def test_policy_mode(value: object, mode: str) -> None:
    # `policy_mode: off` unquoted is YAML 1.1 false: it means off.
    assert parse({"endpoints": {"us-east-1": EP}, "policy_mode": value}).policy.mode == mode


def test_policy_mode_off_unquoted_in_yaml(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(f"endpoints: {{us-east-1: {EP}}}\npolicy_mode: off\n")
    assert load_config(tmp_path / "c.yaml", {}).policy.mode == "off"


def test_accounts_and_bucket_accounts() -> None:
    cfg = parse(
        {
            "endpoints": {"us-east-1": EP},
            "accounts": {
                "AKIAIOSFODNN7EXAMPLE": "111122223333",
                "AKIAI44QH8DHBEXAMPLE": "arn:aws:iam::444455556666:role/app",
                "ASIAEXAMPLESESSION01": "arn:aws:sts::444455556666:assumed-role/app/session",
            },
            "bucket_accounts": {"amzn-s3-demo-bucket1": "111122223333"},
        }
    )
    assert dict(cfg.policy.accounts) == {
        "AKIAIOSFODNN7EXAMPLE": "111122223333",
        "AKIAI44QH8DHBEXAMPLE": "arn:aws:iam::444455556666:role/app",
        "ASIAEXAMPLESESSION01": "arn:aws:sts::444455556666:assumed-role/app/session",
    }
    assert dict(cfg.policy.bucket_accounts) == {"amzn-s3-demo-bucket1": "111122223333"}
    assert not cfg.policy.configured  # identities alone decide nothing


BAD_STATEMENT = {
    "Version": "2012-10-17",
    "Statement": [{"Sid": "S", "Effect": "Permit", "Principal": "*", "Action": "s3:*", "Resource": "*"}],
}


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (endpoint(policy=BAD_STATEMENT), r"^endpoints\.us-east-1\.policy: Statement\[0\]\(S\)\.Effect"),
        (endpoint(policy=["not", "a", "doc"]), r"^endpoints\.us-east-1\.policy: must be a policy document"),
        (endpoint(policy=42), r"^endpoints\.us-east-1\.policy: must be a policy document"),
        (endpoint(policy='{"Version": "2012-10-17", '), r"^endpoints\.us-east-1\.policy: is not valid JSON"),
        (endpoint(policy={"Version": "2012-10-17"}), r"^endpoints\.us-east-1\.policy: needs a Statement"),
        (
            endpoint(policy="missing.json"),
            r"^endpoints\.us-east-1\.policy: cannot read policy file .*missing",
        ),
        (endpoint(polcy=BUCKET_ONLY), r"^endpoints\.us-east-1\.polcy: unknown key; did you mean 'policy'\?"),
        (endpoint(vpc_id="vpc_123"), r"^endpoints\.us-east-1\.vpc_id: 'vpc_123' is not a VPC ID"),
        (endpoint(vpc_id="vpce-1a2b3c4d"), r"^endpoints\.us-east-1\.vpc_id: 'vpce-1a2b3c4d' is not a VPC ID"),
        (endpoint(vpc_id=123), r"^endpoints\.us-east-1\.vpc_id: 123 must be a string"),
        ({"endpoints": {"us-east-1": EP}, "policy_mode": "block"}, r"^policy_mode: 'block' must be one of"),
        (
            {"endpoints": {"us-east-1": EP}, "policy_mode": True},
            r"^policy_mode: True must be one of: off, warn",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "policy_modes": "warn"},
            r"^policy_modes: unknown key; did you mean",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "bucket_policies": {"amzn-s3-demo-bucket2": BAD_STATEMENT}},
            r"^bucket_policies\.amzn-s3-demo-bucket2: Statement\[0\]\(S\)\.Effect",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "bucket_policies": {"amzn-s3-demo-bucket2": None}},
            r"^bucket_policies\.amzn-s3-demo-bucket2: needs a policy document or a file path",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "bucket_policies": {"no/such bucket": VPCE_ONLY}},
            r"^bucket_policies\.no/such bucket: is not a bucket name",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "bucket_policies": ["amzn-s3-demo-bucket2"]},
            r"^bucket_policies: must be a mapping",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "accounts": {"AKIAIOSFODNN7EXAMPLE": 111122223333}},
            r"^accounts\.AKIAIOSFODNN7EXAMPLE: 111122223333 must be a string.*quote it",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "accounts": {"AKIAIOSFODNN7EXAMPLE": "11112222333"}},
            r"^accounts\.AKIAIOSFODNN7EXAMPLE: '11112222333' must be a 12-digit account ID",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "accounts": {"AKIAIOSFODNN7EXAMPLE": "arn:aws:s3:::bucket"}},
            r"^accounts\.AKIAIOSFODNN7EXAMPLE: .* or an IAM/STS principal ARN",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "accounts": {"not a key": "111122223333"}},
            r"^accounts\.not a key: is not an access key id",
        ),
        (
            {"endpoints": {"us-east-1": EP}, "bucket_accounts": {"amzn-s3-demo-bucket1": 111122223333}},
            r"^bucket_accounts\.amzn-s3-demo-bucket1: 111122223333 must be a string",
        ),
        (
            {
                "endpoints": {"us-east-1": EP},
                "bucket_accounts": {"amzn-s3-demo-bucket1": "arn:aws:iam::1:root"},
            },
            r"^bucket_accounts\.amzn-s3-demo-bucket1: .* must be the 12-digit account ID",
        ),
    ],
)
def test_errors_name_the_key_path(data: Any, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse(data)


def test_policy_file_errors_name_key_path_and_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]}')
    with pytest.raises(ConfigError, match=r"^bucket_policies\.bkt1: bad\.json: Statement\[0\]") as e:
        parse({"endpoints": {"us-east-1": EP}, "bucket_policies": {"bkt1": "bad.json"}}, tmp_path)
    assert "Principal" in str(e.value)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ConfigError, match=r"^endpoints\.us-east-1\.policy: cannot read policy file"):
        parse(endpoint(policy="dir.json"), tmp_path)
    (tmp_path / "huge.json").write_bytes(b" " * (1 << 20) + b"{}")
    with pytest.raises(ConfigError, match=r"larger than 1 MiB"):
        parse(endpoint(policy="huge.json"), tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'{"Id": "caf\xe9"}')
    with pytest.raises(ConfigError, match=r"^endpoints\.us-east-1\.policy: latin1\.json: is not UTF-8"):
        parse(endpoint(policy="latin1.json"), tmp_path)


def test_example_config_has_safe_policy_defaults() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "s3proxy.example.yaml"
    cfg = load_config(example, {"HOME": "/home/op"})
    assert cfg.policy.mode == "off"
    assert not cfg.policy.configured
