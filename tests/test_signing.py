"""resign(): botocore is the oracle. The request botocore sends to the default S3 name, re-signed for the
target botocore itself uses with a vpce `endpoint_url`, must carry exactly botocore's vpce signature."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore import UNSIGNED
from botocore.auth import S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.credentials import RefreshableCredentials

from s3proxy import sigv4
from s3proxy.model import Request
from s3proxy.signing import (
    ChunkSeed,
    Credentials,
    Keyring,
    ProxyIdentity,
    SignOutcome,
    Target,
    resign,
    signer_from_config,
)

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//+token=="
PROXY = Credentials(
    "AKIAPROXYEXAMPLE0001", "proxySecretKeyExample/0123456789abcdefghi", "PROXYSESSIONTOKEN+/="
)
FROZEN = datetime.datetime(2024, 7, 1, 12, 30, 45)
NOW = FROZEN.replace(tzinfo=datetime.UTC)


def vpce(region: str = "us-east-1") -> str:
    return f"https://bucket.vpce-1a2b3c4d-5e6f.s3.{region}.vpce.amazonaws.com"


CLIENT = Credentials(AKID, SECRET)
KEYRING = Keyring([CLIENT])
_SESSION = botocore.session.get_session()


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        return iter(())

    def read(self, *_: Any, **__: Any) -> bytes:
        return b""


@dataclasses.dataclass
class Sent:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]


def _client(
    region: str, endpoint_url: str | None, creds: Credentials | None, service: str = "s3", **config: Any
) -> Any:
    cfg = Config(signature_version=UNSIGNED) if creds is None else Config(**config)
    if creds is None and config:
        cfg = cfg.merge(Config(**config))
    return _SESSION.create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=creds.access_key_id if creds else None,
        aws_secret_access_key=creds.secret_access_key if creds else None,
        aws_session_token=creds.session_token if creds else None,
        config=cfg,
    )


def capture(
    call: Callable[[Any], Any],
    region: str = "us-east-1",
    endpoint_url: str | None = None,
    creds: Credentials | None = CLIENT,
    service: str = "s3",
    **config: Any,
) -> Sent:
    """The first request botocore would send for `call(client)`, at the frozen time, without sending it."""
    client = _client(region, endpoint_url, creds, service, **config)
    sent: list[Sent] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        headers = tuple((k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items())
        sent.append(Sent(request.method, request.url, headers))
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register("before-send", before_send)
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        try:
            call(client)
        except Exception:
            pass
    assert sent, "botocore sent nothing"
    return sent[0]


def presign(
    method: str,
    params: dict[str, Any],
    region: str = "us-east-1",
    endpoint_url: str | None = None,
    creds: Credentials = CLIENT,
    **config: Any,
) -> str:
    # botocore presigns with SigV2 unless told otherwise; SigV4 is what needs re-signing.
    client = _client(region, endpoint_url, creds, **{"signature_version": "s3v4", **config})
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        return str(client.generate_presigned_url(method, Params=params, ExpiresIn=900))


def request_of(method: str, url: str, headers: tuple[tuple[str, str], ...] = ()) -> Request:
    """The core Request for what botocore sent (urllib3 adds Host from the URL)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    return Request(
        method=method,
        scheme=parts.scheme,
        host=parts.hostname,
        port=parts.port,
        path=parts.path,
        query=parts.query,
        headers=(("Host", parts.netloc), *headers),
        has_query="?" in url,
    )


def target_of(url: str, region: str) -> Target:
    parts = urlsplit(url)
    return Target(parts.netloc, parts.path, parts.query, "?" in url, region)


def header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)


# -- header auth: botocore equality ----------------------------------------------------------------------

KEYS = [
    "plain.txt",
    "a b+c/~d",
    "plus+sign",
    "percent%25literal",
    "100%",
    "space key",
    "unicode/ключ/日本語.txt",
    "emoji-😀",
    "//double//slash",
    "dir/./dot/../x",
    "trailing/",
    "a=b&c;d,e",
    "question?mark#hash",
    "tilde~and*star'quote(paren)",
]

Call = Callable[[Any], Any]


def _get(key: str) -> Call:
    return lambda c: c.get_object(Bucket="my-bucket", Key=key)


def _put(key: str) -> Call:
    return lambda c: c.put_object(Bucket="my-bucket", Key=key, Body=b"hello")


