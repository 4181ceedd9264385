"""Verify, then re-sign, a request whose host (and maybe region) the rewrite changed.

# Strategy: classify the request's authentication form once, then handle each form with plain values:
#   SigV4 header auth / presigned query  -> verify (keyring) and re-sign for the target host and region
#   SigV2 header or query, POST policy, anonymous -> forwarded unchanged, Host replaced
#   SigV4A, unknown algorithms, two auth mechanisms -> refused with the S3 error S3 would give
# Everything returns a `SignOutcome`; nothing raises past `resign()`, nothing reads the clock.

Modes (DESIGN.md "Signing"):

keyring — the proxy knows the secrets of its clients' keys. The incoming signature is verified on the
  request exactly as the client sent it (its Host header, path, query and headers) with a constant-time
  compare, so the proxy never signs what the client could not. The re-signed request keeps the key, the
  `x-amz-date`, the signed-header set and the payload hash; only the Host and the credential-scope region
  change. Session tokens pass through untouched (they are tied to the client's key).

proxy-identity — the proxy signs as itself (botocore's credential chain). Clients may hold no secret at all,
  so incoming signatures are parsed but NOT verified; who may use the proxy is decided by the access rules.
  Anonymous requests from admitted clients are signed too: a client run with `--no-sign-request` is the very
  case this mode exists for. The client's session token is replaced by the proxy's, or removed.

In both modes `expect` is left out of the signed-header set sent upstream (`_upstream_signed`), after the
client's signature was verified with it: the proxy answers `Expect: 100-continue` itself and mitmproxy
removes the header, so S3 would find it signed but missing.

Presigned URLs keep `X-Amz-Date` and `X-Amz-Expires`, so re-signing never extends their validity. An
expired URL is not refused here: S3 decides with its own clock (the proxy's may be off, and S3's
`AccessDenied: Request has expired` is the answer clients know). Clock skew of header-signed requests is
likewise left to S3 (`RequestTimeTooSkewed`).

SigV2 does not sign the Host header: its canonical resource is `/bucket/key` whether the client used
virtual-hosted or path style, so a SigV2 request rewritten to the path-style vpce form still verifies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from hmac import compare_digest
from typing import TYPE_CHECKING, Any, Literal, Protocol

from s3proxy import sigv4
from s3proxy.chunked import ChunkSeed
from s3proxy.errors import S3Error
from s3proxy.model import Headers, Request, replace_header

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

Action = Literal["resigned", "unchanged", "refused"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the rewrite sends the request: upstream Host header value, raw path and query, region."""

    host: str
    path: str
    query: str
    has_query: bool
    region: str


@dataclass(frozen=True, slots=True)
class SignOutcome:
    """The result of `resign`: the full header tuple and raw query to send upstream, or the refusal."""

    action: Action
    headers: Headers
    query: str
    error: S3Error | None = None
    note: str = ""
    chunk: ChunkSeed | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class KeySource(Protocol):
    """`config.KeyEntry` as far as this module cares."""

    @property
    def access_key_id(self) -> str: ...
    @property
    def secret_access_key(self) -> str: ...


class SigningSettings(Protocol):
    """`config.SigningConfig` as far as this module cares."""

    @property
    def mode(self) -> str: ...
    @property
    def keys(self) -> Sequence[KeySource]: ...
    @property
    def profiles(self) -> Sequence[str]: ...
    @property
    def identity_profile(self) -> str | None: ...


# -- signers ---------------------------------------------------------------------------------------------


