"""boto3, unmodified, through the real `s3proxy run`: normal S3 operations land on the interface endpoint.

Every client here knows only the proxy (`proxies=` + the proxy's CA); none has `endpoint_url`. Data is
checked by sha256 end to end, and what SeaweedFS stored is read back around the proxy
(`s3_backend.object_sha256`). The tap log shows what the endpoint saw: after every test `upstream_guard`
asserts vpce Host/SNI only and no `X-Forwarded-*`; tests assert upstream Host/path/credential scope where
the rewrite matters (addressing styles, dotted buckets, legacy global host, second region).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from .harness import ProxyProcess, S3Backend, UpstreamRequest, sha256
from .upstream_checks import scope_region, unique_bucket, upstream_guard

__all__ = ["upstream_guard"]  # the fixture is used through pytestmark

pytestmark = pytest.mark.usefixtures("upstream_guard")

MB = 1024 * 1024

# Keys that SDKs encode in different ways; each must arrive byte-exact in the object store.
SPECIAL_KEYS = [
    "with space.txt",
    "unicode/ünïcödé/日本語/файл.bin",
    "emoji-😀.txt",
    "plus+sign+a+b",
    "percent%20literal%2Fx%",
    "tilde~x",
    "eq=and&amp",
    "all of + % ~ = & them",
    "double//slash//x",
    "/leading-slash",
    "trailing/",
    "nested/a/b/c/d/e.txt",
    "punct;,:@$!'()*",
    "question?mark#hash",
    "tab\tnew\nline\x01ctl",
    "back\\slash",
    '<lt>"`{}[]|^',
    "dot/./seg",
    "dot/../up",
    "..",
]
# Keys SeaweedFS (a filesystem underneath) stores differently from S3: `//` folded, leading `/` dropped,
# `trailing/` made an empty directory marker. For them, SeaweedFS reached directly is the oracle.
# It also turns `\` into `/` and refuses `.`/`..` segments (InvalidRequest), where S3 stores them as is.
SEAWEED_FOLDS = {
    "double//slash//x",
    "/leading-slash",
    "trailing/",
    "back\\slash",
    "dot/./seg",
    "dot/../up",
    "..",
}


def _body(tag: str, size: int = 3000) -> bytes:
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def record_urls(client: Any) -> list[tuple[str, str]]:
    """(method, url) of every request the client sends (to the proxy) — what the client itself chose."""
    sent: list[tuple[str, str]] = []

    def on_send(request: Any, **_: Any) -> None:
        sent.append((request.method, request.url))

    client.meta.events.register("before-send.s3", on_send)
    return sent


def _since(backend: S3Backend, mark: int, pred: Callable[[UpstreamRequest], bool]) -> list[UpstreamRequest]:
    return [r for r in backend.upstream_requests(mark) if pred(r)]


def _host(r: UpstreamRequest) -> str:
    return (r.host or "").rsplit(":", 1)[0]


# --- lifecycle, listing, pagination -------------------------------------------------------------


@pytest.mark.parametrize("style", ["virtual", "path", "auto"])
def test_bucket_object_lifecycle(proxy: ProxyProcess, s3_backend: S3Backend, style: str) -> None:
    s3 = proxy.boto3_client(region="us-east-1", addressing_style=style)
    bucket = unique_bucket(f"life-{style}")
    mark = s3_backend.mark()
    s3.create_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=bucket)

    keys = ["a/1.txt", "a/2.txt", "a/b/3.txt", "a/b/4.txt", "c/5.txt", "top.txt", "z"]
    for k in keys:
        body = _body(bucket + k)
        etag = s3.put_object(Bucket=bucket, Key=k, Body=body)["ETag"]
        assert etag.strip('"') == hashlib.md5(body).hexdigest()
        head = s3.head_object(Bucket=bucket, Key=k)
        assert head["ContentLength"] == len(body)
        got = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        assert sha256(got) == sha256(body) == s3_backend.object_sha256(bucket, k)

    # ListObjectsV2 and V1, prefix + delimiter
    v2 = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in v2["Contents"]] == ["a/1.txt", "a/2.txt"]
    assert [p["Prefix"] for p in v2["CommonPrefixes"]] == ["a/b/"]
    v1 = s3.list_objects(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in v1["Contents"]] == ["top.txt", "z"]
    assert [p["Prefix"] for p in v1["CommonPrefixes"]] == ["a/", "c/"]

    # Pagination with a small MaxKeys, by hand and with the paginators: every key exactly once.
    pages, token, seen = 0, None, []
    while True:
        kw: dict[str, Any] = {"Bucket": bucket, "MaxKeys": 2}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        pages += 1
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(keys) and pages == 4
    marker, seen = "", []
    while True:
        page = s3.list_objects(Bucket=bucket, MaxKeys=3, Marker=marker)
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        marker = seen[-1]
    assert seen == sorted(keys)
    for op in ("list_objects", "list_objects_v2"):
        got_keys = [
            o["Key"]
            for p in s3.get_paginator(op).paginate(Bucket=bucket, PaginationConfig={"PageSize": 2})
            for o in p.get("Contents", [])
        ]
        assert got_keys == sorted(keys), op
    assert len(_since(s3_backend, mark, lambda r: "max-keys=2" in r.target)) >= 8

    # Delete every object, then the bucket.
    for k in keys:
        s3.delete_object(Bucket=bucket, Key=k)
        assert s3_backend.object_sha256(bucket, k) is None
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket=bucket)
    assert e.value.response["Error"]["Code"] in ("404", "NoSuchBucket")

    # Default proxy addressing is path: everything went to bucket.VPCE (us-east-1), /BUCKET/... paths.
    us = s3_backend.endpoint("us-east-1")
    for r in s3_backend.upstream_requests(mark):
        assert _host(r) == us.bucket_host, (r.method, r.target, r.host)
        assert r.target == "/" or r.target.startswith(f"/{bucket}"), r.target
        assert scope_region(r) == "us-east-1"


# --- keys that need encoding, both client addressing styles -------------------------------------


def _outcome(fn: Callable[[], Any]) -> Any:
    """A call's result, or its S3 error code: what a client observes."""
    try:
        return fn()
    except ClientError as e:
        return ("error", e.response.get("Error", {}).get("Code"))


