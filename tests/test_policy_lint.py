"""`policy lint`: one test per lock-out trap of AWS's PrivateLink for S3 guide; clean policies stay quiet."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from s3proxy.config import Config
from s3proxy.endpoint import Endpoint, parse_endpoint_name
from s3proxy.policy import parse_policy_document
from s3proxy.policy_lint import LintWarning, lint

BUCKET = "amzn-s3-demo-bucket2"


def config(*names: str) -> Config:
    endpoints = {}
    for name in names or ("vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com",):
        parsed = parse_endpoint_name(name)
        endpoints[parsed.region] = Endpoint(parsed.region, parsed)
    return Config(endpoints=endpoints)


# The bucket policy from the guide's "Restricting access to a specific VPC endpoint in the S3 bucket policy".
VPCE_ONLY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Id": "Policy1415115909152",
    "Statement": [
        {
            "Sid": "Access-to-specific-VPCE-only",
            "Principal": "*",
            "Action": "s3:*",
            "Effect": "Deny",
            "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"],
            "Condition": {"StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"}},
        }
    ],
}
ADMIN_ESCAPE = {"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/Admin"}}


def with_statement(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VPCE_ONLY)
    doc["Statement"][0].update(changes)
    return doc


def codes(warnings: list[LintWarning]) -> list[str]:
    return sorted(w.code for w in warnings)


def bucket_lint(doc: dict[str, Any], cfg: Config | None = None) -> list[LintWarning]:
    return lint(cfg or config(), {BUCKET: parse_policy_document(doc)})


def test_source_vpce_naming_an_endpoint_the_proxy_does_not_use() -> None:
    cfg = config("vpce-0f0f0f0f-abcd.s3.us-east-1.vpce.amazonaws.com")
    warnings = [w for w in bucket_lint(VPCE_ONLY, cfg) if w.code == "unknown-endpoint"]
    assert len(warnings) == 1
    w = warnings[0]
    assert (w.document, w.sid) == (f"bucket policy of {BUCKET}", "Access-to-specific-VPCE-only")
    assert "denies every request sent through s3proxy" in w.message
    assert "vpce-1a2b3c4d" in w.message and "vpce-0f0f0f0f" in w.message
    # The configured endpoint is named: no such warning.
    assert "unknown-endpoint" not in codes(bucket_lint(VPCE_ONLY))


def test_source_vpce_given_as_the_dns_name_label() -> None:
    doc = with_statement(Condition={"StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d-5e6f"}})
    (w,) = [w for w in bucket_lint(doc) if w.code == "unknown-endpoint"]
    assert "looks like the endpoint's DNS name" in w.message and "'vpce-1a2b3c4d'" in w.message


@pytest.mark.parametrize(
    ("effect", "operator", "values", "expected"),
    [
        ("Allow", "StringEquals", "vpce-99999999", "never allows a request sent through s3proxy"),
        ("Deny", "StringNotEquals", ["vpce-99999999", "vpce-88888888"], "denies every request"),
        ("Deny", "StringNotLike", "vpce-9*", "denies every request"),
        ("Deny", "StringNotLike", "vpce-1a2b*", None),
        ("Deny", "StringNotEqualsIgnoreCase", "VPCE-1A2B3C4D", None),
        ("Allow", "StringEquals", ["vpce-99999999", "vpce-1a2b3c4d"], None),
    ],
)
def test_source_vpce_operators(effect: str, operator: str, values: object, expected: str | None) -> None:
    doc = with_statement(Effect=effect, Condition={operator: {"aws:SourceVpce": values}})
    found = [w.message for w in bucket_lint(doc) if w.code == "unknown-endpoint"]
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0]


def test_source_vpc_not_among_configured_vpcs() -> None:
    doc = with_statement(Condition={"StringNotEquals": {"aws:SourceVpc": "vpc-111"}})
    policies = {BUCKET: parse_policy_document(doc)}
    assert "unknown-vpc" in codes(lint(config(), policies, vpc_ids={"vpce-1a2b3c4d": "vpc-222"}))
    assert "unknown-vpc" not in codes(lint(config(), policies, vpc_ids={"vpce-1a2b3c4d": "vpc-111"}))
    assert "unknown-vpc" not in codes(lint(config(), policies))  # no VPC configured: nothing to compare


def test_deny_all_without_condition() -> None:
    doc = with_statement(Action="*", Resource="*")
    del doc["Statement"][0]["Condition"]
    (w,) = bucket_lint(doc)
    assert w.code == "deny-all-no-escape"
    assert "only the account root user can delete the bucket policy" in w.message


def test_deny_all_outside_the_endpoint_without_escape() -> None:
    """The guide's own example is the trap: one wrong ID locks everybody out, and the console too."""
    assert codes(bucket_lint(VPCE_ONLY)) == ["console-blocked", "deny-all-no-escape"]
    w = next(w for w in bucket_lint(VPCE_ONLY) if w.code == "deny-all-no-escape")
    assert "aws:PrincipalArn" in w.message  # suggests the escape


