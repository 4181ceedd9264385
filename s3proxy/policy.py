"""VPC endpoint policies and S3 bucket policies, evaluated locally for the S3 actions a request maps to.

# Strategy: a policy document is parsed once (`parse_policy_document`) into frozen values with its patterns
# pre-split into wildcard tokens. A request becomes a tuple of `Access` (action + resource ARN + whose bucket
# policy applies; CopyObject is two) and a `RequestContext` (the condition keys S3 would see). Evaluation
# follows the AWS policy evaluation logic (explicit deny wins; an endpoint policy must allow), in three-valued
# logic: the proxy does not know everything S3 knows (the caller's account unless `accounts` maps the access
# key, the bucket owner unless `bucket_accounts` says), so a statement can be true, false or *unknown*. Only a
# certain deny is a deny; "it depends on aws:PrincipalAccount" is reported as `undetermined`, never enforced.
#
# References: IAM policy evaluation logic and condition operators
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html),
# S3 actions per API operation
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-policy-actions.html),
# AWS PrivateLink for S3 (https://docs.aws.amazon.com/AmazonS3/latest/userguide/privatelink-interface-endpoints.html).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Literal, get_args
from urllib.parse import unquote, unquote_plus

import yaml

from s3proxy.model import Headers

Effect = Literal["Allow", "Deny"]
Tristate = bool | None  # True, False, or None = the proxy cannot know
Mode = Literal["off", "warn", "enforce"]
VERSIONS = ("2012-10-17", "2008-10-17")

# ------------------------------------------------------------------------------------- wildcard patterns

STAR, QMARK = 0, 1
Token = str | int  # one literal character, or STAR / QMARK
_VAR_RE = re.compile(r"\$\{([^}]*)\}")


@functools.lru_cache(maxsize=4096)  # policies are few and small; requests reuse the same patterns
def wild_tokens(text: str, *, wild: bool = True) -> tuple[Token, ...]:
    """`*` and `?` as wildcard tokens (or, with wild False, every character literal)."""
    if not wild:
        return tuple(text)
    return tuple(STAR if c == "*" else QMARK if c == "?" else c for c in text)


@functools.lru_cache(maxsize=4096)
def _shape(tokens: tuple[Token, ...]) -> tuple[Literal["literal", "prefix", "glob"], str]:
    """Fast paths: a literal, or a literal prefix and one trailing `*` (`arn:aws:s3:::bucket/*`)."""
    wild = [i for i, tok in enumerate(tokens) if not isinstance(tok, str)]
    if not wild:
        return "literal", "".join(t for t in tokens if isinstance(t, str))
    if wild == [len(tokens) - 1] and tokens[-1] == STAR:
        return "prefix", "".join(t for t in tokens[:-1] if isinstance(t, str))
    return "glob", ""


def glob_match(tokens: Sequence[Token], text: str) -> bool:
    """Wildcard match (`*` any run, `?` one character) by greedy backtracking: linear in practice."""
    shape, literal = _shape(tuple(tokens))
    if shape == "literal":
        return text == literal
    if shape == "prefix":
        return text.startswith(literal)
    n, tl = len(tokens), len(text)
    p = t = 0
    star_p, star_t = -1, 0
    while t < tl:
        tok = tokens[p] if p < n else None
        if tok == QMARK or tok == text[t]:
            p, t = p + 1, t + 1
        elif tok == STAR:
            star_p, star_t = p, t
            p += 1
        elif star_p >= 0:
            p, star_t = star_p + 1, star_t + 1
            t = star_t
        else:
            return False
    while p < n and tokens[p] == STAR:
        p += 1
    return p == n


def glob_any_suffix(tokens: Sequence[Token], prefix: str) -> Tristate:
    """Does the pattern match `prefix + X` for every non-empty X (True), for none (False), or for some (None)?

    Used when an object key is not known (DeleteObjects, POST form uploads): a statement for `bucket/*`
    certainly covers it, one for `bucket/logs/*` may.
    """

    def closure(states: set[int]) -> set[int]:
        out = set(states)
        for p in sorted(states):
            while p < len(tokens) and tokens[p] == STAR:
                p += 1
                out.add(p)
        return out

    states = closure({0})
    for ch in prefix:
        nxt: set[int] = set()
        for p in states:
            if p < len(tokens):
                tok = tokens[p]
                if tok == STAR:
                    nxt.add(p)
                elif tok == QMARK or tok == ch:
                    nxt.add(p + 1)
        states = closure(nxt)
        if not states:
            return False
    if any(p < len(tokens) and all(t == STAR for t in tokens[p:]) for p in states):
        return True
    return None if any(p < len(tokens) for p in states) else False


# ------------------------------------------------------------------------------------------- documents

PrincipalKind = Literal["AWS", "Service", "Federated", "CanonicalUser"]


@dataclass(frozen=True, slots=True)
class PrincipalSpec:
    """`"*"` (wildcard) or `{"AWS": [...], "Service": [...], ...}`."""

    wildcard: bool = False
    entries: tuple[tuple[PrincipalKind, str], ...] = ()


StringOp = Literal[
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "Bool",
    "BinaryEquals",
    "IpAddress",
    "NotIpAddress",
    "ArnEquals",
    "ArnNotEquals",
    "ArnLike",
    "ArnNotLike",
    "Null",
]
_OPERATORS: dict[str, StringOp] = {op.lower(): op for op in get_args(StringOp)}
# Operators that are true when the key is not in the request context (IAM: "If the policy condition
# requires that the key is not matched, such as StringNotLike or ArnNotLike, ... the condition is true").
NEGATED_OPS = frozenset(
    {
        "StringNotEquals",
        "StringNotEqualsIgnoreCase",
        "StringNotLike",
        "NumericNotEquals",
        "DateNotEquals",
        "NotIpAddress",
        "ArnNotEquals",
        "ArnNotLike",
    }
)
Qualifier = Literal["ForAnyValue", "ForAllValues"] | None


@dataclass(frozen=True, slots=True)
class Condition:
    """One key under one operator: `{"StringNotEquals": {"aws:sourceVpce": ["vpce-1a2b3c4d"]}}`."""

    operator: str  # as written, e.g. "ForAnyValue:StringLikeIfExists"
    op: StringOp
    key: str  # as written; matched case-insensitively
    values: tuple[str, ...]
    qualifier: Qualifier = None
    if_exists: bool = False

    @property
    def negated(self) -> bool:
        return self.op in NEGATED_OPS


@dataclass(frozen=True, slots=True)
class Statement:
    index: int  # position in the document's Statement list (0-based)
    sid: str
    effect: Effect
    principal: PrincipalSpec | None = None
    not_principal: PrincipalSpec | None = None
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    not_resources: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()

    @property
    def label(self) -> str:
        """The Sid, or `Statement[i]` for a statement without one."""
        return self.sid or f"Statement[{self.index}]"


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    statements: tuple[Statement, ...]
    id: str = ""

    @property
    def variables(self) -> bool:
        """Policy variables (`${aws:username}`) are only substituted in version 2012-10-17."""
        return self.version == "2012-10-17"


_TOP_KEYS = ("Version", "Id", "Statement")
_STATEMENT_KEYS = (
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
)
_ACTION_RE = re.compile(r"^[A-Za-z0-9*?-]+:[A-Za-z0-9*?-]+$")


def _scalar(value: object, where: str) -> str:
    """A policy value as text. JSON allows `true`/numbers in conditions; YAML also dates."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    raise ValueError(f"{where}: must be a string or a list of strings, not {type(value).__name__}")


