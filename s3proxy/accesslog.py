"""The access log: one structured record per request, as one JSON object (default) or one logfmt line.

# Strategy: `build_record` turns plain values the addon already has (the core `Request`, the engine's
# `Decision`, the response status/headers, byte counts, timings) into a frozen `AccessRecord`; `format_json`
# and `format_text` print it. Nothing here reads the clock or does I/O.
#
# What never reaches a record: the query string (presigned URLs carry X-Amz-Signature, X-Amz-Credential and
# X-Amz-Security-Token there), any header but the two S3 request ids, the access key id and every secret. The
# key is the path part only; with `redact_keys` it is replaced by a SHA-256 prefix before the record exists.
# Client-controlled text (method, host, key) is made safe for one-line logs: control characters, undecodable
# bytes and (in text form) spaces and quotes are percent-encoded, and long values are cut.
#
# Operation names are the S3 API names (GetObject, UploadPart, ListObjectsV2, ...) derived from method,
# sub-resource query parameter names and copy-source header, per the S3 API reference
# (https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations_Amazon_Simple_Storage_Service.html).
# They differ from IAM action names (UploadPart needs s3:PutObject), which `s3proxy.policy` maps separately.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import unquote_plus

from s3proxy.engine import Decision
from s3proxy.errors import S3Error
from s3proxy.hosts import UNSUPPORTED_FAMILIES, classify
from s3proxy.model import Headers, Request

RecordAction = Literal["forward", "passthrough", "reject", "error"]
_MAX_FIELD = 1024  # S3 keys are at most 1024 bytes; longer client-supplied text is cut


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One request as the access log shows it. `key` is already redacted when redaction is on."""

    time: datetime  # when the request arrived (UTC)
    method: str
    host: str  # the host the client named (no port)
    client_address: str | None = None
    client_port: int | None = None
    family: str | None = None  # s3proxy.hosts.Family
    operation: str | None = None  # S3 API operation name, when known
    bucket: str | None = None
    key: str | None = None  # raw (percent-encoded as sent), path only; or "sha256:<16 hex>"
    region: str | None = None
    endpoint: str | None = None  # upstream name (vpce name, or the public name for passthrough)
    endpoint_id: str | None = None  # vpce-1a2b3c4d, as in VPC flow logs and aws:sourceVpce
    endpoint_address: str | None = None  # "10.0.1.5:443"
    action: RecordAction = "forward"
    signing: str | None = None  # resigned | unchanged | refused
    status: int | None = None  # status the client got
    upstream_status: int | None = None  # status S3 answered (None: the request never reached S3)
    bytes_in: int = 0  # request body bytes from the client
    bytes_out: int = 0  # response body bytes to the client
    duration: float = 0.0  # seconds from request to end of response
    request_id: str | None = None  # x-amz-request-id (S3's, or the proxy's own for its errors)
    host_id: str | None = None  # x-amz-id-2
    error_code: str | None = None  # S3 error code when the proxy refused or failed the request
    refusal: str | None = None  # why, in one token (signing, dns, unsupported-fips, ...): a metrics label


# ------------------------------------------------------------------------------------------- operations

