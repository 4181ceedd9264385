"""SigV4 primitives: AWS's published test suite, the S3 streaming examples, botocore as oracle, parsers."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from unittest import mock
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy import sigv4
from s3proxy.errors import S3Error

SUITE = Path(__file__).parent / "data" / "aws4_testsuite"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
EXAMPLE_KEY = "AKIAIOSFODNN7EXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


# -- AWS SigV4 test suite --------------------------------------------------------------------------------


def _cases() -> list[Path]:
    return sorted(p.parent for p in SUITE.rglob("*.req"))


def _parse_req(text: str) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rsplit(" ", 1)[0]
    path, _, query = target.partition("?")
    headers: list[tuple[str, str]] = []
    for line in filter(None, lines[1:]):
        if line[:1] in (" ", "\t"):  # obs-fold continuation line
            name, value = headers[-1]
            headers[-1] = (name, f"{value}\n{line}")
            continue
        name, _, value = line.partition(":")
        headers.append((name, value))
    return method, path, query, headers, body.encode()


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_aws4_testsuite(case: Path) -> None:
    def read(ext: str) -> str:
        return (case / f"{case.name}.{ext}").read_text()

    method, path, query, headers, body = _parse_req(read("req"))
    if case.name == "get-vanilla-with-session-token":
        # The suite's .req omits the token its .creq signs (it is added while signing); add it back.
        token = next(ln for ln in read("creq").split("\n") if ln.startswith("x-amz-security-token:"))
        headers.append(("X-Amz-Security-Token", token.partition(":")[2]))
    signed = sorted({n.lower() for n, _ in headers})
    amz_date = next(v for n, v in headers if n.lower() == "x-amz-date")
    creq = sigv4.canonical_request(
        method,
        sigv4.canonical_uri(path, normalize=True),
        sigv4.canonical_query(query),
        sigv4.canonical_headers(tuple(headers), signed),
        sigv4.signed_headers_line(signed),
        hashlib.sha256(body).hexdigest(),
    )
    assert creq == read("creq")
    scope = sigv4.credential_scope(amz_date[:8], "us-east-1", "service")
    sts = sigv4.string_to_sign(amz_date, scope, creq)
    assert sts == read("sts")
    sig = sigv4.signature(sigv4.signing_key(SUITE_SECRET, amz_date[:8], "us-east-1", "service"), sts)
    authz = sigv4.authorization_value("AKIDEXAMPLE", scope, sigv4.signed_headers_line(signed), sig)
    assert authz == read("authz")
    parsed = sigv4.parse_authorization(authz)
    assert (parsed.access_key, parsed.region, parsed.service, parsed.signature) == (
        "AKIDEXAMPLE",
        "us-east-1",
        "service",
        sig,
    )


def test_suite_is_complete() -> None:
    # A copy that lost its cases would make the parametrised test vacuous.
    assert len(_cases()) >= 30
    assert (SUITE / "LICENSE").is_file() and (SUITE / "NOTICE").is_file()


@pytest.mark.parametrize(
    ("path", "s3", "generic"),
    [
        ("/a%20b%2Bc/~d", "/a%20b%2Bc/~d", "/a%2520b%252Bc/~d"),
        (
            "/my-object//example//photo.user",
            "/my-object//example//photo.user",
            "/my-object/example/photo.user",
        ),
        ("/a/./b/../c", "/a/./b/../c", "/a/c"),
        ("", "/", "/"),
        ("/", "/", "/"),
        ("/dir/", "/dir/", "/dir/"),
    ],
)
def test_canonical_uri_s3_keeps_path(path: str, s3: str, generic: str) -> None:
    assert sigv4.canonical_uri(path) == s3
    assert sigv4.canonical_uri(path, normalize=True) == generic


# -- S3 published streaming examples (seed signatures) ---------------------------------------------------

_COMMON = (
    ("Host", "s3.amazonaws.com"),
    ("x-amz-date", "20130524T000000Z"),
    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
    ("Content-Encoding", "aws-chunked"),
    ("x-amz-decoded-content-length", "66560"),
)


@pytest.mark.parametrize(
    ("extra", "payload", "seed"),
    [
        (
            (("Content-Length", "66824"),),
            sigv4.STREAMING_PAYLOAD,
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        ),
        (
            (("x-amz-trailer", "x-amz-checksum-crc32c"),),
            sigv4.STREAMING_PAYLOAD_TRAILER,
            "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
        ),
    ],
    ids=["payload", "payload-trailer"],
)
def test_s3_streaming_seed_signature(extra: tuple[tuple[str, str], ...], payload: str, seed: str) -> None:
    headers = (*_COMMON, *extra, ("x-amz-content-sha256", payload))
    signed = sorted(n.lower() for n, _ in headers)
    creq = sigv4.canonical_request(
        "PUT",
        sigv4.canonical_uri("/examplebucket/chunkObject.txt"),
        sigv4.canonical_query(""),
        sigv4.canonical_headers(headers, signed),
        ";".join(signed),
        payload,
    )
    scope = sigv4.credential_scope("20130524", "us-east-1", "s3")
    key = sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1", "s3")
    assert sigv4.sign(creq, "20130524T000000Z", scope, key) == seed


# -- botocore as oracle ----------------------------------------------------------------------------------

FROZEN = datetime.datetime(2024, 2, 29, 23, 59, 58)


def _botocore_sign(url: str, method: str, headers: dict[str, str], token: str | None = None) -> AWSRequest:
    request = AWSRequest(method=method, url=url, headers=headers, data=b"")
    creds = Credentials(EXAMPLE_KEY, EXAMPLE_SECRET, token)
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(request)
    return request


def _ours(request: AWSRequest) -> str:
    parts = urlsplit(request.url)
    headers = tuple((k, v) for k, v in request.headers.items())
    headers = (*headers, ("Host", parts.netloc))
    auth = sigv4.parse_authorization(request.headers["Authorization"])
    amz_date = request.headers["X-Amz-Date"]
    creq = sigv4.canonical_request(
        request.method,
        sigv4.canonical_uri(parts.path),
        sigv4.canonical_query(parts.query),
        sigv4.canonical_headers(headers, auth.signed_headers),
        auth.signed_headers_line,
        request.headers["X-Amz-Content-SHA256"],
    )
    scope = sigv4.credential_scope(amz_date[:8], "eu-west-1", "s3")
    sig = sigv4.sign(
        creq, amz_date, scope, sigv4.signing_key(EXAMPLE_SECRET, amz_date[:8], "eu-west-1", "s3")
    )
    return sigv4.authorization_value(EXAMPLE_KEY, scope, auth.signed_headers_line, sig)


_key_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    key=_key_text,
    params=st.lists(st.tuples(_key_text, st.text(max_size=12)), max_size=4),
    meta=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    token=st.none() | st.just("FQoGZXIvYXdzEXAMPLE//token+="),
)
def test_matches_botocore(key: str, params: list[tuple[str, str]], meta: str, token: str | None) -> None:
    # botocore encodes the path with '/' and '~' safe and the query with the unreserved set, as S3 clients do.
    path = "/bucket/" + quote(key, safe="/~")
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)
    url = f"https://bucket.s3.eu-west-1.amazonaws.com{path}" + (f"?{query}" if query else "")
    request = _botocore_sign(url, "GET", {"x-amz-meta-note": meta, "Range": "bytes=0-9"}, token)
    assert _ours(request) == request.headers["Authorization"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ""),
        ("acl", "acl="),
        ("b=2&a=1", "a=1&b=2"),
        ("a=2&a=1&a=10", "a=1&a=10&a=2"),
        ("prefix=a+b", "prefix=a%20b"),
        ("prefix=a%2Bb", "prefix=a%2Bb"),
        ("prefix=a%20b", "prefix=a%20b"),
        ("prefix=a b", "prefix=a%20b"),
        ("prefix=%7e%2a", "prefix=~%2A"),
        ("prefix=a=b", "prefix=a%3Db"),
        ("prefix=caf%C3%A9", "prefix=caf%C3%A9"),
        ("prefix=café", "prefix=caf%C3%A9"),
        ("B=1&a=1&_=1", "B=1&_=1&a=1"),
        ("a=1&&b=2&", "a=1&b=2"),
        ("list-type=2&prefix=%2F%2F", "list-type=2&prefix=%2F%2F"),
        ("prefix=%2b%2f", "prefix=%2B%2F"),
        ("prefix=%41%7E", "prefix=A~"),
        ("prefix=%FF%fe", "prefix=%FF%FE"),
        ("prefix=100%", "prefix=100%25"),
    ],
)
def test_canonical_query(query: str, expected: str) -> None:
    assert sigv4.canonical_query(query) == expected


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)), max_size=5))
def test_canonical_query_equals_botocore_params_form(params: list[tuple[str, str]]) -> None:
    # However a client encodes its query (strictly, or with '+' for spaces as forms do), the canonical form
    # is what botocore computes from the decoded parameters.
    expected = SigV4Auth(Credentials("a", "b"), "s3", "us-east-1")._canonical_query_string_params(params)
    strict = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    plus = strict.replace("%20", "+")
    assert sigv4.canonical_query(strict) == expected
    assert sigv4.canonical_query(plus) == expected


@given(st.text(alphabet="%0123456789ABCDEFabcdef+-_.~ aZ/=é", max_size=24))
def test_canonical_query_fast_path_agrees_with_byte_reencoding(value: str) -> None:
    # Components already canonical are kept as sent; the result must equal a full byte-level re-encoding.
    slow = quote_from_bytes(unquote_to_bytes(value.replace("+", "%20")), safe="-_.~")
    assert sigv4.canonical_query("k=" + value) == "k=" + slow


def test_canonical_headers_rules() -> None:
    headers = (
        ("Host", "h"),
        ("X-Amz-Meta-A", "  two   spaces  "),
        ("x-amz-meta-a", "second"),
        ("X-Amz-Meta-B", "folded\r\n   line"),
    )
    block = sigv4.canonical_headers(headers, ["host", "x-amz-meta-a", "x-amz-meta-b"])
    assert block == "host:h\nx-amz-meta-a:two spaces,second\nx-amz-meta-b:folded line\n"
    assert sigv4.signed_headers_line(["X-Amz-Date", "host", "Host"]) == "host;x-amz-date"


def test_signing_key_cache_matches_derivation_and_hides_secret() -> None:
    key = sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1", "s3")
    assert key == sigv4.derive_signing_key(EXAMPLE_SECRET, "20130524", "us-east-1", "s3")
    assert sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1", "s3") is key
    assert key != sigv4.signing_key(EXAMPLE_SECRET, "20130524", "eu-west-1", "s3")
    assert EXAMPLE_SECRET not in repr(sigv4._CACHE)
    assert all(EXAMPLE_SECRET not in repr(k) for k in sigv4._CACHE._keys)


def test_signing_key_cache_is_bounded() -> None:
    cache = sigv4._SigningKeyCache(3)
    for day in range(10):
        cache.get("s", f"2024010{day}", "r", "s3")
    assert len(cache._keys) == 3


def test_debug_log_has_no_secret_or_key(caplog: pytest.LogCaptureFixture) -> None:
    key = sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1", "s3")
    with caplog.at_level("DEBUG", logger="s3proxy.sigv4"):
        sigv4.sign("GET\n/\n\nhost:h\n\nhost\nUNSIGNED-PAYLOAD", "20130524T000000Z", "scope", key)
    assert "CanonicalRequest" in caplog.text and "StringToSign" in caplog.text
    assert EXAMPLE_SECRET not in caplog.text and key.hex() not in caplog.text


def test_debug_log_redacts_session_tokens(caplog: pytest.LogCaptureFixture) -> None:
    canonical = (
        "GET\n/\nX-Amz-Security-Token=SeSsIoN%2Fen&a=1\n"
        "host:h\nx-amz-security-token:SeSsIoN/en\n\nhost\nUNSIGNED-PAYLOAD"
    )
    with caplog.at_level("DEBUG", logger="s3proxy.sigv4"):
        sigv4.sign(canonical, "20130524T000000Z", "scope", b"k")
    assert "SeSsIoN" not in caplog.text and caplog.text.count("<redacted>") == 2
    assert "&a=1" in caplog.text


# -- parsers ---------------------------------------------------------------------------------------------

GOOD_SIG = "f" * 64
GOOD = (
    "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/s3/aws4_request, "
    f"SignedHeaders=host;x-amz-date, Signature={GOOD_SIG}"
)


def test_parse_authorization_fields() -> None:
    auth = sigv4.parse_authorization(GOOD)
    assert auth.algorithm == sigv4.ALGORITHM
    assert (auth.access_key, auth.date, auth.region, auth.service) == ("AKID", "20240101", "us-east-1", "s3")
    assert auth.signed_headers == ("host", "x-amz-date")
    assert auth.signature == GOOD_SIG
    assert GOOD_SIG not in repr(auth)
    # No spaces after commas and any component order are accepted, as S3 does.
    compact = (
        f"AWS4-HMAC-SHA256 Signature={GOOD_SIG},SignedHeaders=host,"
        "Credential=AKID/20240101/eu-west-1/s3/aws4_request"
    )
    assert sigv4.parse_authorization(compact).region == "eu-west-1"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("AWS4-HMAC-SHA256", "requires a 'Credential'"),
        (GOOD.replace("Credential=", "Cred="), "requires a 'Credential'"),
        (GOOD + ", Extra=1", "unknown component"),
        (GOOD.replace(", SignedHeaders=host;x-amz-date", ""), "requires a 'SignedHeaders'"),
        (GOOD.replace(f", Signature={GOOD_SIG}", ""), "requires a 'Signature'"),
        (GOOD.replace("AKID/20240101/us-east-1/s3/aws4_request", "AKID/20240101/us-east-1/s3"), "mal-formed"),
        (GOOD.replace("aws4_request", "aws5_request"), "must end with 'aws4_request'"),
        (GOOD.replace("20240101", "2024-01-01"), "is not YYYYMMDD"),
        (GOOD.replace("/us-east-1/", "//"), "region"),
        (GOOD.replace("/s3/", "//"), "service"),
        (GOOD.replace("host;x-amz-date", "host;;x-amz-date"), "SignedHeaders"),
        (GOOD.replace(GOOD_SIG, "xyz"), "64 lower-case hex"),
        (GOOD.replace("Credential=", "Credential"), "Name=Value"),
        (GOOD + ", Signature=" + GOOD_SIG, "appears twice"),
        (GOOD.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512"), "algorithm"),
    ],
)
def test_parse_authorization_errors(value: str, fragment: str) -> None:
    with pytest.raises(S3Error) as err:
        sigv4.parse_authorization(value)
    assert (err.value.status, err.value.code) == (400, "AuthorizationHeaderMalformed")
    assert fragment in err.value.message
    assert GOOD_SIG not in err.value.message


@given(st.text(max_size=200))
def test_parse_authorization_only_raises_s3error(value: str) -> None:
    try:
        sigv4.parse_authorization(value)
    except S3Error as exc:
        assert exc.status == 400


PRESIGNED = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={GOOD_SIG}"
)


def test_parse_presigned_fields() -> None:
    auth = sigv4.parse_presigned(PRESIGNED + "&X-Amz-Security-Token=tok%2Ben")
    assert auth.access_key == "AKID" and auth.region == "us-east-1" and auth.expires == 3600
    assert auth.amz_date == "20240101T000000Z" and auth.signed_headers == ("host",)
    assert auth.security_token == "tok+en"
    assert "tok+en" not in repr(auth) and GOOD_SIG not in repr(auth)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        (PRESIGNED.replace("&X-Amz-Expires=3600", ""), "missing: X-Amz-Expires"),
        (PRESIGNED.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""), "missing: X-Amz-Algorithm"),
        (PRESIGNED.replace("=3600", "=604801"), "less than a week"),
        (PRESIGNED.replace("=3600", "=-1"), "non-negative"),
        (PRESIGNED.replace("=3600", "=soon"), "non-negative"),
        (PRESIGNED.replace("20240101T000000Z", "2024-01-01"), "ISO8601"),
        (
            PRESIGNED.replace("T000000Z", "T000000Z").replace("20240101T", "20240102T"),
            "Invalid credential date",
        ),
        (PRESIGNED.replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"), "only supports"),
        (PRESIGNED.replace("%2Faws4_request", ""), "mal-formed"),
        (PRESIGNED.replace(GOOD_SIG, "abc"), "64 lower-case hex"),
    ],
)
def test_parse_presigned_errors(query: str, fragment: str) -> None:
    with pytest.raises(S3Error) as err:
        sigv4.parse_presigned(query)
    assert (err.value.status, err.value.code) == (400, "AuthorizationQueryParametersError")
    assert fragment in err.value.message


@given(st.text(max_size=200))
def test_parse_presigned_only_raises_s3error(query: str) -> None:
    try:
        sigv4.parse_presigned(query)
    except S3Error as exc:
        assert exc.status == 400


def test_error_document_names_the_region_to_sign_for_when_given() -> None:
    from s3proxy.errors import error_xml

    with_region = S3Error(400, "AuthorizationHeaderMalformed", "wrong region", region="us-east-1")
    body = error_xml(with_region.with_resource("/b/k"), "ID").decode()
    assert "<Message>wrong region</Message><Region>us-east-1</Region><Resource>/b/k</Resource>" in body
    assert "<Region>" not in error_xml(S3Error(403, "AccessDenied", "no"), "ID").decode()