def _strings(value: object, where: str, *, allow_scalars: bool = False) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"{where}: must not be an empty list")
    out: list[str] = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]" if isinstance(value, list) else where
        if allow_scalars:
            out.append(_scalar(item, w))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise ValueError(f"{w}: must be a string, not {type(item).__name__}")
    return tuple(out)


def _principal(value: object, where: str) -> PrincipalSpec:
    if value == "*":
        return PrincipalSpec(wildcard=True)
    if not isinstance(value, dict):
        raise ValueError(f'{where}: must be "*" or a mapping like {{"AWS": "111122223333"}}')
    entries: list[tuple[PrincipalKind, str]] = []
    kinds: tuple[PrincipalKind, ...] = ("AWS", "Service", "Federated", "CanonicalUser")
    for kind, ids in value.items():
        if kind not in kinds:
            raise ValueError(f"{where}: unknown principal type {kind!r}; known: {', '.join(kinds)}")
        for v in _strings(ids, f"{where}.{kind}"):
            if kind == "AWS" and v == "*":
                return PrincipalSpec(wildcard=True)
            entries.append((kind, v))
    if not entries:
        raise ValueError(f"{where}: names no principal")
    return PrincipalSpec(entries=tuple(entries))


def _condition_values(op: StringOp, values: tuple[str, ...], where: str) -> None:
    """Refuse values the operator can never match, so a typo is an error rather than a silent no-op."""
    for v in values:
        if op == "Null" or op == "Bool":
            if "${" not in v and v.lower() not in ("true", "false"):
                raise ValueError(f"{where}: {op} takes true or false, not {v!r}")
        elif op in ("IpAddress", "NotIpAddress"):
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ValueError(f"{where}: {v!r} is not an IP address or CIDR network") from None
        elif op.startswith("Numeric") and "${" not in v and _number(v) is None:
            raise ValueError(f"{where}: {v!r} is not a number")
        elif op.startswith("Date") and "${" not in v and _date(v) is None:
            raise ValueError(f"{where}: {v!r} is not a date (ISO 8601 or epoch seconds)")


def _conditions(value: object, where: str) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a mapping of condition operators")
    out: list[Condition] = []
    for operator, block in value.items():
        w = f"{where}.{operator}"
        if not isinstance(operator, str):
            raise ValueError(f"{where}: operator {operator!r} must be a string")
        name = operator
        qualifier: Qualifier = None
        if ":" in name:
            prefix, _, name = name.partition(":")
            if prefix.lower() == "foranyvalue":
                qualifier = "ForAnyValue"
            elif prefix.lower() == "forallvalues":
                qualifier = "ForAllValues"
            else:
                raise ValueError(f"{w}: unknown set qualifier {prefix!r} (ForAnyValue or ForAllValues)")
        if_exists = name.lower().endswith("ifexists")
        if if_exists:
            name = name[: -len("IfExists")]
        op = _OPERATORS.get(name.lower())
        if op is None:
            raise ValueError(f"{w}: unknown condition operator {name!r}")
        if op == "Null" and (if_exists or qualifier):
            raise ValueError(f"{w}: Null takes neither IfExists nor a set qualifier")
        if not isinstance(block, dict) or not block:
            raise ValueError(f"{w}: must map condition keys to values")
        for key, raw in block.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{w}: condition key {key!r} must be a non-empty string")
            values = _strings(raw, f"{w}.{key}", allow_scalars=True)
            _condition_values(op, values, f"{w}.{key}")
            out.append(Condition(operator, op, key, values, qualifier, if_exists))
    return tuple(out)


def _statement(value: object, index: int, where: str) -> Statement:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a mapping")
    for k in value:
        if k not in _STATEMENT_KEYS:
            raise ValueError(f"{where}: unknown element {k!r}; known: {', '.join(_STATEMENT_KEYS)}")
    sid = value.get("Sid", "")
    if not isinstance(sid, str):
        raise ValueError(f"{where}.Sid: must be a string")
    w = f"{where}({sid})" if sid else where
    effect = value.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise ValueError(f"{w}.Effect: must be 'Allow' or 'Deny' (case matters), not {effect!r}")

    def one_of(a: str, b: str, *, required: bool) -> tuple[str, object] | None:
        if a in value and b in value:
            raise ValueError(f"{w}: has both {a} and {b}; use one")
        for k in (a, b):
            if k in value:
                return k, value[k]
        if required:
            raise ValueError(f"{w}: needs {a} or {b}")
        return None

    pr = one_of("Principal", "NotPrincipal", required=True)
    assert pr is not None
    spec = _principal(pr[1], f"{w}.{pr[0]}")
    act = one_of("Action", "NotAction", required=True)
    assert act is not None
    actions = _strings(act[1], f"{w}.{act[0]}")
    for a in actions:
        if a != "*" and not _ACTION_RE.match(a):
            raise ValueError(f"{w}.{act[0]}: {a!r} is not an action like 's3:GetObject'")
    res = one_of("Resource", "NotResource", required=True)
    assert res is not None
    resources = _strings(res[1], f"{w}.{res[0]}")
    conditions = _conditions(value["Condition"], f"{w}.Condition") if "Condition" in value else ()
    return Statement(
        index=index,
        sid=sid,
        effect=effect,
        principal=spec if pr[0] == "Principal" else None,
        not_principal=spec if pr[0] == "NotPrincipal" else None,
        actions=actions if act[0] == "Action" else (),
        not_actions=actions if act[0] == "NotAction" else (),
        resources=resources if res[0] == "Resource" else (),
        not_resources=resources if res[0] == "NotResource" else (),
        conditions=conditions,
    )


def _load_text(text: str) -> object:
    stripped = text.strip()
    if not stripped:
        raise ValueError("is empty")
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as e:
            raise ValueError(f"is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    try:
        return yaml.safe_load(stripped)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1} column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"is neither JSON nor valid YAML{where}") from None
    except (RecursionError, ValueError, TypeError, OverflowError):
        raise ValueError("is neither JSON nor valid YAML") from None


