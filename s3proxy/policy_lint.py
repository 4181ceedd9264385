"""`s3proxy policy lint`: the lock-out traps of AWS's PrivateLink for S3 guide, found before S3 finds them.

# Strategy: each check walks the parsed statements and looks for one known trap; none evaluates requests.
# The traps (https://docs.aws.amazon.com/AmazonS3/latest/userguide/privatelink-interface-endpoints.html and
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/example-bucket-policies-vpc-endpoint.html):
# - a bucket policy restricting aws:sourceVpce to an endpoint the proxy does not use: every request through
#   the proxy is denied (or never allowed);
# - a Deny for everyone on everything with no condition, or only "not from this network", and no escape for
#   administrators: a wrong ID locks everybody out, and only the account root user can delete the policy;
# - a Deny on "not from this endpoint/VPC" blocks the S3 console, whose requests come through no endpoint;
# - aws:SourceIp conditions never match requests through a VPC endpoint (the key is absent there);
# - an endpoint policy with no Allow statement denies everything through the endpoint.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from s3proxy.config import Config
from s3proxy.policy import Condition, Policy, Statement, glob_any_suffix, glob_match, wild_tokens

LintCode = Literal[
    "unknown-endpoint",
    "unknown-vpc",
    "deny-all-no-escape",
    "console-blocked",
    "source-ip-via-endpoint",
    "endpoint-allows-nothing",
]

# Condition keys that identify the caller: a condition on one of them lets administrators escape a Deny.
_PRINCIPAL_KEYS = frozenset(
    {
        "aws:principalarn",
        "aws:principalaccount",
        "aws:userid",
        "aws:username",
        "aws:principalorgid",
        "aws:principalorgpaths",
        "aws:principaltype",
        "aws:principalisawsservice",
        "aws:principalservicename",
        "aws:principalservicenameslist",
    }
)
# Keys about where a request comes from.
_NETWORK_KEYS = frozenset({"aws:sourcevpce", "aws:sourcevpc", "aws:sourceip", "aws:vpcsourceip"})
_ESCAPE_HINT = (
    'add an escape for an administrator role in the same Condition, e.g. "ArnNotLike": '
    '{"aws:PrincipalArn": "arn:aws:iam::ACCOUNT-ID:role/ADMIN-ROLE"}'
)


@dataclass(frozen=True, slots=True)
class LintWarning:
    code: LintCode
    document: str  # "bucket policy of my-bucket" | "VPC endpoint policy of vpce-1a2b3c4d"
    sid: str  # the statement's Sid or Statement[i]; "" for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.document}, statement {self.sid!r}" if self.sid else self.document
        return f"{where}: {self.message} [{self.code}]"


def _is_principal_key(key: str) -> bool:
    k = key.lower()
    return k in _PRINCIPAL_KEYS or k.startswith("aws:principaltag/")


def _has_escape(stmt: Statement) -> bool:
    """Can some caller be exempt from this statement by who they are?"""
    if stmt.not_principal is not None:
        return True
    if stmt.principal is not None and not stmt.principal.wildcard:
        return True
    return any(_is_principal_key(c.key) for c in stmt.conditions)


def _all_actions(stmt: Statement) -> bool:
    return any(a == "*" or a.lower() == "s3:*" for a in stmt.actions)


def _all_resources(stmt: Statement, bucket: str | None) -> bool:
    """Does the statement cover the bucket and every object in it (any bucket for an endpoint policy)?"""
    if stmt.not_resources:
        return False
    name = bucket or "any-bucket"
    for part in ("aws", "aws-cn", "aws-us-gov"):
        base = f"arn:{part}:s3:::{name}"
        covers_bucket = any(glob_match(wild_tokens(r), base) for r in stmt.resources)
        covers_objects = any(glob_any_suffix(wild_tokens(r), base + "/") is True for r in stmt.resources)
        if covers_bucket and covers_objects:
            return True
    return False


def _negated_network(c: Condition) -> bool:
    """True for conditions that hold for requests from *outside* a network (or with the key absent)."""
    return c.key.lower() in _NETWORK_KEYS and c.negated and c.qualifier is None


def _matches_any(c: Condition, candidates: Iterable[str]) -> bool:
    like = c.op in ("StringLike", "StringNotLike")
    fold = c.op in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase")
    for cand in candidates:
        for v in c.values:
            if like and glob_match(wild_tokens(v), cand):
                return True
            if fold and v.casefold() == cand.casefold():
                return True
            if v == cand:
                return True
    return False


def _endpoint_hint(values: Iterable[str], endpoint_ids: Collection[str]) -> str:
    for v in values:
        for eid in endpoint_ids:
            if v.lower().startswith(eid + "-") or (".vpce." in v.lower() and eid in v.lower()):
                return (
                    f"; {v!r} looks like the endpoint's DNS name, but aws:sourceVpce holds the endpoint ID "
                    f"{eid!r}"
                )
    return ""


def _check_network_ids(
    stmt: Statement, doc: str, endpoint_ids: Collection[str], vpc_ids: Collection[str]
) -> list[LintWarning]:
    out: list[LintWarning] = []
    for c in stmt.conditions:
        key = c.key.lower()
        if not c.op.startswith("String") or "${" in "".join(c.values):
            continue
        if key == "aws:sourcevpce" and endpoint_ids and not _matches_any(c, endpoint_ids):
            ids = ", ".join(sorted(endpoint_ids))
            named = ", ".join(c.values)
            if stmt.effect == "Deny" and c.negated:
                effect = "denies every request sent through s3proxy"
            elif stmt.effect == "Allow" and not c.negated:
                effect = "never allows a request sent through s3proxy"
            else:
                effect = "names no endpoint s3proxy uses"
            out.append(
                LintWarning(
                    "unknown-endpoint",
                    doc,
                    stmt.label,
                    f"{effect}: its condition {c.operator} aws:sourceVpce names {named}, but the configured "
                    f"endpoints are {ids}{_endpoint_hint(c.values, endpoint_ids)}",
                )
            )
        elif key == "aws:sourcevpc" and vpc_ids and not _matches_any(c, vpc_ids):
            out.append(
                LintWarning(
                    "unknown-vpc",
                    doc,
                    stmt.label,
                    f"its condition {c.operator} aws:SourceVpc names {', '.join(c.values)}, but the "
                    f"configured endpoints are in {', '.join(sorted(vpc_ids))}",
                )
            )
    return out


def _check_source_ip(stmt: Statement, doc: str) -> list[LintWarning]:
    for c in stmt.conditions:
        if c.key.lower() != "aws:sourceip":
            continue
        if stmt.effect == "Deny" and (c.negated or c.if_exists):
            what = "denies every request through a VPC endpoint"
        elif stmt.effect == "Allow" and not c.negated and not c.if_exists:
            what = "never allows a request through a VPC endpoint"
        else:
            continue
        return [
            LintWarning(
                "source-ip-via-endpoint",
                doc,
                stmt.label,
                f"{what}: aws:SourceIp is not in the request context of requests through a VPC endpoint "
                "(there is no public source address); use aws:sourceVpce, aws:SourceVpc or aws:VpcSourceIp",
            )
        ]
    return []


def _check_bucket_traps(stmt: Statement, doc: str, bucket: str) -> list[LintWarning]:
    if stmt.effect != "Deny" or _has_escape(stmt):
        return []
    out: list[LintWarning] = []
    network_only = all(_negated_network(c) for c in stmt.conditions)
    if _all_actions(stmt) and _all_resources(stmt, bucket) and network_only:
        if not stmt.conditions:
            msg = (
                "denies every S3 action on the bucket to everyone, with no condition: nobody, not even "
                "administrators, can use or fix it; only the account root user can delete the bucket policy"
            )
        else:
            keys = ", ".join(dict.fromkeys(c.key for c in stmt.conditions))
            msg = (
                f"denies every S3 action to everyone unless the request matches {keys}, with no escape for "
                "administrators: one wrong ID locks everybody out, and only the account root user can "
                f"delete the bucket policy; {_ESCAPE_HINT}"
            )
        out.append(LintWarning("deny-all-no-escape", doc, stmt.label, msg))
    vpc_conditions = [c for c in stmt.conditions if _negated_network(c) and c.key.lower() != "aws:sourceip"]
    if vpc_conditions and network_only:
        keys = ", ".join(dict.fromkeys(c.key for c in vpc_conditions))
        actions = ", ".join(stmt.actions or ("everything but " + ", ".join(stmt.not_actions),))
        out.append(
            LintWarning(
                "console-blocked",
                doc,
                stmt.label,
                f"blocks the S3 console for {actions}: console requests do not come through a VPC "
                f"endpoint, so the {keys} condition denies them (AWS's PrivateLink guide warns about this); "
                f"{_ESCAPE_HINT}",
            )
        )
    return out


def lint_policy(
    policy: Policy,
    document: str,
    *,
    bucket: str | None,
    endpoint_ids: Collection[str],
    vpc_ids: Collection[str] = (),
) -> list[LintWarning]:
    """Warnings for one document; `bucket` None means a VPC endpoint policy."""
    out: list[LintWarning] = []
    if bucket is None and not any(s.effect == "Allow" for s in policy.statements):
        out.append(
            LintWarning(
                "endpoint-allows-nothing",
                document,
                "",
                "has no Allow statement, so every request through the endpoint is implicitly denied; an "
                'endpoint policy made only of Deny statements needs an Allow, e.g. {"Effect": "Allow", '
                '"Principal": "*", "Action": "*", "Resource": "*"}',
            )
        )
    for stmt in policy.statements:
        out.extend(_check_network_ids(stmt, document, endpoint_ids, vpc_ids))
        out.extend(_check_source_ip(stmt, document))
        if bucket is not None:
            out.extend(_check_bucket_traps(stmt, document, bucket))
    return out


def lint(
    config: Config,
    bucket_policies: Mapping[str, Policy],
    *,
    endpoint_policies: Mapping[str, Policy] | None = None,
    vpc_ids: Mapping[str, str] | None = None,
) -> list[LintWarning]:
    """All warnings for the configured endpoints' policies (by endpoint ID) and the bucket policies."""
    endpoint_ids = sorted({e.endpoint_id for e in config.endpoints.values()})
    vpcs = sorted(set((vpc_ids or {}).values()))
    out: list[LintWarning] = []
    for eid, policy in sorted((endpoint_policies or {}).items()):
        out.extend(
            lint_policy(policy, f"VPC endpoint policy of {eid}", bucket=None, endpoint_ids=endpoint_ids)
        )
    for bucket, policy in sorted(bucket_policies.items()):
        out.extend(
            lint_policy(
                policy,
                f"bucket policy of {bucket}",
                bucket=bucket,
                endpoint_ids=endpoint_ids,
                vpc_ids=vpcs,
            )
        )
    return out