def _observe(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """Everything a client can see of one object: size, sha256, listing under its key, tags, its copy."""

    def body() -> str:
        return sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def tags() -> Any:
        return sorted((t["Key"], t["Value"]) for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"])

    def copy() -> str:
        s3.copy_object(Bucket=bucket, Key=key + ".copy", CopySource={"Bucket": bucket, "Key": key})
        return sha256(s3.get_object(Bucket=bucket, Key=key + ".copy")["Body"].read())

    tagset = {"TagSet": [{"Key": "k e+y", "Value": "v=1+2/ü @x.y_z:-"}, {"Key": "name", "Value": "x"}]}
    return {
        "size": _outcome(lambda: s3.head_object(Bucket=bucket, Key=key)["ContentLength"]),
        "sha": _outcome(body),
        "listed": _outcome(
            lambda: [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])]
        ),
        "put_tags": _outcome(lambda: s3.put_object_tagging(Bucket=bucket, Key=key, Tagging=tagset) and None),
        "tags": _outcome(tags),
        "copy": _outcome(copy),
    }


@pytest.mark.parametrize("style", ["virtual", "path"])
def test_special_keys_roundtrip(proxy: ProxyProcess, s3_backend: S3Backend, style: str) -> None:
    """Each key's bytes reach the endpoint exactly as the client encoded them, and what the client then
    sees through the proxy is what it sees talking to the endpoint directly (SeaweedFS is a filesystem
    underneath: it folds `//`, drops a leading `/` and makes `trailing/` an empty directory marker, so
    for those keys the direct result is the oracle; every other key must round-trip byte-exact)."""
    s3 = proxy.boto3_client(region="us-east-1", addressing_style=style)
    direct = s3_backend.direct_client()
    sent = record_urls(s3)
    bucket, oracle = unique_bucket(f"keys-{style}"), unique_bucket(f"oracle-{style}")
    s3.create_bucket(Bucket=bucket)
    direct.create_bucket(Bucket=oracle)
    for key in SPECIAL_KEYS:
        body = _body(key)
        mark = s3_backend.mark()
        sent.clear()
        put = _outcome(functools.partial(s3.put_object, Bucket=bucket, Key=key, Body=body))
        put_direct = _outcome(functools.partial(direct.put_object, Bucket=oracle, Key=key, Body=body))
        assert isinstance(put, dict) == isinstance(put_direct, dict), (key, put, put_direct)
        if not isinstance(put, dict):
            assert put == put_direct, key
        client_url = urlsplit(sent[0][1])
        client_path = client_url.path
        if client_url.hostname and client_url.hostname.startswith(bucket + "."):
            client_path = f"/{bucket}{client_path}"
        puts = _since(s3_backend, mark, lambda r: r.method == "PUT")
        assert [r.target.split("?", 1)[0] for r in puts] == [client_path], key

        seen = _observe(s3, bucket, key)
        assert seen == _observe(direct, oracle, key), key
        if key not in SEAWEED_FOLDS:
            assert seen["sha"] == seen["copy"] == sha256(body) == s3_backend.object_sha256(bucket, key), key
            assert seen["listed"] == [key] and seen["size"] == len(body), key
            assert seen["tags"] == [("k e+y", "v=1+2/ü @x.y_z:-"), ("name", "x")], key

    # Everything in one listing (encoding-type=url round trip), then a bulk delete.
    def listing(c: Any, b: str) -> list[str]:
        pages = c.get_paginator("list_objects_v2").paginate(Bucket=b, PaginationConfig={"PageSize": 5})
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    # (SeaweedFS skips a key after a page boundary next to a control-character key, directly too: the
    # paginated listing is compared with the direct one, the complete one is a single page.)
    assert listing(s3, bucket) == listing(direct, oracle)
    everything = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert set(SPECIAL_KEYS) - SEAWEED_FOLDS <= set(everything)
    # A DeleteObjects body is XML 1.0, which cannot carry control characters: those keys go one by one.
    in_xml = [k for k in everything if not any(ord(c) < 0x20 for c in k)]
    for k in set(everything) - set(in_xml):
        s3.delete_object(Bucket=bucket, Key=k)
    res = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in in_xml]})
    assert sorted(d["Key"] for d in res["Deleted"]) == sorted(in_xml)
    assert not res.get("Errors")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    for key in sorted(set(SPECIAL_KEYS) - SEAWEED_FOLDS):
        assert s3_backend.object_sha256(bucket, key) is None, key


