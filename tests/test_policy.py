"""Policy evaluation: AWS's PrivateLink for S3 example policies, request -> action mapping, operators."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.model import Headers
from s3proxy.policy import (
    Access,
    Policy,
    PolicyDecision,
    PolicySettings,
    RequestContext,
    access_key_of,
    check_request,
    decide,
    denial_message,
    evaluate_document,
    glob_any_suffix,
    glob_match,
    parse_policy_document,
    principal_for,
    request_context,
    s3_accesses,
    wild_tokens,
)

EP = "vpce-1a2b3c4d"  # endpoint ID of vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com
OTHER_EP = "vpce-0f0f0f0f"

# --- the three example policies of AWS's "AWS PrivateLink for Amazon S3" guide, verbatim -----------------

RESTRICT_TO_BUCKET = """{
  "Version":"2012-10-17",
  "Id": "Policy1415115909151",
  "Statement": [
    { "Sid": "Access-to-specific-bucket-only",
      "Principal": "*",
      "Action": [
        "s3:GetObject",
        "s3:PutObject"
      ],
      "Effect": "Allow",
      "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket1",
                   "arn:aws:s3:::amzn-s3-demo-bucket1/*"]
    }
  ]
}"""

RESTRICT_TO_ACCOUNT_STATEMENT = {
    "Sid": "Access-to-bucket-in-specific-account-only",
    "Principal": "*",
    "Action": ["s3:GetObject", "s3:PutObject"],
    "Effect": "Deny",
    "Resource": "arn:aws:s3:::*",
    "Condition": {"StringNotEquals": {"aws:ResourceAccount": "111122223333"}},
}

RESTRICT_BUCKET_TO_VPCE = """{
  "Version":"2012-10-17",
  "Id": "Policy1415115909152",
  "Statement": [
    { "Sid": "Access-to-specific-VPCE-only",
      "Principal": "*",
      "Action": "s3:*",
      "Effect": "Deny",
      "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket2",
                   "arn:aws:s3:::amzn-s3-demo-bucket2/*"],
      "Condition": {"StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"}}
    }
  ]
}"""

# AWS's default endpoint policy (full access), which the account example is a statement added to.
DEFAULT_ENDPOINT_STATEMENT = {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}


def check(
    s: PolicySettings,
    method: str,
    bucket: str | None,
    key: str | None = None,
    query: str = "",
    headers: Headers = (),
    *,
    endpoint: str | None = EP,
    akid: str | None = "AKIDEXAMPLE",
    family: str = "path-style",
) -> PolicyDecision:
    return check_request(
        method=method,
        family=family,
        bucket=bucket,
        key=key,
        headers=headers,
        query=query,
        region="us-east-1",
        endpoint_id=endpoint,
        settings=s,
        access_key_id=akid,
    )


COPY_FROM_OTHER = (("x-amz-copy-source", "/other-bucket/src.txt"),)


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "headers", "outcome", "sid", "action"),
    [
        (
            "GET",
            "amzn-s3-demo-bucket1",
            "a.txt",
            "",
            (),
            "allow",
            "Access-to-specific-bucket-only",
            "s3:GetObject",
        ),
        (
            "HEAD",
            "amzn-s3-demo-bucket1",
            "a.txt",
            "",
            (),
            "allow",
            "Access-to-specific-bucket-only",
            "s3:GetObject",
        ),
        (
            "PUT",
            "amzn-s3-demo-bucket1",
            "dir/b%20c",
            "",
            (),
            "allow",
            "Access-to-specific-bucket-only",
            "s3:PutObject",
        ),
        # Multipart upload steps are all s3:PutObject.
        (
            "POST",
            "amzn-s3-demo-bucket1",
            "big",
            "uploads",
            (),
            "allow",
            "Access-to-specific-bucket-only",
            "s3:PutObject",
        ),
        (
            "PUT",
            "amzn-s3-demo-bucket1",
            "big",
            "partNumber=1&uploadId=u",
            (),
            "allow",
            "Access-to-specific-bucket-only",
            "s3:PutObject",
        ),
        ("GET", "other-bucket", "a.txt", "", (), "implicit-deny", "", "s3:GetObject"),
        # The example allows only Get/PutObject: listing, deleting and aborting are implicitly denied.
        (
            "GET",
            "amzn-s3-demo-bucket1",
            None,
            "list-type=2&prefix=a",
            (),
            "implicit-deny",
            "",
            "s3:ListBucket",
        ),
        ("DELETE", "amzn-s3-demo-bucket1", "a.txt", "", (), "implicit-deny", "", "s3:DeleteObject"),
        (
            "DELETE",
            "amzn-s3-demo-bucket1",
            "big",
            "uploadId=u",
            (),
            "implicit-deny",
            "",
            "s3:AbortMultipartUpload",
        ),
        ("GET", None, None, "", (), "implicit-deny", "", "s3:ListAllMyBuckets"),
        # CopyObject into the bucket needs s3:GetObject on the source, which is elsewhere.
        ("PUT", "amzn-s3-demo-bucket1", "copy.txt", "", COPY_FROM_OTHER, "implicit-deny", "", "s3:GetObject"),
    ],
)
def test_endpoint_policy_restricting_to_a_bucket(
    method: str,
    bucket: str | None,
    key: str | None,
    query: str,
    headers: Headers,
    outcome: str,
    sid: str,
    action: str,
) -> None:
    s = PolicySettings(mode="enforce", endpoint_policies={EP: parse_policy_document(RESTRICT_TO_BUCKET)})
    d = check(s, method, bucket, key, query, headers, family="path-style" if bucket else "list-buckets")
    assert (d.outcome, d.sid) == (outcome, sid)
    assert d.access is not None and d.access.action == action
    if outcome == "implicit-deny":
        assert f"VPC endpoint policy of {EP}" in denial_message(d)


@pytest.mark.parametrize("key_name", ["aws:ResourceAccount", "s3:ResourceAccount"])
@pytest.mark.parametrize(
    ("method", "bucket", "key", "outcome", "sid"),
    [
        ("GET", "mine", "k", "allow", "Statement[1]"),
        ("PUT", "mine", "k", "allow", "Statement[1]"),
        ("GET", "theirs", "k", "deny", "Access-to-bucket-in-specific-account-only"),
        ("PUT", "theirs", "k", "deny", "Access-to-bucket-in-specific-account-only"),
        # The Deny names only Get/PutObject: listing another account's bucket stays allowed.
        ("GET", "theirs", None, "allow", "Statement[1]"),
        # Owner not configured: the proxy cannot tell, and says which key it would need.
        ("GET", "unmapped", "k", "undetermined", "Access-to-bucket-in-specific-account-only"),
    ],
)
def test_endpoint_policy_restricting_to_an_account(
    key_name: str, method: str, bucket: str, key: str | None, outcome: str, sid: str
) -> None:
    statement = json.loads(json.dumps(RESTRICT_TO_ACCOUNT_STATEMENT).replace("aws:ResourceAccount", key_name))
    policy = parse_policy_document({"Statement": [statement, DEFAULT_ENDPOINT_STATEMENT]})
    s = PolicySettings(
        mode="enforce",
        endpoint_policies={EP: policy},
        bucket_accounts={"mine": "111122223333", "theirs": "444455556666"},
    )
    d = check(s, method, bucket, key)
    assert (d.outcome, d.sid) == (outcome, sid)
    if outcome == "undetermined":
        assert d.unknown == (key_name,)
        assert not d.denied


def test_account_statement_alone_allows_nothing() -> None:
    """The guide's account example is one statement for an endpoint policy; on its own it has no Allow."""
    policy = parse_policy_document({"Statement": [RESTRICT_TO_ACCOUNT_STATEMENT]})
    s = PolicySettings(
        mode="enforce", endpoint_policies={EP: policy}, bucket_accounts={"mine": "111122223333"}
    )
    assert check(s, "GET", "mine", "k").outcome == "implicit-deny"
    assert check(s, "GET", "theirs-unknown", "k").outcome == "implicit-deny"  # certain whatever the owner


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "endpoint", "outcome", "sid"),
    [
        # Through the named endpoint: the bucket policy does not deny; identity policies decide.
        ("GET", "amzn-s3-demo-bucket2", "k", "", EP, "not-denied", ""),
        ("PUT", "amzn-s3-demo-bucket2", "k", "", EP, "not-denied", ""),
        ("GET", "amzn-s3-demo-bucket2", None, "", EP, "not-denied", ""),
        # Through another endpoint, or passthrough to the public name (no aws:sourceVpce at all): denied.
        ("GET", "amzn-s3-demo-bucket2", "k", "", OTHER_EP, "deny", "Access-to-specific-VPCE-only"),
        ("GET", "amzn-s3-demo-bucket2", "k", "", None, "deny", "Access-to-specific-VPCE-only"),
        ("DELETE", "amzn-s3-demo-bucket2", None, "policy", OTHER_EP, "deny", "Access-to-specific-VPCE-only"),
        # DeleteObjects: the keys are in the body, but bucket2/* covers every one of them.
        ("POST", "amzn-s3-demo-bucket2", None, "delete", OTHER_EP, "deny", "Access-to-specific-VPCE-only"),
        # Other buckets are not governed by this policy.
        ("GET", "elsewhere", "k", "", OTHER_EP, "not-denied", ""),
    ],
)
def test_bucket_policy_restricting_to_one_endpoint(
    method: str, bucket: str, key: str | None, query: str, endpoint: str | None, outcome: str, sid: str
) -> None:
    s = PolicySettings(
        mode="enforce",
        bucket_policies={"amzn-s3-demo-bucket2": parse_policy_document(RESTRICT_BUCKET_TO_VPCE)},
    )
    d = check(s, method, bucket, key, query, endpoint=endpoint)
    assert (d.outcome, d.sid) == (outcome, sid)
    if outcome == "deny":
        msg = denial_message(d)
        assert "explicit deny in the bucket policy of amzn-s3-demo-bucket2" in msg
        assert "'Access-to-specific-VPCE-only'" in msg