class Keyring:
    """Access key id -> secret for the clients' keys. Its repr lists key ids only."""

    __slots__ = ("_secrets",)

    def __init__(self, keys: Iterable[KeySource] = ()) -> None:
        secrets: dict[str, str] = {}
        for key in keys:
            if not key.access_key_id or not key.secret_access_key:
                raise ValueError("an access key id and its secret must both be non-empty")
            known = secrets.get(key.access_key_id)
            if known is not None and not compare_digest(known, key.secret_access_key):
                raise ValueError(f"access key {key.access_key_id} is listed twice with different secrets")
            secrets[key.access_key_id] = key.secret_access_key
        self._secrets: Mapping[str, str] = secrets

    @classmethod
    def from_config(
        cls,
        settings: SigningSettings,
        load_profile: Callable[[str], Credentials] | None = None,
    ) -> Keyring:
        """Keys listed in the config plus the static keys of the named AWS profiles.

        Raises ValueError (message names the profile, never a secret) when a profile has no usable key.
        """
        loader = load_profile or load_profile_credentials
        keys: list[KeySource] = list(settings.keys)
        keys.extend(loader(name) for name in settings.profiles)
        return cls(keys)

    def secret_for(self, access_key_id: str) -> str | None:
        return self._secrets.get(access_key_id)

    @property
    def access_key_ids(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def __contains__(self, access_key_id: object) -> bool:
        return access_key_id in self._secrets

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:
        return f"Keyring({', '.join(self._secrets) or 'empty'})"


def load_profile_credentials(profile: str) -> Credentials:
    """The static key of AWS profile `profile` from the shared config/credentials files (botocore)."""
    import botocore.exceptions
    import botocore.session

    try:
        found = botocore.session.Session(profile=profile).get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise ValueError(f"AWS profile {profile!r}: {type(exc).__name__}") from None
    if found is None:
        raise ValueError(f"AWS profile {profile!r} has no credentials")
    frozen = found.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


class ProxyIdentity:
    """The proxy's own AWS identity. `provider` is called for every signing so refreshable credentials
    (assume-role, SSO, instance and container roles) are always current."""

    __slots__ = ("_describe", "_provider")

    def __init__(self, provider: Callable[[], Credentials], describe: str = "custom provider") -> None:
        self._provider = provider
        self._describe = describe

    @classmethod
    def from_botocore(cls, profile: str | None = None) -> ProxyIdentity:
        """botocore's credential chain (env, shared files, SSO, process, container and instance roles,
        assume-role) for `profile`, or the default chain. Raises ValueError when nothing is found."""
        import botocore.exceptions
        import botocore.session

        try:
            chain = botocore.session.Session(profile=profile).get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise ValueError(f"AWS credential chain ({profile or 'default'}): {type(exc).__name__}") from None
        if chain is None:
            raise ValueError(
                f"no AWS credentials found for proxy-identity signing (profile {profile or 'default'}): "
                "set AWS_PROFILE/AWS_ACCESS_KEY_ID, a shared credentials file, or an instance/container role"
            )

        return cls.from_botocore_credentials(chain, f"botocore chain, profile {profile or 'default'}")

    @classmethod
    def from_botocore_credentials(cls, chain: Any, describe: str = "botocore credentials") -> ProxyIdentity:
        """Wrap a botocore `Credentials` (or `RefreshableCredentials`) object."""

        def provider() -> Credentials:
            # RefreshableCredentials refresh themselves here ahead of expiry; the frozen triple is consistent.
            frozen = chain.get_frozen_credentials()
            return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

        return cls(provider, describe)

    def credentials(self) -> Credentials:
        return self._provider()

    def __repr__(self) -> str:
        return f"ProxyIdentity({self._describe})"


Signer = Keyring | ProxyIdentity


def signer_from_config(settings: SigningSettings, *, access_restricted: bool = False) -> Signer:
    """The signer the config asks for. proxy-identity signs anything an admitted client sends, so it is
    refused unless access rules restrict who may use the proxy."""
    if settings.mode == "keyring":
        return Keyring.from_config(settings)
    if settings.mode == "proxy-identity":
        if not access_restricted:
            raise ValueError(
                "signing.mode proxy-identity signs requests as the proxy's own AWS identity, so it needs "
                "access rules restricting which clients may use the proxy; configure them first"
            )
        return ProxyIdentity.from_botocore(settings.identity_profile)
    raise ValueError(f"signing.mode: {settings.mode!r} is not keyring or proxy-identity")


# -- the entry point -------------------------------------------------------------------------------------


def resign(req: Request, target: Target, signer: Signer, now: datetime) -> SignOutcome:
    """Verify (keyring) and re-sign `req` for `target`. Never raises S3Error: refusals are outcomes."""
    try:
        return _resign(req, target, signer, now)
    except S3Error as exc:
        return SignOutcome(
            "refused", req.headers, req.query, error=exc, note=f"refused: {exc.code}: {exc.message}"
        )


_ONE_MECHANISM = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string "
    "parameter or the Authorization header should be specified."
)
_SIGV4A = (
    "SigV4A (AWS4-ECDSA-P256-SHA256) signatures belong to Multi-Region Access Points, which AWS PrivateLink "
    "for S3 does not carry; s3proxy cannot re-sign them. Use the bucket's regional name."
)