HEADER_CASES: list[tuple[str, Call]] = [
    *((f"get {k!r}", _get(k)) for k in KEYS),
    *((f"put {k!r}", _put(k)) for k in KEYS[:6]),
    (
        "get range+version",
        lambda c: c.get_object(Bucket="my-bucket", Key="k", Range="bytes=0-9", VersionId="v+1/="),
    ),
    (
        "get response-overrides",
        lambda c: c.get_object(
            Bucket="my-bucket", Key="k", ResponseContentDisposition='attachment; filename="a b+c.txt"'
        ),
    ),
    ("head", lambda c: c.head_object(Bucket="my-bucket", Key="a b")),
    ("delete", lambda c: c.delete_object(Bucket="my-bucket", Key="x+y")),
    (
        "put metadata+md5",
        lambda c: c.put_object(
            Bucket="my-bucket",
            Key="m",
            Body=b"data",
            ContentMD5="jXd/OF09/siBXSD3SWAm3A==",
            Metadata={"note": "  spaced   value  ", "x": "a,b;c"},
            ContentType="text/plain",
        ),
    ),
    (
        "list v2 odd prefix",
        lambda c: c.list_objects_v2(Bucket="my-bucket", Prefix="a b/+%/~/ключ", Delimiter="/"),
    ),
    (
        "list v2 token",
        lambda c: c.list_objects_v2(Bucket="my-bucket", ContinuationToken="1x+/=abc", StartAfter="a%2Fb"),
    ),
    ("list v1", lambda c: c.list_objects(Bucket="my-bucket", Prefix="", Marker="m a")),
    ("list buckets", lambda c: c.list_buckets()),
    ("get acl", lambda c: c.get_object_acl(Bucket="my-bucket", Key="k")),
    ("put tagging", lambda c: c.put_object_tagging(Bucket="my-bucket", Key="k", Tagging={"TagSet": []})),
    (
        "delete objects",
        lambda c: c.delete_objects(Bucket="my-bucket", Delete={"Objects": [{"Key": "a"}, {"Key": "b c"}]}),
    ),
    ("create mpu", lambda c: c.create_multipart_upload(Bucket="my-bucket", Key="big file")),
    (
        "upload part",
        lambda c: c.upload_part(
            Bucket="my-bucket", Key="big file", UploadId="u/+=", PartNumber=2, Body=b"x" * 10
        ),
    ),
    (
        "copy",
        lambda c: c.copy_object(Bucket="my-bucket", Key="dst", CopySource={"Bucket": "src", "Key": "a b+c"}),
    ),
    ("dotted bucket", lambda c: c.get_object(Bucket="my.dotted.bucket", Key="k")),
]


@pytest.mark.parametrize(("name", "call"), HEADER_CASES, ids=[n for n, _ in HEADER_CASES])
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "session-token"])
def test_header_auth_matches_botocore_vpce(name: str, call: Call, token: str | None) -> None:
    creds = Credentials(AKID, SECRET, token)
    sent = capture(call, creds=creds)
    want = capture(call, endpoint_url=vpce(), creds=creds)
    out = resign(
        request_of(sent.method, sent.url, sent.headers), target_of(want.url, "us-east-1"), KEYRING, NOW
    )
    assert out.action == "resigned", out.note
    assert header(out.headers, "Authorization") == header(want.headers, "Authorization")
    assert header(out.headers, "Host") == urlsplit(want.url).netloc
    assert header(out.headers, "X-Amz-Security-Token") == token
    assert header(out.headers, "X-Amz-Date") == header(sent.headers, "X-Amz-Date")


@pytest.mark.parametrize(
    ("region", "config"),
    [
        ("eu-west-1", {}),
        ("ap-southeast-2", {"s3": {"addressing_style": "virtual"}}),
        ("us-east-1", {"s3": {"addressing_style": "virtual"}}),
        ("eu-central-1", {"s3": {"payload_signing_enabled": True}}),
        ("us-west-2", {"request_checksum_calculation": "when_required"}),
    ],
)
@pytest.mark.parametrize("key", ["a b+c/~d", "unicode/ключ"])
def test_header_auth_regions_and_styles(region: str, config: dict[str, Any], key: str) -> None:
    def put(c: Any) -> Any:
        return c.put_object(Bucket="my-bucket", Key=key, Body=b"payload")

    sent = capture(put, region=region, **config)
    want = capture(put, region=region, endpoint_url=vpce(region), **config)
    out = resign(request_of(sent.method, sent.url, sent.headers), target_of(want.url, region), KEYRING, NOW)
    assert out.action == "resigned", out.note
    assert header(out.headers, "Authorization") == header(want.headers, "Authorization")


def test_legacy_global_host_region_corrected() -> None:
    # The client signed for us-east-1 (boto3's default) but the bucket lives in eu-west-1.
    def get(c: Any) -> Any:
        return c.get_object(Bucket="eu-bucket", Key="a b")

    sent = capture(get, region="us-east-1")
    assert urlsplit(sent.url).hostname == "eu-bucket.s3.amazonaws.com"
    want = capture(get, region="eu-west-1", endpoint_url=vpce("eu-west-1"))
    out = resign(
        request_of(sent.method, sent.url, sent.headers), target_of(want.url, "eu-west-1"), KEYRING, NOW
    )
    assert out.action == "resigned"
    assert header(out.headers, "Authorization") == header(want.headers, "Authorization")
    assert "us-east-1 -> eu-west-1" in out.note


AP_ARN = "arn:aws:s3:us-east-1:123456789012:accesspoint/my-ap"


@pytest.mark.parametrize(
    ("service", "prefix", "call"),
    [
        ("s3control", "control", lambda c: c.list_access_points(AccountId="123456789012", Bucket="bucket-x")),
        ("s3control", "control", lambda c: c.get_public_access_block(AccountId="123456789012")),
        ("s3", "accesspoint", lambda c: c.get_object(Bucket=AP_ARN, Key="a b+c")),
        ("s3", "accesspoint", lambda c: c.list_objects_v2(Bucket=AP_ARN, Prefix="x y")),
    ],
)
def test_control_and_access_points_match_botocore(service: str, prefix: str, call: Call) -> None:
    sent = capture(call, service=service)
    want = capture(call, service=service, endpoint_url=vpce().replace("bucket.", f"{prefix}.", 1))
    assert ".vpce-" in urlsplit(want.url).netloc
    out = resign(
        request_of(sent.method, sent.url, sent.headers), target_of(want.url, "us-east-1"), KEYRING, NOW
    )
    assert out.action == "resigned", out.note
    assert header(out.headers, "Authorization") == header(want.headers, "Authorization")


# -- presigned URLs --------------------------------------------------------------------------------------

