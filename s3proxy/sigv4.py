"""AWS Signature Version 4, one function per step of the spec, over plain values.

# Strategy: every step of https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html is a
# pure function of strings (canonical URI, query, headers, request, string to sign, signing key, signature),
# so verifying an incoming request and signing the rewritten one are the same code fed different inputs.
# Nothing here reads the clock or the environment; the one piece of state is a bounded cache of derived
# signing keys, keyed by a digest of the secret so the secret itself is never kept as a key.

S3 differs from the generic algorithm in one place: the path is signed exactly as sent, neither normalised
nor encoded again (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
`canonical_uri(..., normalize=True)` gives the generic behaviour used by AWS's published test suite.

Also here: the parsers of the SigV4 `Authorization` header and of presigned-URL (query) parameters, which
raise `S3Error` with the codes and messages S3 uses.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, quote_from_bytes, unquote_plus, unquote_to_bytes

from s3proxy.errors import S3Error
from s3proxy.model import Headers

log = logging.getLogger(__name__)

ALGORITHM = "AWS4-HMAC-SHA256"
SIGV4A_ALGORITHM = "AWS4-ECDSA-P256-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Values S3 accepts in x-amz-content-sha256 besides a hex SHA-256
# (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
PAYLOAD_MARKERS = frozenset(
    {
        UNSIGNED_PAYLOAD,
        STREAMING_PAYLOAD,
        STREAMING_PAYLOAD_TRAILER,
        STREAMING_UNSIGNED_PAYLOAD_TRAILER,
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    }
)
SIGNED_STREAMING = frozenset({STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER})

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")
_DATE = re.compile(r"^\d{8}$")
# RFC 3986 section 2.3 unreserved characters are the only ones SigV4 leaves unencoded.
_UNRESERVED = "-_.~"


def is_sha256_hex(value: str) -> bool:
    return _HEX64.match(value) is not None


def is_amz_date(value: str) -> bool:
    """`20130524T000000Z`: ISO 8601 basic format, as x-amz-date and X-Amz-Date carry it."""
    return _AMZ_DATE.match(value) is not None


# -- step 1: canonical request ---------------------------------------------------------------------------


def uri_encode(text: str, safe: str = "") -> str:
    """Percent-encode UTF-8 `text`, leaving only RFC 3986 unreserved characters (and `safe`) as they are."""
    return quote(text, safe=_UNRESERVED + safe)


def _remove_dot_segments(path: str) -> str:
    # Generic SigV4 (not S3) normalises per RFC 3986 5.2.4 and also drops empty segments ("//").
    out: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + trailing


def canonical_uri(path: str, *, normalize: bool = False) -> str:
    """The CanonicalURI line.

    S3 (normalize=False): the path exactly as sent, already percent-encoded by the client.
    Generic services (normalize=True): dot segments and empty segments removed, then every byte outside the
    unreserved set encoded again — so a path sent as `%20` is signed as `%2520`, as AWS's test suite expects.
    """
    if not path:
        return "/"
    if not normalize:
        return path
    return uri_encode(_remove_dot_segments(path), safe="/")


def query_pairs(query: str) -> list[tuple[str, str]]:
    """Raw `(name, value)` pairs of a query string in order; `=` optional, empty pieces skipped."""
    pairs: list[tuple[str, str]] = []
    for piece in query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((name, value))
    return pairs


# A query component already in canonical form: unreserved characters, and upper-case %XX escapes of bytes
# that are not unreserved. Most real queries (every SDK's) match, and are then used as they are.
_CANONICAL_COMPONENT = re.compile(
    r"(?:[A-Za-z0-9\-_.~]|%(?!3[0-9]|4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|2[DE]|5F|7E)[0-9A-F]{2})*"
)


def form_decode(raw: str) -> str:
    """Decode one query component (`+` is a space); cheap when there is nothing to decode."""
    if "%" not in raw and "+" not in raw:
        return raw
    return unquote_plus(raw)


def _canonical_component(raw: str) -> str:
    if _CANONICAL_COMPONENT.fullmatch(raw):
        return raw
    # Byte-level decode and re-encode, so escapes that are not UTF-8 survive as the same bytes.
    return quote_from_bytes(unquote_to_bytes(raw.replace("+", "%20")), safe=_UNRESERVED)


def canonical_query(query: str, *, exclude: Iterable[str] = ()) -> str:
    """The CanonicalQueryString line for a raw query string.

    Like S3 itself, every name and value is decoded (`+` as a space, as form encoding has it) and encoded
    again with only unreserved characters left bare, so `a+b`, `a%20b` and `a b` sign alike and `%2B` stays a
    plus. Pairs sort by encoded name, then encoded value. Names in `exclude` (decoded) are left out —
    `X-Amz-Signature` when checking a presigned URL.
    """
    skip = frozenset(exclude)
    encoded: list[tuple[str, str]] = []
    for raw_name, raw_value in query_pairs(query):
        name = _canonical_component(raw_name)
        if skip and form_decode(raw_name) in skip:
            continue
        encoded.append((name, _canonical_component(raw_value)))
    encoded.sort()
    return "&".join(f"{n}={v}" for n, v in encoded)


def _trim_all(value: str) -> str:
    # SigV4 "Trimall": strip, and collapse runs of whitespace (including obs-fold line breaks) to one space.
    return " ".join(value.split())


def canonical_headers(headers: Headers, signed: Sequence[str]) -> str:
    """The CanonicalHeaders block (each line ends with a newline) for the `signed` header names.

    Names are matched case-insensitively; a name sent several times has its values joined with `,` in the
    order sent. A signed header that is absent contributes an empty value (the signature will then fail,
    which is what S3 does too).
    """
    wanted = {name.lower(): [] for name in signed}  # type: dict[str, list[str]]
    for name, value in headers:
        values = wanted.get(name.lower())
        if values is not None:
            values.append(_trim_all(value))
    return "".join(f"{name.lower()}:{','.join(wanted[name.lower()])}\n" for name in signed)


def signed_headers_line(names: Iterable[str]) -> str:
    """The SignedHeaders line: lower-case names, sorted, `;`-separated, no duplicates."""
    return ";".join(sorted({n.lower() for n in names}))


def canonical_request(
    method: str,
    uri: str,
    query: str,
    headers_block: str,
    signed_headers: str,
    payload_hash: str,
) -> str:
    """Assemble the canonical request from already-canonical parts."""
    return f"{method}\n{uri}\n{query}\n{headers_block}\n{signed_headers}\n{payload_hash}"


# -- step 2: string to sign ------------------------------------------------------------------------------


def credential_scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/{TERMINATOR}"


def string_to_sign(amz_date: str, scope: str, canonical: str, algorithm: str = ALGORITHM) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{algorithm}\n{amz_date}\n{scope}\n{digest}"


# -- step 3: signing key, with a bounded cache -----------------------------------------------------------


class _SigningKeyCache:
    """LRU of derived signing keys. A derived key is valid for one day/region/service only, and the cache
    key holds a SHA-256 of the secret, never the secret."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._keys: OrderedDict[tuple[bytes, str, str, str], bytes] = OrderedDict()

    def get(self, secret: str, date: str, region: str, service: str) -> bytes:
        ident = (hashlib.sha256(secret.encode("utf-8")).digest(), date, region, service)
        with self._lock:
            key = self._keys.get(ident)
            if key is not None:
                self._keys.move_to_end(ident)
                return key
        key = derive_signing_key(secret, date, region, service)
        with self._lock:
            self._keys[ident] = key
            if len(self._keys) > self._size:
                self._keys.popitem(last=False)
        return key

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()

    def __repr__(self) -> str:
        return f"<signing-key cache: {len(self._keys)} of {self._size}>"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")."""
    k_date = _hmac(f"AWS4{secret}".encode(), date)
    return _hmac(_hmac(_hmac(k_date, region), service), TERMINATOR)