# Bucket-level sub-resources (query parameter names) -> operation, per method. First match in order wins.
_BUCKET_GET = (
    ("acl", "GetBucketAcl"),
    ("policyStatus", "GetBucketPolicyStatus"),
    ("policy", "GetBucketPolicy"),
    ("location", "GetBucketLocation"),
    ("versioning", "GetBucketVersioning"),
    ("versions", "ListObjectVersions"),
    ("uploads", "ListMultipartUploads"),
    ("tagging", "GetBucketTagging"),
    ("cors", "GetBucketCors"),
    ("lifecycle", "GetBucketLifecycleConfiguration"),
    ("website", "GetBucketWebsite"),
    ("logging", "GetBucketLogging"),
    ("notification", "GetBucketNotificationConfiguration"),
    ("replication", "GetBucketReplication"),
    ("encryption", "GetBucketEncryption"),
    ("requestPayment", "GetBucketRequestPayment"),
    ("object-lock", "GetObjectLockConfiguration"),
    ("publicAccessBlock", "GetPublicAccessBlock"),
    ("ownershipControls", "GetBucketOwnershipControls"),
    ("accelerate", "GetBucketAccelerateConfiguration"),
    ("metadataTable", "GetBucketMetadataTableConfiguration"),
    ("session", "CreateSession"),
)
# Configurations addressed by `id`: Get... with an id, List... without.
_BUCKET_ID_CONFIGS = (
    ("analytics", "BucketAnalyticsConfiguration"),
    ("inventory", "BucketInventoryConfiguration"),
    ("metrics", "BucketMetricsConfiguration"),
    ("intelligent-tiering", "BucketIntelligentTieringConfiguration"),
)
_BUCKET_PUT = (
    ("acl", "PutBucketAcl"),
    ("policy", "PutBucketPolicy"),
    ("versioning", "PutBucketVersioning"),
    ("tagging", "PutBucketTagging"),
    ("cors", "PutBucketCors"),
    ("lifecycle", "PutBucketLifecycleConfiguration"),
    ("website", "PutBucketWebsite"),
    ("logging", "PutBucketLogging"),
    ("notification", "PutBucketNotificationConfiguration"),
    ("replication", "PutBucketReplication"),
    ("encryption", "PutBucketEncryption"),
    ("requestPayment", "PutBucketRequestPayment"),
    ("object-lock", "PutObjectLockConfiguration"),
    ("publicAccessBlock", "PutPublicAccessBlock"),
    ("ownershipControls", "PutBucketOwnershipControls"),
    ("accelerate", "PutBucketAccelerateConfiguration"),
)
_BUCKET_DELETE = (
    ("policy", "DeleteBucketPolicy"),
    ("tagging", "DeleteBucketTagging"),
    ("cors", "DeleteBucketCors"),
    ("lifecycle", "DeleteBucketLifecycle"),
    ("website", "DeleteBucketWebsite"),
    ("replication", "DeleteBucketReplication"),
    ("encryption", "DeleteBucketEncryption"),
    ("publicAccessBlock", "DeletePublicAccessBlock"),
    ("ownershipControls", "DeleteBucketOwnershipControls"),
    ("metadataTable", "DeleteBucketMetadataTableConfiguration"),
)
_OBJECT_GET = (
    ("uploadId", "ListParts"),
    ("acl", "GetObjectAcl"),
    ("tagging", "GetObjectTagging"),
    ("retention", "GetObjectRetention"),
    ("legal-hold", "GetObjectLegalHold"),
    ("attributes", "GetObjectAttributes"),
    ("torrent", "GetObjectTorrent"),
)
_OBJECT_PUT = (
    ("acl", "PutObjectAcl"),
    ("tagging", "PutObjectTagging"),
    ("retention", "PutObjectRetention"),
    ("legal-hold", "PutObjectLegalHold"),
)
_OBJECT_POST = (
    ("uploads", "CreateMultipartUpload"),
    ("uploadId", "CompleteMultipartUpload"),
    ("restore", "RestoreObject"),
    ("select", "SelectObjectContent"),
    ("renameObject", "RenameObject"),
)
_OPERATION_FAMILIES = frozenset({"virtual-hosted", "path-style", "list-buckets", "access-point"})


def query_names(query: str) -> dict[str, str]:
    """Query parameter names -> first value, decoded. Only names and a few plain values are ever used."""
    out: dict[str, str] = {}
    for part in query.split("&") if query else ():
        name, _, value = part.partition("=")
        out.setdefault(unquote_plus(name), unquote_plus(value))
    return out


def _first(table: tuple[tuple[str, str], ...], q: Mapping[str, str]) -> str | None:
    return next((op for sub, op in table if sub in q), None)


def _has_header(headers: Headers, name: str) -> bool:
    return any(k.lower() == name for k, _ in headers)


def operation_name(
    method: str, family: str, key: str | None, query: str, headers: Headers = ()
) -> str | None:
    """The S3 API operation of a request, or None when it is not a recognisable S3 data-plane request.

    `key` None or "" is a bucket-level request; `family` is `s3proxy.hosts.Family`.
    """
    if family not in _OPERATION_FAMILIES:
        return None
    m = method.upper()
    if family == "list-buckets":
        return "ListBuckets" if m in ("GET", "HEAD") else None
    q = query_names(query)
    if not key:
        return _bucket_operation(m, q)
    if m == "HEAD":
        return "HeadObject"
    if m == "GET":
        return _first(_OBJECT_GET, q) or "GetObject"
    if m == "PUT":
        if "uploadId" in q and "partNumber" in q:
            return "UploadPartCopy" if _has_header(headers, "x-amz-copy-source") else "UploadPart"
        if op := _first(_OBJECT_PUT, q):
            return op
        return "CopyObject" if _has_header(headers, "x-amz-copy-source") else "PutObject"
    if m == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        return "DeleteObjectTagging" if "tagging" in q else "DeleteObject"
    if m == "POST":
        return _first(_OBJECT_POST, q) or "PostObject"
    return None