PRESIGN_CASES = [("get_object", {"Bucket": "my-bucket", "Key": k}) for k in KEYS] + [
    ("put_object", {"Bucket": "my-bucket", "Key": "up load+/x"}),
    ("get_object", {"Bucket": "my-bucket", "Key": "k", "ResponseContentType": "text/plain; charset=utf-8"}),
    ("get_object", {"Bucket": "my-bucket", "Key": "k", "VersionId": "a+b/c="}),
    ("list_objects_v2", {"Bucket": "my-bucket", "Prefix": "a b+c"}),
    ("head_object", {"Bucket": "my.dotted.bucket", "Key": "k"}),
]


@pytest.mark.parametrize(("method", "params"), PRESIGN_CASES)
@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "session-token"])
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_presigned_matches_botocore_vpce(
    method: str, params: dict[str, Any], token: str | None, region: str
) -> None:
    creds = Credentials(AKID, SECRET, token)
    url = presign(method, params, region=region, creds=creds)
    want = presign(method, params, region=region, endpoint_url=vpce(region), creds=creds)
    http = {"put_object": "PUT", "head_object": "HEAD"}.get(method, "GET")
    out = resign(request_of(http, url), target_of(want, region), KEYRING, NOW)
    assert out.action == "resigned", out.note
    assert out.query == urlsplit(want).query
    assert header(out.headers, "Host") == urlsplit(want).netloc


def test_presigned_region_corrected_keeps_date_and_expiry() -> None:
    params = {"Bucket": "eu-bucket", "Key": "k"}
    url = presign("get_object", params, region="us-east-1")
    want = presign("get_object", params, region="eu-west-1", endpoint_url=vpce("eu-west-1"))
    out = resign(request_of("GET", url), target_of(want, "eu-west-1"), KEYRING, NOW)
    assert out.query == urlsplit(want).query
    before, after = sigv4.decoded_query(urlsplit(url).query), sigv4.decoded_query(out.query)
    assert before["X-Amz-Date"] == after["X-Amz-Date"] and after["X-Amz-Expires"] == "900"


def test_presigned_keeps_foreign_query_bytes_and_order() -> None:
    url = presign("get_object", {"Bucket": "my-bucket", "Key": "k"})
    parts = urlsplit(url)
    out = resign(
        request_of("GET", url),
        Target("bucket.example", "/my-bucket/k", parts.query, True, "us-east-1"),
        KEYRING,
        NOW,
    )
    names = [p.partition("=")[0] for p in out.query.split("&")]
    assert names == [p.partition("=")[0] for p in parts.query.split("&")]
    assert out.query.rpartition("X-Amz-Signature=")[0] == parts.query.rpartition("X-Amz-Signature=")[0]


def test_expired_presigned_url_is_left_to_s3() -> None:
    url = presign("get_object", {"Bucket": "my-bucket", "Key": "k"})
    want = presign("get_object", {"Bucket": "my-bucket", "Key": "k"}, endpoint_url=vpce())
    later = NOW + datetime.timedelta(days=30)
    out = resign(request_of("GET", url), target_of(want, "us-east-1"), KEYRING, later)
    assert out.action == "resigned" and out.query == urlsplit(want).query


# -- aws-chunked with signed chunks: seed values ---------------------------------------------------------

EXAMPLE_HEADERS = (
    ("Host", "s3.amazonaws.com"),
    ("x-amz-date", "20130524T000000Z"),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
    ("Content-Encoding", "aws-chunked"),
    ("Content-Length", "66824"),
    ("x-amz-decoded-content-length", "66560"),
    ("x-amz-content-sha256", sigv4.STREAMING_PAYLOAD),
)
EXAMPLE_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"


def _botocore_seed(host: str, path: str, region: str, headers: tuple[tuple[str, str], ...]) -> str:
    """botocore's generic SigV4 signer (which keeps a preset X-Amz-Content-SHA256) as the seed oracle."""
    request = AWSRequest("PUT", f"https://{host}{path}", headers={k: v for k, v in headers if k != "Host"})
    request.context["timestamp"] = "20130524T000000Z"
    auth = SigV4Auth(BotoCredentials(AKID, SECRET), "s3", region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=datetime.datetime(2013, 5, 24)):
        auth.add_auth(request)
    return str(request.headers["Authorization"]).rpartition("Signature=")[2]


def _example_request(
    sig: str, payload: str = sigv4.STREAMING_PAYLOAD, extra: tuple[tuple[str, str], ...] = ()
) -> Request:
    headers = (
        tuple((k, payload) if k == "x-amz-content-sha256" else (k, v) for k, v in EXAMPLE_HEADERS) + extra
    )
    signed = ";".join(sorted(k.lower() for k, _ in headers))
    authz = sigv4.authorization_value(AKID, "20130524/us-east-1/s3/aws4_request", signed, sig)
    return Request(
        "PUT",
        "https",
        "s3.amazonaws.com",
        None,
        "/examplebucket/chunkObject.txt",
        "",
        (*headers, ("Authorization", authz)),
    )


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_chunk_seed_from_published_example(region: str) -> None:
    assert _botocore_seed(
        "s3.amazonaws.com", "/examplebucket/chunkObject.txt", "us-east-1", EXAMPLE_HEADERS
    ) == (EXAMPLE_SEED)
    host = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
    out = resign(
        _example_request(EXAMPLE_SEED),
        Target(host, "/examplebucket/chunkObject.txt", "", False, region),
        KEYRING,
        NOW,
    )
    assert out.action == "resigned", out.note
    seed = out.chunk
    assert isinstance(seed, ChunkSeed)
    assert seed.old_seed_signature == EXAMPLE_SEED
    want = _botocore_seed(host, "/examplebucket/chunkObject.txt", region, EXAMPLE_HEADERS)
    assert seed.new_seed_signature == want
    assert header(out.headers, "Authorization").endswith(f"Signature={want}")  # type: ignore[union-attr]
    assert seed.amz_date == "20130524T000000Z"
    assert seed.old_scope == "20130524/us-east-1/s3/aws4_request"
    assert seed.new_scope == f"20130524/{region}/s3/aws4_request"
    assert seed.old_signing_key == sigv4.derive_signing_key(SECRET, "20130524", "us-east-1", "s3")
    assert seed.new_signing_key == sigv4.derive_signing_key(SECRET, "20130524", region, "s3")
    assert seed.trailer is False and seed.decoded_length == 66560
    assert header(out.headers, "Content-Length") == "66824"