@pytest.mark.parametrize(
    "escape",
    [
        {"Condition": {**VPCE_ONLY["Statement"][0]["Condition"], **ADMIN_ESCAPE}},
        {"Condition": {"StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d", "aws:PrincipalAccount": "1"}}},
        {
            "Condition": {
                "StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"},
                "Null": {"aws:PrincipalTag/x": "false"},
            }
        },
        {"Principal": {"AWS": "arn:aws:iam::111122223333:role/App"}},
    ],
)
def test_escapes_silence_the_lock_out_warnings(escape: dict[str, Any]) -> None:
    assert codes(bucket_lint(with_statement(**escape))) == []


def test_narrow_conditions_are_not_lock_outs() -> None:
    tls_only = with_statement(Condition={"Bool": {"aws:SecureTransport": "false"}})
    assert codes(bucket_lint(tls_only)) == []
    mixed = with_statement(
        Condition={
            "StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"},
            "Bool": {"aws:SecureTransport": "false"},
        }
    )
    assert codes(bucket_lint(mixed)) == []


def test_console_blocked_for_some_actions() -> None:
    doc = with_statement(
        Action=["s3:GetObject", "s3:PutObject"],
        Resource=f"arn:aws:s3:::{BUCKET}/*",
        Condition={"StringNotEqualsIfExists": {"aws:SourceVpc": "vpc-111"}},
    )
    (w,) = bucket_lint(doc)
    assert w.code == "console-blocked"
    assert "s3:GetObject, s3:PutObject" in w.message and "aws:SourceVpc" in w.message


@pytest.mark.parametrize(
    ("effect", "operator", "warned"),
    [("Deny", "NotIpAddress", True), ("Allow", "IpAddress", True), ("Deny", "IpAddress", False)],
)
def test_source_ip_never_matches_through_an_endpoint(effect: str, operator: str, warned: bool) -> None:
    doc = with_statement(Effect=effect, Condition={operator: {"aws:SourceIp": "203.0.113.0/24"}})
    assert ("source-ip-via-endpoint" in codes(bucket_lint(doc))) is warned


def test_endpoint_policy_without_allow() -> None:
    deny_only = parse_policy_document(
        {
            "Statement": [
                {
                    "Sid": "Access-to-bucket-in-specific-account-only",
                    "Principal": "*",
                    "Action": ["s3:GetObject", "s3:PutObject"],
                    "Effect": "Deny",
                    "Resource": "arn:aws:s3:::*",
                    "Condition": {"StringNotEquals": {"aws:ResourceAccount": "111122223333"}},
                }
            ]
        }
    )
    (w,) = lint(config(), {}, endpoint_policies={"vpce-1a2b3c4d": deny_only})
    assert (w.code, w.document) == ("endpoint-allows-nothing", "VPC endpoint policy of vpce-1a2b3c4d")
    assert str(w).startswith("VPC endpoint policy of vpce-1a2b3c4d: has no Allow statement")


def test_guide_endpoint_policies_are_clean() -> None:
    bucket_only = parse_policy_document(
        {
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
    )
    assert lint(config(), {}, endpoint_policies={"vpce-1a2b3c4d": bucket_only}) == []