def parse_policy_document(doc: object) -> Policy:
    """A policy document (a mapping, or its JSON/YAML text) -> `Policy`.

    Raises ValueError naming the element (`Statement[1](Sid).Effect: ...`); callers prefix the key path.
    Endpoint and bucket policies are resource policies: every statement needs Principal (or NotPrincipal),
    Action (or NotAction) and Resource (or NotResource).
    """
    if isinstance(doc, bytes):
        try:
            doc = doc.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("is not UTF-8 text") from None
    if isinstance(doc, str):
        doc = _load_text(doc)
    if not isinstance(doc, dict):
        raise ValueError("must be a policy document: a mapping with Version and Statement")
    for k in doc:
        if k not in _TOP_KEYS:
            raise ValueError(f"unknown top-level element {k!r}; known: {', '.join(_TOP_KEYS)}")
    version = doc.get("Version", "2008-10-17")  # AWS's default when Version is left out
    if isinstance(version, date):  # unquoted in YAML
        version = version.isoformat()
    if version not in VERSIONS:
        raise ValueError(f"Version: must be '2012-10-17' (or the legacy '2008-10-17'), not {version!r}")
    pid = doc.get("Id", "")
    if not isinstance(pid, str):
        raise ValueError("Id: must be a string")
    if "Statement" not in doc:
        raise ValueError("needs a Statement")
    raw = doc["Statement"]
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ValueError("Statement: must not be empty")
    statements = tuple(
        _statement(s, i, f"Statement[{i}]" if isinstance(raw, list) else "Statement")
        for i, s in enumerate(items)
    )
    return Policy(version, statements, pid)


# -------------------------------------------------------------------------------------- request to actions


@dataclass(frozen=True, slots=True)
class Access:
    """One action S3 authorizes for a request, on one resource.

    `resource` is the ARN; for an object whose key is not known before the body is read (DeleteObjects,
    POST form uploads) it is the bucket ARN + "/" and `key_known` is False.
    """

    action: str
    resource: str
    bucket: str | None = None  # whose bucket policy applies; None for ListAllMyBuckets and access points
    key_known: bool = True
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()  # per-action condition keys (s3:prefix, ...)
    account: str | None = None  # resource account when the request itself names it (access points)


def partition_of(region: str | None) -> str:
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def parse_query(query: str) -> dict[str, str]:
    """Query parameters, decoded (first value wins). S3 sub-resources are the parameter names."""
    out: dict[str, str] = {}
    for part in query.split("&") if query else ():
        name, _, value = part.partition("=")
        out.setdefault(unquote_plus(name), unquote_plus(value))
    return out


# Sub-resource -> action, for bucket-level requests (key None or empty). First match in order wins.
_BUCKET_GET: tuple[tuple[str, str], ...] = (
    ("acl", "GetBucketAcl"),
    ("policyStatus", "GetBucketPolicyStatus"),
    ("policy", "GetBucketPolicy"),
    ("location", "GetBucketLocation"),
    ("versioning", "GetBucketVersioning"),
    ("versions", "ListBucketVersions"),
    ("uploads", "ListBucketMultipartUploads"),
    ("tagging", "GetBucketTagging"),
    ("cors", "GetBucketCORS"),
    ("lifecycle", "GetLifecycleConfiguration"),
    ("website", "GetBucketWebsite"),
    ("logging", "GetBucketLogging"),
    ("notification", "GetBucketNotification"),
    ("replication", "GetReplicationConfiguration"),
    ("encryption", "GetEncryptionConfiguration"),
    ("requestPayment", "GetBucketRequestPayment"),
    ("object-lock", "GetBucketObjectLockConfiguration"),
    ("publicAccessBlock", "GetBucketPublicAccessBlock"),
    ("ownershipControls", "GetBucketOwnershipControls"),
    ("accelerate", "GetAccelerateConfiguration"),
    ("analytics", "GetAnalyticsConfiguration"),
    ("inventory", "GetInventoryConfiguration"),
    ("metrics", "GetMetricsConfiguration"),
    ("intelligent-tiering", "GetIntelligentTieringConfiguration"),
)
_BUCKET_PUT: tuple[tuple[str, str], ...] = (
    ("acl", "PutBucketAcl"),
    ("policy", "PutBucketPolicy"),
    ("versioning", "PutBucketVersioning"),
    ("tagging", "PutBucketTagging"),
    ("cors", "PutBucketCORS"),
    ("lifecycle", "PutLifecycleConfiguration"),
    ("website", "PutBucketWebsite"),
    ("logging", "PutBucketLogging"),
    ("notification", "PutBucketNotification"),
    ("replication", "PutReplicationConfiguration"),
    ("encryption", "PutEncryptionConfiguration"),
    ("requestPayment", "PutBucketRequestPayment"),
    ("object-lock", "PutBucketObjectLockConfiguration"),
    ("publicAccessBlock", "PutBucketPublicAccessBlock"),
    ("ownershipControls", "PutBucketOwnershipControls"),
    ("accelerate", "PutAccelerateConfiguration"),
    ("analytics", "PutAnalyticsConfiguration"),
    ("inventory", "PutInventoryConfiguration"),
    ("metrics", "PutMetricsConfiguration"),
    ("intelligent-tiering", "PutIntelligentTieringConfiguration"),
)
# DELETE on a bucket sub-resource mostly needs the Put* permission (S3 has no separate Delete* action).
_BUCKET_DELETE: tuple[tuple[str, str], ...] = (
    ("policy", "DeleteBucketPolicy"),
    ("website", "DeleteBucketWebsite"),
    ("tagging", "PutBucketTagging"),
    ("cors", "PutBucketCORS"),
    ("lifecycle", "PutLifecycleConfiguration"),
    ("encryption", "PutEncryptionConfiguration"),
    ("replication", "PutReplicationConfiguration"),
    ("publicAccessBlock", "PutBucketPublicAccessBlock"),
    ("ownershipControls", "PutBucketOwnershipControls"),
    ("analytics", "PutAnalyticsConfiguration"),
    ("inventory", "PutInventoryConfiguration"),
    ("metrics", "PutMetricsConfiguration"),
    ("intelligent-tiering", "PutIntelligentTieringConfiguration"),
)


def _first(table: tuple[tuple[str, str], ...], q: Mapping[str, str], default: str) -> str:
    for sub, action in table:
        if sub in q:
            return action
    return default


def _header(headers: Headers, name: str) -> str | None:
    lname = name.lower()
    return next((v for k, v in headers if k.lower() == lname), None)