def test_chunk_seed_trailer_and_back_again() -> None:
    extra = (("x-amz-trailer", "x-amz-checksum-crc32c"),)
    headers = (
        tuple(
            (k, sigv4.STREAMING_PAYLOAD_TRAILER) if k == "x-amz-content-sha256" else (k, v)
            for k, v in EXAMPLE_HEADERS
            if k != "Content-Length"
        )
        + extra
    )
    seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
    signed = ";".join(sorted(k.lower() for k, _ in headers))
    authz = sigv4.authorization_value(AKID, "20130524/us-east-1/s3/aws4_request", signed, seed)
    req = Request(
        "PUT",
        "https",
        "s3.amazonaws.com",
        None,
        "/examplebucket/chunkObject.txt",
        "",
        (*headers, ("Authorization", authz)),
    )
    host = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
    there = resign(req, Target(host, "/examplebucket/chunkObject.txt", "", False, "us-east-1"), KEYRING, NOW)
    assert there.chunk is not None and there.chunk.trailer is True
    assert there.chunk.old_seed_signature == seed
    # Re-signing the re-signed request back to the original host reproduces the published seed.
    back_req = dataclasses.replace(req, host=host, headers=there.headers)
    back = resign(
        back_req,
        Target("s3.amazonaws.com", "/examplebucket/chunkObject.txt", "", False, "us-east-1"),
        KEYRING,
        NOW,
    )
    assert back.chunk is not None and back.chunk.new_seed_signature == seed


def test_unsigned_trailer_has_no_chunk_seed() -> None:
    sent = capture(lambda c: c.put_object(Bucket="b", Key="k", Body=b"hello world"))
    assert header(sent.headers, "X-Amz-Content-SHA256") == sigv4.STREAMING_UNSIGNED_PAYLOAD_TRAILER
    out = resign(
        request_of("PUT", sent.url, sent.headers), Target("h", "/b/k", "", False, "us-east-1"), KEYRING, NOW
    )
    assert out.action == "resigned" and out.chunk is None


# -- `expect` signed by the client: verified as sent, left out of the upstream signature -----------------
# mitmproxy answers `Expect: 100-continue` itself and removes the header, so upstream never receives it.

# botocore leaves `expect` unsigned; hand-written and third-party signers often sign it.
_SIGN_EXPECT = ["user-agent", "x-amzn-trace-id"]
_PUT_URL = "https://my-bucket.s3.amazonaws.com/k"
_PUT_HEADERS = {
    "Expect": "100-continue",
    "Content-Length": "5",
    "X-Amz-Content-SHA256": hashlib.sha256(b"hello").hexdigest(),
}


def _botocore_put(
    url: str, headers: dict[str, str], creds: Credentials = CLIENT, *, sign_expect: bool = False
) -> tuple[tuple[str, str], ...]:
    """Headers (Host first) of a PUT to `url` signed by botocore's generic SigV4 signer at the frozen time;
    `sign_expect` signs the Expect header too."""
    request = AWSRequest("PUT", url, headers=headers)
    auth = SigV4Auth(BotoCredentials(creds.access_key_id, creds.secret_access_key), "s3", "us-east-1")
    blacklist = _SIGN_EXPECT if sign_expect else [*_SIGN_EXPECT, "expect"]
    with (
        mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN),
        mock.patch("botocore.auth.SIGNED_HEADERS_BLACKLIST", blacklist),
    ):
        auth.add_auth(request)
    return (("Host", urlsplit(url).netloc), *((k, str(v)) for k, v in request.headers.items()))