def test_explicit_deny_in_either_document_beats_allow() -> None:
    s = PolicySettings(
        mode="enforce",
        endpoint_policies={OTHER_EP: parse_policy_document(RESTRICT_TO_BUCKET)},
        bucket_policies={
            "amzn-s3-demo-bucket1": parse_policy_document(
                RESTRICT_BUCKET_TO_VPCE.replace("bucket2", "bucket1")
            )
        },
    )
    d = check(s, "GET", "amzn-s3-demo-bucket1", "k", endpoint=OTHER_EP)
    assert (d.outcome, d.basis[0].document) == ("deny", "bucket policy of amzn-s3-demo-bucket1")


def test_copy_checks_the_source_bucket_policy() -> None:
    s = PolicySettings(
        bucket_policies={"amzn-s3-demo-bucket2": parse_policy_document(RESTRICT_BUCKET_TO_VPCE)}
    )
    headers = (("x-amz-copy-source", "/amzn-s3-demo-bucket2/src%20file?versionId=v1"),)
    d = check(s, "PUT", "dest", "k", headers=headers, endpoint=OTHER_EP)
    assert d.outcome == "deny"
    assert d.access == Access(
        "s3:GetObjectVersion",
        "arn:aws:s3:::amzn-s3-demo-bucket2/src file",
        "amzn-s3-demo-bucket2",
        values=(("s3:VersionId", ("v1",)),),
    )