# --- range GET, copy, tagging, delete-objects --------------------------------------------------


def test_range_copy_tagging_delete_objects(proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    s3 = proxy.boto3_client(region="us-east-1")
    bucket = unique_bucket("ops")
    s3.create_bucket(Bucket=bucket)
    data = os.urandom(256 * 1024 + 17)
    s3.put_object(Bucket=bucket, Key="src/data.bin", Body=data, Tagging="a=1&b=two")

    r = s3.get_object(Bucket=bucket, Key="src/data.bin", Range="bytes=100-199")
    assert r["Body"].read() == data[100:200]
    assert r["ContentRange"] == f"bytes 100-199/{len(data)}"
    assert s3.get_object(Bucket=bucket, Key="src/data.bin", Range="bytes=-17")["Body"].read() == data[-17:]
    tail = s3.get_object(Bucket=bucket, Key="src/data.bin", Range=f"bytes={len(data) - 1000}-")
    assert tail["Body"].read() == data[-1000:]

    assert {
        t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key="src/data.bin")["TagSet"]
    } == {
        "a": "1",
        "b": "two",
    }
    bucket2 = unique_bucket("ops-dst")
    s3.create_bucket(Bucket=bucket2)
    s3.copy_object(
        Bucket=bucket2,
        Key="dst/copy of data+1.bin",
        CopySource={"Bucket": bucket, "Key": "src/data.bin"},
        MetadataDirective="REPLACE",
        Metadata={"origin": "copied"},
    )
    head = s3.head_object(Bucket=bucket2, Key="dst/copy of data+1.bin")
    assert head["Metadata"] == {"origin": "copied"}
    assert s3_backend.object_sha256(bucket2, "dst/copy of data+1.bin") == sha256(data)
    s3.put_object_tagging(
        Bucket=bucket2, Key="dst/copy of data+1.bin", Tagging={"TagSet": [{"Key": "t", "Value": "v"}]}
    )
    assert s3.get_object_tagging(Bucket=bucket2, Key="dst/copy of data+1.bin")["TagSet"] == [
        {"Key": "t", "Value": "v"}
    ]
    s3.delete_object_tagging(Bucket=bucket2, Key="dst/copy of data+1.bin")
    assert s3.get_object_tagging(Bucket=bucket2, Key="dst/copy of data+1.bin")["TagSet"] == []

    keys = [f"many/{i:02d} + ü.txt" for i in range(12)]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    res = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[:10]] + [{"Key": "many/missing"}]}
    )
    assert sorted(d["Key"] for d in res["Deleted"]) == sorted([*keys[:10], "many/missing"])
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="many/")["Contents"]]
    assert left == keys[10:]
    quiet = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[10:]], "Quiet": True}
    )
    assert not quiet.get("Errors")
    assert all(s3_backend.object_sha256(bucket, k) is None for k in keys)