def _signed_headers(headers: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return sigv4.parse_authorization(header(headers, "Authorization") or "").signed_headers


@pytest.mark.parametrize("identity", [False, True], ids=["keyring", "proxy-identity"])
def test_signed_expect_is_verified_then_left_unsigned_upstream(identity: bool) -> None:
    sent = _botocore_put(_PUT_URL, _PUT_HEADERS, sign_expect=True)
    assert "expect" in _signed_headers(sent)
    proxy = dataclasses.replace(PROXY, session_token=None)
    signer: Keyring | ProxyIdentity = ProxyIdentity(lambda: proxy) if identity else KEYRING
    # What botocore signs for the vpce name, Expect sent but not signed: valid with or without the header.
    url = f"{vpce()}/my-bucket/k"
    want = _botocore_put(url, _PUT_HEADERS, proxy if identity else CLIENT)
    assert "expect" not in _signed_headers(want)
    out = resign(request_of("PUT", _PUT_URL, sent[1:]), target_of(url, "us-east-1"), signer, NOW)
    assert out.action == "resigned", out.note
    assert header(out.headers, "Authorization") == header(want, "Authorization")
    assert "expect" not in _signed_headers(out.headers)
    # The upstream request, its Expect header removed (as mitmproxy does), verifies.
    upstream = [(k, v) for k, v in out.headers if k.lower() != "expect"]
    checker = Keyring([proxy if identity else CLIENT])
    again = resign(
        Request("PUT", "https", urlsplit(url).netloc, None, "/my-bucket/k", "", tuple(upstream)),
        target_of(url, "us-east-1"),
        checker,
        NOW,
    )
    assert again.action == "resigned", again.note


def test_signed_expect_is_still_verified() -> None:
    sent = request_of("PUT", _PUT_URL, _botocore_put(_PUT_URL, _PUT_HEADERS, sign_expect=True)[1:])
    target = target_of(f"{vpce()}/my-bucket/k", "us-east-1")
    assert resign(sent, target, KEYRING, NOW).action == "resigned"
    for value in ("100-Continue", None):
        out = resign(_with(sent, "Expect", value), target, KEYRING, NOW)
        assert out.error is not None and out.error.code == "SignatureDoesNotMatch", value


def _botocore_presign(url: str, headers: dict[str, str], *, sign_expect: bool = False) -> str:
    """A PUT URL presigned by botocore at the frozen time for a request sending `headers`."""
    request = AWSRequest("PUT", url, headers=headers)
    auth = S3SigV4QueryAuth(BotoCredentials(AKID, SECRET), "s3", "us-east-1", expires=900)
    blacklist = _SIGN_EXPECT if sign_expect else [*_SIGN_EXPECT, "expect"]
    with (
        mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN),
        mock.patch("botocore.auth.SIGNED_HEADERS_BLACKLIST", blacklist),
    ):
        auth.add_auth(request)
    return str(request.url)


def test_presigned_with_signed_expect_is_left_unsigned_upstream() -> None:
    expect = {"Expect": "100-continue"}
    url = _botocore_presign(_PUT_URL, expect, sign_expect=True)
    assert sigv4.decoded_query(urlsplit(url).query)["X-Amz-SignedHeaders"] == "expect;host"
    want = _botocore_presign(f"{vpce()}/my-bucket/k", expect)
    assert sigv4.decoded_query(urlsplit(want).query)["X-Amz-SignedHeaders"] == "host"
    req = request_of("PUT", url, tuple(expect.items()))
    out = resign(req, target_of(want, "us-east-1"), KEYRING, NOW)
    assert out.action == "resigned", out.note
    assert out.query == urlsplit(want).query
    # Verified with `expect`: the URL without its Expect header is refused.
    assert resign(_with(req, "Expect", None), target_of(want, "us-east-1"), KEYRING, NOW).action == "refused"


def test_chunk_seed_with_signed_expect_is_left_unsigned_upstream() -> None:
    expect = (("Expect", "100-continue"),)
    with mock.patch("botocore.auth.SIGNED_HEADERS_BLACKLIST", _SIGN_EXPECT):
        seed = _botocore_seed(
            "s3.amazonaws.com", "/examplebucket/chunkObject.txt", "us-east-1", (*EXAMPLE_HEADERS, *expect)
        )
    host = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
    req = _example_request(seed, extra=expect)
    assert "expect" in _signed_headers(req.headers)
    out = resign(req, Target(host, "/examplebucket/chunkObject.txt", "", False, "us-east-1"), KEYRING, NOW)
    assert out.action == "resigned", out.note
    assert out.chunk is not None and out.chunk.old_seed_signature == seed
    want = _botocore_seed(host, "/examplebucket/chunkObject.txt", "us-east-1", EXAMPLE_HEADERS)
    assert out.chunk.new_seed_signature == want
    assert "expect" not in _signed_headers(out.headers)
    assert header(out.headers, "Authorization").endswith(f"Signature={want}")  # type: ignore[union-attr]


# -- forwarded unchanged ---------------------------------------------------------------------------------


def _assert_unchanged(out: SignOutcome, req: Request, target: Target) -> None:
    assert out.action == "unchanged", out.note
    assert out.error is None
    assert header(out.headers, "Host") == target.host
    assert [h for h in out.headers if h[0].lower() != "host"] == [
        h for h in req.headers if h[0].lower() != "host"
    ]
    assert out.query == target.query


@pytest.mark.parametrize("signer", [KEYRING, ProxyIdentity(lambda: PROXY)], ids=["keyring", "proxy-identity"])
def test_sigv2_header_unchanged(signer: Keyring | ProxyIdentity) -> None:
    sent = capture(lambda c: c.get_object(Bucket="my-bucket", Key="a b"), signature_version="s3")
    assert (header(sent.headers, "Authorization") or "").startswith("AWS ")
    req = request_of(sent.method, sent.url, sent.headers)
    target = Target(
        "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com",
        "/my-bucket/a%20b",
        "",
        False,
        "us-east-1",
    )
    _assert_unchanged(resign(req, target, signer, NOW), req, target)


@pytest.mark.parametrize("signer", [KEYRING, ProxyIdentity(lambda: PROXY)], ids=["keyring", "proxy-identity"])
def test_sigv2_query_unchanged(signer: Keyring | ProxyIdentity) -> None:
    url = presign("get_object", {"Bucket": "my-bucket", "Key": "k+1"}, signature_version="s3")
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    req = request_of("GET", url)
    target = Target(
        "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com",
        "/my-bucket/k%2B1",
        urlsplit(url).query,
        True,
        "us-east-1",
    )
    _assert_unchanged(resign(req, target, signer, NOW), req, target)