def _copy_source(value: str, partition: str) -> tuple[str, str | None]:
    """`x-amz-copy-source` (`/bucket/key?versionId=v`, URL-encoded) -> (resource ARN, bucket)."""
    src = unquote(value.partition("?")[0]).lstrip("/")
    if src.startswith("arn:"):
        return src, None  # an access point ARN names the resource itself
    bucket, _, key = src.partition("/")
    return f"arn:{partition}:s3:::{bucket}/{key}", bucket


def s3_accesses(
    method: str,
    bucket: str | None,
    key: str | None,
    query: str,
    headers: Headers = (),
    *,
    region: str | None = None,
    access_point: tuple[str, str] | None = None,
) -> tuple[Access, ...]:
    """The S3 actions and resources one request is authorized for.

    `key` is raw (percent-encoded as sent); None or "" is a bucket-level request; `bucket` None with no
    access point is ListAllMyBuckets. `access_point` is (name, account) for `NAME-ACCOUNT.s3-accesspoint`.
    Returns () for requests that map to no S3 action the proxy knows. Never raises.
    """
    m = method.upper()
    q = parse_query(query)
    part = partition_of(region)
    if access_point is not None:
        name, account = access_point
        base = f"arn:{part}:s3:{region or 'us-east-1'}:{account}:accesspoint/{name}"
        obj = f"{base}/object/{unquote(key)}" if key else None
        return _accesses(m, q, headers, part, base, obj, None, account)
    if not bucket:
        return (Access("s3:ListAllMyBuckets", "*"),) if m in ("GET", "HEAD") else ()
    base = f"arn:{part}:s3:::{bucket}"
    obj = f"{base}/{unquote(key)}" if key else None
    return _accesses(m, q, headers, part, base, obj, bucket, None)


def _accesses(
    m: str,
    q: Mapping[str, str],
    headers: Headers,
    part: str,
    base: str,
    obj: str | None,
    bucket: str | None,
    account: str | None,
) -> tuple[Access, ...]:
    def a(
        action: str, resource: str, values: Mapping[str, str] | None = None, *, key_known: bool = True
    ) -> Access:
        vals = tuple((k, (v,)) for k, v in (values or {}).items())
        return Access(f"s3:{action}", resource, bucket, key_known, vals, account)

    version = q.get("versionId")
    ver = {"s3:VersionId": version} if version is not None else {}
    if obj is None:
        if m in ("GET", "HEAD"):
            if m == "HEAD":
                return (a("ListBucket", base),)
            action = _first(_BUCKET_GET, q, "ListBucket")
            if action in ("ListBucket", "ListBucketVersions"):
                listing = {f"s3:{k}": q[k] for k in ("prefix", "delimiter", "max-keys") if k in q}
                return (a(action, base, listing),)
            return (a(action, base),)
        if m == "PUT":
            return (a(_first(_BUCKET_PUT, q, "CreateBucket"), base),)
        if m == "DELETE":
            return (a(_first(_BUCKET_DELETE, q, "DeleteBucket"), base),)
        if m == "POST":
            if "delete" in q:  # DeleteObjects: one s3:DeleteObject per key in the body
                return (a("DeleteObject", base + "/", key_known=False),)
            # Browser-form POST upload: the key is a form field in the body.
            return (a("PutObject", base + "/", key_known=False),)
        return ()
    if m in ("GET", "HEAD"):
        if "uploadId" in q:
            return (a("ListMultipartUploadParts", obj),)
        table: tuple[tuple[str, str, str], ...] = (
            ("acl", "GetObjectAcl", "GetObjectVersionAcl"),
            ("tagging", "GetObjectTagging", "GetObjectVersionTagging"),
            ("retention", "GetObjectRetention", "GetObjectRetention"),
            ("legal-hold", "GetObjectLegalHold", "GetObjectLegalHold"),
            ("attributes", "GetObjectAttributes", "GetObjectVersionAttributes"),
            ("torrent", "GetObjectTorrent", "GetObjectVersionTorrent"),
        )
        for sub, plain, versioned in table:
            if sub in q:
                return (a(versioned if version is not None else plain, obj, ver),)
        return (a("GetObjectVersion" if version is not None else "GetObject", obj, ver),)
    if m == "PUT":
        for sub, plain, versioned in (
            ("acl", "PutObjectAcl", "PutObjectVersionAcl"),
            ("tagging", "PutObjectTagging", "PutObjectVersionTagging"),
            ("retention", "PutObjectRetention", "PutObjectRetention"),
            ("legal-hold", "PutObjectLegalHold", "PutObjectLegalHold"),
        ):
            if sub in q:
                return (a(versioned if version is not None else plain, obj, ver),)
        out = [a("PutObject", obj)]
        source = _header(headers, "x-amz-copy-source")
        if source:  # CopyObject / UploadPartCopy: read permission on the source too
            src_arn, src_bucket = _copy_source(source, part)
            src_ver = parse_query(source.partition("?")[2]).get("versionId")
            action = "s3:GetObjectVersion" if src_ver is not None else "s3:GetObject"
            vals = (("s3:VersionId", (src_ver,)),) if src_ver is not None else ()
            out.append(Access(action, src_arn, src_bucket, True, vals))
        if "uploadId" not in q:  # headers S3 checks on PutObject / CopyObject / CreateMultipartUpload
            if any(_header(headers, h) is not None for h in _ACL_HEADERS):
                out.append(a("PutObjectAcl", obj))
            if _header(headers, "x-amz-tagging") is not None:
                out.append(a("PutObjectTagging", obj))
            if _header(headers, "x-amz-object-lock-mode") is not None:
                out.append(a("PutObjectRetention", obj))
            if _header(headers, "x-amz-object-lock-legal-hold") is not None:
                out.append(a("PutObjectLegalHold", obj))
        return tuple(out)
    if m == "DELETE":
        if "uploadId" in q:
            return (a("AbortMultipartUpload", obj),)
        if "tagging" in q:
            return (
                a("DeleteObjectVersionTagging" if version is not None else "DeleteObjectTagging", obj, ver),
            )
        return (a("DeleteObjectVersion" if version is not None else "DeleteObject", obj, ver),)
    if m == "POST":
        if "restore" in q:
            return (a("RestoreObject", obj),)
        if "select" in q:
            return (a("GetObject", obj),)
        # CreateMultipartUpload (?uploads) and CompleteMultipartUpload (?uploadId) need s3:PutObject.
        out = [a("PutObject", obj)]
        if "uploads" in q:
            if any(_header(headers, h) is not None for h in _ACL_HEADERS):
                out.append(a("PutObjectAcl", obj))
            if _header(headers, "x-amz-tagging") is not None:
                out.append(a("PutObjectTagging", obj))
        return tuple(out)
    return ()


_ACL_HEADERS = (
    "x-amz-acl",
    "x-amz-grant-read",
    "x-amz-grant-write",
    "x-amz-grant-read-acp",
    "x-amz-grant-write-acp",
    "x-amz-grant-full-control",
)

