"""`s3proxy explain`: botocore is the oracle for what goes upstream, and no input ends in a traceback.

The key property: the request botocore sends to a default S3 name, pasted into `explain` as `-X`, `-H` and
the URL (exactly what an operator copies from a debug log), comes out as the request botocore itself sends
when configured with the vpce `endpoint_url` — same URL, same Host, same `Authorization` byte for byte (or
the same presigned query). Most tests call `s3proxy.cli.main` in-process; a few run the installed console
script to prove exit codes and that no traceback ever reaches the user.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config as BotoConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3proxy import cli

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//+token=="
OTHER_AKID = "AKIAUNKNOWNKEY000000"
FROZEN = datetime.datetime(2024, 7, 1, 12, 30, 45)
VPCE_ID = "vpce-1a2b3c4d-5e6f"
ACCOUNT = "123456789012"

REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "sa-east-1",
    "cn-north-1",
    "us-gov-west-1",
]

S3PROXY = Path(sys.executable).with_name("s3proxy")


def vpce_domain(region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{VPCE_ID}.s3.{region}.vpce.{suffix}"


def write_config(path: Path, *, addressing: str = "path", extra: str = "") -> Path:
    endpoints = "\n".join(f"  {r}: {vpce_domain(r)}" for r in REGIONS)
    path.write_text(
        f"""\
endpoints:
{endpoints}
default_region: us-east-1
addressing: {addressing}
buckets:
  legacy-reports: eu-west-1
signing:
  mode: keyring
  keys:
    - access_key_id: {AKID}
      secret_access_key: {SECRET}
{extra}""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cfg")
    return {a: write_config(d / f"{a}.yaml", addressing=a) for a in ("path", "virtual")}


@pytest.fixture
def cfg(configs: dict[str, Path]) -> str:
    return str(configs["path"])


# -- botocore capture ------------------------------------------------------------------------------------


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        return iter(())

    def read(self, *_: Any, **__: Any) -> bytes:
        return b""


@dataclasses.dataclass(frozen=True)
class Sent:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


_SESSION = botocore.session.get_session()
_CLIENTS: dict[str, tuple[Any, list[Sent]]] = {}


def _client(
    service: str, region: str, endpoint_url: str | None, token: str | None, cfg: dict[str, Any]
) -> Any:
    """A cached botocore client whose requests are recorded by a before-send handler, never sent."""
    key = json.dumps([service, region, endpoint_url, token, cfg], sort_keys=True)
    if key not in _CLIENTS:
        client = _SESSION.create_client(
            service,
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=AKID,
            aws_secret_access_key=SECRET,
            aws_session_token=token,
            config=BotoConfig(retries={"max_attempts": 1}, **cfg),
        )
        sent: list[Sent] = []

        def before_send(request: Any, **_: Any) -> AWSResponse:
            hdrs = tuple((k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items())
            sent.append(Sent(request.method, request.url, hdrs))
            return AWSResponse(request.url, 200, {}, _Raw())

        client.meta.events.register("before-send", before_send)
        _CLIENTS[key] = (client, sent)
    return _CLIENTS[key]


Call = Callable[[Any], Any]


def capture(
    call: Call,
    region: str,
    endpoint_url: str | None = None,
    *,
    service: str = "s3",
    token: str | None = None,
    cfg: dict[str, Any] | None = None,
) -> Sent:
    """The first request botocore would send for `call(client)` at the frozen time, without sending it."""
    client, sent = _client(service, region, endpoint_url, token, cfg or {})
    sent.clear()
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        try:
            call(client)
        except Exception:  # the fake 200 response may not parse; only the request matters
            if not sent:
                raise
    assert sent, "botocore sent nothing"
    return sent[0]


def presign(
    op: str,
    params: dict[str, Any],
    region: str,
    endpoint_url: str | None = None,
    *,
    token: str | None = None,
    cfg: dict[str, Any] | None = None,
) -> str:
    # botocore presigns with SigV2 unless told s3v4; SigV4 is what must be re-signed.
    client, _ = _client("s3", region, endpoint_url, token, {"signature_version": "s3v4", **(cfg or {})})
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        return str(client.generate_presigned_url(op, Params=params, ExpiresIn=3600))


# -- running explain -------------------------------------------------------------------------------------


def explain_args(config: str, sent: Sent, *extra: str) -> list[str]:
    """What an operator pastes: the method, every header botocore sent, the URL."""
    args = ["explain", "--config", config, *extra, "-X", sent.method]
    for k, v in sent.headers:
        args += ["-H", f"{k}: {v}"]
    return [*args, sent.url]


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, dict[str, Any]]:
    code, out, err = run(capsys, [*args[:1], "--json", *args[1:]])
    assert out.count("\n") == 1, (out, err)
    obj = json.loads(out)
    assert isinstance(obj, dict)
    return code, obj


def upstream_header(obj: dict[str, Any], name: str) -> str | None:
    values = [v for k, v in obj["headers"] if k.lower() == name.lower()]
    assert len(values) <= 1, f"{name} sent {len(values)} times"
    return values[0] if values else None


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        # Neither in a form JSON or a URL could have re-encoded it.
        assert SECRET.replace("/", "%2F") not in text and SECRET.replace("/", "\\/") not in text


def _call_get(key: str, bucket: str = "my-bucket") -> Call:
    return lambda c: c.get_object(Bucket=bucket, Key=key)


def _call_put(key: str) -> Call:
    return lambda c: c.put_object(Bucket="my-bucket", Key=key, Body=b"hello world")


# -- the oracle table: header auth -----------------------------------------------------------------------

KEYS = [
    "plain.txt",
    "a b+c/~d",
    "percent%25literal/100%",
    "unicode/ключ/日本語.txt",
    "emoji-😀",
    "//double//slash",
    "dir/./dot/../x",
    "trailing/",
    "a=b&c;d,e$f@g:h",
    "question?mark#hash",
    "tilde~and*star'quote(paren)!",
    "tab\tand\u00a0nbsp",
    '<xml>&amp;"q"',
    "x" * 900,
]