@pytest.mark.parametrize("signer", [KEYRING, ProxyIdentity(lambda: PROXY)], ids=["keyring", "proxy-identity"])
def test_post_policy_unchanged(signer: Keyring | ProxyIdentity) -> None:
    client = _client("us-east-1", None, Credentials(AKID, SECRET))
    post = client.generate_presigned_post("my-bucket", "uploads/${filename}")
    url = post["url"]
    req = request_of(
        "POST", url, (("Content-Type", "multipart/form-data; boundary=xyz"), ("Content-Length", "9"))
    )
    target = Target(
        "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", "/my-bucket", "", False, "us-east-1"
    )
    _assert_unchanged(resign(req, target, signer, NOW), req, target)


def test_anonymous_unchanged_in_keyring_mode() -> None:
    sent = capture(lambda c: c.get_object(Bucket="public-bucket", Key="k"), creds=None)
    assert header(sent.headers, "Authorization") is None
    req = request_of(sent.method, sent.url, sent.headers)
    target = target_of(
        capture(lambda c: c.get_object(Bucket="public-bucket", Key="k"), endpoint_url=vpce(), creds=None).url,
        "us-east-1",
    )
    _assert_unchanged(resign(req, target, KEYRING, NOW), req, target)


# -- refusals: exact codes, nothing re-signed ------------------------------------------------------------


def _signed_get(creds: Credentials = CLIENT) -> Request:
    sent = capture(lambda c: c.get_object(Bucket="my-bucket", Key="a b"), creds=creds)
    return request_of(sent.method, sent.url, sent.headers)


def _with(req: Request, name: str, value: str | None) -> Request:
    from s3proxy.model import replace_header

    return dataclasses.replace(req, headers=replace_header(req.headers, name, value))


def _presigned_req(**changes: str) -> Request:
    url = presign("get_object", {"Bucket": "my-bucket", "Key": "k"})
    req = request_of("GET", url)
    query = req.query
    for old, new in changes.items():
        query = query.replace(old, new)
    return dataclasses.replace(req, query=query)


TARGET = Target(
    "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", "/my-bucket/a%20b", "", False, "us-east-1"
)
_GOOD = _signed_get()
_AUTHZ = header(_GOOD.headers, "Authorization") or ""