# ----------------------------------------------------------------------------------------- request context


@dataclass(frozen=True, slots=True)
class Principal:
    """Who signed the request, as far as the proxy knows."""

    anonymous: bool = False
    account: str | None = None  # None: not known
    arn: str | None = None
    access_key_id: str | None = None


_ARN_ACCOUNT_RE = re.compile(r"^arn:[a-z-]+:(?:iam|sts)::(\d{12}):")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/")


def principal_for(access_key_id: str | None, accounts: Mapping[str, str]) -> Principal:
    """The principal for an access key; `accounts` maps access key IDs to an account ID or a principal ARN.

    None means the request carries no credentials: S3 treats it as anonymous.
    """
    if access_key_id is None:
        return Principal(anonymous=True)
    who = accounts.get(access_key_id)
    if who is None:
        return Principal(access_key_id=access_key_id)
    if _ACCOUNT_RE.match(who):
        return Principal(account=who, access_key_id=access_key_id)
    m = _ARN_ACCOUNT_RE.match(who)
    return Principal(account=m.group(1) if m else None, arn=who, access_key_id=access_key_id)


def access_key_of(headers: Headers, query: str) -> str | None:
    """The access key ID a request is signed with (SigV4/SigV2 header or presigned query), or None."""
    auth = _header(headers, "authorization")
    if auth:
        m = _CREDENTIAL_RE.search(auth)
        if m:
            return m.group(1)
        if auth.startswith("AWS ") and ":" in auth:
            return auth[4:].split(":", 1)[0].strip() or None
    q = parse_query(query)
    cred = q.get("X-Amz-Credential")
    if cred:
        return cred.split("/", 1)[0] or None
    return q.get("AWSAccessKeyId") or None