_CACHE = _SigningKeyCache(1024)


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived signing key, cached per secret/date/region/service (bounded LRU)."""
    return _CACHE.get(secret, date, region, service)


def clear_signing_key_cache() -> None:
    """Forget every derived key (on config reload, when keys may have been revoked)."""
    _CACHE.clear()


# -- step 4: signature -----------------------------------------------------------------------------------


def signature(key: bytes, sts: str) -> str:
    return hmac.new(key, sts.encode("utf-8"), hashlib.sha256).hexdigest()


_REDACT_TOKEN = re.compile(r"((?:^x-amz-security-token:|X-Amz-Security-Token=))[^&\n]*", re.MULTILINE)


def sign(canonical: str, amz_date: str, scope: str, key: bytes) -> str:
    """String to sign and signature of a canonical request; logs both inputs (never keys) at debug."""
    sts = string_to_sign(amz_date, scope, canonical)
    if log.isEnabledFor(logging.DEBUG):
        # A session token is half of a credential: keep it out of logs even at debug.
        log.debug("CanonicalRequest:\n%s", _REDACT_TOKEN.sub(r"\1<redacted>", canonical))
        log.debug("StringToSign:\n%s", sts)
    return signature(key, sts)


def authorization_value(access_key: str, scope: str, signed_headers: str, sig: str) -> str:
    """The `Authorization` value in exactly the layout botocore and the AWS CLI send."""
    return f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={sig}"


# -- parsers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """`AKID/YYYYMMDD/REGION/SERVICE/aws4_request`."""

    access_key: str
    date: str
    region: str
    service: str

    @property
    def scope(self) -> str:
        return credential_scope(self.date, self.region, self.service)

    def __str__(self) -> str:
        return f"{self.access_key}/{self.scope}"


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """A parsed SigV4 `Authorization` header."""

    algorithm: str
    credential: Credential
    signed_headers: tuple[str, ...]
    signature: str = field(repr=False)

    @property
    def access_key(self) -> str:
        return self.credential.access_key

    @property
    def date(self) -> str:
        return self.credential.date

    @property
    def region(self) -> str:
        return self.credential.region

    @property
    def service(self) -> str:
        return self.credential.service

    @property
    def signed_headers_line(self) -> str:
        return ";".join(self.signed_headers)


@dataclass(frozen=True, slots=True)
class PresignedAuth:
    """The SigV4 query parameters of a presigned URL, decoded."""

    algorithm: str
    credential: Credential
    amz_date: str
    expires: int
    signed_headers: tuple[str, ...]
    signature: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)

    @property
    def access_key(self) -> str:
        return self.credential.access_key

    @property
    def region(self) -> str:
        return self.credential.region

    @property
    def service(self) -> str:
        return self.credential.service

    @property
    def signed_headers_line(self) -> str:
        return ";".join(self.signed_headers)


_HEADER_MALFORMED = "AuthorizationHeaderMalformed"
_QUERY_MALFORMED = "AuthorizationQueryParametersError"
_CREDENTIAL_SHAPE = 'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request"'
_TOKEN = re.compile(r"^[A-Za-z0-9-]+$")


def parse_credential(value: str, code: str = _HEADER_MALFORMED) -> Credential:
    """Parse a credential; S3Error(400, `code`) saying what is wrong (never echoing the value)."""
    where = "the authorization header" if code == _HEADER_MALFORMED else "X-Amz-Credential"
    parts = value.split("/")
    if len(parts) < 5 or not parts[0]:
        raise S3Error(400, code, f"{where} is malformed; the Credential is mal-formed; {_CREDENTIAL_SHAPE}.")
    # An access key never contains "/", but parse from the right so the four scope parts are exact.
    access_key = "/".join(parts[:-4])
    date, region, service, terminator = parts[-4:]
    if terminator != TERMINATOR:
        raise S3Error(
            400,
            code,
            f"{where} is malformed; the Credential is mal-formed; the scope must end with "
            f"'{TERMINATOR}'; {_CREDENTIAL_SHAPE}.",
        )
    if not _DATE.match(date):
        raise S3Error(400, code, f"{where} is malformed; the credential date '{date}' is not YYYYMMDD.")
    if not _TOKEN.match(region):
        raise S3Error(400, code, f"{where} is malformed; the credential region is missing or invalid.")
    if not _TOKEN.match(service):
        raise S3Error(400, code, f"{where} is malformed; the credential service is missing or invalid.")
    return Credential(access_key, date, region, service)


def _parse_signed_headers(value: str, code: str, where: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or any(not n or n != n.strip() or ":" in n for n in names):
        raise S3Error(
            400, code, f"{where} is malformed; SignedHeaders must be a ';'-separated list of names."
        )
    return names


def _check_signature(value: str, code: str, where: str) -> str:
    if not _HEX64.match(value):
        raise S3Error(400, code, f"{where} is malformed; the Signature must be 64 lower-case hex digits.")
    return value


def parse_authorization(value: str) -> AuthHeader:
    """Parse `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.

    Components may come in any order, separated by commas with optional spaces (S3 accepts both). Raises
    S3Error(400, "AuthorizationHeaderMalformed") naming the missing or bad component.
    """
    where = "The authorization header"
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error(400, _HEADER_MALFORMED, f"{where} is malformed; the algorithm must be {ALGORITHM}.")
    fields: dict[str, str] = {}
    for component in rest.split(","):
        component = component.strip()
        if not component:
            continue
        name, eq, val = component.partition("=")
        if not eq:
            raise S3Error(
                400,
                _HEADER_MALFORMED,
                f"{where} is malformed; '{name[:40]}' is not of the form Name=Value.",
            )
        if name in fields:
            raise S3Error(400, _HEADER_MALFORMED, f"{where} is malformed; '{name[:40]}' appears twice.")
        fields[name.strip()] = val.strip()
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in fields:
            raise S3Error(
                400, _HEADER_MALFORMED, f"{where} is malformed; it requires a '{required}' component."
            )
    unknown = sorted(set(fields) - {"Credential", "SignedHeaders", "Signature"})
    if unknown:
        raise S3Error(400, _HEADER_MALFORMED, f"{where} is malformed; unknown component '{unknown[0][:40]}'.")
    return AuthHeader(
        algorithm=algorithm,
        credential=parse_credential(fields["Credential"], _HEADER_MALFORMED),
        signed_headers=_parse_signed_headers(fields["SignedHeaders"], _HEADER_MALFORMED, where),
        signature=_check_signature(fields["Signature"], _HEADER_MALFORMED, where),
    )


PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
)
MAX_EXPIRES = 604800  # seven days: the longest validity S3 accepts for a SigV4 presigned URL


def decoded_query(query: str) -> dict[str, str]:
    """Query parameters decoded (first occurrence wins) — for reading auth parameters, not for signing."""
    out: dict[str, str] = {}
    for name, value in query_pairs(query):
        out.setdefault(form_decode(name), form_decode(value))
    return out


def parse_presigned(query: str | dict[str, str]) -> PresignedAuth:
    """Parse the X-Amz-* parameters of a presigned URL (raw query string or already decoded mapping).

    Raises S3Error(400, "AuthorizationQueryParametersError") as S3 does, naming what is missing or wrong.
    """
    params = decoded_query(query) if isinstance(query, str) else query
    missing = [p for p in PRESIGN_PARAMS if p not in params]
    if missing:
        raise S3Error(
            400,
            _QUERY_MALFORMED,
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters "
            f"(missing: {', '.join(missing)}).",
        )
    algorithm = params["X-Amz-Algorithm"]
    if algorithm != ALGORITHM:
        raise S3Error(400, _QUERY_MALFORMED, f'X-Amz-Algorithm only supports "{ALGORITHM}".')
    amz_date = params["X-Amz-Date"]
    if not _AMZ_DATE.match(amz_date):
        raise S3Error(
            400, _QUERY_MALFORMED, "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"."
        )
    raw_expires = params["X-Amz-Expires"]
    if not raw_expires.isdigit() or not raw_expires.isascii():
        raise S3Error(400, _QUERY_MALFORMED, "X-Amz-Expires should be a non-negative number of seconds.")
    expires = int(raw_expires)
    if expires > MAX_EXPIRES:
        raise S3Error(
            400,
            _QUERY_MALFORMED,
            f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_EXPIRES}.",
        )
    credential = parse_credential(params["X-Amz-Credential"], _QUERY_MALFORMED)
    if credential.date != amz_date[:8]:
        raise S3Error(
            400,
            _QUERY_MALFORMED,
            f'Invalid credential date "{credential.date}". This date is not the same as X-Amz-Date: '
            f'"{amz_date[:8]}".',
        )
    return PresignedAuth(
        algorithm=algorithm,
        credential=credential,
        amz_date=amz_date,
        expires=expires,
        signed_headers=_parse_signed_headers(
            params["X-Amz-SignedHeaders"], _QUERY_MALFORMED, "X-Amz-SignedHeaders"
        ),
        signature=_check_signature(params["X-Amz-Signature"], _QUERY_MALFORMED, "X-Amz-Signature"),
        security_token=params.get("X-Amz-Security-Token"),
    )