# --- what the client signs and how it sends the body ---------------------------------------------

PAYLOAD_VARIANTS: dict[str, tuple[Config, dict[str, Any], str | None]] = {
    # name: (client config, put_object extras, expected upstream x-amz-content-sha256 (None: any hash))
    "default-crc-trailer": (Config(), {}, "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
    "sha256-trailer": (Config(), {"ChecksumAlgorithm": "SHA256"}, "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
    "signed-body-hash": (
        Config(s3={"payload_signing_enabled": True}, request_checksum_calculation="when_required"),
        {},
        None,
    ),
    "content-md5-unsigned": (
        Config(request_checksum_calculation="when_required"),
        {"ContentMD5": ""},
        "UNSIGNED-PAYLOAD",
    ),
    "sigv2-header": (Config(signature_version="s3"), {}, "sigv2"),
}


@pytest.mark.parametrize("variant", list(PAYLOAD_VARIANTS))
@pytest.mark.parametrize("style", ["virtual", "path"])
def test_payload_signing_variants(
    proxy: ProxyProcess, s3_backend: S3Backend, variant: str, style: str
) -> None:
    """The body forms boto3 uses (aws-chunked with a checksum trailer, a signed body hash, UNSIGNED-PAYLOAD
    with Content-MD5, SigV2): each reaches the endpoint intact and is accepted by its signature checks."""
    cfg, extras, expected = PAYLOAD_VARIANTS[variant]
    s3 = proxy.boto3_client(region="us-east-1", config=cfg.merge(Config(s3={"addressing_style": style})))
    bucket = unique_bucket("sig")
    # (SigV2 bucket-level requests in path style fail against SeaweedFS even directly: botocore signs
    # `/BUCKET/` for the path `/BUCKET`, which S3 accepts and SeaweedFS does not. Object requests work.)
    (s3 if variant != "sigv2-header" or style == "virtual" else proxy.boto3_client()).create_bucket(
        Bucket=bucket
    )
    data = os.urandom(MB + 7)
    if "ContentMD5" in extras:
        extras = {"ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode()}
    mark = s3_backend.mark()
    s3.put_object(Bucket=bucket, Key="v a+r/ü", Body=data, **extras)
    assert s3_backend.object_sha256(bucket, "v a+r/ü") == sha256(data)
    got = s3.get_object(Bucket=bucket, Key="v a+r/ü", ChecksumMode="ENABLED")["Body"].read()
    assert sha256(got) == sha256(data)
    (put,) = _since(s3_backend, mark, lambda r: r.method == "PUT")
    auth = put.header("authorization") or ""
    if expected == "sigv2":
        assert auth.startswith("AWS ") and put.header("x-amz-content-sha256") is None
    else:
        assert auth.startswith("AWS4-HMAC-SHA256 ") and scope_region(put) == "us-east-1"
        sent_hash = put.header("x-amz-content-sha256")
        assert sent_hash == (expected or sha256(data)), sent_hash


# --- everyday semantics pass through unchanged ---------------------------------------------------


def test_errors_conditionals_metadata_empty_and_large(proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    s3 = proxy.boto3_client(region="us-east-1")
    bucket = unique_bucket("sem")
    s3.create_bucket(Bucket=bucket)

    # S3's own errors come back as S3 sent them (not replaced by the proxy's).
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="no such key")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="no such key")
    assert e.value.response["Error"]["Code"] == "404"
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=unique_bucket("missing"))
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"

    # Empty object; metadata and content headers; conditional requests.
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""
    assert s3_backend.object_sha256(bucket, "empty") == sha256(b"")
    put = s3.put_object(
        Bucket=bucket,
        Key="meta",
        Body=b"{}",
        ContentType="application/json; charset=utf-8",
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="a b.json"',
        Metadata={"owner": "team a", "x-y": "1+2=3"},
    )
    head = s3.head_object(Bucket=bucket, Key="meta")
    assert head["ContentType"] == "application/json; charset=utf-8"
    assert head["CacheControl"] == "max-age=60"
    assert head["ContentDisposition"] == 'attachment; filename="a b.json"'
    assert head["Metadata"] == {"owner": "team a", "x-y": "1+2=3"}
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="meta", IfNoneMatch=put["ETag"])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="meta", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412

    # One large single PUT and a streamed GET (bodies stream through the proxy).
    data = os.urandom(24 * MB + 1)
    s3.put_object(Bucket=bucket, Key="large single put", Body=data)
    assert s3_backend.object_sha256(bucket, "large single put") == sha256(data)
    h = hashlib.sha256()
    for piece in s3.get_object(Bucket=bucket, Key="large single put")["Body"].iter_chunks(256 * 1024):
        h.update(piece)
    assert h.hexdigest() == sha256(data)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_dualstack_client(proxy: ProxyProcess, s3_backend: S3Backend, region: str) -> None:
    s3 = proxy.boto3_client(region=region, config=Config(use_dualstack_endpoint=True))
    sent = record_urls(s3)
    bucket = unique_bucket("dual")
    mark = s3_backend.mark()
    kw = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **kw)
    s3.put_object(Bucket=bucket, Key="d s+1", Body=b"dual" * 1000)
    assert s3.get_object(Bucket=bucket, Key="d s+1")["Body"].read() == b"dual" * 1000
    assert all(f".s3.dualstack.{region}.amazonaws.com" in u for _, u in sent), sent
    ep = s3_backend.endpoint(region)
    for r in s3_backend.upstream_requests(mark):
        assert _host(r) == ep.bucket_host and scope_region(r) == region, (r.host, r.target)


