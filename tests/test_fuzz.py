"""Fuzzing the parsers that see attacker-controlled bytes: none may raise anything but the project's own
errors (S3Error for request input, ConfigError for configuration), whatever arrives.

Short in the suite (S3PROXY_FUZZ_EXAMPLES, default 150 per target); `bash bench/fuzz.sh` runs the same
properties with many more examples (and atheris over the same targets when it is installed).
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3proxy import guard, hosts, sigv4
from s3proxy.chunked import ChunkResigner, ChunkSeed, encode_signed_chunks
from s3proxy.config import ConfigError, load_config, parse_config
from s3proxy.engine import Engine
from s3proxy.errors import S3Error
from s3proxy.model import Request
from s3proxy.signing import signer_from_config

EXAMPLES = int(os.environ.get("S3PROXY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Text that looks like what these parsers see, plus anything at all.
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:/=,;%&?@#[] \t\r\n\x00"
_FRAGMENTS = st.sampled_from(
    [
        "s3",
        "amazonaws",
        "com",
        "cn",
        "us-east-1",
        "eu-west-1",
        "cn-north-1",
        "dualstack",
        "s3-accesspoint",
        "s3-control",
        "s3-fips",
        "vpce",
        "vpce-1a2b3c4d-5e6f",
        "bucket",
        "123456789012",
        "--x-s3",
        "AWS4-HMAC-SHA256",
        "Credential=",
        "SignedHeaders=",
        "Signature=",
        "AKIAIOSFODNN7EXAMPLE",
        "20260101",
        "aws4_request",
        "X-Amz-Date=",
        "X-Amz-Expires=",
        "a" * 64,
        "127.0.0.1",
        "::1",
        "[",
        "]",
    ]
)
fuzz_text = st.one_of(
    st.text(),
    st.text(alphabet=_ALPHABET, max_size=300),
    st.lists(st.one_of(_FRAGMENTS, st.sampled_from([".", "/", ",", "=", "&", " ", ":"])), max_size=30).map(
        "".join
    ),
)


# --- host classifier -------------------------------------------------------------------------------------


@FUZZ
@given(host=fuzz_text, path=fuzz_text)
def test_host_classifier_never_raises(host: str, path: str) -> None:
    hc = hosts.classify_host(host)
    assert hc.family in hosts.HostFamily.__args__  # type: ignore[attr-defined]
    hosts.classify(host, "/" + path)
    assert hosts.is_s3_host(host) in (True, False)
    if hc.family != "not-s3":  # whatever is S3 is a plain DNS name: nothing to inject into a Host
        assert all(c.isalnum() or c in ".-_" for c in hc.host), hc


# --- guards ------------------------------------------------------------------------------------------------


@FUZZ
@given(
    fields=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=20),
    target=fuzz_text,
    host=fuzz_text,
    sni=st.none() | fuzz_text,
    address=fuzz_text,
    port=st.integers(0, 65535),
)
def test_guards_never_raise(
    fields: list[tuple[bytes, bytes]], target: str, host: str, sni: str | None, address: str, port: int
) -> None:
    err = guard.check_head("GET", target, fields, 4096)
    assert err is None or isinstance(err, S3Error)
    err = guard.check_authority(host, target, sni)
    assert err is None or isinstance(err, S3Error)
    reason = guard.destination_refusal(address, port, own_ports=(3128,))
    assert reason is None or isinstance(reason, str)


# --- auth parsers ------------------------------------------------------------------------------------------


@FUZZ
@given(value=fuzz_text)
def test_authorization_parser_raises_only_s3_errors(value: str) -> None:
    for text in (value, "AWS4-HMAC-SHA256 " + value):
        try:
            sigv4.parse_authorization(text)
        except S3Error as e:
            assert e.status == 400 and e.code == "AuthorizationHeaderMalformed"


@FUZZ
@given(
    query=fuzz_text,
    params=st.dictionaries(st.sampled_from((*sigv4.PRESIGN_PARAMS, "X-Amz-Security-Token")), fuzz_text),
)
def test_presigned_parser_raises_only_s3_errors(query: str, params: dict[str, str]) -> None:
    for q in (query, "&".join(f"{k}={v}" for k, v in params.items()), params):
        try:
            sigv4.parse_presigned(q)
        except S3Error as e:
            assert e.status in (400, 403)


# --- the aws-chunked parser --------------------------------------------------------------------------------

KEY = b"k" * 32
SCOPE = "20260101/us-east-1/s3/aws4_request"
AMZ_DATE = "20260101T000000Z"
SEED = "a" * 64


def _seed(trailer: bool) -> ChunkSeed:
    return ChunkSeed(AMZ_DATE, SCOPE, SCOPE, KEY, KEY, SEED, SEED, trailer=trailer)


def _valid_body(data: bytes, trailer: bool) -> bytes:
    pieces = [data[i : i + 100] for i in range(0, len(data), 100)] or [b""]
    trailers = [("x-amz-checksum-crc32", "AAAAAA==")] if trailer else None
    return b"".join(
        encode_signed_chunks(
            pieces, signing_key=KEY, amz_date=AMZ_DATE, scope=SCOPE, seed_signature=SEED, trailers=trailers
        )
    )


@FUZZ
@given(
    data=st.binary(min_size=1, max_size=400),
    trailer=st.booleans(),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10_000),
    junk=st.binary(max_size=50),
    splits=st.lists(st.integers(1, 64), max_size=8),
)
def test_chunk_parser_raises_only_s3_errors(
    data: bytes, trailer: bool, flips: list[tuple[int, int]], cut: int, junk: bytes, splits: list[int]
) -> None:
    body = bytearray(_valid_body(data, trailer))
    for pos, value in flips:
        body[pos % len(body)] = value
    mutated = bytes(body[: max(1, cut % (len(body) + 1))]) + junk
    resigner = ChunkResigner(_seed(trailer), max_chunk_size=256, max_trailer_size=128)
    out = b""
    pos = 0
    try:
        for n in splits:
            out += resigner.feed(mutated[pos : pos + n])
            pos += n
        out += resigner.feed(mutated[pos:])
        out += resigner.finish()
    except S3Error as e:
        assert e.status in (400, 403)  # malformed / signature mismatch
    else:
        # Only what the client signed is ever completed: a body that passed has the same length.
        assert len(out) == len(mutated)


# --- the config loader -------------------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "endpoints",
        "us-east-1",
        "dns_name",
        "zones",
        "port",
        "signing",
        "keys",
        "access_key_id",
        "secret_access_key",
        "listen",
        "host",
        "access",
        "allow_clients",
        "tls",
        "dns",
        "nameservers",
        "limits",
        "max_chunk_size",
        "tunnel_allow",
        "non_s3",
        "unsupported",
        "buckets",
        "admin",
        "log",
        "upstream",
        "mode",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    fuzz_text,
    st.sampled_from(["vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com", "127.0.0.0/8", "tunnel", "0"]),
)
yamlish: Any = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS | fuzz_text, inner, max_size=5),
    max_leaves=25,
)


@FUZZ
@given(doc=yamlish)
def test_config_parser_raises_only_config_errors(doc: Any) -> None:
    base = {"endpoints": {"us-east-1": "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"}}
    for data in (doc, {**base, **(doc if isinstance(doc, dict) else {})}):
        try:
            parse_config(data, base_dir=Path("/nonexistent-s3proxy-fuzz"), environ={})
        except ConfigError:
            pass


@FUZZ
@given(text=st.one_of(st.text(max_size=400), yamlish.map(lambda d: yaml.safe_dump(d))))
def test_config_file_loader_raises_only_config_errors(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_config(path, {})
        except ConfigError:
            pass


# --- the whole decision over random requests ------------------------------------------------------------

_CONFIG = parse_config(
    {
        "endpoints": {"us-east-1": "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"},
        "signing": {"keys": [{"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "s" * 40}]},
    },
    base_dir=Path("."),
    environ={},
)
_ENGINE = Engine(_CONFIG, signer_from_config(_CONFIG.signing))
_HEADER_NAMES = st.sampled_from(
    [
        "Host",
        "Authorization",
        "X-Amz-Date",
        "X-Amz-Content-SHA256",
        "X-Amz-Security-Token",
        "Content-Encoding",
        "x-amz-decoded-content-length",
        "Date",
        "X-Other",
    ]
)


@FUZZ
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE", "X"]),
    host=st.one_of(fuzz_text, st.sampled_from(["s3.amazonaws.com", "b.s3.us-east-1.amazonaws.com"])),
    path=fuzz_text,
    query=fuzz_text,
    headers=st.lists(st.tuples(_HEADER_NAMES, fuzz_text), max_size=8),
)
def test_engine_decides_without_raising(
    method: str, host: str, path: str, query: str, headers: list[tuple[str, str]]
) -> None:
    req = Request(method, "https", host, None, "/" + path, query, tuple(headers), bool(query))
    d = _ENGINE.decide(req, datetime(2026, 1, 1, tzinfo=UTC))
    assert d.action in ("forward", "reject", "passthrough")
    if d.action == "forward":
        assert hosts.is_vpce_host(d.host), d.host