REFUSALS: list[tuple[str, Request, Keyring | ProxyIdentity, int, str]] = [
    ("wrong secret", _signed_get(Credentials(AKID, "not-the-secret")), KEYRING, 403, "SignatureDoesNotMatch"),
    (
        "tampered signed header",
        _with(_GOOD, "X-Amz-Date", "20240701T123046Z"),
        KEYRING,
        403,
        "SignatureDoesNotMatch",
    ),
    (
        "credential date mismatch",
        _with(_GOOD, "X-Amz-Date", "20240702T123045Z"),
        KEYRING,
        400,
        "AuthorizationHeaderMalformed",
    ),
    (
        "tampered content hash",
        _with(_GOOD, "X-Amz-Content-SHA256", "0" * 64),
        KEYRING,
        403,
        "SignatureDoesNotMatch",
    ),
    ("tampered path", dataclasses.replace(_GOOD, path="/a%20c"), KEYRING, 403, "SignatureDoesNotMatch"),
    (
        "tampered query",
        dataclasses.replace(_GOOD, query="x-id=GetObject&versionId=1"),
        KEYRING,
        403,
        "SignatureDoesNotMatch",
    ),
    (
        "tampered host",
        _with(_GOOD, "Host", "other-bucket.s3.amazonaws.com"),
        KEYRING,
        403,
        "SignatureDoesNotMatch",
    ),
    (
        "unknown key",
        _signed_get(Credentials("AKIAUNKNOWN000000000", SECRET)),
        KEYRING,
        403,
        "InvalidAccessKeyId",
    ),
    ("empty keyring", _GOOD, Keyring(), 403, "InvalidAccessKeyId"),
    (
        "malformed header",
        _with(_GOOD, "Authorization", "AWS4-HMAC-SHA256 Credential=x"),
        KEYRING,
        400,
        "AuthorizationHeaderMalformed",
    ),
    (
        "malformed header, proxy-identity",
        _with(_GOOD, "Authorization", "AWS4-HMAC-SHA256 Signature=1"),
        ProxyIdentity(lambda: PROXY),
        400,
        "AuthorizationHeaderMalformed",
    ),
    ("no content sha256", _with(_GOOD, "X-Amz-Content-SHA256", None), KEYRING, 400, "InvalidRequest"),
    (
        "bad content sha256",
        _with(_GOOD, "X-Amz-Content-SHA256", "SHA256-PLEASE"),
        KEYRING,
        400,
        "InvalidArgument",
    ),
    ("no date", _with(_GOOD, "X-Amz-Date", None), KEYRING, 403, "AccessDenied"),
    (
        "sigv4a header",
        _with(_GOOD, "Authorization", _AUTHZ.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256")),
        KEYRING,
        400,
        "InvalidRequest",
    ),
    (
        "sigv4a streaming",
        _with(_GOOD, "X-Amz-Content-SHA256", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"),
        KEYRING,
        400,
        "InvalidRequest",
    ),
    ("unknown scheme", _with(_GOOD, "Authorization", "Bearer abc"), KEYRING, 400, "InvalidArgument"),
    (
        "two auth mechanisms",
        dataclasses.replace(_GOOD, query="X-Amz-Algorithm=AWS4-HMAC-SHA256"),
        KEYRING,
        400,
        "InvalidArgument",
    ),
    (
        "two authorization headers",
        dataclasses.replace(_GOOD, headers=(*_GOOD.headers, ("Authorization", _AUTHZ))),
        KEYRING,
        400,
        "InvalidArgument",
    ),
    (
        "presigned bad signature",
        _presigned_req(**{"X-Amz-Signature=": "X-Amz-Signature=0"}),
        KEYRING,
        400,
        "AuthorizationQueryParametersError",
    ),
    (
        "presigned tampered expiry",
        _presigned_req(**{"X-Amz-Expires=900": "X-Amz-Expires=901"}),
        KEYRING,
        403,
        "SignatureDoesNotMatch",
    ),
    (
        "presigned unknown key",
        _presigned_req(**{AKID: "AKIAUNKNOWN000000000"}),
        KEYRING,
        403,
        "InvalidAccessKeyId",
    ),
    (
        "presigned missing param",
        _presigned_req(**{"X-Amz-SignedHeaders=host&": ""}),
        KEYRING,
        400,
        "AuthorizationQueryParametersError",
    ),
    (
        "presigned expiry too long",
        _presigned_req(**{"X-Amz-Expires=900": "X-Amz-Expires=999999"}),
        KEYRING,
        400,
        "AuthorizationQueryParametersError",
    ),
    (
        "presigned sigv4a",
        _presigned_req(**{"AWS4-HMAC-SHA256": "AWS4-ECDSA-P256-SHA256"}),
        KEYRING,
        400,
        "InvalidRequest",
    ),
    (
        "presigned unknown algorithm",
        _presigned_req(**{"AWS4-HMAC-SHA256": "AWS4-HMAC-MD5"}),
        KEYRING,
        400,
        "AuthorizationQueryParametersError",
    ),
]


@pytest.mark.parametrize(("name", "req", "signer", "status", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name: str, req: Request, signer: Keyring | ProxyIdentity, status: int, code: str) -> None:
    out = resign(req, TARGET, signer, NOW)
    assert out.action == "refused"
    assert out.error is not None and (out.error.status, out.error.code) == (status, code)
    # Nothing re-signed: the outcome carries the request as received, for the addon to answer, not forward.
    assert out.headers == req.headers and out.chunk is None
    assert code in out.note


def test_good_request_is_not_refused() -> None:
    # The refusal table's base request must itself pass, or the table proves nothing.
    assert resign(_GOOD, TARGET, KEYRING, NOW).action == "resigned"
    assert resign(_presigned_req(), TARGET, KEYRING, NOW).action == "resigned"


# -- proxy-identity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_token", [None, TOKEN], ids=["client-no-token", "client-token"])
@pytest.mark.parametrize("proxy_token", [None, PROXY.session_token], ids=["proxy-no-token", "proxy-token"])
@pytest.mark.parametrize(
    ("name", "call"), HEADER_CASES[:3] + HEADER_CASES[14:16], ids=lambda x: x if isinstance(x, str) else ""
)
def test_proxy_identity_matches_botocore_as_proxy(
    name: str, call: Call, client_token: str | None, proxy_token: str | None
) -> None:
    # The client's secret is unknown to the proxy: sign its request with a secret nobody has.
    client = Credentials("AKIACLIENTONLY000000", "client-secret-the-proxy-never-sees", client_token)
    proxy = dataclasses.replace(PROXY, session_token=proxy_token)
    sent = capture(call, creds=client)
    want = capture(call, endpoint_url=vpce(), creds=proxy)
    out = resign(
        request_of(sent.method, sent.url, sent.headers),
        target_of(want.url, "us-east-1"),
        ProxyIdentity(lambda: proxy),
        NOW,
    )
    assert out.action == "resigned", out.note
    assert header(out.headers, "Authorization") == header(want.headers, "Authorization")
    assert header(out.headers, "X-Amz-Security-Token") == proxy_token


@pytest.mark.parametrize("client_token", [None, TOKEN], ids=["client-no-token", "client-token"])
@pytest.mark.parametrize("proxy_token", [None, PROXY.session_token], ids=["proxy-no-token", "proxy-token"])
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_proxy_identity_presigned_matches_botocore(
    client_token: str | None, proxy_token: str | None, region: str
) -> None:
    client = Credentials("AKIACLIENTONLY000000", "client-secret-the-proxy-never-sees", client_token)
    proxy = dataclasses.replace(PROXY, session_token=proxy_token)
    params = {"Bucket": "my-bucket", "Key": "a b+c"}
    url = presign("get_object", params, creds=client)
    want = presign("get_object", params, region=region, endpoint_url=vpce(region), creds=proxy)
    out = resign(request_of("GET", url), target_of(want, region), ProxyIdentity(lambda: proxy), NOW)
    assert out.action == "resigned", out.note
    assert out.query == urlsplit(want).query


def test_proxy_identity_signs_anonymous_requests_verifiably() -> None:
    sent = capture(lambda c: c.put_object(Bucket="b", Key="k x", Body=b"z", Metadata={"a": "1"}), creds=None)
    target = Target(
        "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", "/b/k%20x", "", False, "us-east-1"
    )
    out = resign(request_of(sent.method, sent.url, sent.headers), target, ProxyIdentity(lambda: PROXY), NOW)
    assert out.action == "resigned", out.note
    assert header(out.headers, "X-Amz-Date") == "20240701T123045Z"
    assert header(out.headers, "X-Amz-Security-Token") == PROXY.session_token
    auth = sigv4.parse_authorization(header(out.headers, "Authorization") or "")
    assert auth.access_key == PROXY.access_key_id
    assert {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "x-amz-meta-a"} <= set(
        auth.signed_headers
    )
    # The proxy's own keyring check accepts what it signed: the signature is valid for the upstream host.
    upstream = Request("PUT", "https", target.host, None, target.path, "", out.headers)
    again = resign(upstream, target, Keyring([PROXY]), NOW)
    assert again.action == "resigned", again.note


def test_proxy_identity_chunk_seed_cannot_verify() -> None:
    out = resign(_example_request(EXAMPLE_SEED), TARGET, ProxyIdentity(lambda: PROXY), NOW)
    assert out.chunk is not None and out.chunk.old_signing_key is None
    assert out.chunk.new_signing_key == sigv4.derive_signing_key(
        PROXY.secret_access_key, "20130524", "us-east-1", "s3"
    )


def test_proxy_identity_from_refreshable_credentials() -> None:
    calls: list[int] = []

    def refresh() -> dict[str, str]:
        calls.append(1)
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        return {
            "access_key": f"AKIAREFRESHED{len(calls):07d}",
            "secret_key": "refreshed-secret",
            "token": "refreshed-token",
            "expiry_time": expiry.isoformat(),
        }

    stale = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)  # inside the refresh window
    chain = RefreshableCredentials.create_from_metadata(
        {"access_key": "AKIAOLD", "secret_key": "old", "token": "old", "expiry_time": stale.isoformat()},
        refresh,
        "test",
    )
    identity = ProxyIdentity.from_botocore_credentials(chain)
    creds = identity.credentials()
    assert creds.access_key_id.startswith("AKIAREFRESHED") and calls
    assert "refreshed-secret" not in repr(identity) and "refreshed-secret" not in repr(creds)


def test_proxy_identity_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", PROXY.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PROXY.secret_access_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken")
    creds = ProxyIdentity.from_botocore().credentials()
    assert (creds.access_key_id, creds.secret_access_key, creds.session_token) == (
        PROXY.access_key_id,
        PROXY.secret_access_key,
        "envtoken",
    )


# -- keyring from config ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Key:
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class _Settings:
    mode: str = "keyring"
    keys: tuple[_Key, ...] = ()
    profiles: tuple[str, ...] = ()
    identity_profile: str | None = None


def test_keyring_from_config_keys_and_profiles(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    creds_file = tmp_path / "credentials"
    creds_file.write_text(
        "[team]\naws_access_key_id = AKIATEAM000000000000\naws_secret_access_key = teamSecret\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds_file))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    ring = Keyring.from_config(_Settings(keys=(_Key(AKID, SECRET),), profiles=("team",)))
    assert ring.secret_for(AKID) == SECRET and ring.secret_for("AKIATEAM000000000000") == "teamSecret"
    assert "AKIATEAM000000000000" in ring and len(ring) == 2
    assert "teamSecret" not in repr(ring) and SECRET not in repr(ring)
    with pytest.raises(ValueError, match="'missing'") as err:
        Keyring.from_config(_Settings(profiles=("missing",)))
    assert "Secret" not in str(err.value)
    assert isinstance(signer_from_config(_Settings(keys=(_Key(AKID, SECRET),))), Keyring)


def test_keyring_conflicting_duplicate_is_an_error() -> None:
    with pytest.raises(ValueError, match=AKID) as err:
        Keyring([_Key(AKID, SECRET), _Key(AKID, "other-secret")])
    assert SECRET not in str(err.value) and "other-secret" not in str(err.value)
    assert len(Keyring([_Key(AKID, SECRET), _Key(AKID, SECRET)])) == 1


def test_proxy_identity_needs_access_rules() -> None:
    with pytest.raises(ValueError, match="access rules"):
        signer_from_config(_Settings(mode="proxy-identity"))


# -- no secret anywhere ----------------------------------------------------------------------------------


def test_no_secret_in_any_repr_str_or_error(caplog: pytest.LogCaptureFixture) -> None:
    texts: list[str] = [
        repr(KEYRING),
        str(KEYRING),
        repr(Credentials(AKID, SECRET, TOKEN)),
        repr(ProxyIdentity(lambda: PROXY)),
    ]
    with caplog.at_level("DEBUG"):
        outcomes = [
            resign(_GOOD, TARGET, KEYRING, NOW),
            resign(_presigned_req(), TARGET, KEYRING, NOW),
            resign(_example_request(EXAMPLE_SEED), TARGET, KEYRING, NOW),
            resign(_GOOD, TARGET, ProxyIdentity(lambda: PROXY), NOW),
            *(resign(req, TARGET, signer, NOW) for _, req, signer, _, _ in REFUSALS),
        ]
    for out in outcomes:
        texts += [repr(out), out.note, repr(out.chunk)]
        if out.error is not None:
            texts += [str(out.error), out.error.message, repr(out.error)]
    texts.append(caplog.text)
    signature = (header(_GOOD.headers, "Authorization") or "").rpartition("=")[2]
    for text in texts:
        for secret in (SECRET, PROXY.secret_access_key, "not-the-secret"):
            assert secret not in text
    for out in outcomes:
        # Signatures stay out of notes and error messages (they may appear only in debug logs).
        assert signature not in out.note and (out.error is None or signature not in out.error.message)
        if out.chunk is not None:
            assert out.chunk.new_signing_key.hex() not in repr(out.chunk)