# Request headers S3 exposes as condition keys (present in the context only when the header is sent).
_HEADER_CONDITION_KEYS = {
    h: f"s3:{h}"
    for h in (
        *_ACL_HEADERS,
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-customer-algorithm",
        "x-amz-metadata-directive",
        "x-amz-storage-class",
        "x-amz-content-sha256",
        "x-amz-website-redirect-location",
        "x-amz-object-ownership",
    )
} | {
    "x-amz-object-lock-mode": "s3:object-lock-mode",
    "x-amz-object-lock-retain-until-date": "s3:object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold": "s3:object-lock-legal-hold",
    "user-agent": "aws:UserAgent",
    "referer": "aws:Referer",
}
# Keys S3 never has for a request a client signs through an interface endpoint: aws:SourceIp is absent for
# requests through a VPC endpoint (use aws:VpcSourceIp), the aws:Source* service keys exist only for
# service principals, aws:CalledVia only for calls AWS services make on the caller's behalf.
_ABSENT_VIA_ENDPOINT = frozenset(
    {
        "aws:sourceip",
        "aws:sourcearn",
        "aws:sourceaccount",
        "aws:sourceowner",
        "aws:sourceorgid",
        "aws:sourceorgpaths",
        "aws:calledvia",
        "aws:calledviafirst",
        "aws:calledvialast",
    }
)
_PRINCIPAL_KEYS = frozenset(
    {
        "aws:principalaccount",
        "aws:principalarn",
        "aws:principalorgid",
        "aws:principalorgpaths",
        "aws:principaltype",
        "aws:userid",
        "aws:username",
        "aws:principalservicename",
        "aws:principalservicenameslist",
    }
)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The condition keys of one request: known values, keys known to be absent; every other key unknown.

    Key names are lower-cased (IAM condition key names are case-insensitive).
    """

    principal: Principal = Principal()
    values: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    absent: frozenset[str] = frozenset()
    absent_prefixes: tuple[str, ...] = ()  # e.g. "aws:principaltag/" for anonymous requests
    resource_accounts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def lookup(self, key: str, access: Access | None = None) -> tuple[str, ...] | Literal[False] | None:
        """Values (present), False (absent) or None (unknown to the proxy)."""
        k = key.lower()
        if access is not None:
            for name, vals in access.values:
                if name.lower() == k:
                    return vals
            if k in ("aws:resourceaccount", "s3:resourceaccount"):
                acct = access.account or (
                    self.resource_accounts.get(access.bucket) if access.bucket else None
                )
                return (acct,) if acct else None
        if k in self.values:
            return self.values[k]
        if access is not None and k in ("s3:prefix", "s3:delimiter", "s3:max-keys", "s3:versionid"):
            return False  # per-action keys: present only when the request has them (set above)
        if k in self.absent or any(k.startswith(p) for p in self.absent_prefixes):
            return False
        return None


def request_context(
    *,
    principal: Principal,
    endpoint_id: str | None,
    vpc_id: str | None = None,
    region: str | None = None,
    headers: Headers = (),
    query: str = "",
    now: datetime | None = None,
    bucket_accounts: Mapping[str, str] | None = None,
    access_point_account: str | None = None,
) -> RequestContext:
    """The context S3 would evaluate for a request the proxy sends through `endpoint_id`.

    `endpoint_id` None: the request goes to the public S3 name (passthrough), so the VPC keys are absent.
    `vpc_id` None with an endpoint: aws:SourceVpc exists but the proxy does not know it.
    """
    values: dict[str, tuple[str, ...]] = {
        "aws:securetransport": ("true",),  # the proxy always speaks TLS upstream
        "aws:viaawsservice": ("false",),
        "aws:principalisawsservice": ("false",),
    }
    absent: set[str] = set()
    absent_prefixes: list[str] = []
    if endpoint_id is not None:
        values["aws:sourcevpce"] = (endpoint_id,)
        if vpc_id:
            values["aws:sourcevpc"] = (vpc_id,)
        absent |= _ABSENT_VIA_ENDPOINT
    else:
        absent |= {"aws:sourcevpce", "aws:sourcevpc", "aws:vpcsourceip"}
    if region:
        values["aws:requestedregion"] = (region,)
    if now is not None:
        t = now if now.tzinfo else now.replace(tzinfo=UTC)
        values["aws:currenttime"] = (t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),)
        values["aws:epochtime"] = (str(int(t.timestamp())),)
    if principal.anonymous:
        absent |= _PRINCIPAL_KEYS
        absent_prefixes.append("aws:principaltag/")
        absent |= {"s3:signatureversion", "s3:authtype", "s3:signatureage"}
    else:
        if principal.account:
            values["aws:principalaccount"] = (principal.account,)
        if principal.arn:
            values["aws:principalarn"] = (_role_of(principal.arn),)
        auth = _header(headers, "authorization")
        if auth is not None:
            values["s3:authtype"] = ("REST-HEADER",)
            values["s3:signatureversion"] = ("AWS4-HMAC-SHA256" if auth.startswith("AWS4-") else "AWS",)
            absent.add("s3:signatureage")
        elif query:
            values["s3:authtype"] = ("REST-QUERY-STRING",)
            v4 = "X-Amz-Credential" in parse_query(query)
            values["s3:signatureversion"] = ("AWS4-HMAC-SHA256" if v4 else "AWS",)
    lowered = {k.lower(): v for k, v in headers}
    for h, key in _HEADER_CONDITION_KEYS.items():
        if h in lowered:
            values[key.lower()] = (lowered[h],)
        else:
            absent.add(key.lower())
    source = lowered.get("x-amz-copy-source")
    if source is not None:
        values["s3:x-amz-copy-source"] = (unquote(source.partition("?")[0]).lstrip("/"),)
    else:
        absent.add("s3:x-amz-copy-source")
    tagging = lowered.get("x-amz-tagging")
    if tagging is not None:
        tags = parse_query(tagging)
        values["s3:requestobjecttagkeys"] = tuple(tags)
        for tk, tv in tags.items():
            values[f"s3:requestobjecttag/{tk.lower()}"] = (tv,)
    absent_prefixes.append("s3:requestobjecttag")  # only the tags sent exist (set above)
    if access_point_account is not None:
        values["s3:dataaccesspointaccount"] = (access_point_account,)
    else:
        absent |= {"s3:dataaccesspointaccount", "s3:dataaccesspointarn", "s3:accesspointnetworkorigin"}
    return RequestContext(
        principal=principal,
        values=MappingProxyType(values),
        absent=frozenset(absent),
        absent_prefixes=tuple(absent_prefixes),
        resource_accounts=MappingProxyType(dict(bucket_accounts or {})),
    )


def _role_of(arn: str) -> str:
    """aws:PrincipalArn of a role session is the role's ARN, not the session's."""
    m = re.match(r"^arn:([a-z-]+):sts::(\d{12}):assumed-role/([^/]+)/", arn)
    return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}" if m else arn


# ---------------------------------------------------------------------------------------------- evaluation


def _and(results: Iterable[Tristate]) -> Tristate:
    unknown = False
    for r in results:
        if r is False:
            return False
        if r is None:
            unknown = True
    return None if unknown else True


def _or(results: Iterable[Tristate]) -> Tristate:
    unknown = False
    for r in results:
        if r is True:
            return True
        if r is None:
            unknown = True
    return None if unknown else False


def _not(r: Tristate) -> Tristate:
    return None if r is None else not r


class _Unknown(Exception):
    """A policy variable names a key whose value the proxy does not know."""


def _render(
    text: str, policy: Policy, ctx: RequestContext, access: Access, wild: bool
) -> tuple[Token, ...] | None:
    """Pattern tokens with policy variables filled in; None if a variable's key is absent (no match).

    Raises _Unknown if a variable's key is unknown. Substituted values are literal, never wildcards.
    """
    if not policy.variables or "${" not in text:
        return wild_tokens(text, wild=wild)
    out: list[Token] = []
    pos = 0
    for m in _VAR_RE.finditer(text):
        out.extend(wild_tokens(text[pos : m.start()], wild=wild))
        pos = m.end()
        inner = m.group(1).strip()
        if inner in ("*", "?", "$"):
            out.append(inner)
            continue
        name, _, default = inner.partition(",")
        got = ctx.lookup(name.strip(), access)
        if got is None:
            raise _Unknown(name.strip())
        if got is False or not got:
            d = default.strip()
            if len(d) >= 2 and d[0] == d[-1] == "'":
                out.extend(d[1:-1])
                continue
            return None
        out.extend(got[0])
    out.extend(wild_tokens(text[pos:], wild=wild))
    return tuple(out)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def _date(text: str) -> float | None:
    t = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return _number(t)
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def _arn_match(pattern: Sequence[Token], value: str) -> bool:
    """ARN operators compare the six colon-separated parts separately; wildcards stay inside a part."""
    pparts: list[list[Token]] = [[]]
    for tok in pattern:
        if tok == ":" and len(pparts) < 6:
            pparts.append([])
        else:
            pparts[-1].append(tok)
    vparts = value.split(":", 5)
    return (
        len(pparts) == 6
        and len(vparts) == 6
        and all(glob_match(p, v) for p, v in zip(pparts, vparts, strict=True))
    )


def _value_test(cond: Condition, ctx_value: str, policy_value: Sequence[Token]) -> bool:
    """Does one context value satisfy the positive form of the operator against one policy value?"""
    op = cond.op
    if op in ("StringLike", "StringNotLike"):
        return glob_match(policy_value, ctx_value)
    pv = "".join(t if isinstance(t, str) else ("*" if t == STAR else "?") for t in policy_value)
    if op in ("StringEquals", "StringNotEquals", "BinaryEquals"):
        return ctx_value == pv
    if op in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return ctx_value.casefold() == pv.casefold()
    if op == "Bool":
        return ctx_value.lower() == pv.lower()
    if op in ("ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"):
        return _arn_match(policy_value, ctx_value)
    if op in ("IpAddress", "NotIpAddress"):
        try:
            return ipaddress.ip_address(ctx_value) in ipaddress.ip_network(pv, strict=False)
        except ValueError:
            return False
    parse = _number if op.startswith("Numeric") else _date
    a, b = parse(ctx_value), parse(pv)
    if a is None or b is None:
        return False
    cmp = op.removeprefix("Numeric").removeprefix("Date")
    return {
        "Equals": a == b,
        "NotEquals": a == b,  # negated below
        "LessThan": a < b,
        "LessThanEquals": a <= b,
        "GreaterThan": a > b,
        "GreaterThanEquals": a >= b,
    }[cmp]


def _condition(
    cond: Condition, policy: Policy, ctx: RequestContext, access: Access, unknown: list[str]
) -> Tristate:
    got = ctx.lookup(cond.key, access)
    if got is None:
        unknown.append(cond.key)
        return None
    if cond.op == "Null":
        present = got is not False and len(got) > 0
        return any((v.lower() == "true") != present for v in cond.values)
    if got is False or not got:
        if cond.qualifier == "ForAllValues":
            return True
        if cond.qualifier == "ForAnyValue":
            return False
        return True if cond.if_exists else cond.negated
    patterns: list[Sequence[Token]] = []
    wild = cond.op in ("StringLike", "StringNotLike", "ArnLike", "ArnNotLike", "ArnEquals", "ArnNotEquals")
    for v in cond.values:
        try:
            rendered = _render(v, policy, ctx, access, wild)
        except _Unknown as e:
            unknown.append(str(e))
            return None
        if rendered is not None:
            patterns.append(rendered)

    def one(ctx_value: str) -> bool:
        positive = any(_value_test(cond, ctx_value, p) for p in patterns)
        return not positive if cond.negated else positive

    if cond.qualifier == "ForAllValues":
        return all(one(v) for v in got)
    if cond.qualifier == "ForAnyValue":
        return any(one(v) for v in got)
    if cond.negated:  # the key's value matches none of the policy's values
        return all(one(v) for v in got)
    return any(one(v) for v in got)


def _principal_match(spec: PrincipalSpec, who: Principal) -> Tristate:
    if spec.wildcard:
        return True
    results: list[Tristate] = []
    for kind, ident in spec.entries:
        if who.anonymous:
            results.append(False)
        elif kind == "Service":
            results.append(False)  # clients of the proxy are never AWS service principals
        elif kind != "AWS":
            results.append(False if who.arn else None)
        elif _ACCOUNT_RE.match(ident) or re.match(r"^arn:[a-z-]+:iam::\d{12}:root$", ident):
            acct = ident if _ACCOUNT_RE.match(ident) else ident.split(":")[4]
            results.append(None if who.account is None else who.account == acct)
        elif ident.startswith("arn:"):
            m = _ARN_ACCOUNT_RE.match(ident)
            if who.arn is not None:
                results.append(ident in (who.arn, _role_of(who.arn)))
            elif who.account is not None and m is not None and m.group(1) != who.account:
                results.append(False)
            else:
                results.append(None)
        else:
            results.append(None)  # unique IDs (AIDA..., AROA...) are unknown to the proxy
    return _or(results)


def _resource_match(pattern: Sequence[Token], access: Access) -> Tristate:
    if access.key_known:
        return glob_match(pattern, access.resource)
    return glob_any_suffix(pattern, access.resource)


def statement_applies(
    stmt: Statement, policy: Policy, access: Access, ctx: RequestContext, unknown: list[str]
) -> Tristate:
    """Whether the statement matches this access: principal, action, resource and every condition."""
    if stmt.principal is not None:
        who = _principal_match(stmt.principal, ctx.principal)
    else:
        assert stmt.not_principal is not None
        who = _not(_principal_match(stmt.not_principal, ctx.principal))
    if who is False:
        return False
    action = access.action.lower()
    if stmt.actions:
        act = any(glob_match(wild_tokens(a.lower()), action) for a in stmt.actions)
    else:
        act = not any(glob_match(wild_tokens(a.lower()), action) for a in stmt.not_actions)
    if not act:
        return False
    res_results: list[Tristate] = []
    local: list[str] = []
    for pattern in stmt.resources or stmt.not_resources:
        try:
            rendered = _render(pattern, policy, ctx, access, True)
        except _Unknown as e:
            local.append(str(e))
            res_results.append(None)
            continue
        res_results.append(False if rendered is None else _resource_match(rendered, access))
    res = _or(res_results)
    if stmt.not_resources:
        res = _not(res)
    if res is False:
        return False
    results: list[Tristate] = [who, res]
    for c in stmt.conditions:
        r = _condition(c, policy, ctx, access, local)
        if r is False:
            return False
        results.append(r)
    out = _and(results)
    if out is None:
        if who is None:
            local.append("the caller's identity (map its access key in `accounts`)")
        unknown.extend(k for k in local if k not in unknown)
    return out


DocOutcome = Literal["deny", "maybe-deny", "allow", "maybe-allow", "none"]


@dataclass(frozen=True, slots=True)
class DocResult:
    """What one policy document says about one access."""

    outcome: DocOutcome
    statement: Statement | None = None
    unknown: tuple[str, ...] = ()
    allowed: Tristate = False  # does some Allow statement match (whatever the Denies say)?


def evaluate_document(policy: Policy, access: Access, ctx: RequestContext) -> DocResult:
    """Explicit deny first, then a possible deny, then allow (AWS evaluation logic, in three values)."""
    first: dict[tuple[str, Tristate], Statement] = {}
    unknown: dict[tuple[str, Tristate], list[str]] = {}
    for stmt in policy.statements:
        keys: list[str] = []
        r = statement_applies(stmt, policy, access, ctx, keys)
        if r is False:
            continue
        slot: tuple[str, Tristate] = (stmt.effect, r)
        if slot not in first:
            first[slot] = stmt
            unknown[slot] = keys
        if slot == ("Deny", True):
            break
    allowed: Tristate = True if ("Allow", True) in first else None if ("Allow", None) in first else False
    table: tuple[tuple[tuple[str, Tristate], DocOutcome], ...] = (
        (("Deny", True), "deny"),
        (("Deny", None), "maybe-deny"),
        (("Allow", True), "allow"),
        (("Allow", None), "maybe-allow"),
    )
    for wanted, outcome in table:
        if wanted in first:
            return DocResult(outcome, first[wanted], tuple(unknown[wanted]), allowed)
    return DocResult("none")


# ------------------------------------------------------------------------------------------------ decision

Outcome = Literal["allow", "deny", "implicit-deny", "not-denied", "undetermined"]


@dataclass(frozen=True, slots=True)
class Basis:
    """A statement that decided (part of) the outcome."""

    document: str  # "endpoint policy of vpce-1a2b3c4d" | "bucket policy of my-bucket"
    sid: str  # the statement's Sid, or Statement[i]
    effect: Effect


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The policy verdict for one request.

    deny: an explicit Deny matched. implicit-deny: the endpoint policy allows none of the request's
    actions. allow: the endpoint policy (if any) and the bucket policy allow it. not-denied: no policy
    decides; S3 goes by the caller's identity policies, which the proxy cannot see. undetermined: the
    answer depends on condition keys or identities the proxy does not know (`unknown`).
    """

    outcome: Outcome
    access: Access | None = None  # the action that decided
    basis: tuple[Basis, ...] = ()
    unknown: tuple[str, ...] = ()
    reason: str = ""
    document: str = ""  # for implicit-deny: the endpoint policy that allows nothing here

    @property
    def denied(self) -> bool:
        return self.outcome in ("deny", "implicit-deny")

    @property
    def sid(self) -> str:
        """The deciding statement's Sid (or Statement[i]); "" when no statement decided."""
        return self.basis[0].sid if self.basis else ""


