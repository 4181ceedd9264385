"""Tests for s3proxy.chunked: the aws-chunked verify-and-re-sign stream.

The published vectors are AWS's S3 examples for signed streaming uploads
(https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html and sigv4-streaming-trailers.html).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3proxy.chunked import (
    EMPTY_SHA256,
    ChunkResigner,
    ChunkSeed,
    canonical_trailer,
    chunk_string_to_sign,
    encode_signed_chunks,
    hmac_sha256_hex,
    trailer_string_to_sign,
)
from s3proxy.errors import S3Error

# --- the published example ------------------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AMZ_DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
DATA = [b"a" * 65536, b"a" * 1024]
DECODED_LENGTH = 66560

SEED_A = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNKS_A = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
SEED_B = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
CHUNKS_B = [
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
]
TRAILER_B = "x-amz-checksum-crc32c:sOO8/Q=="
TRAILER_SIG_B = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"

VPCE_HOST = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
SIG_RE = re.compile(rb"(?:chunk-signature=|x-amz-trailer-signature:)([0-9a-f]{64})")
HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


KEY = signing_key(SECRET, "20130524", "us-east-1")


def example_seed(host: str, region: str, secret: str, *, trailer: bool) -> str:
    """Seed signature of the published example request (PUT /examplebucket/chunkObject.txt) sent to `host`."""
    headers = {"content-encoding": "aws-chunked", "host": host, "x-amz-date": AMZ_DATE}
    headers["x-amz-content-sha256"] = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    headers["x-amz-decoded-content-length"] = str(DECODED_LENGTH)
    headers["x-amz-storage-class"] = "REDUCED_REDUNDANCY"
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32c"
    else:
        headers["content-length"] = "66824"
    names = sorted(headers)
    canonical_request = "\n".join(
        [
            "PUT",
            "/examplebucket/chunkObject.txt",
            "",
            "".join(f"{n}:{headers[n]}\n" for n in names),
            ";".join(names),
            headers["x-amz-content-sha256"],
        ]
    )
    scope = f"20130524/{region}/s3/aws4_request"
    string_to_sign = (
        f"AWS4-HMAC-SHA256\n{AMZ_DATE}\n{scope}\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
    )
    return hmac_sha256_hex(signing_key(secret, "20130524", region), string_to_sign)


def published_body(trailer: bool, blank_before_trailer: bool = False) -> bytes:
    """The example body built from the published signatures only (not from the code under test)."""
    sigs = CHUNKS_B if trailer else CHUNKS_A
    body = (
        f"10000;chunk-signature={sigs[0]}\r\n".encode()
        + DATA[0]
        + f"\r\n400;chunk-signature={sigs[1]}\r\n".encode()
        + DATA[1]
        + f"\r\n0;chunk-signature={sigs[2]}\r\n".encode()
    )
    if not trailer:
        return body + b"\r\n"
    blank = b"\r\n" if blank_before_trailer else b""
    return body + blank + f"{TRAILER_B}\r\nx-amz-trailer-signature:{TRAILER_SIG_B}\r\n\r\n".encode()


def make_seed(
    *,
    old_key: bytes | None = KEY,
    new_key: bytes = KEY,
    old_scope: str = SCOPE,
    new_scope: str = SCOPE,
    old_seed: str = SEED_A,
    new_seed: str = SEED_A,
    trailer: bool = False,
    decoded_length: int | None = None,
) -> ChunkSeed:
    return ChunkSeed(
        amz_date=AMZ_DATE,
        old_scope=old_scope,
        new_scope=new_scope,
        old_signing_key=old_key,
        new_signing_key=new_key,
        old_seed_signature=old_seed,
        new_seed_signature=new_seed,
        trailer=trailer,
        decoded_length=decoded_length,
    )


def reverse(seed: ChunkSeed) -> ChunkSeed:
    assert seed.old_signing_key is not None
    return ChunkSeed(
        amz_date=seed.amz_date,
        old_scope=seed.new_scope,
        new_scope=seed.old_scope,
        old_signing_key=seed.new_signing_key,
        new_signing_key=seed.old_signing_key,
        old_seed_signature=seed.new_seed_signature,
        new_seed_signature=seed.old_seed_signature,
        trailer=seed.trailer,
        decoded_length=seed.decoded_length,
    )


def run(seed: ChunkSeed, pieces: Iterable[bytes], **limits: int) -> bytes:
    resigner = ChunkResigner(seed, **limits)
    out = [resigner.feed(piece) for piece in pieces]
    out.append(resigner.finish())
    return b"".join(out)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def signatures(body: bytes) -> list[str]:
    return [m.decode() for m in SIG_RE.findall(body)]


# A second identity and region, as in proxy-identity mode with the bucket in another region.
OTHER_REGION = "eu-west-1"
OTHER_SCOPE = f"20130524/{OTHER_REGION}/s3/aws4_request"
OTHER_KEY = signing_key("proxyIdentitySecretKey/EXAMPLE+0123456789", "20130524", OTHER_REGION)


# --- the published vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trailer", "seed", "expected"),
    [(False, SEED_A, CHUNKS_A), (True, SEED_B, [*CHUNKS_B, TRAILER_SIG_B])],
)
def test_encoder_reproduces_published_signatures(trailer: bool, seed: str, expected: list[str]) -> None:
    trailers = [("x-amz-checksum-crc32c", "sOO8/Q==")] if trailer else None
    body = b"".join(
        encode_signed_chunks(
            DATA, signing_key=KEY, amz_date=AMZ_DATE, scope=SCOPE, seed_signature=seed, trailers=trailers
        )
    )
    assert signatures(body) == expected
    assert body == published_body(trailer)
    if not trailer:
        assert len(body) == 66824  # the published Content-Length


@pytest.mark.parametrize(("trailer", "seed"), [(False, SEED_A), (True, SEED_B)])
def test_test_helper_reproduces_published_seed(trailer: bool, seed: str) -> None:
    assert example_seed("s3.amazonaws.com", "us-east-1", SECRET, trailer=trailer) == seed


def test_string_to_sign_functions_match_published_signatures() -> None:
    data_hash = hashlib.sha256(DATA[0]).hexdigest()
    assert hmac_sha256_hex(KEY, chunk_string_to_sign(AMZ_DATE, SCOPE, SEED_A, data_hash)) == CHUNKS_A[0]
    assert (
        hmac_sha256_hex(KEY, chunk_string_to_sign(AMZ_DATE, SCOPE, CHUNKS_A[1], EMPTY_SHA256)) == CHUNKS_A[2]
    )
    canonical = canonical_trailer([(b"X-Amz-Checksum-CRC32C", b"  sOO8/Q==  ")])
    assert canonical == b"x-amz-checksum-crc32c:sOO8/Q==\n"  # hashed with LF, not CRLF
    trailer_hash = hashlib.sha256(canonical).hexdigest()
    assert (
        hmac_sha256_hex(KEY, trailer_string_to_sign(AMZ_DATE, SCOPE, CHUNKS_B[2], trailer_hash))
        == TRAILER_SIG_B
    )


@pytest.mark.parametrize(
    ("host", "region", "key", "secret"),
    [
        (VPCE_HOST, "us-east-1", KEY, SECRET),
        ("bucket.vpce-1a2b3c4d-5e6f.s3.eu-west-1.vpce.amazonaws.com", OTHER_REGION, None, SECRET),
        ("bucket.vpce-0f0f0f0f-1234.s3.eu-west-1.vpce.amazonaws.com", OTHER_REGION, OTHER_KEY, None),
    ],
    ids=["same-key-new-host", "new-region", "proxy-identity"],
)
@pytest.mark.parametrize("trailer", [False, True], ids=["payload", "payload-trailer"])
def test_published_example_round_trip(
    host: str, region: str, key: bytes | None, secret: str | None, trailer: bool
) -> None:
    new_key = key if key is not None else signing_key(SECRET, "20130524", region)
    new_secret = secret if secret is not None else "proxyIdentitySecretKey/EXAMPLE+0123456789"
    new_seed = example_seed(host, region, new_secret, trailer=trailer)
    new_scope = f"20130524/{region}/s3/aws4_request"
    original = published_body(trailer)
    seed = make_seed(
        new_key=new_key,
        new_scope=new_scope,
        old_seed=SEED_B if trailer else SEED_A,
        new_seed=new_seed,
        trailer=trailer,
        decoded_length=DECODED_LENGTH,
    )

    resigned = run(seed, [original])

    assert len(resigned) == len(original)
    assert not set(signatures(resigned)) & set(signatures(original))
    # What an SDK configured for the new host would have sent, computed independently of the re-signer.
    trailers = [("x-amz-checksum-crc32c", "sOO8/Q==")] if trailer else None
    expected = b"".join(
        encode_signed_chunks(
            DATA,
            signing_key=new_key,
            amz_date=AMZ_DATE,
            scope=new_scope,
            seed_signature=new_seed,
            trailers=trailers,
        )
    )
    assert resigned == expected
    # And back again: the published signatures, byte for byte.
    assert run(reverse(seed), [resigned]) == original


def test_published_example_byte_by_byte() -> None:
    original = published_body(trailer=True)
    seed = make_seed(
        new_key=OTHER_KEY, new_scope=OTHER_SCOPE, old_seed=SEED_B, new_seed="1" * 64, trailer=True
    )
    whole = run(seed, [original])
    one_byte = run(seed, [original[i : i + 1] for i in range(len(original))])
    assert one_byte == whole


def test_optional_blank_line_before_trailer_is_passed_through() -> None:
    original = published_body(trailer=True, blank_before_trailer=True)
    seed = make_seed(
        new_key=OTHER_KEY, new_scope=OTHER_SCOPE, old_seed=SEED_B, new_seed="2" * 64, trailer=True
    )
    resigned = run(seed, [original])
    assert len(resigned) == len(original)
    assert b"\r\n0;chunk-signature=" in resigned and b"\r\n\r\nx-amz-checksum-crc32c:sOO8/Q==\r\n" in resigned
    assert run(reverse(seed), [resigned]) == original


# --- random bodies, random splits -----------------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> tuple[ChunkSeed, bytes, list[bytes], bytes]:
    """(seed, client body, its chunk data, the body an SDK would send for the new seed)."""
    chunk_sizes = draw(st.lists(st.integers(1, 300), max_size=6))
    data = [draw(st.binary(min_size=n, max_size=n)) for n in chunk_sizes]
    trailer = draw(st.booleans())
    trailers: list[tuple[str, str]] | None = None
    if trailer:
        names = draw(
            st.lists(
                st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-meta-a"]),
                unique=True,
            )
        )
        trailers = [(n, draw(st.from_regex(r"[A-Za-z0-9+/=]{0,20}", fullmatch=True))) for n in names]
    old_seed = draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    new_seed = draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    with_length = draw(st.booleans())
    seed = make_seed(
        new_key=OTHER_KEY,
        new_scope=OTHER_SCOPE,
        old_seed=old_seed,
        new_seed=new_seed,
        trailer=trailer,
        decoded_length=sum(chunk_sizes) if with_length else None,
    )
    body = b"".join(
        encode_signed_chunks(
            data, signing_key=KEY, amz_date=AMZ_DATE, scope=SCOPE, seed_signature=old_seed, trailers=trailers
        )
    )
    expected = b"".join(
        encode_signed_chunks(
            data,
            signing_key=OTHER_KEY,
            amz_date=AMZ_DATE,
            scope=OTHER_SCOPE,
            seed_signature=new_seed,
            trailers=trailers,
        )
    )
    return seed, body, data, expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_gives_the_same_output(
    stream: tuple[ChunkSeed, bytes, list[bytes], bytes], cuts: list[int]
) -> None:
    seed, body, _, expected = stream
    whole = run(seed, [body])
    assert whole == expected
    assert len(whole) == len(body)
    assert run(seed, split(body, cuts)) == whole
    assert run(reverse(seed), split(whole, cuts)) == body


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_byte_by_byte_gives_the_same_output(stream: tuple[ChunkSeed, bytes, list[bytes], bytes]) -> None:
    seed, body, _, expected = stream
    assert run(seed, [body[i : i + 1] for i in range(len(body))]) == expected


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 10_000), max_size=10))
def test_feed_never_completes_the_body(
    stream: tuple[ChunkSeed, bytes, list[bytes], bytes], cuts: list[int]
) -> None:
    """The final chunk is only released by finish(): a body cut short can never look complete upstream."""
    seed, body, _, expected = stream
    resigner = ChunkResigner(seed)
    sent = b"".join(resigner.feed(piece) for piece in split(body, cuts))
    final_at = expected.rindex(b"0;chunk-signature=")
    assert sent == expected[: len(sent)]
    assert len(sent) <= final_at
    assert sent + resigner.finish() == expected


def test_memory_stays_bounded_by_one_chunk() -> None:
    chunk = 64 * 1024
    data = [bytes([i % 251]) * chunk for i in range(64)]
    body = b"".join(
        encode_signed_chunks(data, signing_key=KEY, amz_date=AMZ_DATE, scope=SCOPE, seed_signature=SEED_A)
    )
    resigner = ChunkResigner(make_seed(new_key=OTHER_KEY, new_scope=OTHER_SCOPE), max_chunk_size=chunk)
    fed = sent = 0
    for piece in split(body, range(0, len(body), 1000)):
        fed += len(piece)
        sent += len(resigner.feed(piece))
        assert fed - sent <= chunk + 2 * 100  # at most one chunk (plus its framing) is held
    assert sent + len(resigner.finish()) == len(body)


# --- tampering ------------------------------------------------------------------------------------------


def chunk_spans(body: bytes) -> list[tuple[int, int]]:
    """(start, end) of every chunk (header to closing CRLF) in a well-formed body."""
    spans = []
    pos = 0
    while True:
        lf = body.index(b"\n", pos)
        size = int(body[pos : body.index(b";", pos)], 16)
        end = lf + 1 + size + (2 if size else 0)
        spans.append((pos, end))
        if size == 0:
            return spans
        pos = end


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_tampered_chunk_is_refused_before_any_of_its_bytes(
    stream: tuple[ChunkSeed, bytes, list[bytes], bytes], data: st.DataObject
) -> None:
    seed, body, chunks, expected = stream
    spans = chunk_spans(body)
    index = data.draw(st.integers(0, len(spans) - 1))
    start, end = spans[index]
    header_end = body.index(b"\n", start) + 1
    what = data.draw(st.sampled_from(["data", "signature"] if index < len(chunks) else ["signature"]))
    tampered = bytearray(body)
    if what == "data":
        at = data.draw(st.integers(header_end, end - 3))
        tampered[at] ^= 1 << data.draw(st.integers(0, 7))
    else:
        at = data.draw(st.integers(header_end - 66, header_end - 3))
        tampered[at] = ord("0") if tampered[at] != ord("0") else ord("1")
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))

    resigner = ChunkResigner(seed)
    sent = bytearray()
    with pytest.raises(S3Error) as caught:
        for piece in split(bytes(tampered), cuts):
            sent += resigner.feed(piece)
        sent += resigner.finish()
    assert caught.value.status == 403
    assert caught.value.code == "SignatureDoesNotMatch"
    assert f"chunk {index + 1} " in caught.value.message
    assert len(sent) <= start and bytes(sent) == expected[: len(sent)]
    # The error sticks: nothing more comes out.
    with pytest.raises(S3Error):
        resigner.feed(b"x")
    with pytest.raises(S3Error):
        resigner.finish()


def test_tampered_trailer_is_refused() -> None:
    seed = make_seed(old_seed=SEED_B, new_key=OTHER_KEY, new_scope=OTHER_SCOPE, trailer=True)
    for original, forged in [(b"sOO8/Q==", b"sOO8/Q=A"), (TRAILER_SIG_B.encode(), b"0" * 64)]:
        body = published_body(trailer=True).replace(original, forged)
        resigner = ChunkResigner(seed)
        sent = b""
        with pytest.raises(S3Error) as caught:
            sent = resigner.feed(body)
        assert (caught.value.status, caught.value.code) == (403, "SignatureDoesNotMatch")
        assert "trailer" in caught.value.message
        assert sent == b""


def test_trailer_signed_in_sent_order_or_canonical_order() -> None:
    data = [b"hello world"]
    unsorted = [("x-amz-checksum-sha256", "abc="), ("X-Amz-Checksum-CRC32", "DUoRhQ==")]
    body = b"".join(
        encode_signed_chunks(
            data, signing_key=KEY, amz_date=AMZ_DATE, scope=SCOPE, seed_signature=SEED_A, trailers=unsorted
        )
    )
    seed = make_seed(new_key=OTHER_KEY, new_scope=OTHER_SCOPE, new_seed="3" * 64, trailer=True)
    assert run(reverse(seed), [run(seed, [body])]) == body

    # A client that hashed the lines in the order sent, not sorted.
    final_sig = signatures(body)[1]
    as_sent = b"x-amz-checksum-sha256:abc=\nx-amz-checksum-crc32:DUoRhQ==\n"
    sig = hmac_sha256_hex(
        KEY, trailer_string_to_sign(AMZ_DATE, SCOPE, final_sig, hashlib.sha256(as_sent).hexdigest())
    )
    body2 = (
        body[: body.rindex(b"x-amz-trailer-signature:")] + f"x-amz-trailer-signature:{sig}\r\n\r\n".encode()
    )
    assert body2 != body
    resigned = run(seed, [body2])
    assert run(reverse(seed), [resigned]) == body2


# --- truncation and malformed framing -------------------------------------------------------------------


@pytest.mark.parametrize("trailer", [False, True])
def test_every_truncation_raises_in_finish(trailer: bool) -> None:
    data = [b"x" * 10, b"y" * 3]
    trailers = [("x-amz-checksum-crc32", "AAAAAA==")] if trailer else None
    body = b"".join(
        encode_signed_chunks(
            data, signing_key=KEY, amz_date=AMZ_DATE, scope=SCOPE, seed_signature=SEED_A, trailers=trailers
        )
    )
    seed = make_seed(new_key=OTHER_KEY, new_scope=OTHER_SCOPE, trailer=trailer)
    for cut in range(len(body)):
        resigner = ChunkResigner(seed)
        resigner.feed(body[:cut])
        assert not resigner.complete
        with pytest.raises(S3Error) as caught:
            resigner.finish()
        assert (caught.value.status, caught.value.code) == (400, "IncompleteBody"), cut
    resigner = ChunkResigner(seed)
    resigner.feed(body)
    assert resigner.complete
    assert resigner.chunks_verified == 3
    assert resigner.decoded_bytes == 13


def test_data_after_the_final_chunk_is_refused_and_final_chunk_never_sent() -> None:
    body = published_body(trailer=False)
    resigner = ChunkResigner(make_seed(new_seed="4" * 64))
    sent = resigner.feed(body)
    assert b"\n0;chunk-signature=" not in sent and len(sent) == body.rindex(b"0;chunk-signature=")
    with pytest.raises(S3Error) as caught:
        resigner.feed(b"GET / HTTP/1.1\r\n")
    assert (caught.value.status, caught.value.code) == (400, "InvalidRequest")
    with pytest.raises(S3Error):
        resigner.finish()


def sig_for(data: bytes, previous: str = SEED_A) -> str:
    return hmac_sha256_hex(
        KEY, chunk_string_to_sign(AMZ_DATE, SCOPE, previous, hashlib.sha256(data).hexdigest())
    )


S1 = sig_for(b"abc")
FINAL = sig_for(b"", S1)
GOOD = f"3;chunk-signature={S1}\r\nabc\r\n0;chunk-signature={FINAL}\r\n\r\n".encode()
GOOD_HEAD = f"3;chunk-signature={S1}\r\nabc\r\n0;chunk-signature={FINAL}\r\n".encode()


@pytest.mark.parametrize(
    ("body", "code", "words", "options"),
    [
        (b"", "IncompleteBody", "empty", {}),
        (GOOD.replace(b"3;", b"g;"), "InvalidRequest", "hexadecimal", {}),
        (GOOD.replace(b"3;", b"+3;"), "InvalidRequest", "hexadecimal", {}),
        (GOOD.replace(b"3;", b" 3;"), "InvalidRequest", "hexadecimal", {}),
        (GOOD.replace(b"3;", b"0x3;"), "InvalidRequest", "hexadecimal", {}),
        (GOOD.replace(b"3;", b"3_0;"), "InvalidRequest", "hexadecimal", {}),
        (GOOD.replace(b"3;", b";"), "InvalidRequest", "hexadecimal", {}),
        (b"3\r\nabc\r\n0\r\n\r\n", "InvalidRequest", "chunk-signature", {}),
        (GOOD.replace(b";chunk-signature=", b";chunk-signatur="), "InvalidRequest", "chunk-signature", {}),
        (GOOD.replace(b";chunk-signature=", b";x=1;chunk-signature="), "InvalidRequest", "chunk 1", {}),
        (GOOD.replace(S1.encode(), S1.upper().encode()), "InvalidRequest", "lower-case", {}),
        (GOOD.replace(S1.encode(), S1[:-1].encode()), "InvalidRequest", "64", {}),
        (GOOD.replace(b"\r\nabc", b"\nabc"), "InvalidRequest", "CRLF", {}),
        (GOOD.replace(b"abc\r\n", b"abc\n\n"), "InvalidRequest", "CRLF", {}),
        (GOOD.replace(b"abc\r\n", b"abcd\r\n"), "InvalidRequest", "CRLF", {}),
        (GOOD[:-2] + b"xx", "InvalidRequest", "CRLF", {}),
        (b"1" * 200, "InvalidRequest", "longer", {}),
        (GOOD, "InvalidRequest", "limit", {"max_chunk_size": 2}),
        (GOOD, "InvalidRequest", "x-amz-decoded-content-length", {"decoded_length": 2}),
        (GOOD, "IncompleteBody", "x-amz-decoded-content-length", {"decoded_length": 4}),
        (GOOD + b"\r\n", "InvalidRequest", "after the final", {}),
        (GOOD_HEAD + b"\r\n\r\n", "InvalidRequest", "without x-amz-trailer-signature", {"trailer": True}),
        (GOOD_HEAD + b"a:b\r\n\r\n", "InvalidRequest", "without x-amz-trailer-signature", {"trailer": True}),
        (GOOD_HEAD + b"a b:c\r\n", "InvalidRequest", "name:value", {"trailer": True}),
        (GOOD_HEAD + b":c\r\n", "InvalidRequest", "name:value", {"trailer": True}),
        (GOOD_HEAD + b"abc\r\n", "InvalidRequest", "name:value", {"trailer": True}),
        (GOOD_HEAD + b"a:b\r\na:c\r\n", "InvalidRequest", "repeated", {"trailer": True}),
        (GOOD_HEAD + b"a:b\x00\r\n", "InvalidRequest", "control", {"trailer": True}),
        (GOOD_HEAD + b"a:b\n", "InvalidRequest", "CRLF", {"trailer": True}),
        (GOOD_HEAD + b"x-amz-trailer-signature:abc\r\n", "InvalidRequest", "64", {"trailer": True}),
        (
            GOOD_HEAD + b"x-amz-trailer-signature:" + b"0" * 64 + b"\r\nb:c\r\n",
            "InvalidRequest",
            "follows",
            {"trailer": True},
        ),
        (
            GOOD_HEAD + b"x-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n",
            "SignatureDoesNotMatch",
            "trailer",
            {"trailer": True},
        ),
        (
            GOOD_HEAD + b"a:" + b"b" * 100 + b"\r\n",
            "InvalidRequest",
            "limit",
            {"trailer": True, "max_trailer_size": 50},
        ),
        (
            GOOD_HEAD + b"a:" + b"b" * 100,
            "InvalidRequest",
            "limit",
            {"trailer": True, "max_trailer_size": 50},
        ),
        (GOOD_HEAD, "IncompleteBody", "trailing headers", {"trailer": True}),
        (GOOD_HEAD + b"a:b\r\n", "IncompleteBody", "trailing headers", {"trailer": True}),
        (GOOD_HEAD + b"x", "InvalidRequest", "CRLF", {}),
        (GOOD[:10], "IncompleteBody", "header of chunk 1", {}),
        (GOOD[:-30], "IncompleteBody", "chunk 2", {}),
        (GOOD[:85], "IncompleteBody", "inside chunk 1: 1 of 3", {}),
        (GOOD[:-1], "IncompleteBody", "CRLF that closes chunk 2", {}),
    ],
)
def test_malformed_bodies(body: bytes, code: str, words: str, options: dict[str, int]) -> None:
    limits = {k: v for k, v in options.items() if k.startswith("max_")}
    seed_options = {k: v for k, v in options.items() if not k.startswith("max_")}
    seed = make_seed(new_key=OTHER_KEY, new_scope=OTHER_SCOPE, **seed_options)  # type: ignore[arg-type]
    for pieces in ([body], [body[i : i + 1] for i in range(len(body))]):
        with pytest.raises(S3Error) as caught:
            run(seed, pieces, **limits)
        assert caught.value.code == code
        assert caught.value.status == (403 if code == "SignatureDoesNotMatch" else 400)
        assert words in caught.value.message
        assert not HEX64_RE.search(caught.value.message)


def test_oversized_chunk_is_refused_at_its_header() -> None:
    header = f"1000001;chunk-signature={S1}\r\n".encode()
    resigner = ChunkResigner(make_seed(), max_chunk_size=0x1000000)
    with pytest.raises(S3Error) as caught:
        resigner.feed(header)
    assert "16777216" in caught.value.message
    # Exactly the limit is fine (and buffered, not refused).
    assert ChunkResigner(make_seed(), max_chunk_size=0x1000001).feed(header) == b""


def test_zero_length_object() -> None:
    final = sig_for(b"")
    body = f"0;chunk-signature={final}\r\n\r\n".encode()
    seed = make_seed(new_key=OTHER_KEY, new_scope=OTHER_SCOPE, decoded_length=0)
    resigned = run(seed, [body])
    assert len(resigned) == len(body) and resigned != body
    assert run(reverse(seed), [resigned]) == body


def test_size_digits_are_passed_through_as_sent() -> None:
    body = f"0003;chunk-signature={S1}\r\nabc\r\n0;chunk-signature={FINAL}\r\n\r\n".encode()
    seed = make_seed(new_key=OTHER_KEY, new_scope=OTHER_SCOPE, new_seed="5" * 64)
    resigned = run(seed, [body])
    assert resigned.startswith(b"0003;chunk-signature=")
    assert run(reverse(seed), [resigned]) == body


def test_api_misuse_and_seed_checks() -> None:
    resigner = ChunkResigner(make_seed())
    resigner.feed(GOOD)
    assert resigner.finish()
    assert resigner.finish() == b""
    with pytest.raises(RuntimeError):
        resigner.feed(b"x")
    with pytest.raises(ValueError, match="old_seed_signature"):
        ChunkResigner(make_seed(old_seed="A" * 64))
    with pytest.raises(ValueError, match="decoded_length"):
        ChunkResigner(make_seed(decoded_length=-1))
    text = repr(make_seed())
    assert "signing_key" not in text and repr(KEY) not in text and SEED_A not in text


def test_accepts_bytearray_and_memoryview_pieces() -> None:
    seed = make_seed(new_key=OTHER_KEY, new_scope=OTHER_SCOPE)
    piece = bytearray(GOOD)
    resigner = ChunkResigner(seed)
    out = resigner.feed(memoryview(piece)[:20]) + resigner.feed(piece[20:])
    piece[:] = b"z" * len(piece)  # mutating the caller's buffer afterwards changes nothing
    assert out + resigner.finish() == run(seed, [GOOD])


# --- fuzzing: only S3Error, ever ------------------------------------------------------------------------


def mutate(body: bytes, edits: Sequence[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(body)
    for kind, at, blob in edits:
        at %= len(out) + 1
        if kind == 0:
            out[at:at] = blob
        elif kind == 1:
            del out[at : at + len(blob) + 1]
        else:
            out[at : at + len(blob)] = blob
    return bytes(out)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams(),
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.binary(max_size=8)), min_size=1, max_size=4
    ),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.integers(1, 400),
)
def test_fuzzed_bodies_raise_only_s3_errors(
    stream: tuple[ChunkSeed, bytes, list[bytes], bytes],
    edits: list[tuple[int, int, bytes]],
    cuts: list[int],
    max_chunk_size: int,
) -> None:
    seed, body, _, _ = stream
    fuzzed = mutate(body, edits)
    try:
        out = run(seed, split(fuzzed, cuts), max_chunk_size=max_chunk_size, max_trailer_size=120)
    except S3Error as error:
        assert error.status in (400, 403)
        assert not HEX64_RE.search(error.message)
    else:
        assert len(out) == len(fuzzed)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.booleans(), st.lists(st.integers(0, 300), max_size=5))
def test_random_bytes_raise_only_s3_errors(junk: bytes, trailer: bool, cuts: list[int]) -> None:
    with pytest.raises(S3Error):
        run(make_seed(trailer=trailer), split(junk, cuts))


@pytest.mark.parametrize("trailer", [False, True])
def test_proxy_identity_without_client_key_checks_form_and_re_signs(trailer: bool) -> None:
    """Proxy-identity mode: the client's secret is unknown, so signatures are re-signed, not verified."""
    original = published_body(trailer)
    seed = make_seed(
        old_key=None,
        old_seed=SEED_B if trailer else SEED_A,
        new_key=OTHER_KEY,
        new_scope=OTHER_SCOPE,
        new_seed="6" * 64,
        trailer=trailer,
    )
    trailers = [("x-amz-checksum-crc32c", "sOO8/Q==")] if trailer else None
    expected = b"".join(
        encode_signed_chunks(
            DATA,
            signing_key=OTHER_KEY,
            amz_date=AMZ_DATE,
            scope=OTHER_SCOPE,
            seed_signature="6" * 64,
            trailers=trailers,
        )
    )
    assert run(seed, [original]) == expected
    forged = original.replace(CHUNKS_A[0].encode(), b"0" * 64).replace(CHUNKS_B[0].encode(), b"0" * 64)
    assert run(seed, [forged]) == expected
    with pytest.raises(S3Error) as caught:
        run(seed, [original.replace(b"10000;", b"1000g;")])
    assert caught.value.code == "InvalidRequest"