def _resign(req: Request, target: Target, signer: Signer, now: datetime) -> SignOutcome:
    authz = req.header_values("authorization")
    params = sigv4.decoded_query(req.query) if req.query else {}
    v4_query = any(p in params for p in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"))
    v2_query = "Signature" in params or "AWSAccessKeyId" in params
    if len(authz) > 1:
        raise S3Error(400, "InvalidArgument", "Only one Authorization header is allowed.")
    if authz and (v4_query or v2_query):
        raise S3Error(400, "InvalidArgument", _ONE_MECHANISM)
    if v4_query and v2_query:
        raise S3Error(400, "InvalidArgument", _ONE_MECHANISM)
    if authz:
        scheme = authz[0].strip().partition(" ")[0]
        if scheme == sigv4.ALGORITHM:
            return _resign_header(req, target, signer, authz[0])
        if scheme == sigv4.SIGV4A_ALGORITHM:
            raise S3Error(400, "InvalidRequest", _SIGV4A)
        if scheme == "AWS":
            return _unchanged(req, target, "SigV2 header auth does not sign the host: forwarded unchanged")
        raise S3Error(400, "InvalidArgument", "Unsupported Authorization Type")
    if v4_query:
        if params.get("X-Amz-Algorithm") == sigv4.SIGV4A_ALGORITHM:
            raise S3Error(400, "InvalidRequest", _SIGV4A)
        return _resign_presigned(req, target, signer, params)
    if v2_query:
        return _unchanged(req, target, "SigV2 query auth does not sign the host: forwarded unchanged")
    content_type = (req.header("content-type") or "").lower()
    if req.method == "POST" and content_type.startswith("multipart/form-data"):
        return _unchanged(req, target, "browser POST-policy upload: signed in the form, forwarded unchanged")
    if isinstance(signer, ProxyIdentity):
        return _sign_anonymous(req, target, signer, now)
    return _unchanged(req, target, "anonymous request: forwarded unchanged")


def _unchanged(req: Request, target: Target, note: str) -> SignOutcome:
    return SignOutcome("unchanged", replace_header(req.headers, "Host", target.host), target.query, note=note)


# -- header auth -----------------------------------------------------------------------------------------


def _host_headers(req: Request) -> Headers:
    """The headers as the client signed them: an HTTP/2 request may carry its authority outside Host."""
    if req.header("host") is not None:
        return req.headers
    default = {"https": 443, "http": 80}.get(req.scheme)
    host = req.host if req.port in (None, default) else f"{req.host}:{req.port}"
    return (*req.headers, ("Host", host))


def _amz_date(req: Request) -> str:
    value = req.header("x-amz-date")
    if value is not None:
        value = value.strip()
        if not sigv4.is_amz_date(value):
            raise S3Error(400, "AuthorizationHeaderMalformed", "x-amz-date must look like 20130524T000000Z.")
        return value
    date = req.header("date")
    if date is not None:
        # SigV4 allows the Date header instead; the string to sign then carries it in ISO 8601 basic form.
        try:
            return parsedate_to_datetime(date).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        except (TypeError, ValueError):
            pass
    raise S3Error(403, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")


def _payload_hash(req: Request) -> str:
    value = req.header("x-amz-content-sha256")
    if value is None:
        raise S3Error(400, "InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    value = value.strip()
    if value not in sigv4.PAYLOAD_MARKERS and not sigv4.is_sha256_hex(value):
        raise S3Error(
            400,
            "InvalidArgument",
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid "
            "sha256 value.",
        )
    if value.startswith("STREAMING-AWS4-ECDSA"):
        raise S3Error(400, "InvalidRequest", _SIGV4A)
    return value


def _header_signature(
    method: str,
    path: str,
    query: str,
    headers: Headers,
    signed: tuple[str, ...],
    payload: str,
    amz_date: str,
    scope: str,
    key: bytes,
) -> str:
    canonical = sigv4.canonical_request(
        method,
        sigv4.canonical_uri(path),
        sigv4.canonical_query(query),
        sigv4.canonical_headers(headers, signed),
        ";".join(signed),
        payload,
    )
    return sigv4.sign(canonical, amz_date, scope, key)


def _unknown_key(access_key: str) -> S3Error:
    return S3Error(
        403,
        "InvalidAccessKeyId",
        f"The AWS Access Key Id you provided does not exist in our records ({access_key} is not in the "
        "s3proxy keyring).",
    )


def _mismatch(access_key: str) -> S3Error:
    return S3Error(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your key and "
        f"signing method. (s3proxy verified it with its keyring secret for {access_key}.)",
    )


def _resign_header(req: Request, target: Target, signer: Signer, value: str) -> SignOutcome:
    auth = sigv4.parse_authorization(value)
    amz_date = _amz_date(req)
    if auth.date != amz_date[:8]:
        raise S3Error(
            400,
            "AuthorizationHeaderMalformed",
            f'Invalid credential date "{auth.date}". This date is not the same as X-Amz-Date: '
            f'"{amz_date[:8]}".',
        )
    payload = _payload_hash(req)
    region = target.region or auth.region
    new_scope = sigv4.credential_scope(auth.date, region, auth.service)
    headers = replace_header(req.headers, "Host", target.host)
    signed = auth.signed_headers
    old_key: bytes | None = None
    if isinstance(signer, Keyring):
        secret = signer.secret_for(auth.access_key)
        if secret is None:
            raise _unknown_key(auth.access_key)
        old_key = sigv4.signing_key(secret, auth.date, auth.region, auth.service)
        expected = _header_signature(
            req.method,
            req.path,
            req.query,
            _host_headers(req),
            signed,
            payload,
            amz_date,
            auth.credential.scope,
            old_key,
        )
        if not compare_digest(expected, auth.signature):
            raise _mismatch(auth.access_key)
        access_key = auth.access_key
        how = f"keyring key {access_key}, incoming signature verified"
    else:
        creds = signer.credentials()
        secret, access_key = creds.secret_access_key, creds.access_key_id
        headers = replace_header(headers, "X-Amz-Security-Token", creds.session_token)
        signed = _with_token_signed(signed, creds.session_token is not None)
        how = f"proxy identity {access_key} (incoming signature not verified)"
    signed = _upstream_signed(signed)
    new_key = sigv4.signing_key(secret, auth.date, region, auth.service)
    new_sig = _header_signature(
        req.method, target.path, target.query, headers, signed, payload, amz_date, new_scope, new_key
    )
    headers = replace_header(
        headers, "Authorization", sigv4.authorization_value(access_key, new_scope, ";".join(signed), new_sig)
    )
    chunk = None
    if payload in sigv4.SIGNED_STREAMING:
        chunk = ChunkSeed(
            amz_date=amz_date,
            old_scope=auth.credential.scope,
            new_scope=new_scope,
            old_signing_key=old_key,
            new_signing_key=new_key,
            old_seed_signature=auth.signature,
            new_seed_signature=new_sig,
            trailer=payload == sigv4.STREAMING_PAYLOAD_TRAILER,
            decoded_length=_decoded_length(req),
        )
    note = f"resigned header auth ({payload if not sigv4.is_sha256_hex(payload) else 'payload hash'}): {how}"
    if region != auth.region:
        note += f"; region {auth.region} -> {region}"
    return SignOutcome("resigned", headers, target.query, note=note, chunk=chunk)


def _upstream_signed(signed: tuple[str, ...]) -> tuple[str, ...]:
    """The signed-header set without `expect`, which never reaches S3 (the proxy answers 100-continue)."""
    return tuple(name for name in signed if name.lower() != "expect")


def _with_token_signed(signed: tuple[str, ...], has_token: bool) -> tuple[str, ...]:
    """The signed-header set with x-amz-security-token added (proxy has a token) or dropped (it has none)."""
    name = "x-amz-security-token"
    present = name in signed
    if present == has_token:
        return signed
    names = {n for n in signed if n != name} | ({name} if has_token else set())
    return tuple(sorted(names))


def _decoded_length(req: Request) -> int | None:
    value = req.header("x-amz-decoded-content-length")
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise S3Error(400, "InvalidArgument", "x-amz-decoded-content-length must be a non-negative integer.")
    return int(value)


# -- presigned URLs --------------------------------------------------------------------------------------


def _edit_query(raw: str, changes: Mapping[str, str | None]) -> str:
    """`raw` with the values of the (decoded) parameter names in `changes` replaced, or the parameter
    dropped for None; every other byte and the order kept. New names go just before X-Amz-Signature."""
    pieces = raw.split("&") if raw else []
    present = {sigv4.form_decode(p.partition("=")[0]) for p in pieces if p}
    additions = [
        f"{n}={sigv4.uri_encode(v)}" for n, v in changes.items() if v is not None and n not in present
    ]
    out: list[str] = []
    for piece in pieces:
        raw_name = piece.partition("=")[0]
        name = sigv4.form_decode(raw_name) if piece else ""
        if name == "X-Amz-Signature" and additions:
            out.extend(additions)
            additions = []
        if name in changes:
            new = changes[name]
            if new is not None:
                out.append(f"{raw_name}={sigv4.uri_encode(new)}")
            continue
        out.append(piece)
    out.extend(additions)
    return "&".join(out)


def _resign_presigned(req: Request, target: Target, signer: Signer, params: dict[str, str]) -> SignOutcome:
    auth = sigv4.parse_presigned(params)
    region = target.region or auth.region
    new_scope = sigv4.credential_scope(auth.credential.date, region, auth.service)
    # S3 signs presigned requests over UNSIGNED-PAYLOAD unless the URL itself pins a payload hash.
    payload = params.get("X-Amz-Content-Sha256", sigv4.UNSIGNED_PAYLOAD)
    exclude = ("X-Amz-Signature",)
    changes: dict[str, str | None] = {}
    if isinstance(signer, Keyring):
        secret = signer.secret_for(auth.access_key)
        if secret is None:
            raise _unknown_key(auth.access_key)
        old_key = sigv4.signing_key(secret, auth.credential.date, auth.region, auth.service)
        canonical = sigv4.canonical_request(
            req.method,
            sigv4.canonical_uri(req.path),
            sigv4.canonical_query(req.query, exclude=exclude),
            sigv4.canonical_headers(_host_headers(req), auth.signed_headers),
            auth.signed_headers_line,
            payload,
        )
        expected = sigv4.sign(canonical, auth.amz_date, auth.credential.scope, old_key)
        if not compare_digest(expected, auth.signature):
            raise _mismatch(auth.access_key)
        access_key = auth.access_key
        how = f"keyring key {access_key}, incoming signature verified"
    else:
        creds = signer.credentials()
        secret, access_key = creds.secret_access_key, creds.access_key_id
        changes["X-Amz-Security-Token"] = creds.session_token
        how = f"proxy identity {access_key} (incoming signature not verified)"
    if access_key != auth.access_key or region != auth.region:
        changes["X-Amz-Credential"] = f"{access_key}/{new_scope}"
    signed = _upstream_signed(auth.signed_headers)
    if signed != auth.signed_headers:
        changes["X-Amz-SignedHeaders"] = ";".join(signed)
    query = _edit_query(target.query, changes) if changes else target.query
    headers = replace_header(req.headers, "Host", target.host)
    new_key = sigv4.signing_key(secret, auth.credential.date, region, auth.service)
    canonical = sigv4.canonical_request(
        req.method,
        sigv4.canonical_uri(target.path),
        sigv4.canonical_query(query, exclude=exclude),
        sigv4.canonical_headers(headers, signed),
        ";".join(signed),
        payload,
    )
    new_sig = sigv4.sign(canonical, auth.amz_date, new_scope, new_key)
    query = _edit_query(query, {"X-Amz-Signature": new_sig})
    note = f"resigned presigned URL (X-Amz-Date and X-Amz-Expires kept): {how}"
    if region != auth.region:
        note += f"; region {auth.region} -> {region}"
    return SignOutcome("resigned", headers, query, note=note)


# -- anonymous requests in proxy-identity mode -----------------------------------------------------------


def _sign_anonymous(req: Request, target: Target, signer: ProxyIdentity, now: datetime) -> SignOutcome:
    payload = req.header("x-amz-content-sha256")
    if payload is None:
        # Upstream is always HTTPS, where S3 accepts an unsigned payload; the body is not read here.
        payload = sigv4.UNSIGNED_PAYLOAD
    else:
        payload = _payload_hash(req)
        if payload in sigv4.SIGNED_STREAMING:
            raise S3Error(
                400,
                "InvalidRequest",
                f"x-amz-content-sha256 {payload} needs a signed request, but this request has no "
                "Authorization header.",
            )
    stamp = (now.astimezone(UTC) if now.tzinfo else now).strftime("%Y%m%dT%H%M%SZ")
    creds = signer.credentials()
    headers = replace_header(req.headers, "Host", target.host)
    headers = replace_header(headers, "X-Amz-Date", stamp)
    headers = replace_header(headers, "X-Amz-Content-SHA256", payload)
    headers = replace_header(headers, "X-Amz-Security-Token", creds.session_token)
    # Sign what S3 requires signed (host, every x-amz-* header) plus Content-MD5 when present.
    signed = tuple(
        sorted(
            {n.lower() for n, _ in headers if n.lower().startswith("x-amz-") or n.lower() == "content-md5"}
            | {"host"}
        )
    )
    scope = sigv4.credential_scope(stamp[:8], target.region, "s3")
    key = sigv4.signing_key(creds.secret_access_key, stamp[:8], target.region, "s3")
    sig = _header_signature(
        req.method, target.path, target.query, headers, signed, payload, stamp, scope, key
    )
    headers = replace_header(
        headers, "Authorization", sigv4.authorization_value(creds.access_key_id, scope, ";".join(signed), sig)
    )
    return SignOutcome(
        "resigned",
        headers,
        target.query,
        note=f"anonymous request signed as proxy identity {creds.access_key_id} (admitted by access rules)",
    )