def _endpoint_doc(endpoint_id: str | None) -> str:
    return f"VPC endpoint policy of {endpoint_id}" if endpoint_id else "VPC endpoint policy"


def decide(
    accesses: Sequence[Access],
    ctx: RequestContext,
    *,
    endpoint_policy: Policy | None,
    bucket_policies: Mapping[str, Policy],
    endpoint_id: str | None = None,
) -> PolicyDecision:
    """Evaluate every access of one request against the endpoint policy and the bucket policies.

    A request is denied if any of its accesses is; `endpoint_policy` None means the endpoint has AWS's
    default policy (full access) or the request does not go through an endpoint. Never raises.
    """
    if not accesses:
        return PolicyDecision("not-denied", reason="no S3 action is known for this request; not checked")
    ep_doc = _endpoint_doc(endpoint_id)
    verdicts: list[PolicyDecision] = []
    for access in accesses:
        ep = evaluate_document(endpoint_policy, access, ctx) if endpoint_policy is not None else None
        bp_policy = bucket_policies.get(access.bucket) if access.bucket else None
        bp = evaluate_document(bp_policy, access, ctx) if bp_policy is not None else None
        bp_doc = f"bucket policy of {access.bucket}"
        what = f"{access.action} on {access.resource}{'*' if not access.key_known else ''}"
        if ep is not None and ep.outcome == "deny" and ep.statement:
            b = Basis(ep_doc, ep.statement.label, "Deny")
            verdicts.append(
                PolicyDecision("deny", access, (b,), reason=f"{what}: explicit deny in the {ep_doc}")
            )
            continue
        if bp is not None and bp.outcome == "deny" and bp.statement:
            b = Basis(bp_doc, bp.statement.label, "Deny")
            verdicts.append(
                PolicyDecision("deny", access, (b,), reason=f"{what}: explicit deny in the {bp_doc}")
            )
            continue
        # Whatever a possible Deny turns out to be, an endpoint policy without a matching Allow denies.
        if ep is not None and (ep.outcome == "none" or ep.allowed is False):
            verdicts.append(
                PolicyDecision(
                    "implicit-deny",
                    access,
                    reason=f"{what}: no statement in the {ep_doc} allows the {access.action} action",
                    document=ep_doc,
                )
            )
            continue
        # A bucket policy that only *might* allow changes nothing: without it, identity policies decide.
        maybe = [
            (d, doc)
            for d, doc in ((ep, ep_doc), (bp, bp_doc))
            if d and (d.outcome == "maybe-deny" or (d is ep and d.outcome == "maybe-allow"))
        ]
        if maybe:
            keys = tuple(dict.fromkeys(k for d, _ in maybe for k in d.unknown))
            basis = tuple(
                Basis(doc, d.statement.label, d.statement.effect) for d, doc in maybe if d.statement
            )
            verdicts.append(
                PolicyDecision(
                    "undetermined",
                    access,
                    basis,
                    keys,
                    reason=f"{what}: depends on {', '.join(keys) or 'values'} the proxy does not know",
                )
            )
            continue
        basis = tuple(
            Basis(doc, d.statement.label, "Allow")
            for d, doc in ((ep, ep_doc), (bp, bp_doc))
            if d and d.outcome == "allow" and d.statement
        )
        if bp is not None and bp.outcome == "allow":
            verdicts.append(PolicyDecision("allow", access, basis, reason=f"{what}: allowed by the {bp_doc}"))
        elif bp is None and ep is not None:
            verdicts.append(PolicyDecision("allow", access, basis, reason=f"{what}: allowed by the {ep_doc}"))
        else:
            why = "the bucket policy neither allows nor denies it" if bp is not None else "no policy applies"
            verdicts.append(
                PolicyDecision(
                    "not-denied", access, basis, reason=f"{what}: {why}; S3 decides by identity policies"
                )
            )
    for outcome in ("deny", "implicit-deny", "undetermined", "not-denied"):
        for v in verdicts:
            if v.outcome == outcome:
                return v
    return verdicts[0]