# --- multipart transfers -----------------------------------------------------------------------


def test_multipart_upload_download(proxy: ProxyProcess, s3_backend: S3Backend, tmp_path: Path) -> None:
    s3 = proxy.boto3_client(region="us-east-1")
    bucket = unique_bucket("mpu")
    s3.create_bucket(Bucket=bucket)
    src = tmp_path / "big.bin"
    data = os.urandom(13 * MB + 12345)
    src.write_bytes(data)
    cfg = TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB, max_concurrency=4)
    mark = s3_backend.mark()
    key = "big files/ü+multipart.bin"
    s3.upload_file(str(src), bucket, key, Config=cfg)
    parts = _since(s3_backend, mark, lambda r: r.method == "PUT" and "partNumber=" in r.target)
    assert len(parts) == 3
    assert len(_since(s3_backend, mark, lambda r: r.method == "POST" and "uploads" in r.target)) == 1
    assert len(_since(s3_backend, mark, lambda r: r.method == "POST" and "uploadId=" in r.target)) == 1
    assert s3_backend.object_sha256(bucket, key) == sha256(data)
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(data)

    dst = tmp_path / "back.bin"
    mark = s3_backend.mark()
    s3.download_file(bucket, key, str(dst), Config=cfg)
    assert sha256(dst.read_bytes()) == sha256(data)
    ranged = _since(s3_backend, mark, lambda r: r.method == "GET" and r.header("range") is not None)
    assert len(ranged) >= 2  # downloaded in parts, concurrently

    # Low-level multipart API too, with an abort that leaves nothing behind.
    up = s3.create_multipart_upload(Bucket=bucket, Key="low level")["UploadId"]
    etags = []
    for n, piece in enumerate((data[: 5 * MB], data[5 * MB : 6 * MB]), start=1):
        etags.append(
            s3.upload_part(Bucket=bucket, Key="low level", UploadId=up, PartNumber=n, Body=piece)["ETag"]
        )
    listed = s3.list_parts(Bucket=bucket, Key="low level", UploadId=up)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="low level",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]},
    )
    assert s3_backend.object_sha256(bucket, "low level") == sha256(data[: 6 * MB])
    up2 = s3.create_multipart_upload(Bucket=bucket, Key="aborted")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="aborted", UploadId=up2, PartNumber=1, Body=b"x" * 1000)
    assert up2 in [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=up2)
    assert s3_backend.object_sha256(bucket, "aborted") is None