def _arn(c: Any, name: str = "my-ap") -> str:
    region = c.meta.region_name
    partition = (
        "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    )
    return f"arn:{partition}:s3:{region}:{ACCOUNT}:accesspoint/{name}"


# (name, service, vpce prefix, call). Each call is made against every region and client style below.
CALLS: list[tuple[str, str, str, Call]] = [
    *((f"get {k[:40]!r}", "s3", "bucket", _call_get(k)) for k in KEYS),
    *(
        (
            f"put {k[:40]!r}",
            "s3",
            "bucket",
            _call_put(k),
        )
        for k in KEYS[:6]
    ),
    ("put empty body", "s3", "bucket", lambda c: c.put_object(Bucket="my-bucket", Key="e", Body=b"")),
    *(
        (
            f"put checksum {alg}",
            "s3",
            "bucket",
            (
                lambda a: (
                    lambda c: c.put_object(
                        Bucket="my-bucket", Key="ck", Body=b"x" * 70000, ChecksumAlgorithm=a
                    )
                )
            )(alg),
        )
        for alg in ("CRC32", "SHA1", "SHA256")  # CRC32C and CRC64NVME need awscrt
    ),
    (
        "put md5+metadata+class",
        "s3",
        "bucket",
        lambda c: c.put_object(
            Bucket="my-bucket",
            Key="m e",
            Body=b"data",
            ContentMD5="jXd/OF09/siBXSD3SWAm3A==",
            Metadata={"note": "  spaced   value  ", "x": "a,b;c", "empty": ""},
            ContentType="text/plain; charset=utf-8",
            CacheControl="no-cache",
            StorageClass="STANDARD_IA",
            Tagging="a=b&c=d e",
            ServerSideEncryption="AES256",
        ),
    ),
    (
        "put odd metadata whitespace",
        "s3",
        "bucket",
        lambda c: c.put_object(
            Bucket="my-bucket",
            Key="w",
            Body=b"d",
            # botocore allows ASCII metadata only; tabs and runs of spaces are what SigV4 trims.
            Metadata={"tab": "\ta\t\tb\t", "spaces": " x   y ", "mixed": "a \t b"},
        ),
    ),
    (
        "get range+version+conditional",
        "s3",
        "bucket",
        lambda c: c.get_object(
            Bucket="my-bucket", Key="k", Range="bytes=0-9", VersionId="v+1/=", IfNoneMatch='"etag"'
        ),
    ),
    (
        "get response overrides",
        "s3",
        "bucket",
        lambda c: c.get_object(
            Bucket="my-bucket",
            Key="k",
            ResponseContentDisposition='attachment; filename="a b+c.txt"',
            ResponseContentType="text/plain; charset=utf-8",
        ),
    ),
    ("head object", "s3", "bucket", lambda c: c.head_object(Bucket="my-bucket", Key="a b")),
    ("head bucket", "s3", "bucket", lambda c: c.head_bucket(Bucket="my-bucket")),
    ("delete object", "s3", "bucket", lambda c: c.delete_object(Bucket="my-bucket", Key="x+y")),
    (
        "list v2 odd prefix",
        "s3",
        "bucket",
        lambda c: c.list_objects_v2(Bucket="my-bucket", Prefix="a b/+%/~/ключ", Delimiter="/", MaxKeys=7),
    ),
    (
        "list v2 token",
        "s3",
        "bucket",
        lambda c: c.list_objects_v2(Bucket="my-bucket", ContinuationToken="1x+/=abc", StartAfter="a%2Fb"),
    ),
    ("list v1", "s3", "bucket", lambda c: c.list_objects(Bucket="my-bucket", Prefix="", Marker="m a")),
    ("list versions", "s3", "bucket", lambda c: c.list_object_versions(Bucket="my-bucket", KeyMarker="k")),
    ("list buckets", "s3", "bucket", lambda c: c.list_buckets()),
    ("get location", "s3", "bucket", lambda c: c.get_bucket_location(Bucket="my-bucket")),
    ("get acl", "s3", "bucket", lambda c: c.get_object_acl(Bucket="my-bucket", Key="k")),
    (
        "put tagging",
        "s3",
        "bucket",
        lambda c: c.put_object_tagging(
            Bucket="my-bucket", Key="k", Tagging={"TagSet": [{"Key": "a b", "Value": "c&d"}]}
        ),
    ),
    ("get tagging", "s3", "bucket", lambda c: c.get_object_tagging(Bucket="my-bucket", Key="k k")),
    ("delete tagging", "s3", "bucket", lambda c: c.delete_object_tagging(Bucket="my-bucket", Key="k")),
    (
        "delete objects",
        "s3",
        "bucket",
        lambda c: c.delete_objects(
            Bucket="my-bucket", Delete={"Objects": [{"Key": "a"}, {"Key": "b c+d"}], "Quiet": True}
        ),
    ),
    (
        "create mpu",
        "s3",
        "bucket",
        lambda c: c.create_multipart_upload(Bucket="my-bucket", Key="big file", ContentType="video/mp4"),
    ),
    (
        "upload part",
        "s3",
        "bucket",
        lambda c: c.upload_part(
            Bucket="my-bucket", Key="big file", UploadId="u/+=", PartNumber=2, Body=b"x" * 10
        ),
    ),
    (
        "upload part copy",
        "s3",
        "bucket",
        lambda c: c.upload_part_copy(
            Bucket="my-bucket",
            Key="big file",
            UploadId="u1",
            PartNumber=1,
            CopySource={"Bucket": "src", "Key": "a b+c"},
            CopySourceRange="bytes=0-99",
        ),
    ),
    (
        "complete mpu",
        "s3",
        "bucket",
        lambda c: c.complete_multipart_upload(
            Bucket="my-bucket",
            Key="big file",
            UploadId="u/+=",
            MultipartUpload={"Parts": [{"ETag": '"e1"', "PartNumber": 1}]},
        ),
    ),
    (
        "abort mpu",
        "s3",
        "bucket",
        lambda c: c.abort_multipart_upload(Bucket="my-bucket", Key="big file", UploadId="u/+="),
    ),
    ("list parts", "s3", "bucket", lambda c: c.list_parts(Bucket="my-bucket", Key="big file", UploadId="u1")),
    ("list mpus", "s3", "bucket", lambda c: c.list_multipart_uploads(Bucket="my-bucket", Prefix="p q")),
    (
        "copy object",
        "s3",
        "bucket",
        lambda c: c.copy_object(
            Bucket="my-bucket",
            Key="dst ü",
            CopySource={"Bucket": "src", "Key": "a b+c/ключ", "VersionId": "v1"},
            MetadataDirective="REPLACE",
            Metadata={"k": "v"},
        ),
    ),
    ("dotted bucket", "s3", "bucket", lambda c: c.get_object(Bucket="my.dotted.bucket", Key="k")),
    ("uppercase bucket", "s3", "bucket", lambda c: c.get_object(Bucket="My_Bucket", Key="k")),
    ("ip-like bucket", "s3", "bucket", lambda c: c.list_objects_v2(Bucket="192.168.5.4")),
    ("access point get", "s3", "accesspoint", lambda c: c.get_object(Bucket=_arn(c), Key="a b+c")),
    ("access point list", "s3", "accesspoint", lambda c: c.list_objects_v2(Bucket=_arn(c), Prefix="x y")),
    (
        "access point put",
        "s3",
        "accesspoint",
        lambda c: c.put_object(Bucket=_arn(c, "ap-2"), Key="k/ü", Body=b"body"),
    ),
    (
        "control list access points",
        "s3control",
        "control",
        lambda c: c.list_access_points(AccountId=ACCOUNT, Bucket="bucket-x", MaxResults=5),
    ),
    (
        "control public access block",
        "s3control",
        "control",
        lambda c: c.get_public_access_block(AccountId=ACCOUNT),
    ),
    (
        "control get access point",
        "s3control",
        "control",
        lambda c: c.get_access_point(AccountId=ACCOUNT, Name="my-ap"),
    ),
]

# How the *client* is configured: it never knows about the proxy, so any of these reach the same upstream.
CLIENT_STYLES: dict[str, dict[str, Any]] = {
    "auto": {},
    "path": {"s3": {"addressing_style": "path"}},
    "virtual": {"s3": {"addressing_style": "virtual"}},
    "regional-us-east-1": {"s3": {"us_east_1_regional_endpoint": "regional"}},
    "dualstack": {"s3": {"use_dualstack_endpoint": True}},
    "payload-signed": {
        "s3": {"payload_signing_enabled": True},
        "request_checksum_calculation": "when_required",
    },
    "when-required": {"request_checksum_calculation": "when_required"},
}
# What the vpce-configured SDK needs to send the same request (payload settings change the signature).
_SAME_PAYLOAD = ("payload-signed", "when-required")


def _want_cfg(style: str, addressing: str, service: str) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(CLIENT_STYLES[style]) if style in _SAME_PAYLOAD else {}
    if addressing == "virtual" and service == "s3":
        cfg["s3"] = {**cfg.get("s3", {}), "addressing_style": "virtual"}
    return cfg


def _oracle_cases() -> Iterator[Any]:
    # Every call in four regions (incl. China and GovCloud) and both proxy addressing modes; every client
    # style for a spread of calls; every region for a few.
    for name, service, prefix, call in CALLS:
        for region in ("us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"):
            for addressing in ("path", "virtual"):
                yield pytest.param(
                    name,
                    service,
                    prefix,
                    call,
                    region,
                    "auto",
                    addressing,
                    None,
                    id=f"{name}-{region}-auto-{addressing}",
                )
    for name, service, prefix, call in CALLS[::3]:
        for style in CLIENT_STYLES:
            for region in ("us-east-1", "ap-southeast-2"):
                yield pytest.param(
                    name,
                    service,
                    prefix,
                    call,
                    region,
                    style,
                    "path",
                    TOKEN,
                    id=f"{name}-{region}-{style}-token",
                )
    for name, service, prefix, call in CALLS[::7]:
        for region in REGIONS:
            for style in ("path", "virtual"):
                yield pytest.param(
                    name,
                    service,
                    prefix,
                    call,
                    region,
                    style,
                    "virtual",
                    None,
                    id=f"{name}-{region}-{style}-virtual",
                )


@pytest.mark.parametrize(
    ("name", "service", "prefix", "call", "region", "style", "addressing", "token"), list(_oracle_cases())
)
def test_explain_header_auth_equals_botocore_vpce(
    capsys: pytest.CaptureFixture[str],
    configs: dict[str, Path],
    name: str,
    service: str,
    prefix: str,
    call: Call,
    region: str,
    style: str,
    addressing: str,
    token: str | None,
) -> None:
    sent = capture(call, region, service=service, token=token, cfg=CLIENT_STYLES[style])
    assert ".vpce." not in sent.url
    want = capture(
        call,
        region,
        f"https://{prefix}.{vpce_domain(region)}",
        service=service,
        token=token,
        cfg=_want_cfg(style, addressing, service),
    )
    code, obj = run_json(capsys, explain_args(str(configs[addressing]), sent))
    assert code == 0, obj
    assert obj["action"] == "forward", obj
    assert obj["signing"] == "resigned", obj
    assert obj["region"] == region
    assert obj["endpoint"] == vpce_domain(region)
    assert obj["method"] == want.method
    assert obj["url"] == want.url
    assert upstream_header(obj, "Host") == urlsplit(want.url).hostname
    assert upstream_header(obj, "Authorization") == want.header("Authorization")
    # Every other header goes upstream as the client sent it (values as HTTP trims them), and each header
    # botocore signed for the vpce name carries the value it signed.
    got = {k.lower(): v for k, v in obj["headers"] if k.lower() != "host"}
    assert got == {k.lower(): v.strip() for k, v in sent.headers} | {
        "authorization": want.header("Authorization")
    }
    signed = (want.header("Authorization") or "").partition("SignedHeaders=")[2].partition(",")[0].split(";")
    assert "host" in signed
    for name in signed:
        if name != "host":
            assert got[name] == (want.header(name) or "").strip(), name
    assert_no_secret(json.dumps(obj))


# -- the oracle table: presigned URLs --------------------------------------------------------------------

PRESIGN_OPS: list[tuple[str, str, dict[str, Any]]] = [
    *(("GET", "get_object", {"Bucket": "my-bucket", "Key": k}) for k in KEYS),
    ("PUT", "put_object", {"Bucket": "my-bucket", "Key": "up load+/x"}),
    ("PUT", "put_object", {"Bucket": "my-bucket", "Key": "typed", "ContentType": "image/png"}),
    ("PUT", "upload_part", {"Bucket": "my-bucket", "Key": "big", "UploadId": "u/+=", "PartNumber": 3}),
    (
        "GET",
        "get_object",
        {"Bucket": "my-bucket", "Key": "k", "ResponseContentType": "text/plain; charset=utf-8"},
    ),
    ("GET", "get_object", {"Bucket": "my-bucket", "Key": "k", "VersionId": "a+b/c="}),
    ("GET", "list_objects_v2", {"Bucket": "my-bucket", "Prefix": "a b+c"}),
    ("HEAD", "head_object", {"Bucket": "my.dotted.bucket", "Key": "k"}),
    ("DELETE", "delete_object", {"Bucket": "my-bucket", "Key": "gone"}),
]


def _presign_cases() -> Iterator[Any]:
    for method, op, params in PRESIGN_OPS:
        for region in ("us-east-1", "eu-west-1", "cn-north-1"):
            for addressing in ("path", "virtual"):
                yield pytest.param(method, op, params, region, "auto", addressing, None)
    for method, op, params in PRESIGN_OPS[::2]:
        for style in ("path", "virtual", "regional-us-east-1", "dualstack"):
            yield pytest.param(method, op, params, "us-east-1", style, "path", TOKEN)
    for region in REGIONS:
        yield pytest.param(
            "GET", "get_object", {"Bucket": "b-1", "Key": "a b"}, region, "virtual", "virtual", TOKEN
        )


@pytest.mark.parametrize(
    ("method", "op", "params", "region", "style", "addressing", "token"), list(_presign_cases())
)
def test_explain_presigned_url_equals_botocore_vpce(
    capsys: pytest.CaptureFixture[str],
    configs: dict[str, Path],
    method: str,
    op: str,
    params: dict[str, Any],
    region: str,
    style: str,
    addressing: str,
    token: str | None,
) -> None:
    url = presign(op, params, region, token=token, cfg=CLIENT_STYLES[style])
    assert "X-Amz-Signature=" in url and ".vpce." not in url
    want = presign(
        op,
        params,
        region,
        f"https://bucket.{vpce_domain(region)}",
        token=token,
        cfg=_want_cfg(style, addressing, "s3"),
    )
    # A presigned URL that signs Content-Type needs the client to send it (X-Amz-SignedHeaders says so).
    extra = [("Content-Type", params["ContentType"])] if "ContentType" in params else []
    args = ["explain", "--config", str(configs[addressing]), "-X", method]
    code, obj = run_json(capsys, [*args, *(f"-H{k}: {v}" for k, v in extra), url])
    assert code == 0, obj
    assert (obj["action"], obj["signing"]) == ("forward", "resigned"), obj
    assert obj["url"] == want
    assert obj["headers"] == [["Host", urlsplit(want).hostname], *map(list, extra)]
    assert_no_secret(json.dumps(obj))


# -- how operators paste headers -------------------------------------------------------------------------


def _put_with_metadata(c: Any) -> Any:
    return c.put_object(
        Bucket="my-bucket",
        Key="a b",
        Body=b"x",
        Metadata={"note": "  two  spaces  "},
        ContentType="text/plain",
    )


PASTE_STYLES: dict[str, Callable[[str, str], list[str]]] = {
    "as logged": lambda k, v: ["-H", f"{k}: {v}"],
    "no space after colon": lambda k, v: ["-H", f"{k}:{v}"],
    "lower-case names": lambda k, v: ["-H", f"{k.lower()}: {v}"],
    "extra outer whitespace": lambda k, v: ["-H", f"  {k}  :\t {v} \t"],
    "CRLF from a copied log": lambda k, v: ["-H", f"{k}: {v}\r\n"],
    "long options": lambda k, v: [f"--header={k}: {v}"],
}


@pytest.mark.parametrize("paste", PASTE_STYLES, ids=list(PASTE_STYLES))
def test_header_paste_styles_sign_the_same(capsys: pytest.CaptureFixture[str], cfg: str, paste: str) -> None:
    sent = capture(_put_with_metadata, "eu-west-1", cfg={"request_checksum_calculation": "when_required"})
    want = capture(
        _put_with_metadata,
        "eu-west-1",
        f"https://bucket.{vpce_domain('eu-west-1')}",
        cfg={"request_checksum_calculation": "when_required"},
    )
    args = ["explain", "--config", cfg, "--request", "PUT"]
    for k, v in sent.headers:
        args += PASTE_STYLES[paste](k, v)
    code, obj = run_json(capsys, [*args, sent.url])
    assert code == 0, obj
    assert upstream_header(obj, "Authorization") == want.header("Authorization")
    # Inner spacing is kept as sent (SigV4 collapses it only for the signature); the outer is dropped.
    assert upstream_header(obj, "x-amz-meta-note") == "two  spaces"


def test_authorization_without_spaces_after_commas_is_accepted(
    capsys: pytest.CaptureFixture[str], cfg: str
) -> None:
    # Some SDKs (Java v1, MinIO clients) write the Authorization parameters without spaces.
    get = _call_get("a b")
    sent = capture(get, "us-west-2")
    want = capture(get, "us-west-2", f"https://bucket.{vpce_domain('us-west-2')}")
    compact = (sent.header("Authorization") or "").replace(", ", ",")
    headers = [(k, compact if k == "Authorization" else v) for k, v in sent.headers]
    code, obj = run_json(capsys, explain_args(cfg, Sent(sent.method, sent.url, tuple(headers))))
    assert code == 0, obj
    assert upstream_header(obj, "Authorization") == want.header("Authorization")


def test_host_header_given_explicitly(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    # curl -v and mitmproxy show the Host line; pasting it as well changes nothing.
    sent = capture(_call_get("k"), "us-west-2")
    want = capture(_call_get("k"), "us-west-2", f"https://bucket.{vpce_domain('us-west-2')}")
    with_host = Sent(sent.method, sent.url, (("Host", urlsplit(sent.url).netloc), *sent.headers))
    code, obj = run_json(capsys, explain_args(cfg, with_host))
    assert code == 0 and upstream_header(obj, "Authorization") == want.header("Authorization")
    assert upstream_header(obj, "Host") == f"bucket.{vpce_domain('us-west-2')}"


def test_explicit_default_port_in_url_is_not_in_the_signed_host(
    capsys: pytest.CaptureFixture[str], cfg: str
) -> None:
    # botocore signs `host` without a default port; an explicit :443 in the pasted URL must not change that.
    sent = capture(_call_get("k"), "us-west-2")
    want = capture(_call_get("k"), "us-west-2", f"https://bucket.{vpce_domain('us-west-2')}")
    url = sent.url.replace(".amazonaws.com/", ".amazonaws.com:443/", 1)
    code, obj = run_json(capsys, explain_args(cfg, Sent(sent.method, url, sent.headers)))
    assert code == 0, obj
    assert obj["url"] == want.url
    assert upstream_header(obj, "Authorization") == want.header("Authorization")


# -- what signing did: resigned, unchanged, refused ------------------------------------------------------


def _signed_get(region: str = "us-west-2", token: str | None = None) -> Sent:
    return capture(_call_get("a b"), region, token=token)


def _with(sent: Sent, name: str, value: str | None) -> Sent:
    """`sent` with header `name` replaced (or removed for None)."""
    headers = tuple((k, v) for k, v in sent.headers if k.lower() != name.lower())
    return Sent(sent.method, sent.url, headers if value is None else (*headers, (name, value)))


def _bad_sig(sent: Sent) -> Sent:
    auth = sent.header("Authorization") or ""
    return _with(sent, "Authorization", auth[:-4] + ("0000" if not auth.endswith("0000") else "1111"))


REFUSALS: list[tuple[str, Callable[[], Sent], int, str]] = [
    ("tampered signature", lambda: _bad_sig(_signed_get()), 403, "SignatureDoesNotMatch"),
    (
        "tampered date",
        lambda: _with(_signed_get(), "X-Amz-Date", "20240701T123046Z"),
        403,
        "SignatureDoesNotMatch",
    ),
    (
        "tampered key in URL",
        lambda: dataclasses.replace(_signed_get(), url=_signed_get().url.replace("a%20b", "a%20c")),
        403,
        "SignatureDoesNotMatch",
    ),
    (
        "unknown access key",
        lambda: _with(
            _signed_get(),
            "Authorization",
            (_signed_get().header("Authorization") or "").replace(AKID, OTHER_AKID),
        ),
        403,
        "InvalidAccessKeyId",
    ),
    (
        "malformed authorization",
        lambda: _with(_signed_get(), "Authorization", "AWS4-HMAC-SHA256 Credential=x"),
        400,
        "AuthorizationHeaderMalformed",
    ),
    (
        "missing content sha256",
        lambda: _with(_signed_get(), "X-Amz-Content-SHA256", None),
        400,
        "InvalidRequest",
    ),
    (
        "bad x-amz-date",
        lambda: _with(_signed_get(), "X-Amz-Date", "yesterday"),
        400,
        "AuthorizationHeaderMalformed",
    ),
    (
        "sigv4a",
        lambda: _with(
            _signed_get(),
            "Authorization",
            "AWS4-ECDSA-P256-SHA256 Credential=AKIA/20240701/s3/aws4_request, SignedHeaders=host, "
            "Signature=00",
        ),
        400,
        "InvalidRequest",
    ),
    ("unknown scheme", lambda: _with(_signed_get(), "Authorization", "Bearer abc"), 400, "InvalidArgument"),
    (
        "two auth mechanisms",
        lambda: dataclasses.replace(_signed_get(), url=_signed_get().url + "?X-Amz-Signature=00"),
        400,
        "InvalidArgument",
    ),
]


@pytest.mark.parametrize(("name", "make", "status", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_exit_1_with_the_s3_error_and_no_upstream(
    capsys: pytest.CaptureFixture[str], cfg: str, name: str, make: Callable[[], Sent], status: int, code: str
) -> None:
    sent = make()
    rc, obj = run_json(capsys, explain_args(cfg, sent))
    assert rc == 1
    assert (obj["action"], obj["status"], obj["code"], obj["signing"]) == (
        "reject",
        status,
        code,
        "refused",
    ), obj
    assert obj["url"] is None and obj["headers"] == []
    assert obj["endpoint"] == vpce_domain("us-west-2")  # where it would have gone
    rc, out, err = run(capsys, explain_args(cfg, sent))
    assert rc == 1 and err == ""
    assert f"error:     {status} {code}: " in out and "signing:   refused" in out
    assert "upstream:" not in out
    assert_no_secret(out, json.dumps(obj))


def test_presigned_url_tampered_or_foreign_key_is_refused(
    capsys: pytest.CaptureFixture[str], cfg: str
) -> None:
    url = presign("get_object", {"Bucket": "my-bucket", "Key": "k"}, "us-west-2")
    for bad, code in [
        (url.replace("/k?", "/j?"), "SignatureDoesNotMatch"),
        (url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200"), "SignatureDoesNotMatch"),
        (url.replace(AKID, OTHER_AKID), "InvalidAccessKeyId"),
    ]:
        rc, obj = run_json(capsys, ["explain", "--config", cfg, bad])
        assert (rc, obj["code"], obj["signing"]) == (1, code, "refused"), obj


def test_content_type_signed_in_presigned_url_must_be_sent(
    capsys: pytest.CaptureFixture[str], cfg: str
) -> None:
    url = presign("put_object", {"Bucket": "my-bucket", "Key": "k", "ContentType": "image/png"}, "us-west-2")
    rc, obj = run_json(capsys, ["explain", "--config", cfg, "-X", "PUT", url])
    assert (rc, obj["code"]) == (1, "SignatureDoesNotMatch")


@pytest.mark.parametrize(
    ("name", "method", "url", "headers", "note"),
    [
        ("anonymous", "GET", "https://my-bucket.s3.us-west-2.amazonaws.com/k", [], "anonymous"),
        (
            "sigv2 header",
            "GET",
            "https://my-bucket.s3.us-west-2.amazonaws.com/k",
            ["Authorization: AWS AKIAIOSFODNN7EXAMPLE:c2lnbmF0dXJl", "Date: Mon, 01 Jul 2024 12:30:45 GMT"],
            "SigV2",
        ),
        (
            "sigv2 query",
            "GET",
            "https://my-bucket.s3.us-west-2.amazonaws.com/k?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1720000000&Signature=abc%3D",
            [],
            "SigV2",
        ),
        (
            "post policy",
            "POST",
            "https://my-bucket.s3.us-west-2.amazonaws.com/",
            ["Content-Type: multipart/form-data; boundary=xyz"],
            "POST-policy",
        ),
    ],
)
def test_unchanged_forms_keep_their_headers(
    capsys: pytest.CaptureFixture[str],
    cfg: str,
    name: str,
    method: str,
    url: str,
    headers: list[str],
    note: str,
) -> None:
    args = ["explain", "--config", cfg, "-X", method, *(a for h in headers for a in ("-H", h)), url]
    rc, obj = run_json(capsys, args)
    assert rc == 0, obj
    assert (obj["action"], obj["signing"]) == ("forward", "unchanged")
    assert note in obj["signing_note"]
    host = f"bucket.{vpce_domain('us-west-2')}"
    assert obj["url"].startswith(f"https://{host}/my-bucket")
    assert obj["url"].partition("?")[2] == url.partition("?")[2]
    assert obj["headers"][0] == ["Host", host]
    assert obj["headers"][1:] == [list(map(str.strip, h.split(":", 1))) for h in headers]
    rc, out, _ = run(capsys, args[:1] + args[1:])
    assert "signing:   unchanged (" in out


def test_session_token_passes_through_and_is_signed(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    sent = _signed_get(token=TOKEN)
    want = capture(_call_get("a b"), "us-west-2", f"https://bucket.{vpce_domain('us-west-2')}", token=TOKEN)
    rc, obj = run_json(capsys, explain_args(cfg, sent))
    assert rc == 0
    assert upstream_header(obj, "X-Amz-Security-Token") == TOKEN
    assert upstream_header(obj, "Authorization") == want.header("Authorization")


def test_hop_by_hop_headers_do_not_go_upstream(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    sent = _signed_get()
    extra = (("Proxy-Authorization", "Basic dTpw"), ("Proxy-Connection", "keep-alive"))
    rc, obj = run_json(capsys, explain_args(cfg, Sent(sent.method, sent.url, (*sent.headers, *extra))))
    assert rc == 0
    assert {k.lower() for k, _ in obj["headers"]}.isdisjoint({"proxy-authorization", "proxy-connection"})
    assert not any(k.lower().startswith("x-forwarded") for k, _ in obj["headers"])


# -- families and garbage hosts (anonymous requests: the rewrite alone) ----------------------------------

V = {r: vpce_domain(r) for r in REGIONS}
LONG_LABEL = "a" * 64
FAMILIES: list[tuple[str, str, str, str | None, str | None]] = [
    # (URL, action, family, region, upstream URL for forward)
    (
        "https://my-bucket.s3.us-west-2.amazonaws.com/a%2Bb//c/./d?x=1&y",
        "forward",
        "virtual-hosted",
        "us-west-2",
        f"https://bucket.{V['us-west-2']}/my-bucket/a%2Bb//c/./d?x=1&y",
    ),
    (
        "http://my-bucket.s3.us-west-2.amazonaws.com/k?",
        "forward",
        "virtual-hosted",
        "us-west-2",
        f"https://bucket.{V['us-west-2']}/my-bucket/k?",
    ),
    (
        "https://s3-eu-west-1.amazonaws.com/my-bucket/k",
        "forward",
        "path-style",
        "eu-west-1",
        f"https://bucket.{V['eu-west-1']}/my-bucket/k",
    ),
    (
        "https://s3.dualstack.eu-west-1.amazonaws.com/my-bucket/k",
        "forward",
        "path-style",
        "eu-west-1",
        f"https://bucket.{V['eu-west-1']}/my-bucket/k",
    ),
    (
        "https://my-bucket.s3.dualstack.sa-east-1.amazonaws.com/%E2%9C%93",
        "forward",
        "virtual-hosted",
        "sa-east-1",
        f"https://bucket.{V['sa-east-1']}/my-bucket/%E2%9C%93",
    ),
    (
        "https://legacy-reports.s3.amazonaws.com/k",
        "forward",
        "virtual-hosted",
        "eu-west-1",
        f"https://bucket.{V['eu-west-1']}/legacy-reports/k",
    ),
    (
        "https://s3.amazonaws.com/legacy-reports/k",
        "forward",
        "path-style",
        "eu-west-1",
        f"https://bucket.{V['eu-west-1']}/legacy-reports/k",
    ),
    (
        "https://other.s3.amazonaws.com/k",
        "forward",
        "virtual-hosted",
        "us-east-1",
        f"https://bucket.{V['us-east-1']}/other/k",
    ),
    (
        "https://s3.amazonaws.com/",
        "forward",
        "list-buckets",
        "us-east-1",
        f"https://bucket.{V['us-east-1']}/",
    ),
    (
        "https://s3.cn-north-1.amazonaws.com.cn/b-1/k",
        "forward",
        "path-style",
        "cn-north-1",
        f"https://bucket.{V['cn-north-1']}/b-1/k",
    ),
    (
        "https://b-1.s3.us-gov-west-1.amazonaws.com/k",
        "forward",
        "virtual-hosted",
        "us-gov-west-1",
        f"https://bucket.{V['us-gov-west-1']}/b-1/k",
    ),
    (
        f"https://my-ap-{ACCOUNT}.s3-accesspoint.eu-west-1.amazonaws.com/k",
        "forward",
        "access-point",
        "eu-west-1",
        f"https://my-ap-{ACCOUNT}.accesspoint.{V['eu-west-1']}/k",
    ),
    (
        f"https://{ACCOUNT}.s3-control.eu-west-1.amazonaws.com/v20180820/accesspoint",
        "forward",
        "s3-control",
        "eu-west-1",
        f"https://{ACCOUNT}.control.{V['eu-west-1']}/v20180820/accesspoint",
    ),
    (
        "https://MY-BUCKET.S3.US-WEST-2.AMAZONAWS.COM./k",
        "forward",
        "virtual-hosted",
        "us-west-2",
        f"https://bucket.{V['us-west-2']}/my-bucket/k",
    ),
    (
        "https://b.s3.us-west-2.amazonaws.com:443/k#frag",
        "forward",
        "virtual-hosted",
        "us-west-2",
        f"https://bucket.{V['us-west-2']}/b/k",
    ),
    (
        "https://user:pw@b.s3.us-west-2.amazonaws.com/k",
        "forward",
        "virtual-hosted",
        "us-west-2",
        f"https://bucket.{V['us-west-2']}/b/k",
    ),
    (
        "https://b.s3.us-west-2.amazonaws.com/ключ",
        "forward",
        "virtual-hosted",
        "us-west-2",
        f"https://bucket.{V['us-west-2']}/b/%D0%BA%D0%BB%D1%8E%D1%87",
    ),
    # Not DNS-safe as a bucket label: path style even where virtual addressing is configured.
    (
        "https://under_score.s3.us-east-1.amazonaws.com/k",
        "forward",
        "virtual-hosted",
        "us-east-1",
        f"https://bucket.{V['us-east-1']}/under_score/k",
    ),
    # Refused: unsupported families, regions without an endpoint, and anything that is not S3.
    ("https://my-bucket.s3-fips.us-east-1.amazonaws.com/k", "reject", "fips", "us-east-1", None),
    ("https://my-bucket.s3-website-us-east-1.amazonaws.com/k", "reject", "website", "us-east-1", None),
    ("https://my-bucket.s3-website.eu-west-1.amazonaws.com/", "reject", "website", "eu-west-1", None),
    ("https://my-bucket.s3-accelerate.amazonaws.com/k", "reject", "accelerate", None, None),
    ("https://my-bucket.s3-accelerate.dualstack.amazonaws.com/k", "reject", "accelerate", None, None),
    ("https://mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com/k", "reject", "mrap", None, None),
    (
        "https://b--use1-az4--x-s3.s3express-use1-az4.us-east-1.amazonaws.com/k",
        "reject",
        "s3express",
        "us-east-1",
        None,
    ),
    (
        f"https://ap-{ACCOUNT}.op-01234567890123456.s3-outposts.us-west-2.amazonaws.com/k",
        "reject",
        "outposts",
        "us-west-2",
        None,
    ),
    (
        f"https://ol-{ACCOUNT}.s3-object-lambda.us-east-1.amazonaws.com/k",
        "reject",
        "object-lambda",
        "us-east-1",
        None,
    ),
    ("https://my-bucket.s3.eu-south-2.amazonaws.com/k", "reject", "virtual-hosted", "eu-south-2", None),
    ("https://my-bucket.s3.xx-fake-9.amazonaws.com/k", "reject", "virtual-hosted", "xx-fake-9", None),
    ("https://example.com/k", "reject", "not-s3", None, None),
    ("https://s3.amazonaws.com.evil.example/k", "reject", "not-s3", None, None),
    ("https://amazonaws.com/k", "reject", "not-s3", None, None),
    ("https://ec2.us-east-1.amazonaws.com/", "reject", "not-s3", None, None),
    ("https://1.2.3.4/k", "reject", "not-s3", None, None),
    ("https://1.2.3.4:8443/b/k", "reject", "not-s3", None, None),
    ("https://[::1]/k", "reject", "not-s3", None, None),
    ("https://[fd00::2]:443/k", "reject", "not-s3", None, None),
    ("https://localhost/k", "reject", "not-s3", None, None),
    (f"https://{LONG_LABEL}.s3.amazonaws.com/k", "reject", "not-s3", None, None),
    (f"https://{'a.' * 200}s3.amazonaws.com/k", "reject", "not-s3", None, None),
    (f"https://{'b' * 5000}.s3.us-east-1.amazonaws.com/k", "reject", "not-s3", None, None),
    ("https://-dash.s3.us-east-1.amazonaws.com/k", "reject", "not-s3", None, None),
    ("https://b..s3.us-east-1.amazonaws.com/k", "reject", "not-s3", None, None),
]


@pytest.mark.parametrize(
    ("url", "action", "family", "region", "upstream"), FAMILIES, ids=[f[0][:70] for f in FAMILIES]
)
def test_families_json_and_text(
    capsys: pytest.CaptureFixture[str],
    cfg: str,
    url: str,
    action: str,
    family: str,
    region: str | None,
    upstream: str | None,
) -> None:
    rc, obj = run_json(capsys, ["explain", "--config", cfg, url])
    assert (obj["action"], obj["family"]) == (action, family), obj
    assert rc == (0 if action == "forward" else 1)
    if region is not None:
        assert obj["region"] == region
    assert {"action", "family", "region", "endpoint", "method", "url", "headers"} <= obj.keys()
    if action == "forward":
        assert obj["url"] == upstream
        assert obj["endpoint"] == vpce_domain(obj["region"])
        assert obj["headers"] == [["Host", urlsplit(upstream).hostname]]
        assert "status" not in obj and "code" not in obj
    else:
        assert obj["url"] is None and obj["headers"] == []
        assert obj["status"] == 400 and obj["code"] and obj["message"]
        if family not in ("not-s3", "virtual-hosted"):
            assert family in obj["message"]  # names the family and why PrivateLink can't carry it
    rc2, out, err = run(capsys, ["explain", "--config", cfg, url])
    assert rc2 == rc and err == ""
    assert f"family:    {family}" in out and f"action:    {action}" in out
    if action == "forward":
        assert f"upstream:  GET {upstream}" in out
        assert f"endpoint:  {vpce_domain(obj['region'])} (vpce-1a2b3c4d)" in out
        assert f"region:    {obj['region']} (from {obj['region_source']})" in out
    else:
        assert f"error:     400 {obj['code']}: {obj['message']}" in out


def test_region_sources_are_named(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    sources = {}
    for url in [
        "https://b.s3.eu-west-1.amazonaws.com/k",
        "https://legacy-reports.s3.amazonaws.com/k",
        "https://b.s3.amazonaws.com/k",
    ]:
        sources[url] = run_json(capsys, ["explain", "--config", cfg, url])[1]["region_source"]
    # A client pointed at the legacy global name but signing for eu-west-1: the credential scope decides.
    get = _call_get("k", "eu-bucket")
    virtual = {"s3": {"addressing_style": "virtual"}}
    sent = capture(get, "eu-west-1", "https://s3.amazonaws.com", cfg=virtual)
    assert urlsplit(sent.url).hostname == "eu-bucket.s3.amazonaws.com"
    want = capture(get, "eu-west-1", f"https://bucket.{vpce_domain('eu-west-1')}")
    rc, obj = run_json(capsys, explain_args(cfg, sent))
    assert rc == 0 and obj["region"] == "eu-west-1"
    assert obj["region_source"] not in sources.values()
    assert upstream_header(obj, "Authorization") == want.header("Authorization")
    assert len(set(sources.values())) == 3, sources


def test_passthrough_is_explained(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "pt.yaml", extra="unsupported: {website: passthrough}\nunknown_region: passthrough\n"
    )
    for url, family in [
        ("https://b.s3-website-us-east-1.amazonaws.com/k", "website"),
        ("https://b.s3.eu-south-2.amazonaws.com/k", "virtual-hosted"),
    ]:
        rc, obj = run_json(capsys, ["explain", "--config", str(cfg), url])
        assert (rc, obj["action"], obj["family"], obj["signing"]) == (
            0,
            "passthrough",
            family,
            "unchanged",
        ), obj
        assert obj["url"] == url
        assert obj["headers"] == [["Host", urlsplit(url).hostname]]
    rc, obj = run_json(
        capsys, ["explain", "--config", str(cfg), "https://b.s3-fips.us-east-1.amazonaws.com/k"]
    )
    assert (rc, obj["action"]) == (1, "reject")


# -- usage errors: a clear message on stderr, exit 2, nothing on stdout ---------------------------------

OK_URL = "https://my-bucket.s3.us-west-2.amazonaws.com/k"
USAGE_ERRORS: list[tuple[str, list[str], str]] = [
    ("no url", [], "needs a URL"),
    ("url and har", ["--har", "/dev/null", OK_URL], "not both"),
    ("not a url", ["not-a-url"], "not an http(s) URL"),
    ("no scheme", ["my-bucket.s3.amazonaws.com/k"], "not an http(s) URL"),
    ("scheme-relative", ["//my-bucket.s3.amazonaws.com/k"], "not an http(s) URL"),
    ("ftp", ["ftp://my-bucket.s3.amazonaws.com/k"], "not an http(s) URL"),
    ("empty url", [""], "not an http(s) URL"),
    ("empty host", ["https:///k"], "not an http(s) URL"),
    ("only scheme", ["https://"], "not an http(s) URL"),
    ("port only", ["https://:443/k"], "not an http(s) URL"),
    ("bad port", ["https://my-bucket.s3.amazonaws.com:99999/k"], "not a valid URL"),
    ("port not a number", ["https://my-bucket.s3.amazonaws.com:https/k"], "not a valid URL"),
    ("unclosed ipv6", ["https://[::1/k"], "not a valid URL"),
    ("space in url", ["https://my-bucket.s3.amazonaws.com/a b"], "whitespace or control"),
    ("newline in url", ["https://my-bucket.s3.amazonaws.com/a\nb"], "whitespace or control"),
    ("huge url", ["https://my-bucket.s3.amazonaws.com/" + "k" * 20000], "longer than 16 KiB"),
    ("lower-case method", ["-X", "get", OK_URL], "not an HTTP method"),
    ("empty method", ["-X", "", OK_URL], "not an HTTP method"),
    ("method with space", ["-X", "G ET", OK_URL], "not an HTTP method"),
    ("non-ascii method", ["-X", "GÉT", OK_URL], "not an HTTP method"),
    ("header without colon", ["-H", "NoColon", OK_URL], "not a header"),
    ("header without name", ["-H", ": value", OK_URL], "not a header"),
    ("header name with space", ["-H", "Bad Name: v", OK_URL], "not a header"),
    ("header name non-ascii", ["-H", "Ünï: v", OK_URL], "not a header"),
    ("header with inner newline", ["-H", "X-A: a\r\nX-B: b", OK_URL], "line break"),
    ("header with NUL", ["-H", "X-A: a\0b", OK_URL], "line break or NUL"),
]


@pytest.mark.parametrize(("name", "args", "message"), USAGE_ERRORS, ids=[u[0] for u in USAGE_ERRORS])
@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_usage_errors(
    capsys: pytest.CaptureFixture[str],
    cfg: str,
    name: str,
    args: list[str],
    message: str,
    json_flag: list[str],
) -> None:
    rc, out, err = run(capsys, ["explain", "--config", cfg, *json_flag, *args])
    assert rc == 2
    assert out == ""
    assert err.startswith("s3proxy explain: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_curl_style_empty_header(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    rc, obj = run_json(
        capsys, ["explain", "--config", cfg, "-H", "X-Amz-Meta-Empty;", "-H", "X-Other:", OK_URL]
    )
    assert rc == 0
    assert obj["headers"][1:] == [["X-Amz-Meta-Empty", ""], ["X-Other", ""]]


def test_bad_option_is_an_argparse_error(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", "--config", cfg, "--no-such-flag", OK_URL])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_config_from_environment(
    capsys: pytest.CaptureFixture[str], cfg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3PROXY_CONFIG", cfg)
    rc, obj = run_json(capsys, ["explain", OK_URL])
    assert rc == 0 and obj["action"] == "forward"
    monkeypatch.delenv("S3PROXY_CONFIG")
    rc, out, err = run(capsys, ["explain", OK_URL])
    assert rc == 2 and out == "" and "--config FILE or set S3PROXY_CONFIG" in err


_EP = f"endpoints: {{us-east-1: {vpce_domain('us-east-1')}}}\n"
_KEY = f"  keys: [{{access_key_id: {AKID}, secret_access_key: {SECRET}}}]\n"
BAD_CONFIGS: list[tuple[str, str | None, str]] = [
    ("missing file", None, "cannot read"),
    ("empty file", "", "endpoints"),
    ("not yaml", "endpoints: [\n", "line"),
    ("binary", "\udcff\udcfe\x00", "not UTF-8"),
    ("top level list", "- a\n", "mapping"),
    (
        "bad endpoint name",
        "endpoints: {eu-west-1: vpce-0e25b8cdd720f900e.s3.amazonaws.com}\n",
        "endpoints.eu-west-1",
    ),
    (
        "endpoint region mismatch",
        f"endpoints: {{eu-west-1: {vpce_domain('us-east-1')}}}\n",
        "endpoints.eu-west-1",
    ),
    ("bad addressing", _EP + "addressing: sideways\n", "addressing"),
    ("unknown top-level key", _EP + "endpoint: {}\n", "did you mean"),
    ("bad unsupported", _EP + "unsupported: maybe\n", "unsupported"),
    ("bad mode", _EP + "signing:\n  mode: magic\n" + _KEY, "signing.mode"),
    (
        "secret as key id",
        _EP + f"signing:\n  keys: [{{access_key_id: {SECRET}, secret_access_key: {AKID}}}]\n",
        "access_key_id",
    ),
    (
        "secret as a list",
        _EP + f"signing:\n  keys: [{{access_key_id: {AKID}, secret_access_key: [{SECRET}]}}]\n",
        "secret_access_key",
    ),
    (
        "secret key typo",
        _EP + f"signing:\n  keys: [{{access_key_id: {AKID}, secret_acess_key: {SECRET}}}]\n",
        "did you mean",
    ),
    (
        "secret with extra key",
        _EP + f"signing:\n  keys: [{{access_key_id: {AKID}, secret_access_key: {SECRET}, x: 1}}]\n",
        "unknown key",
    ),
    (
        "key listed twice",
        _EP
        + "signing:\n  keys:\n"
        + f"    - {{access_key_id: {AKID}, secret_access_key: {SECRET}}}\n" * 2
        + f"    - {{access_key_id: {AKID}, secret_access_key: {SECRET}x}}\n",
        AKID,
    ),
    (
        "unterminated secret",
        _EP + f'signing:\n  keys: [{{access_key_id: {AKID}, secret_access_key: "{SECRET}}}]\n',
        "line",
    ),
    (
        "missing env secret",
        _EP + f"signing:\n  keys: [{{access_key_id: {AKID}, secret_access_key_env: S3PROXY_TEST_NOPE}}]\n",
        "S3PROXY_TEST_NOPE",
    ),
    (
        "unknown profile",
        _EP + "signing:\n  profiles: [s3proxy-test-no-such-profile]\n",
        "s3proxy-test-no-such-profile",
    ),
    (
        "proxy-identity open to all",
        _EP + "signing: {mode: proxy-identity}\naccess: {allow_clients: ['0.0.0.0/0']}\n",
        "proxy-identity",
    ),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_a_clear_error_without_secrets(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    text: str | None,
    message: str,
) -> None:
    # No real AWS files may leak in (profiles), and no secret may leak out.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("S3PROXY_TEST_NOPE", raising=False)
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    for flags in ([], ["--json"]):
        rc, out, err = run(capsys, ["explain", "--config", str(path), *flags, OK_URL])
        assert rc == 2 and out == ""
        assert err.startswith("s3proxy explain: ") and message in err, err
        assert str(path) in err and "Traceback" not in err
        assert_no_secret(err)


def test_config_directory_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = run(capsys, ["explain", "--config", str(tmp_path), OK_URL])
    assert rc == 2 and out == "" and "cannot read" in err


# -- HAR -------------------------------------------------------------------------------------------------


def har_entry(method: str, url: str, headers: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    return {
        "startedDateTime": "2024-07-01T12:30:45.000Z",
        "time": 1,
        "request": {
            "method": method,
            "url": url,
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": k, "value": v} for k, v in headers],
            "queryString": [],
            "headersSize": -1,
            "bodySize": 0,
        },
        "response": {
            "status": 200,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "headers": [],
            "content": {},
        },
        "cache": {},
        "timings": {"send": 0, "wait": 0, "receive": 0},
    }


def write_har(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(
        json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"}, "entries": entries}})
    )
    return path


def test_har_one_object_per_request_in_order(
    capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path
) -> None:
    calls = [
        ("us-west-2", lambda c: c.put_object(Bucket="my-bucket", Key="a b+c", Body=b"x" * 100)),
        ("eu-west-1", lambda c: c.list_objects_v2(Bucket="my-bucket", Prefix="p q")),
        ("us-east-1", lambda c: c.get_object(Bucket="my.dotted.bucket", Key="ключ")),
        ("us-east-1", lambda c: c.list_buckets()),
    ]
    entries, wants = [], []
    for region, call in calls:
        sent = capture(call, region)
        entries.append(har_entry(sent.method, sent.url, sent.headers))
        wants.append(capture(call, region, f"https://bucket.{vpce_domain(region)}"))
    url = presign("get_object", {"Bucket": "my-bucket", "Key": "p r"}, "eu-central-1")
    entries.append(har_entry("GET", url))
    entries.append(har_entry("GET", "https://example.com/not-s3"))
    entries.append(har_entry("GET", "not-a-url"))
    entries.append(har_entry("get", OK_URL))
    har = write_har(tmp_path / "app.har", entries)
    rc, out, err = run(capsys, ["explain", "--config", cfg, "--har", str(har)])
    assert rc == 1 and err == ""  # some entries would be refused
    objs = [json.loads(line) for line in out.splitlines()]
    assert [o["entry"] for o in objs] == list(range(len(entries)))
    for obj, want in zip(objs, wants, strict=False):
        assert (obj["action"], obj["signing"]) == ("forward", "resigned"), obj
        assert obj["url"] == want.url
        assert upstream_header(obj, "Authorization") == want.header("Authorization")
    presigned_want = presign(
        "get_object",
        {"Bucket": "my-bucket", "Key": "p r"},
        "eu-central-1",
        f"https://bucket.{vpce_domain('eu-central-1')}",
    )
    assert objs[4]["url"] == presigned_want
    assert (objs[5]["action"], objs[5]["family"]) == ("reject", "not-s3")
    for bad in objs[6:]:
        assert (bad["action"], bad["status"], bad["code"]) == ("reject", 400, "InvalidRequest")
        assert {"family", "region", "endpoint", "method", "url", "headers"} <= bad.keys()
    assert "not an http(s) URL" in objs[6]["message"] and "not an HTTP method" in objs[7]["message"]
    assert_no_secret(out)


def test_har_all_forwarded_exits_0(capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path) -> None:
    har = write_har(tmp_path / "ok.har", [har_entry("GET", OK_URL), har_entry("HEAD", OK_URL + "2")])
    rc, out, _ = run(capsys, ["explain", "--config", cfg, "--har", str(har)])
    assert rc == 0 and len(out.splitlines()) == 2


def test_har_empty_entries_prints_nothing(
    capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path
) -> None:
    rc, out, err = run(capsys, ["explain", "--config", cfg, "--har", str(write_har(tmp_path / "e.har", []))])
    assert (rc, out, err) == (0, "", "")


def test_har_http2_pseudo_headers(capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path) -> None:
    # Browser HTTP/2 captures carry the authority in ':authority' and no Host header.
    sent = capture(_call_get("k"), "us-west-2")
    host = urlsplit(sent.url).netloc
    pseudo = (
        (":method", "GET"),
        (":authority", host),
        (":scheme", "https"),
        (":path", urlsplit(sent.url).path),
    )
    har = write_har(tmp_path / "h2.har", [har_entry("GET", sent.url, (*pseudo, *sent.headers))])
    want = capture(_call_get("k"), "us-west-2", f"https://bucket.{vpce_domain('us-west-2')}")
    rc, out, _ = run(capsys, ["explain", "--config", cfg, "--har", str(har)])
    obj = json.loads(out)
    assert rc == 0 and upstream_header(obj, "Authorization") == want.header("Authorization")
    assert not any(k.startswith(":") for k, _ in obj["headers"])


def _req(**kw: Any) -> str:
    return json.dumps(
        {"log": {"entries": [{"request": {"method": "GET", "url": OK_URL, "headers": [], **kw}}]}}
    )


BAD_HARS: list[tuple[str, bytes, str]] = [
    ("empty file", b"", "empty"),
    ("only whitespace", b"  \n\t", "empty"),
    ("binary garbage", bytes(range(256)) * 4, "not UTF-8"),
    ("utf-16", '{"log": {"entries": []}}'.encode("utf-16"), "not UTF-8"),
    ("truncated json", b'{"log": {"entries": [', "invalid JSON"),
    ("not json", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid JSON"),
    ("nested too deep", b"[" * 200000 + b"]" * 200000, "nested too deeply"),
    ("top-level list", b"[]", "no log.entries"),
    ("top-level string", b'"log"', "no log.entries"),
    ("log is a list", b'{"log": []}', "no log.entries"),
    ("log is null", b'{"log": null}', "no log.entries"),
    ("no entries", b'{"log": {}}', "no log.entries"),
    ("entries is a mapping", b'{"log": {"entries": {}}}', "no log.entries"),
    ("entry not an object", b'{"log": {"entries": [1]}}', "entries[0].request is missing"),
    ("entry without request", b'{"log": {"entries": [{}]}}', "entries[0].request is missing"),
    ("request is a string", b'{"log": {"entries": [{"request": "GET /"}]}}', "entries[0].request is missing"),
    ("request without url", _req(url=None).encode(), "request.url is missing"),
    ("url is a number", _req(url=5).encode(), "request.url is missing"),
    ("method is a number", _req(method=1).encode(), "request.method"),
    ("headers is a mapping", _req(headers={"Host": "x"}).encode(), "request.headers is not a list"),
    ("header without value", _req(headers=[{"name": "Host"}]).encode(), "headers[0]"),
    ("header value a number", _req(headers=[{"name": "X", "value": 1}]).encode(), "headers[0]"),
    ("header is a list", _req(headers=[["Host", "x"]]).encode(), "headers[0]"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_HARS, ids=[b[0] for b in BAD_HARS])
def test_malformed_har(
    capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    har = tmp_path / "bad.har"
    har.write_bytes(data)
    rc, out, err = run(capsys, ["explain", "--config", cfg, "--har", str(har)])
    assert rc == 2
    assert out == ""  # checked whole before anything is printed
    assert err.startswith(f"s3proxy explain: {har}: ") and message in err, err
    assert err.count("\n") == 1


def test_malformed_second_entry_prints_nothing(
    capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path
) -> None:
    har = tmp_path / "half.har"
    har.write_text(json.dumps({"log": {"entries": [har_entry("GET", OK_URL), {"request": {}}]}}))
    rc, out, err = run(capsys, ["explain", "--config", cfg, "--har", str(har)])
    assert (rc, out) == (2, "") and "log.entries[1].request.url" in err


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_unreadable_har(capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path, where: str) -> None:
    path = tmp_path / "nope.har" if where == "missing" else tmp_path
    rc, out, err = run(capsys, ["explain", "--config", cfg, "--har", str(path)])
    assert (rc, out) == (2, "") and "cannot read HAR file" in err


# -- garbage never ends in a traceback -------------------------------------------------------------------

_HOSTS = st.sampled_from(
    [
        "my-bucket.s3.us-west-2.amazonaws.com",
        "s3.amazonaws.com",
        "my-bucket.s3.amazonaws.com",
        "s3.dualstack.eu-west-1.amazonaws.com",
        f"my-ap-{ACCOUNT}.s3-accesspoint.us-east-1.amazonaws.com",
        f"{ACCOUNT}.s3-control.us-east-1.amazonaws.com",
        "b.s3-fips.us-east-1.amazonaws.com",
        "s3.cn-north-1.amazonaws.com.cn",
        "1.2.3.4",
        "[::1]",
        "",
        "x" * 300,
        f"bucket.{vpce_domain('us-east-1')}",
    ]
)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_URLS = st.one_of(
    st.builds(
        lambda scheme, host, port, path, query: f"{scheme}://{host}{port}/{path}{query}",
        st.sampled_from(["https", "http", "HTTPS", "ftp", ""]),
        st.one_of(_HOSTS, _TEXT),
        st.sampled_from(["", ":443", ":8443", ":0", ":99999", ":x"]),
        _TEXT,
        st.one_of(st.just(""), _TEXT.map(lambda q: "?" + q)),
    ),
    _TEXT,
)
_AUTH = st.one_of(
    _TEXT,
    st.builds(
        lambda cred, signed, sig: (
            f"AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={signed}, Signature={sig}"
        ),
        st.one_of(_TEXT, st.just(f"{AKID}/20240701/us-west-2/s3/aws4_request"), st.just(f"{AKID}/2024/x")),
        st.one_of(_TEXT, st.just("host;x-amz-date"), st.just("")),
        st.one_of(_TEXT, st.just("0" * 64)),
    ),
)
_HEADER_NAMES = st.sampled_from(
    [
        "Authorization",
        "X-Amz-Date",
        "X-Amz-Content-SHA256",
        "Host",
        "Date",
        "Content-Type",
        "X-Amz-Security-Token",
        "X-Amz-Decoded-Content-Length",
        "Content-Length",
        "X-Amz-Meta-A",
    ]
)
_HEADERS = st.lists(
    st.one_of(
        st.tuples(_HEADER_NAMES, _TEXT).map(lambda h: f"{h[0]}: {h[1]}"),
        _AUTH.map(lambda a: f"Authorization: {a}"),
        _TEXT,
    ),
    max_size=6,
)


def _assert_clean(rc: int, out: str, err: str, json_mode: bool) -> None:
    assert rc in (0, 1, 2)
    assert "Traceback" not in out + err
    assert_no_secret(out, err)
    if rc == 2:
        assert out == "" and err.startswith("s3proxy explain: ")
    else:
        assert err == ""
        if json_mode:
            json.loads(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.one_of(st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE"]), _TEXT),
    url=_URLS,
    headers=_HEADERS,
    json_mode=st.booleans(),
)
def test_fuzz_explain_never_crashes(
    capsys: pytest.CaptureFixture[str], cfg: str, method: str, url: str, headers: list[str], json_mode: bool
) -> None:
    # `--opt=value` keeps a value that starts with '-' a value, as a shell user would have to write it.
    args = ["explain", "--config", cfg, *(["--json"] if json_mode else []), f"--request={method}"]
    args += [f"--header={h}" for h in headers]
    # argparse reads a leading '-' as an option: `--` keeps even such a URL positional, as a shell user would.
    rc, out, err = run(capsys, [*args, "--", url])
    _assert_clean(rc, out, err, json_mode)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_signed_requests(
    capsys: pytest.CaptureFixture[str], cfg: str, data: st.DataObject
) -> None:
    """A real signed request with one header value or the URL mangled: refused or forwarded, never a crash."""
    sent = capture(lambda c: c.put_object(Bucket="my-bucket", Key="k", Body=b"abc"), "us-west-2", token=TOKEN)
    i = data.draw(st.integers(0, len(sent.headers)))
    if i == len(sent.headers):
        url = data.draw(
            st.sampled_from([sent.url + "?", sent.url + "?a", sent.url.replace("/k", "/k%"), sent.url + "%"])
        )
        sent = Sent(sent.method, url, sent.headers)
    else:
        name, value = sent.headers[i]
        cut = data.draw(st.integers(0, len(value)))
        new = value[:cut] + data.draw(_TEXT) + value[cut + data.draw(st.integers(0, 5)) :]
        sent = _with(sent, name, new)
    rc, out, err = run(capsys, explain_args(cfg, sent, "--json"))
    _assert_clean(rc, out, err, True)
    if rc == 0:
        assert json.loads(out)["signing"] in ("resigned", "unchanged")


# -- proxy-identity ---------------------------------------------------------------------------------------

PROXY_AKID = "AKIAPROXYEXAMPLE0001"
PROXY_SECRET = "proxySecretKeyExample/0123456789abcdefghi"


def test_proxy_identity_resigns_as_the_proxy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The proxy's identity comes from botocore's chain: here the environment, with no AWS files to find.
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", PROXY_AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PROXY_SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = tmp_path / "pi.yaml"
    cfg.write_text(f"endpoints:\n  us-west-2: {vpce_domain('us-west-2')}\nsigning:\n  mode: proxy-identity\n")
    sent = _signed_get(token=TOKEN)
    rc, obj = run_json(capsys, explain_args(str(cfg), sent))
    assert (rc, obj["signing"]) == (0, "resigned"), obj
    auth = upstream_header(obj, "Authorization") or ""
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={PROXY_AKID}/20240701/us-west-2/s3/aws4_request")
    assert upstream_header(obj, "X-Amz-Security-Token") is None  # the client's token is not the proxy's
    assert PROXY_AKID in obj["signing_note"]
    rc, out, err = run(capsys, explain_args(str(cfg), sent))
    assert rc == 0 and PROXY_SECRET not in out + err + json.dumps(obj)


# -- the installed command, as a user runs it --------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(S3PROXY), "explain", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_console_script_exit_codes_and_no_traceback(cfg: str, tmp_path: Path) -> None:
    assert S3PROXY.exists(), S3PROXY
    sent = _signed_get()
    want = capture(_call_get("a b"), "us-west-2", f"https://bucket.{vpce_domain('us-west-2')}")
    ok = _cli(*explain_args(cfg, sent, "--json")[1:])
    assert ok.returncode == 0, ok.stderr
    assert upstream_header(json.loads(ok.stdout), "Authorization") == want.header("Authorization")
    text = _cli(*explain_args(cfg, sent)[1:])
    assert text.returncode == 0 and "signing:   resigned" in text.stdout

    bad_har = tmp_path / "bad.har"
    bad_har.write_bytes(b"\x00\xff garbage")
    deep_har = tmp_path / "deep.har"
    deep_har.write_bytes(b"[" * 100000)
    cases = [
        (["--config", cfg, *explain_args(cfg, _bad_sig(sent))[3:]], 1, "SignatureDoesNotMatch"),
        (["--config", cfg, "https://1.2.3.4/k"], 1, "IP address"),
        (["--config", cfg, "https://b.s3-fips.us-east-1.amazonaws.com/k"], 1, "fips"),
        (["--config", cfg, "https:///k"], 2, "not an http(s) URL"),
        (["--config", cfg, "-H", "nocolon", OK_URL], 2, "not a header"),
        (["--config", cfg, "--har", str(bad_har)], 2, "not UTF-8"),
        (["--config", cfg, "--har", str(deep_har)], 2, "HAR"),
        (["--config", str(tmp_path / "missing.yaml"), OK_URL], 2, "cannot read"),
        ([OK_URL], 2, "S3PROXY_CONFIG"),
        (["--config", cfg, "--bogus"], 2, "unrecognized arguments"),
    ]
    for args, code, needle in cases:
        p = _cli(*args, env={"S3PROXY_CONFIG": ""})
        assert p.returncode == code, (args, p.stdout, p.stderr)
        assert needle in p.stdout + p.stderr, (args, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
        assert_no_secret(p.stdout, p.stderr)


def test_text_output_is_readable_and_complete(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    sent = capture(_put_with_metadata, "eu-west-1", token=TOKEN)
    want = capture(_put_with_metadata, "eu-west-1", f"https://bucket.{vpce_domain('eu-west-1')}", token=TOKEN)
    rc, out, err = run(capsys, explain_args(cfg, sent))
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"request:   PUT {sent.url}"
    assert lines[1:7] == [
        "family:    virtual-hosted (bucket my-bucket)",
        "region:    eu-west-1 (from host)",
        f"endpoint:  {vpce_domain('eu-west-1')} (vpce-1a2b3c4d)",
        "action:    forward",
        f"upstream:  PUT {want.url}",
        "signing:   resigned (resigned header auth (STREAMING-UNSIGNED-PAYLOAD-TRAILER): keyring key "
        f"{AKID}, incoming signature verified)",
    ]
    assert lines[7] == "headers:"
    shown = [line[2:].split(": ", 1) for line in lines[8:]]
    assert shown[0] == ["Host", f"bucket.{vpce_domain('eu-west-1')}"]
    assert ["Authorization", want.header("Authorization")] in shown
    assert ["X-Amz-Security-Token", TOKEN] in shown
    assert len(shown) == len(sent.headers) + 1
    assert_no_secret(out)