def denial_message(d: PolicyDecision) -> str:
    """The AccessDenied message for an enforced denial: the action, resource, document and Sid."""
    if d.access is None:
        return "Access Denied by s3proxy policy check"
    res = d.access.resource + ("*" if not d.access.key_known else "")
    if d.outcome == "deny" and d.basis:
        b = d.basis[0]
        return (
            f"s3proxy (policy_mode: enforce): not authorized to perform {d.access.action} on resource "
            f"{res} with an explicit deny in the {b.document}, statement {b.sid!r}"
        )
    doc = d.document or "VPC endpoint policy"
    return (
        f"s3proxy (policy_mode: enforce): not authorized to perform {d.access.action} on resource {res} "
        f"because no statement in the {doc} allows the {d.access.action} action"
    )


# -------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Everything the policy check needs, from the config: what `Config.policy` would hold."""

    mode: Mode = "off"
    endpoint_policies: Mapping[str, Policy] = field(default_factory=lambda: MappingProxyType({}))  # by ID
    vpc_ids: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # endpoint ID -> vpc
    bucket_policies: Mapping[str, Policy] = field(default_factory=lambda: MappingProxyType({}))
    # access key ID -> account ID or principal ARN
    accounts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    bucket_accounts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def configured(self) -> bool:
        """Any policy to evaluate (explain reports decisions even with mode off; the proxy skips them)."""
        return bool(self.endpoint_policies or self.bucket_policies)


_AP_PREFIX_RE = re.compile(r"^(?P<name>.+)-(?P<account>\d{12})$")


def check_request(
    *,
    method: str,
    family: str,
    bucket: str | None,
    key: str | None,
    headers: Headers,
    query: str,
    region: str | None,
    endpoint_id: str | None,
    settings: PolicySettings,
    access_key_id: str | None,
    now: datetime | None = None,
    access_point_prefix: str | None = None,
) -> PolicyDecision:
    """The policy decision for one planned request (fields of `rewrite.Plan` plus the signed request).

    `headers`/`query`/`access_key_id` should be those of the request as it goes upstream (after re-signing:
    with proxy-identity the upstream principal is the proxy's). `endpoint_id` None for passthrough.
    """
    ap: tuple[str, str] | None = None
    if family == "access-point" and access_point_prefix:
        m = _AP_PREFIX_RE.match(access_point_prefix)
        ap = (m["name"], m["account"]) if m else None
        if ap is None:
            return PolicyDecision("not-denied", reason="access point name without account; not checked")
    elif family == "s3-control":
        return PolicyDecision("not-denied", reason="S3 Control requests are not checked")
    accesses = s3_accesses(method, bucket, key, query, headers, region=region, access_point=ap)
    ctx = request_context(
        principal=principal_for(access_key_id, settings.accounts),
        endpoint_id=endpoint_id,
        vpc_id=settings.vpc_ids.get(endpoint_id) if endpoint_id else None,
        region=region,
        headers=headers,
        query=query,
        now=now,
        bucket_accounts=settings.bucket_accounts,
        access_point_account=ap[1] if ap else None,
    )
    return decide(
        accesses,
        ctx,
        endpoint_policy=settings.endpoint_policies.get(endpoint_id) if endpoint_id else None,
        bucket_policies=settings.bucket_policies,
        endpoint_id=endpoint_id,
    )