# --- dotted buckets ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["virtual", "path", "auto"])
def test_dotted_bucket(proxy: ProxyProcess, s3_backend: S3Backend, style: str) -> None:
    s3 = proxy.boto3_client(region="us-east-1", addressing_style=style)
    bucket = f"my.dotted.bucket.{unique_bucket(style)}"
    mark = s3_backend.mark()
    s3.create_bucket(Bucket=bucket)
    body = _body(bucket)
    s3.put_object(Bucket=bucket, Key="dir/a b+c", Body=body)
    assert sha256(s3.get_object(Bucket=bucket, Key="dir/a b+c")["Body"].read()) == sha256(body)
    assert s3_backend.object_sha256(bucket, "dir/a b+c") == sha256(body)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["dir/a b+c"]
    s3.delete_object(Bucket=bucket, Key="dir/a b+c")
    s3.delete_bucket(Bucket=bucket)
    us = s3_backend.endpoint("us-east-1")
    reqs = s3_backend.upstream_requests(mark)
    assert reqs
    for r in reqs:  # a dotted bucket can never be a vpce host label: path style upstream, always
        assert _host(r) == us.bucket_host and r.target.startswith(f"/{bucket}"), (r.host, r.target)


# --- the proxy's `addressing: virtual` ---------------------------------------------------------


@pytest.mark.parametrize("style", ["virtual", "path"])
def test_proxy_virtual_addressing(
    proxy_factory: Callable[..., ProxyProcess], s3_backend: S3Backend, style: str
) -> None:
    proxy = proxy_factory({"addressing": "virtual"})
    s3 = proxy.boto3_client(region="us-east-1", addressing_style=style)
    us = s3_backend.endpoint("us-east-1")
    safe = unique_bucket("virt")
    dotted = f"virt.dotted.{unique_bucket(style)}"
    direct = s3_backend.direct_client()
    for bucket in (safe, dotted):
        oracle = unique_bucket("virt-oracle")
        direct.create_bucket(Bucket=oracle)
        mark = s3_backend.mark()
        s3.create_bucket(Bucket=bucket)
        for key in ("plain.txt", "a b/+c%~=&/ü", "trailing/", "x//y"):
            body = _body(key)
            put_mark = s3_backend.mark()
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            put = _since(s3_backend, put_mark, lambda r: r.method == "PUT")
            quoted = quote(key, safe="/~")
            assert [r.target.split("?")[0] for r in put] == [
                f"/{quoted}" if bucket == safe else f"/{bucket}/{quoted}"
            ], key
            direct.put_object(Bucket=oracle, Key=key, Body=body)
            seen = _observe(s3, bucket, key)
            assert seen == _observe(direct, oracle, key), key  # see SEAWEED_FOLDS
            if key not in SEAWEED_FOLDS:
                assert seen["sha"] == sha256(body) == s3_backend.object_sha256(bucket, key), key
        listing = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
        assert [o["Key"] for o in listing["Contents"]] == ["plain.txt", "plain.txt.copy"]
        assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["a b/", "trailing/", "x/"]
        s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "a b/+c%~=&/ü"})
        assert s3_backend.object_sha256(bucket, "copy") == sha256(_body("a b/+c%~=&/ü"))
        reqs = s3_backend.upstream_requests(mark)
        assert reqs
        for r in reqs:
            if bucket == safe:
                assert _host(r) == f"{safe}.{us.bucket_host}", (r.method, r.target, r.host)
                assert not r.target.startswith(f"/{safe}"), r.target
            else:
                assert _host(r) == us.bucket_host and r.target.startswith(f"/{bucket}"), (r.host, r.target)
    # ListBuckets has no bucket: the plain bucket.VPCE host.
    mark = s3_backend.mark()
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert safe in names and dotted in names
    assert [(_host(r), r.target) for r in s3_backend.upstream_requests(mark)] == [(us.bucket_host, "/")]