def test_allow_names_both_deciding_statements() -> None:
    bucket = parse_policy_document(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "FromEndpoint",
                    "Effect": "Allow",
                    "Principal": {"AWS": "111122223333"},
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::amzn-s3-demo-bucket1/*",
                    "Condition": {"StringEquals": {"aws:SourceVpce": EP}},
                }
            ],
        }
    )
    s = PolicySettings(
        endpoint_policies={EP: parse_policy_document(RESTRICT_TO_BUCKET)},
        bucket_policies={"amzn-s3-demo-bucket1": bucket},
        accounts={"AKIDEXAMPLE": "111122223333"},
    )
    d = check(s, "GET", "amzn-s3-demo-bucket1", "k")
    assert d.outcome == "allow"
    assert [b.sid for b in d.basis] == ["Access-to-specific-bucket-only", "FromEndpoint"]
    # Unknown caller: the bucket policy's Allow may or may not match; without it S3 asks identity policies.
    assert check(s, "GET", "amzn-s3-demo-bucket1", "k", akid="AKIDOTHER").outcome == "not-denied"


# --- request -> S3 actions -------------------------------------------------------------------------------

B = "arn:aws:s3:::bkt"


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "headers", "expected"),
    [
        ("GET", "bkt", "k", "", (), [("s3:GetObject", f"{B}/k")]),
        ("GET", "bkt", "k", "versionId=3", (), [("s3:GetObjectVersion", f"{B}/k")]),
        ("HEAD", "bkt", "k", "", (), [("s3:GetObject", f"{B}/k")]),
        ("HEAD", "bkt", None, "", (), [("s3:ListBucket", B)]),
        ("GET", "bkt", None, "", (), [("s3:ListBucket", B)]),
        ("GET", "bkt", "", "list-type=2", (), [("s3:ListBucket", B)]),
        ("GET", "bkt", None, "versions", (), [("s3:ListBucketVersions", B)]),
        ("GET", "bkt", None, "location", (), [("s3:GetBucketLocation", B)]),
        ("GET", "bkt", None, "uploads", (), [("s3:ListBucketMultipartUploads", B)]),
        ("GET", "bkt", None, "policy", (), [("s3:GetBucketPolicy", B)]),
        ("GET", "bkt", None, "acl", (), [("s3:GetBucketAcl", B)]),
        ("PUT", "bkt", None, "", (), [("s3:CreateBucket", B)]),
        ("PUT", "bkt", None, "acl", (), [("s3:PutBucketAcl", B)]),
        ("DELETE", "bkt", None, "", (), [("s3:DeleteBucket", B)]),
        ("DELETE", "bkt", None, "tagging", (), [("s3:PutBucketTagging", B)]),
        ("POST", "bkt", None, "delete", (), [("s3:DeleteObject", f"{B}/")]),
        ("GET", "bkt", "k", "acl", (), [("s3:GetObjectAcl", f"{B}/k")]),
        ("GET", "bkt", "k", "acl&versionId=1", (), [("s3:GetObjectVersionAcl", f"{B}/k")]),
        ("PUT", "bkt", "k", "acl", (), [("s3:PutObjectAcl", f"{B}/k")]),
        ("GET", "bkt", "k", "tagging", (), [("s3:GetObjectTagging", f"{B}/k")]),
        ("PUT", "bkt", "k", "tagging", (), [("s3:PutObjectTagging", f"{B}/k")]),
        ("DELETE", "bkt", "k", "tagging", (), [("s3:DeleteObjectTagging", f"{B}/k")]),
        ("DELETE", "bkt", "k", "", (), [("s3:DeleteObject", f"{B}/k")]),
        ("DELETE", "bkt", "k", "versionId=9", (), [("s3:DeleteObjectVersion", f"{B}/k")]),
        ("GET", "bkt", "k", "uploadId=u", (), [("s3:ListMultipartUploadParts", f"{B}/k")]),
        ("DELETE", "bkt", "k", "uploadId=u", (), [("s3:AbortMultipartUpload", f"{B}/k")]),
        ("POST", "bkt", "k", "uploadId=u", (), [("s3:PutObject", f"{B}/k")]),
        ("POST", "bkt", "k", "restore", (), [("s3:RestoreObject", f"{B}/k")]),
        ("GET", "bkt", "a%2Fb%20c", "", (), [("s3:GetObject", f"{B}/a/b c")]),
        (
            "PUT",
            "bkt",
            "k",
            "",
            (("x-amz-acl", "public-read"), ("x-amz-tagging", "a=1")),
            [("s3:PutObject", f"{B}/k"), ("s3:PutObjectAcl", f"{B}/k"), ("s3:PutObjectTagging", f"{B}/k")],
        ),
        (
            "PUT",
            "bkt",
            "k",
            "partNumber=2&uploadId=u",
            (("x-amz-copy-source", "src/o%2Bk"),),
            [("s3:PutObject", f"{B}/k"), ("s3:GetObject", "arn:aws:s3:::src/o+k")],
        ),
        ("GET", None, None, "", (), [("s3:ListAllMyBuckets", "*")]),
        ("PATCH", "bkt", "k", "", (), []),
    ],
)
def test_s3_accesses(
    method: str,
    bucket: str | None,
    key: str | None,
    query: str,
    headers: Headers,
    expected: list[tuple[str, str]],
) -> None:
    got = s3_accesses(method, bucket, key, query, headers, region="us-east-1")
    assert [(a.action, a.resource) for a in got] == expected


def test_accesses_partition_and_access_points() -> None:
    assert s3_accesses("GET", "b", "k", "", region="cn-north-1")[0].resource == "arn:aws-cn:s3:::b/k"
    ap = s3_accesses("GET", None, "k", "", region="eu-west-1", access_point=("reports", "111122223333"))
    assert ap[0].resource == "arn:aws:s3:eu-west-1:111122223333:accesspoint/reports/object/k"
    assert ap[0].account == "111122223333"


# --- condition operators ------------------------------------------------------------------------------------

ACCESS = Access("s3:GetObject", "arn:aws:s3:::b/k", "b")


def ctx_with(values: Mapping[str, tuple[str, ...]], absent: tuple[str, ...] = ()) -> RequestContext:
    return RequestContext(values={k.lower(): v for k, v in values.items()}, absent=frozenset(absent))


def cond_result(condition: dict[str, Any], ctx: RequestContext) -> str:
    policy = parse_policy_document(
        {
            "Version": "2012-10-17",
            "Statement": {
                "Sid": "S",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "*",
                "Resource": "*",
                "Condition": condition,
            },
        }
    )
    return evaluate_document(policy, ACCESS, ctx).outcome


V: dict[str, tuple[str, ...]] = {"aws:sourcevpce": ("vpce-1a2b3c4d",)}
NO_V = ctx_with({}, absent=("aws:sourcevpce",))
UNKNOWN_V = ctx_with({})


@pytest.mark.parametrize(
    ("condition", "ctx", "outcome"),
    [
        ({"StringEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}}, ctx_with(V), "deny"),
        ({"StringEquals": {"AWS:SOURCEVPCE": ["x", "vpce-1a2b3c4d"]}}, ctx_with(V), "deny"),  # key case, OR
        ({"StringEquals": {"aws:sourceVpce": "VPCE-1A2B3C4D"}}, ctx_with(V), "none"),  # value case matters
        ({"StringEqualsIgnoreCase": {"aws:sourceVpce": "VPCE-1A2B3C4D"}}, ctx_with(V), "deny"),
        ({"StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"}}, ctx_with(V), "none"),
        ({"StringNotEquals": {"aws:sourceVpce": ["a", "b"]}}, ctx_with(V), "deny"),
        # Missing key: plain operators are false, negated ones true, IfExists true, Null checks presence.
        ({"StringEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"}}, NO_V, "none"),
        ({"StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"}}, NO_V, "deny"),
        ({"StringNotLike": {"aws:sourceVpce": "vpce-*"}}, NO_V, "deny"),
        ({"StringEqualsIfExists": {"aws:sourceVpce": "nope"}}, NO_V, "deny"),
        ({"StringEqualsIfExists": {"aws:sourceVpce": "nope"}}, ctx_with(V), "none"),
        ({"Null": {"aws:sourceVpce": "true"}}, NO_V, "deny"),
        ({"Null": {"aws:sourceVpce": "false"}}, NO_V, "none"),
        ({"Null": {"aws:sourceVpce": "false"}}, ctx_with(V), "deny"),
        ({"ForAnyValue:StringEquals": {"aws:sourceVpce": "x"}}, NO_V, "none"),
        ({"ForAllValues:StringEquals": {"aws:sourceVpce": "x"}}, NO_V, "deny"),
        # Unknown to the proxy: the answer is "maybe", never a certain deny.
        ({"StringNotEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"}}, UNKNOWN_V, "maybe-deny"),
        ({"Null": {"aws:sourceVpce": "true"}}, UNKNOWN_V, "maybe-deny"),
        # Wildcards.
        ({"StringLike": {"aws:sourceVpce": "vpce-1a2b*"}}, ctx_with(V), "deny"),
        ({"StringLike": {"aws:sourceVpce": "vpce-1a2b3c4?"}}, ctx_with(V), "deny"),
        ({"StringLike": {"aws:sourceVpce": "vpce-9*"}}, ctx_with(V), "none"),
        # Keys AND within an operator; operators AND.
        (
            {"StringEquals": {"aws:sourceVpce": "vpce-1a2b3c4d", "aws:SourceVpc": "vpc-1"}},
            ctx_with(V | {"aws:sourcevpc": ("vpc-2",)}),
            "none",
        ),
        (
            {"StringEquals": {"aws:sourceVpce": "vpce-1a2b3c4d"}, "Bool": {"aws:SecureTransport": "false"}},
            ctx_with(V | {"aws:securetransport": ("true",)}),
            "none",
        ),
        ({"Bool": {"aws:SecureTransport": False}}, ctx_with({"aws:securetransport": ("false",)}), "deny"),
        ({"Bool": {"aws:SecureTransport": "true"}}, ctx_with({"aws:securetransport": ("true",)}), "deny"),
        (
            {"IpAddress": {"aws:VpcSourceIp": "10.0.0.0/8"}},
            ctx_with({"aws:vpcsourceip": ("10.1.2.3",)}),
            "deny",
        ),
        (
            {"NotIpAddress": {"aws:VpcSourceIp": "10.0.0.0/8"}},
            ctx_with({"aws:vpcsourceip": ("10.1.2.3",)}),
            "none",
        ),
        ({"NotIpAddress": {"aws:SourceIp": "203.0.113.0/24"}}, ctx_with({}, ("aws:sourceip",)), "deny"),
        ({"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}, ctx_with({}, ("aws:sourceip",)), "none"),
        (
            {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/Admin*"}},
            ctx_with({"aws:principalarn": ("arn:aws:iam::111122223333:role/AdminRole",)}),
            "deny",
        ),
        (  # wildcards do not cross the ARN's colons
            {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*"}},
            ctx_with({"aws:principalarn": ("arn:aws:iam::111122223333:role/AdminRole",)}),
            "none",
        ),
        (
            {"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/Admin"}},
            ctx_with({"aws:principalarn": ("arn:aws:iam::111122223333:role/Dev",)}),
            "deny",
        ),
        ({"NumericLessThan": {"s3:max-keys": "10"}}, ctx_with({"s3:max-keys": ("5",)}), "deny"),
        ({"NumericGreaterThanEquals": {"s3:max-keys": 10}}, ctx_with({"s3:max-keys": ("5",)}), "none"),
        (
            {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}},
            ctx_with({"aws:currenttime": ("2024-05-01T00:00:00Z",)}),
            "deny",
        ),
        (
            {"ForAnyValue:StringEquals": {"s3:RequestObjectTagKeys": ["secret"]}},
            ctx_with({"s3:requestobjecttagkeys": ("a", "secret")}),
            "deny",
        ),
        (
            {"ForAllValues:StringEquals": {"s3:RequestObjectTagKeys": ["a", "b"]}},
            ctx_with({"s3:requestobjecttagkeys": ("a", "secret")}),
            "none",
        ),
    ],
)
def test_condition_operators(condition: dict[str, Any], ctx: RequestContext, outcome: str) -> None:
    assert cond_result(condition, ctx) == outcome


def _ctx(**kw: Any) -> RequestContext:
    base: dict[str, Any] = {"principal": principal_for("AKIDEXAMPLE", {}), "endpoint_id": EP}
    return request_context(**(base | kw))


@pytest.mark.parametrize(
    ("key", "ctx", "expected"),
    [
        ("aws:SourceVpce", _ctx(), ("vpce-1a2b3c4d",)),
        ("aws:sourcevpce", _ctx(endpoint_id=None), False),
        ("aws:SourceVpc", _ctx(), None),
        ("aws:SourceVpc", _ctx(vpc_id="vpc-1"), ("vpc-1",)),
        ("aws:SourceIp", _ctx(), False),  # absent for requests through a VPC endpoint
        ("aws:SourceIp", _ctx(endpoint_id=None), None),
        ("aws:SecureTransport", _ctx(), ("true",)),
        ("aws:PrincipalAccount", _ctx(), None),
        (
            "aws:PrincipalAccount",
            _ctx(principal=principal_for("AK", {"AK": "111122223333"})),
            ("111122223333",),
        ),
        ("aws:PrincipalAccount", _ctx(principal=principal_for(None, {})), False),
        (
            "aws:PrincipalArn",
            _ctx(principal=principal_for("AK", {"AK": "arn:aws:sts::111122223333:assumed-role/Admin/s"})),
            ("arn:aws:iam::111122223333:role/Admin",),
        ),
        ("s3:x-amz-acl", _ctx(), False),
        ("s3:x-amz-acl", _ctx(headers=(("X-Amz-Acl", "private"),)), ("private",)),
        ("aws:CurrentTime", _ctx(now=datetime(2024, 5, 1, tzinfo=UTC)), ("2024-05-01T00:00:00Z",)),
        ("aws:RequestedRegion", _ctx(region="eu-west-1"), ("eu-west-1",)),
        ("aws:PrincipalTag/team", _ctx(), None),
        ("s3:ResourceAccount", _ctx(bucket_accounts={"b": "111122223333"}), ("111122223333",)),
    ],
)
def test_request_context(key: str, ctx: RequestContext, expected: object) -> None:
    assert ctx.lookup(key, ACCESS) == expected


@pytest.mark.parametrize(
    ("principal", "who", "outcome"),
    [
        ("*", principal_for(None, {}), "deny"),
        ({"AWS": "*"}, principal_for("AK", {}), "deny"),
        ({"AWS": "111122223333"}, principal_for("AK", {"AK": "111122223333"}), "deny"),
        ({"AWS": "arn:aws:iam::111122223333:root"}, principal_for("AK", {"AK": "111122223333"}), "deny"),
        ({"AWS": ["444455556666", "111122223333"]}, principal_for("AK", {"AK": "111122223333"}), "deny"),
        ({"AWS": "444455556666"}, principal_for("AK", {"AK": "111122223333"}), "none"),
        ({"AWS": "111122223333"}, principal_for("AK", {}), "maybe-deny"),
        ({"AWS": "111122223333"}, principal_for(None, {}), "none"),
        (
            {"AWS": "arn:aws:iam::111122223333:role/Admin"},
            principal_for("AK", {"AK": "arn:aws:sts::111122223333:assumed-role/Admin/session"}),
            "deny",
        ),
        ({"AWS": "arn:aws:iam::111122223333:user/bob"}, principal_for("AK", {"AK": "444455556666"}), "none"),
        ({"Service": "cloudtrail.amazonaws.com"}, principal_for("AK", {}), "none"),
    ],
)
def test_principals(principal: object, who: Any, outcome: str) -> None:
    policy = parse_policy_document(
        {"Statement": [{"Effect": "Deny", "Principal": principal, "Action": "s3:*", "Resource": "*"}]}
    )
    ctx = request_context(principal=who, endpoint_id=EP)
    assert evaluate_document(policy, ACCESS, ctx).outcome == outcome


def test_not_principal_not_action_not_resource() -> None:
    policy = parse_policy_document(
        {
            "Statement": [
                {
                    "Sid": "AllButAdmins",
                    "Effect": "Deny",
                    "NotPrincipal": {"AWS": "arn:aws:iam::111122223333:user/admin"},
                    "NotAction": ["s3:Get*", "s3:List*"],
                    "NotResource": "arn:aws:s3:::public/*",
                }
            ]
        }
    )
    admin = request_context(
        principal=principal_for("A", {"A": "arn:aws:iam::111122223333:user/admin"}), endpoint_id=EP
    )
    dev = request_context(
        principal=principal_for("D", {"D": "arn:aws:iam::111122223333:user/dev"}), endpoint_id=EP
    )
    put = Access("s3:PutObject", "arn:aws:s3:::b/k", "b")
    assert evaluate_document(policy, put, dev).outcome == "deny"
    assert evaluate_document(policy, put, admin).outcome == "none"
    assert evaluate_document(policy, Access("s3:getobject", "arn:aws:s3:::b/k", "b"), dev).outcome == "none"
    assert (
        evaluate_document(policy, Access("s3:PutObject", "arn:aws:s3:::public/k", "public"), dev).outcome
        == "none"
    )


def test_policy_variables() -> None:
    policy = parse_policy_document(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Home",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::b/home/${aws:PrincipalAccount}/*",
                }
            ],
        }
    )
    known = request_context(principal=principal_for("A", {"A": "111122223333"}), endpoint_id=EP)
    unknown = request_context(principal=principal_for("B", {}), endpoint_id=EP)
    mine = Access("s3:GetObject", "arn:aws:s3:::b/home/111122223333/x", "b")
    theirs = Access("s3:GetObject", "arn:aws:s3:::b/home/444455556666/x", "b")
    assert evaluate_document(policy, mine, known).outcome == "allow"
    assert evaluate_document(policy, theirs, known).outcome == "none"
    assert evaluate_document(policy, mine, unknown).outcome == "maybe-allow"
    # Version 2008-10-17 has no variables: the text is literal.
    statement = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::b/home/${aws:PrincipalAccount}/*",
    }
    legacy = parse_policy_document({"Version": "2008-10-17", "Statement": [statement]})
    assert evaluate_document(legacy, mine, known).outcome == "none"


@pytest.mark.parametrize(
    ("pattern", "prefix", "expected"),
    [
        ("arn:aws:s3:::b/*", "arn:aws:s3:::b/", True),
        ("arn:aws:s3:::*", "arn:aws:s3:::b/", True),
        ("*", "arn:aws:s3:::b/", True),
        ("arn:aws:s3:::b/logs/*", "arn:aws:s3:::b/", None),
        ("arn:aws:s3:::b/?", "arn:aws:s3:::b/", None),
        ("arn:aws:s3:::b", "arn:aws:s3:::b/", False),
        ("arn:aws:s3:::c/*", "arn:aws:s3:::b/", False),
    ],
)
def test_unknown_object_keys(pattern: str, prefix: str, expected: bool | None) -> None:
    assert glob_any_suffix(wild_tokens(pattern), prefix) is expected


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        (
            (
                (
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240501/us-east-1/s3/aws4_request, "
                    "SignedHeaders=host, Signature=abc",
                ),
            ),
            "",
            "AKIDEXAMPLE",
        ),
        ((("authorization", "AWS AKIDV2:c2ln"),), "", "AKIDV2"),
        ((), "X-Amz-Credential=AKIDQ%2F20240501%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=x", "AKIDQ"),
        ((), "AWSAccessKeyId=AKIDV2Q&Signature=x", "AKIDV2Q"),
        ((), "", None),
    ],
)
def test_access_key_of(headers: Headers, query: str, expected: str | None) -> None:
    assert access_key_of(headers, query) == expected


# --- parsing ---------------------------------------------------------------------------------------------

GOOD = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("", "is empty"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a policy document"),
        ({"Version": "2012-10-18", "Statement": [GOOD]}, "Version: must be '2012-10-17'"),
        ({"Version": "2012-10-17"}, "needs a Statement"),
        ({"Statement": []}, "Statement: must not be empty"),
        ({"Statement": [GOOD], "Extra": 1}, "unknown top-level element 'Extra'"),
        ({"Statement": [GOOD | {"Effect": "allow"}]}, "Statement[0].Effect: must be 'Allow' or 'Deny'"),
        ({"Statement": [GOOD | {"Sid": "X", "Effect": "Permit"}]}, "Statement[0](X).Effect"),
        (
            {"Statement": [{k: v for k, v in GOOD.items() if k != "Principal"}]},
            "needs Principal or NotPrincipal",
        ),
        ({"Statement": [GOOD | {"NotAction": "s3:*"}]}, "has both Action and NotAction"),
        ({"Statement": [GOOD | {"Action": "GetObject"}]}, "is not an action like 's3:GetObject'"),
        ({"Statement": [GOOD | {"Principal": {"User": "x"}}]}, "unknown principal type 'User'"),
        ({"Statement": [GOOD | {"Resource": []}]}, "must not be an empty list"),
        ({"Statement": [GOOD | {"Condition": {"StringEqual": {"a": "b"}}}]}, "unknown condition operator"),
        (
            {"Statement": [GOOD | {"Condition": {"ForSomeValues:StringEquals": {"a": "b"}}}]},
            "unknown set qualifier",
        ),
        ({"Statement": [GOOD | {"Condition": {"NullIfExists": {"a": "true"}}}]}, "Null takes neither"),
        ({"Statement": [GOOD | {"Condition": {"Null": {"a": "yes"}}}]}, "Null takes true or false"),
        ({"Statement": [GOOD | {"Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.300"}}}]}, "not an IP"),
        ({"Statement": [GOOD | {"Condition": {"StringEquals": {"a": {"b": "c"}}}}]}, "must be a string"),
        ({"Statement": [GOOD | {"Colour": "red"}]}, "unknown element 'Colour'"),
    ],
)
def test_parse_errors(doc: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_policy_document(doc)
    assert message in str(err.value)


def test_parse_yaml_with_unquoted_version_and_bools() -> None:
    policy = parse_policy_document(
        """
Version: 2012-10-17
Statement:
  - Sid: TLSOnly
    Effect: Deny
    Principal: "*"
    Action: "s3:*"
    Resource: "*"
    Condition: {Bool: {aws:SecureTransport: false}}
"""
    )
    assert policy.version == "2012-10-17"
    assert policy.statements[0].conditions[0].values == ("false",)
    assert parse_policy_document(RESTRICT_TO_BUCKET.encode()).id == "Policy1415115909151"


def test_decide_without_accesses_or_policies() -> None:
    ctx = request_context(principal=principal_for(None, {}), endpoint_id=EP)
    assert decide((), ctx, endpoint_policy=None, bucket_policies={}).outcome == "not-denied"
    d = decide((ACCESS,), ctx, endpoint_policy=None, bucket_policies={})
    assert d.outcome == "not-denied" and not d.denied


# --- properties ------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_names = st.sampled_from(
    [
        "Version",
        "Statement",
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
        "AWS",
        "Service",
        "StringEquals",
        "ForAnyValue:StringLike",
        "NullIfExists",
        "aws:sourceVpce",
        "Null",
        "IpAddress",
        "ArnLike",
        "DateLessThan",
        "NumericEquals",
    ]
)
_values = st.sampled_from(
    [
        "*",
        "Allow",
        "Deny",
        "2012-10-17",
        "s3:*",
        "s3:Get*",
        "arn:aws:s3:::b/*",
        "vpce-1a2b3c4d",
        "true",
        "10.0.0.0/8",
        "111122223333",
        "${aws:username}",
        "${aws:x, 'd'}",
        "arn:aws:iam::*",
        "?",
        "1",
        "2020-01-01",
    ]
)
_policyish = st.recursive(
    _values | st.booleans() | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, _policyish, st.text(max_size=40)))
def test_parse_raises_only_value_error(doc: object) -> None:
    try:
        parse_policy_document(doc)
    except ValueError:
        pass


_statement = st.fixed_dictionaries(
    {
        "Effect": st.sampled_from(["Allow", "Deny"]),
        "Principal": st.sampled_from(
            ["*", {"AWS": "111122223333"}, {"AWS": ["arn:aws:iam::111122223333:root"]}]
        ),
        "Action": st.lists(
            st.sampled_from(["*", "s3:*", "s3:Get*", "s3:PutObject", "s3:List?ucket"]), min_size=1
        ),
        "Resource": st.lists(
            st.sampled_from(["*", "arn:aws:s3:::b", "arn:aws:s3:::b/*", "arn:aws:s3:::b/${aws:userid}/*"]),
            min_size=1,
        ),
    },
    optional={
        "Condition": st.dictionaries(
            st.sampled_from(
                [
                    "StringEquals",
                    "StringNotLike",
                    "ForAllValues:StringEquals",
                    "ForAnyValue:StringNotEquals",
                    "StringEqualsIfExists",
                    "Null",
                    "Bool",
                    "NotIpAddress",
                    "ArnNotLike",
                    "NumericLessThan",
                ]
            ),
            st.dictionaries(
                st.sampled_from(
                    [
                        "aws:sourceVpce",
                        "aws:SourceVpc",
                        "aws:PrincipalAccount",
                        "aws:SourceIp",
                        "aws:SecureTransport",
                        "s3:max-keys",
                        "aws:PrincipalArn",
                        "s3:prefix",
                    ]
                ),
                st.sampled_from(["true", "false", "1", "10.0.0.0/8", "vpce-*", "arn:aws:iam::1:*"]),
                min_size=1,
                max_size=2,
            ),
            max_size=3,
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(
    statements=st.lists(_statement, min_size=1, max_size=4),
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
    key=st.sampled_from([None, "", "k", "a%2Fb", "x?y"]),
    query=st.sampled_from(["", "delete", "uploads", "versionId=1", "prefix=a&max-keys=5", "acl"]),
    akid=st.sampled_from([None, "AK", "UNKNOWN"]),
    endpoint=st.sampled_from([None, EP]),
)
def test_evaluation_never_raises(
    statements: list[dict[str, Any]],
    method: str,
    key: str | None,
    query: str,
    akid: str | None,
    endpoint: str | None,
) -> None:
    try:
        policy: Policy = parse_policy_document({"Version": "2012-10-17", "Statement": statements})
    except ValueError:
        return
    s = PolicySettings(
        mode="enforce",
        endpoint_policies={EP: policy},
        bucket_policies={"b": policy},
        accounts={"AK": "111122223333"},
    )
    d = check(s, method, "b", key, query, endpoint=endpoint, akid=akid)
    assert d.outcome in ("allow", "deny", "implicit-deny", "not-denied", "undetermined")
    if d.denied:
        assert denial_message(d)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab*?/:", max_size=8), st.text(alphabet="ab/:*?", max_size=10))
def test_glob_matches_a_regex_oracle(pattern: str, text: str) -> None:
    import re

    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    expected = re.fullmatch(regex, text, re.DOTALL) is not None
    assert glob_match(wild_tokens(pattern), text) is expected
    # Unknown suffix: True means every non-empty suffix matches, False none; None some.
    verdict = glob_any_suffix(wild_tokens(pattern), text)
    samples = [re.fullmatch(regex, text + s, re.DOTALL) is not None for s in ("a", "b/:", "ab" * 5)]
    if verdict is True:
        assert all(samples)
    elif verdict is False:
        assert not any(samples)