def _bucket_operation(m: str, q: Mapping[str, str]) -> str | None:
    if m == "HEAD":
        return "HeadBucket"
    for sub, name in _BUCKET_ID_CONFIGS:
        if sub in q:
            if m == "GET" and "id" not in q:
                return f"List{name}s"
            verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}.get(m)
            return f"{verb}{name}" if verb else None
    if m == "GET":
        if op := _first(_BUCKET_GET, q):
            return op
        return "ListObjectsV2" if q.get("list-type") == "2" else "ListObjects"
    if m == "PUT":
        return _first(_BUCKET_PUT, q) or "CreateBucket"
    if m == "DELETE":
        return _first(_BUCKET_DELETE, q) or "DeleteBucket"
    if m == "POST":
        # DeleteObjects (?delete), or a browser-form upload (POST policy) whose key is in the body.
        return "DeleteObjects" if "delete" in q else "PostObject"
    return None


# ------------------------------------------------------------------------------------------- records


def redact_key(key: str) -> str:
    """A stable stand-in for an object key: equal keys give equal values, the key cannot be read back."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _path_only(key: str | None) -> str | None:
    # Keys come from the path, which never holds the query; cut at '?' anyway so a presigned query can
    # never reach the log even if a caller passes a target instead of a path.
    return None if key is None else key.partition("?")[0]


# The response headers a record keeps (S3's request ids); callers may pass only these to build_record.
REQUEST_ID_HEADER, HOST_ID_HEADER = "x-amz-request-id", "x-amz-id-2"
ID_HEADERS = (REQUEST_ID_HEADER, HOST_ID_HEADER)


def _header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _refusal(decision: Decision | None, error: S3Error | None) -> str | None:
    if decision is None or decision.action != "reject":
        return None
    if decision.signing == "refused":
        return "signing"
    fam = decision.plan.family
    if fam in UNSUPPORTED_FAMILIES:
        return f"unsupported-{fam}"
    if fam == "not-s3":
        return "not-s3"
    return "rewrite"


def build_record(
    req: Request,
    decision: Decision | None,
    *,
    time: datetime,
    duration: float,
    client: tuple[str, int] | None = None,
    status: int | None = None,
    upstream_status: int | None = None,
    response_headers: Headers = (),
    bytes_in: int = 0,
    bytes_out: int = 0,
    endpoint_address: str | None = None,
    error: S3Error | None = None,
    refusal: str | None = None,
    redact_keys: bool = False,
) -> AccessRecord:
    """The access record for one finished request.

    `decision` None: the request never reached the engine (refused client, non-S3 request): family, bucket
    and key then come from classifying host and path. `error`: an error the proxy answered after the
    decision (DNS failure, no reachable address, bad chunk); `refusal` names its kind for metrics
    (`dns`, `upstream`, `chunk`, `access`, ...). Never raises.
    """
    if decision is not None:
        p = decision.plan
        family: str | None = p.family
        bucket, key, region = p.bucket, p.key, p.region
        endpoint = decision.host or None
        endpoint_id = decision.endpoint.endpoint_id if decision.endpoint else None
        signing = decision.signing or None
    else:
        target = classify(req.host, req.path or "/")
        family, bucket, key, region = target.family, target.bucket, target.key, target.host.region
        endpoint = endpoint_id = signing = None
    key = _path_only(key)
    if family == "list-buckets":
        bucket = key = None
    operation = operation_name(req.method, family or "", key, req.query, req.headers)
    err = error or (decision.error if decision is not None and decision.action == "reject" else None)
    if decision is None:
        action: RecordAction = "reject" if err is not None or refusal else "forward"
    elif decision.action == "reject":
        action = "reject"
    else:
        action = "error" if err is not None else decision.action
    if key and redact_keys:
        key = redact_key(key)
    return AccessRecord(
        time=time.astimezone(UTC),
        method=req.method,
        host=req.host,
        client_address=client[0] if client else None,
        client_port=client[1] if client else None,
        family=family,
        operation=operation,
        bucket=bucket,
        key=key,
        region=region,
        endpoint=endpoint if action != "reject" else None,
        endpoint_id=endpoint_id,
        endpoint_address=endpoint_address if action != "reject" else None,
        action=action,
        signing=signing,
        status=status if status is not None else (err.status if err is not None else None),
        upstream_status=upstream_status,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        duration=duration,
        request_id=_header(response_headers, REQUEST_ID_HEADER),
        host_id=_header(response_headers, HOST_ID_HEADER),
        error_code=err.code if err is not None else None,
        refusal=refusal or _refusal(decision, err),
    )


# ------------------------------------------------------------------------------------------ formatting


def _safe(text: str | None, *, text_form: bool = False) -> str | None:
    """One-line, valid-UTF-8 text: control characters, undecodable bytes (surrogate escapes) and, for the
    text form, spaces, quotes and backslashes become %XX. Long values are cut (marked with '...')."""
    if text is None:
        return None
    if len(text) <= _MAX_FIELD and text.isascii() and text.isprintable():
        if not text_form or not any(ch in text for ch in ' "\\='):
            return text  # the common case: nothing to escape
    out: list[str] = []
    for ch in text[:_MAX_FIELD]:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"%{o - 0xDC00:02X}")
        elif o < 0x20 or o == 0x7F or 0xD800 <= o <= 0xDFFF or (text_form and ch in ' "\\='):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(text) > _MAX_FIELD else "")


def _timestamp(t: datetime) -> str:
    # "2026-01-02T03:04:05.678+00:00" -> "2026-01-02T03:04:05.678Z" (isoformat truncates to milliseconds).
    return t.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def as_dict(record: AccessRecord) -> dict[str, object]:
    """The JSON object of one record: every field, always present (null when unknown)."""
    r = record
    return {
        "time": _timestamp(r.time),
        "client_address": r.client_address,
        "client_port": r.client_port,
        "method": _safe(r.method[:32]),
        "host": _safe(r.host),
        "family": r.family,
        "operation": r.operation,
        "bucket": _safe(r.bucket),
        "key": _safe(r.key),
        "region": r.region,
        "endpoint": r.endpoint,
        "endpoint_id": r.endpoint_id,
        "endpoint_address": r.endpoint_address,
        "action": r.action,
        "signing": r.signing,
        "status": r.status,
        "upstream_status": r.upstream_status,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "duration_ms": round(r.duration * 1000, 3),
        "request_id": _safe(r.request_id),
        "host_id": _safe(r.host_id),
        "error_code": r.error_code,
        "refusal": r.refusal,
    }


def format_json(record: AccessRecord) -> str:
    """One JSON object on one line (no newline at the end), ASCII only."""
    return json.dumps(as_dict(record), separators=(",", ":"), ensure_ascii=True)


def format_text(record: AccessRecord) -> str:
    """One logfmt line (`name=value`, '-' for unknown): easy to read, still parseable."""
    r = record
    client = f"{r.client_address}:{r.client_port}" if r.client_address else None
    if client and r.client_address and ":" in r.client_address:
        client = f"[{r.client_address}]:{r.client_port}"
    fields: list[tuple[str, object]] = [
        ("time", _timestamp(r.time)),
        ("client", client),
        ("method", r.method[:32]),
        ("host", r.host),
        ("family", r.family),
        ("op", r.operation),
        ("bucket", r.bucket),
        ("key", r.key),
        ("region", r.region),
        ("endpoint", r.endpoint),
        ("addr", r.endpoint_address),
        ("action", r.action),
        ("signing", r.signing),
        ("status", r.status),
        ("upstream_status", r.upstream_status),
        ("bytes_in", r.bytes_in),
        ("bytes_out", r.bytes_out),
        ("duration_ms", f"{r.duration * 1000:.3f}"),
        ("request_id", r.request_id),
        ("error", r.error_code),
        ("refusal", r.refusal),
    ]
    return " ".join(f"{name}={_safe(str(v), text_form=True) if v is not None else '-'}" for name, v in fields)