# --- legacy global host and a second region ----------------------------------------------------


@pytest.mark.parametrize("style", ["virtual", "path"])
def test_legacy_global_host_default_region(proxy: ProxyProcess, s3_backend: S3Backend, style: str) -> None:
    s3 = proxy.boto3_client(addressing_style=style)  # no region: boto3's us-east-1 legacy global host
    sent = record_urls(s3)
    bucket = unique_bucket("legacy")
    mark = s3_backend.mark()
    s3.create_bucket(Bucket=bucket)
    body = _body(bucket)
    s3.put_object(Bucket=bucket, Key="k ü+1", Body=body)
    assert sha256(s3.get_object(Bucket=bucket, Key="k ü+1")["Body"].read()) == sha256(body)
    assert s3_backend.object_sha256(bucket, "k ü+1") == sha256(body)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]

    loc = s3.get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert loc in (None, "", "us-east-1")

    client_hosts = {urlsplit(u).hostname for _, u in sent}
    expected = (
        {f"{bucket}.s3.amazonaws.com", "s3.amazonaws.com"} if style == "virtual" else {"s3.amazonaws.com"}
    )
    assert client_hosts == expected
    us = s3_backend.endpoint("us-east-1")
    reqs = s3_backend.upstream_requests(mark)
    assert len(reqs) == len(sent)
    for r in reqs:
        assert _host(r) == us.bucket_host, (r.method, r.target, r.host)
        assert scope_region(r) == "us-east-1", r.header("authorization")


@pytest.mark.parametrize("style", ["virtual", "path"])
def test_second_region_eu_west_1(proxy: ProxyProcess, s3_backend: S3Backend, style: str) -> None:
    s3 = proxy.boto3_client(region="eu-west-1", addressing_style=style)
    sent = record_urls(s3)
    bucket = unique_bucket("eu")
    mark = s3_backend.mark()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    data = os.urandom(200_000)
    s3.put_object(Bucket=bucket, Key="eu/ü obj+1", Body=data)
    got = s3.get_object(Bucket=bucket, Key="eu/ü obj+1", Range="bytes=10-19")["Body"].read()
    assert got == data[10:20]
    assert sha256(s3.get_object(Bucket=bucket, Key="eu/ü obj+1")["Body"].read()) == sha256(data)
    assert s3_backend.object_sha256(bucket, "eu/ü obj+1", region="eu-west-1") == sha256(data)
    s3.put_object_tagging(Bucket=bucket, Key="eu/ü obj+1", Tagging={"TagSet": [{"Key": "r", "Value": "eu"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="eu/ü obj+1")["TagSet"] == [{"Key": "r", "Value": "eu"}]

    hosts = {urlsplit(u).hostname for _, u in sent}
    assert all(h is not None and h.endswith("s3.eu-west-1.amazonaws.com") for h in hosts), hosts
    eu = s3_backend.endpoint("eu-west-1")
    reqs = s3_backend.upstream_requests(mark)
    assert len(reqs) == len(sent)
    for r in reqs:
        assert _host(r) == eu.bucket_host, (r.method, r.target, r.host)
        assert scope_region(r) == "eu-west-1", r.header("authorization")


def test_global_and_regional_clients_share_objects(proxy: ProxyProcess, s3_backend: S3Backend) -> None:
    """A legacy-global client and a regional one, same bucket: both see the other's bytes."""
    glob = proxy.boto3_client()
    reg = proxy.boto3_client(region="us-east-1", config=Config(s3={"addressing_style": "path"}))
    bucket = unique_bucket("share")
    glob.create_bucket(Bucket=bucket)
    a, b = os.urandom(5000), os.urandom(7000)
    glob.put_object(Bucket=bucket, Key="from-global", Body=a)
    reg.put_object(Bucket=bucket, Key="from-regional", Body=b)
    assert sha256(reg.get_object(Bucket=bucket, Key="from-global")["Body"].read()) == sha256(a)
    assert sha256(glob.get_object(Bucket=bucket, Key="from-regional")["Body"].read()) == sha256(b)
