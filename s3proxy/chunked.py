"""Verify and re-sign an `aws-chunked` request body with signed chunks, incrementally.

Clients that upload with `x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` sign every
chunk, chaining each signature to the previous one, starting from the seed signature of the `Authorization`
header (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html, ...-streaming-trailers.html).
When the proxy re-signs the headers for another host/region, the seed changes, so every chunk signature (and
the trailer signature) must be recomputed as the body streams.
"""

# Strategy:
# Sans-IO, like h11: `feed(bytes) -> bytes` parses whatever arrived and returns the re-signed bytes that are
# safe to send; `finish()` says the body ended. A chunk is emitted only after its data, its closing CRLF and
# its incoming signature have all been checked, so the proxy never signs bytes the client did not sign; that
# buffers at most one chunk (bounded by `max_chunk_size`). The final 0-size chunk (and trailer) is held back
# until `finish()`, so a body that turns out to be malformed or has trailing garbage is never completed
# upstream. Chunk data is hashed once (the hash serves both signature chains) and is kept as zero-copy views
# of the input pieces, joined once on output. Every byte except the 64-hex signatures is passed through as
# sent, so lengths (Content-Length, x-amz-decoded-content-length) never change.
#
# Wire format (as AWS SDKs send it; a size keeps its digits as sent, signatures are 64 lower-case hex):
#   chunk   = hex-size ";chunk-signature=" sig CRLF data CRLF
#   end     = "0;chunk-signature=" sig CRLF CRLF                                    (...-PAYLOAD)
#           | "0;chunk-signature=" sig CRLF [CRLF] *(name ":" value CRLF)
#             "x-amz-trailer-signature:" sig CRLF CRLF                              (...-PAYLOAD-TRAILER)

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto

from s3proxy.errors import S3Error

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_TRAILER_SIZE = 16 * 1024

_PAYLOAD_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
_TRAILER_ALGORITHM = "AWS4-HMAC-SHA256-TRAILER"
_SIG_EXT = b";chunk-signature="
_SIG_LEN = 64
_MAX_SIZE_DIGITS = 16
_MAX_HEADER_LINE = _MAX_SIZE_DIGITS + len(_SIG_EXT) + _SIG_LEN + 2
_TRAILER_SIG_NAME = b"x-amz-trailer-signature"
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_LOWER_HEX = b"0123456789abcdef"
# RFC 9110 token characters, for trailing header names.
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CTL_CHARS = bytes(c for c in range(32) if c != 9) + b"\x7f"
# Input slices shorter than this are copied into a small buffer instead of kept as views, so feeding a body
# in tiny pieces cannot make the per-view bookkeeping outgrow the chunk itself.
_MIN_VIEW = 4096


@dataclass(frozen=True, slots=True)
class ChunkSeed:
    """What re-signing one aws-chunked body needs: both signature chains' keys, scopes and seeds.

    `old_signing_key` is None in proxy-identity mode, where the client's secret is unknown: incoming chunk
    signatures are then checked for form only, and the body is signed as the proxy's identity.
    """

    amz_date: str  # x-amz-date, e.g. 20130524T000000Z
    old_scope: str  # 20130524/us-east-1/s3/aws4_request, as the client signed
    new_scope: str  # scope for upstream (the region may differ)
    old_signing_key: bytes | None = field(repr=False)
    new_signing_key: bytes = field(repr=False)
    old_seed_signature: str = field(repr=False)  # signature in the client's Authorization header
    new_seed_signature: str = field(repr=False)  # signature of the re-signed Authorization header
    trailer: bool = False  # ...-PAYLOAD-TRAILER: trailing headers + x-amz-trailer-signature after the end
    decoded_length: int | None = None  # x-amz-decoded-content-length, if sent


def chunk_string_to_sign(amz_date: str, scope: str, previous_signature: str, data_sha256: str) -> str:
    """String to sign for one chunk (sigv4-streaming.html); `data_sha256` is the hex SHA-256 of its data."""
    return f"{_PAYLOAD_ALGORITHM}\n{amz_date}\n{scope}\n{previous_signature}\n{EMPTY_SHA256}\n{data_sha256}"


def trailer_string_to_sign(amz_date: str, scope: str, previous_signature: str, trailer_sha256: str) -> str:
    """String to sign for trailing headers (sigv4-streaming-trailers.html); `previous_signature` is the final
    chunk's, `trailer_sha256` the hex SHA-256 of `canonical_trailer(...)`."""
    return f"{_TRAILER_ALGORITHM}\n{amz_date}\n{scope}\n{previous_signature}\n{trailer_sha256}"


def canonical_trailer(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Trailing headers in SigV4 canonical form: lower-case names, sorted, values trimmed with inner runs of
    whitespace collapsed, each line ending in LF (not CRLF)."""
    return b"".join(
        name.lower() + b":" + b" ".join(value.split()) + b"\n"
        for name, value in sorted(headers, key=lambda h: h[0].lower())
    )


def hmac_sha256_hex(key: bytes, message: str) -> str:
    """A SigV4 signature: hex HMAC-SHA256 of `message` under a derived signing key."""
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class _Chain:
    """One chain of signatures: a signing key and scope, and the signature the next one chains to."""

    __slots__ = ("_mac", "_payload_prefix", "_trailer_prefix", "previous")

    def __init__(self, key: bytes, amz_date: str, scope: str, seed_signature: str) -> None:
        # A keyed HMAC copied per signature skips re-deriving the padded key each time.
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._payload_prefix = f"{_PAYLOAD_ALGORITHM}\n{amz_date}\n{scope}\n".encode()
        self._trailer_prefix = f"{_TRAILER_ALGORITHM}\n{amz_date}\n{scope}\n".encode()
        self.previous = seed_signature.encode("ascii")

    def _sign(self, string_to_sign: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(string_to_sign)
        return mac.hexdigest().encode("ascii")

    def chunk_signature(self, data_sha256: bytes) -> bytes:
        empty = EMPTY_SHA256.encode()
        return self._sign(self._payload_prefix + self.previous + b"\n" + empty + b"\n" + data_sha256)

    def trailer_signature(self, trailer_sha256: bytes) -> bytes:
        return self._sign(self._trailer_prefix + self.previous + b"\n" + trailer_sha256)


def _is_signature(value: bytes) -> bool:
    return len(value) == _SIG_LEN and not value.translate(None, _LOWER_HEX)


def _show(name: bytes) -> str:
    """A client-sent header name, shortened for an error message."""
    return name[:40].decode("ascii", "replace") + ("..." if len(name) > 40 else "")


def _malformed(detail: str) -> S3Error:
    return S3Error(400, "InvalidRequest", f"Malformed aws-chunked request body: {detail}.")


def _incomplete(detail: str) -> S3Error:
    return S3Error(400, "IncompleteBody", f"The aws-chunked request body is incomplete: {detail}.")


def _mismatch(what: str) -> S3Error:
    return S3Error(
        403,
        "SignatureDoesNotMatch",
        f"The {what} signature does not match the one calculated from the request's signing key and data; "
        "the body was altered in transit or signed with another key or seed signature.",
    )


class _State(Enum):
    HEADER = auto()  # reading "<hex size>;chunk-signature=<64 hex>\r\n"
    DATA = auto()  # reading chunk data
    DATA_END = auto()  # reading the CRLF after the data (for the final chunk: the closing CRLF)
    TRAILER = auto()  # reading trailing header lines, x-amz-trailer-signature, the empty line
    DONE = auto()  # complete; the final chunk (and trailer) is held until finish()
    FINISHED = auto()
    ERROR = auto()


class ChunkResigner:
    """Verifies an aws-chunked body on the client's signature chain and re-signs it for the new seed.

    `feed()` returns the bytes that may go upstream now (possibly b""); `finish()` returns the rest when the
    body is complete. Both raise `S3Error` on a bad signature (403 `SignatureDoesNotMatch`), a truncated
    body (400 `IncompleteBody`) or malformed framing (400 `InvalidRequest`); after an error, every later
    call raises it again. What the caller already sent upstream is a prefix of verified, re-signed chunks
    that never completes the body, so on an error the caller must abort the upstream request.
    """

    def __init__(
        self,
        seed: ChunkSeed,
        *,
        max_chunk_size: int = DEFAULT_MAX_CHUNK_SIZE,
        max_trailer_size: int = DEFAULT_MAX_TRAILER_SIZE,
    ) -> None:
        for name, sig in (("old", seed.old_seed_signature), ("new", seed.new_seed_signature)):
            if not _is_signature(sig.encode("ascii", "replace")):
                raise ValueError(f"{name}_seed_signature must be 64 lower-case hex characters")
        if seed.decoded_length is not None and seed.decoded_length < 0:
            raise ValueError("decoded_length must not be negative")
        if max_chunk_size < 1 or max_trailer_size < 1:
            raise ValueError("max_chunk_size and max_trailer_size must be positive")
        self._trailer_expected = seed.trailer
        self._decoded_length = seed.decoded_length
        self._max_chunk_size = max_chunk_size
        self._max_trailer_size = max_trailer_size
        self._old = (
            None
            if seed.old_signing_key is None
            else _Chain(seed.old_signing_key, seed.amz_date, seed.old_scope, seed.old_seed_signature)
        )
        self._new = _Chain(seed.new_signing_key, seed.amz_date, seed.new_scope, seed.new_seed_signature)

        self._state = _State.HEADER
        self._error: S3Error | None = None
        self._line = bytearray()  # partial chunk header line or CRLF
        self._chunks = 0  # chunks whose header was parsed (the current one included)
        self._decoded = 0  # data bytes in verified chunks
        # The current chunk.
        self._size_hex = b""
        self._size = 0
        self._signature = b""
        self._remaining = 0
        self._hash = hashlib.sha256()
        self._views: list[bytes | bytearray | memoryview] = []
        self._small = bytearray()
        # The end of the body, held back until finish().
        self._held: list[bytes] = []
        self._trailer_raw = bytearray()
        self._trailer_headers: list[tuple[bytes, bytes]] = []
        self._trailer_line_at = 0  # offset of the current line in _trailer_raw
        self._trailer_sig_at = -1  # offset of the signature value in _trailer_raw
        self._trailer_blank_seen = False

    @property
    def chunks_verified(self) -> int:
        """Chunks (the final 0-size chunk included) whose signature has been verified."""
        if self._state is _State.DATA or (self._state is _State.DATA_END and self._size):
            return self._chunks - 1
        return self._chunks

    @property
    def decoded_bytes(self) -> int:
        """Object data bytes in verified chunks."""
        return self._decoded

    @property
    def complete(self) -> bool:
        """True once the whole body, final chunk and trailer included, has been received and verified."""
        return self._state in (_State.DONE, _State.FINISHED)

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take the next piece of the body; return the re-signed bytes that can be sent now."""
        self._check_usable()
        if self._state is _State.FINISHED:
            raise RuntimeError("ChunkResigner.feed() called after finish()")
        if not data:
            return b""
        # Views of the input are kept until their chunk is emitted, so a mutable input must be copied.
        buf = data if isinstance(data, bytes) else bytes(data)
        out: list[bytes | bytearray | memoryview] = []
        try:
            self._consume(buf, out)
        except S3Error as error:
            self._fail(error)
            raise
        if not out:
            return b""
        return b"".join(out)

    def finish(self) -> bytes:
        """The body ended: return the held-back final chunk (and trailer), or raise if it is incomplete."""
        self._check_usable()
        if self._state is _State.FINISHED:
            return b""
        if self._state is not _State.DONE:
            error = self._truncation()
            self._fail(error)
            raise error
        self._state = _State.FINISHED
        held, self._held = self._held, []
        return b"".join(held)

    # -- internals

    def _check_usable(self) -> None:
        if self._error is not None:
            error = self._error
            raise S3Error(error.status, error.code, error.message, error.resource)

    def _fail(self, error: S3Error) -> None:
        self._state = _State.ERROR
        self._error = error
        # Drop buffered data: nothing of it may be sent any more.
        self._views = []
        self._small = bytearray()
        self._held = []

    def _truncation(self) -> S3Error:
        n = self._chunks
        state = self._state
        if state is _State.HEADER:
            if n == 0 and not self._line:
                return _incomplete("the body is empty; it needs at least the final 0-size chunk")
            return _incomplete(
                f"it ended in or before the header of chunk {n + 1}, before the final 0-size chunk"
            )
        if state is _State.DATA:
            got = self._size - self._remaining
            return _incomplete(f"it ended inside chunk {n}: {got} of {self._size} data bytes received")
        if state is _State.DATA_END:
            return _incomplete(f"it ended before the CRLF that closes chunk {n}")
        return _incomplete(
            "it ended inside the trailing headers (x-amz-trailer-signature and an empty line must close them)"
        )

    def _consume(self, buf: bytes, out: list[bytes | bytearray | memoryview]) -> None:
        view = memoryview(buf)
        pos = 0
        end = len(buf)
        while pos < end:
            state = self._state
            if state is _State.DATA:
                n = min(self._remaining, end - pos)
                piece = view[pos : pos + n]
                self._hash.update(piece)
                if n >= _MIN_VIEW:
                    if self._small:
                        self._views.append(self._small)
                        self._small = bytearray()
                    self._views.append(piece)
                else:
                    self._small += piece
                self._remaining -= n
                pos += n
                if self._remaining == 0:
                    self._state = _State.DATA_END
            elif state is _State.HEADER:
                limit = _MAX_HEADER_LINE - len(self._line)
                stop = min(end, pos + limit)
                lf = buf.find(b"\n", pos, stop)
                if lf < 0:
                    if stop - pos >= limit:
                        raise _malformed(
                            f"the header of chunk {self._chunks + 1} is longer than {_MAX_HEADER_LINE} bytes "
                            "(expected <hex size>;chunk-signature=<64 hex>CRLF)"
                        )
                    self._line += view[pos:stop]
                    pos = stop
                else:
                    self._line += view[pos : lf + 1]
                    pos = lf + 1
                    line = bytes(self._line)
                    self._line.clear()
                    self._start_chunk(line)
            elif state is _State.DATA_END:
                take = view[pos : pos + 2 - len(self._line)]
                self._line += take
                pos += len(take)
                if not b"\r\n".startswith(self._line):
                    raise _malformed(f"chunk {self._chunks} is not followed by CRLF after its data")
                if len(self._line) == 2:
                    self._line.clear()
                    self._end_chunk(out)
            elif state is _State.TRAILER:
                pos = self._read_trailer(buf, pos)
            else:  # DONE
                raise _malformed("there are bytes after the final 0-size chunk")

    def _start_chunk(self, line: bytes) -> None:
        n = self._chunks + 1
        if not line.endswith(b"\r\n"):
            raise _malformed(f"the header of chunk {n} does not end with CRLF")
        semi = line.find(b";")
        if semi < 0:
            raise _malformed(f"the header of chunk {n} has no ;chunk-signature= (is the body signed?)")
        size_hex = line[:semi]
        if not size_hex or len(size_hex) > _MAX_SIZE_DIGITS or size_hex.translate(None, _HEX_DIGITS):
            raise _malformed(f"the size of chunk {n} is not a hexadecimal number of 1 to 16 digits")
        extension = line[semi:-2]
        if not extension.startswith(_SIG_EXT):
            raise _malformed(f"the header of chunk {n} has no ;chunk-signature=")
        signature = extension[len(_SIG_EXT) :]
        if not _is_signature(signature):
            raise _malformed(f"the signature of chunk {n} is not 64 lower-case hex characters")
        size = int(size_hex, 16)
        if size > self._max_chunk_size:
            raise _malformed(
                f"chunk {n} declares {size} bytes, more than this proxy's limit of {self._max_chunk_size} "
                "bytes per chunk"
            )
        expected = self._decoded_length
        if expected is not None:
            if self._decoded + size > expected:
                raise _malformed(
                    f"chunk {n} brings the data past the {expected} bytes of x-amz-decoded-content-length"
                )
            if size == 0 and self._decoded != expected:
                raise _incomplete(
                    f"the final chunk came after {self._decoded} data bytes, "
                    f"but x-amz-decoded-content-length is {expected}"
                )
        self._chunks = n
        self._size_hex = size_hex
        self._size = size
        self._signature = signature
        self._remaining = size
        self._hash = hashlib.sha256()
        if size:
            self._state = _State.DATA
            return
        # The final chunk: verify it now (it has no data), send it only from finish().
        new_signature = self._verify_chunk(EMPTY_SHA256.encode())
        self._held = [size_hex + _SIG_EXT + new_signature + b"\r\n"]
        self._state = _State.TRAILER if self._trailer_expected else _State.DATA_END

    def _verify_chunk(self, data_sha256: bytes) -> bytes:
        """Check the current chunk's signature on the client's chain; return its signature on the new one."""
        if self._old is not None:
            expected = self._old.chunk_signature(data_sha256)
            if not hmac.compare_digest(expected, self._signature):
                raise _mismatch(f"chunk {self._chunks}")
            self._old.previous = expected
        new_signature = self._new.chunk_signature(data_sha256)
        self._new.previous = new_signature
        return new_signature

    def _end_chunk(self, out: list[bytes | bytearray | memoryview]) -> None:
        if self._size == 0:  # the CRLF closing the final chunk of a body without trailer
            self._held.append(b"\r\n")
            self._state = _State.DONE
            return
        new_signature = self._verify_chunk(self._hash.hexdigest().encode("ascii"))
        out.append(self._size_hex + _SIG_EXT + new_signature + b"\r\n")
        out.extend(self._views)
        if self._small:
            out.append(self._small)
            self._small = bytearray()
        out.append(b"\r\n")
        self._views = []
        self._decoded += self._size
        self._state = _State.HEADER

    def _read_trailer(self, buf: bytes, pos: int) -> int:
        """Take trailer bytes from buf[pos:] up to the end of one line; return the new position."""
        limit = self._max_trailer_size - len(self._trailer_raw)
        stop = min(len(buf), pos + limit)
        lf = buf.find(b"\n", pos, stop)
        if lf < 0:
            if stop - pos >= limit:
                raise _malformed(
                    f"the trailing headers are longer than this proxy's limit of "
                    f"{self._max_trailer_size} bytes"
                )
            self._trailer_raw += buf[pos:stop]
            return stop
        start = self._trailer_line_at
        self._trailer_raw += buf[pos : lf + 1]
        self._trailer_line_at = len(self._trailer_raw)
        self._trailer_line(start)
        return lf + 1

    def _trailer_line(self, start: int) -> None:
        line = bytes(self._trailer_raw[start:])
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            raise _malformed("a trailing header line does not end with CRLF")
        content = line[:-2]
        if not content:
            if self._trailer_sig_at >= 0:
                self._complete_trailer()
            elif not self._trailer_headers and not self._trailer_blank_seen:
                # Some clients end the final chunk's (empty) data with CRLF before the trailer; S3-compatible
                # servers accept both forms, so pass it through as sent.
                self._trailer_blank_seen = True
            else:
                raise _malformed("the trailing headers end without x-amz-trailer-signature")
            return
        if self._trailer_sig_at >= 0:
            raise _malformed("a trailing header follows x-amz-trailer-signature")
        colon = content.find(b":")
        name = content[:colon].lower()
        if colon <= 0 or name.translate(None, _TOKEN_CHARS):
            raise _malformed("a trailing header line is not name:value")
        value = content[colon + 1 :]
        if value.translate(None, _CTL_CHARS) != value:
            raise _malformed(f"trailing header {_show(name)} has control characters in its value")
        if name == _TRAILER_SIG_NAME:
            signature = value.strip(b" \t")
            if not _is_signature(signature):
                raise _malformed("x-amz-trailer-signature is not 64 lower-case hex characters")
            self._trailer_sig_at = start + colon + 1 + value.index(signature)
            return
        if any(name == seen for seen, _ in self._trailer_headers):
            raise _malformed(f"trailing header {_show(name)} is repeated")
        self._trailer_headers.append((name, value))

    def _complete_trailer(self) -> None:
        at = self._trailer_sig_at
        signature = bytes(self._trailer_raw[at : at + _SIG_LEN])
        headers = self._trailer_headers
        canonical = canonical_trailer(headers)
        candidates = [canonical]
        # AWS documents the canonical (sorted) form; accept a client that hashed its lines in the order sent
        # too (identical for the usual single checksum), and re-sign in the form the client used.
        as_sent = b"".join(name + b":" + b" ".join(value.split()) + b"\n" for name, value in headers)
        if as_sent != canonical:
            candidates.append(as_sent)
        for form in candidates:
            digest = hashlib.sha256(form).hexdigest().encode("ascii")
            if self._old is None or hmac.compare_digest(self._old.trailer_signature(digest), signature):
                new_signature = self._new.trailer_signature(digest)
                break
        else:
            raise _mismatch("trailer (x-amz-trailer-signature)")
        self._trailer_raw[at : at + _SIG_LEN] = new_signature
        self._held.append(bytes(self._trailer_raw))
        self._trailer_raw = bytearray()
        self._state = _State.DONE


def encode_signed_chunks(
    chunks: Iterable[bytes],
    *,
    signing_key: bytes,
    amz_date: str,
    scope: str,
    seed_signature: str,
    trailers: Sequence[tuple[str, str]] | None = None,
) -> Iterator[bytes]:
    """Frame and sign `chunks` (non-empty, in order) as an aws-chunked body, as an SDK sends it.

    Adds the final 0-size chunk; with `trailers` (the ...-PAYLOAD-TRAILER form) the final chunk is followed by
    the trailing headers, x-amz-trailer-signature and an empty line. For tests, benchmarks and fixtures.
    """
    chain = _Chain(signing_key, amz_date, scope, seed_signature)
    for data in chunks:
        if not data:
            raise ValueError("only the final chunk may be empty")
        signature = chain.chunk_signature(hashlib.sha256(data).hexdigest().encode("ascii"))
        chain.previous = signature
        yield b"%x%s%s\r\n" % (len(data), _SIG_EXT, signature) + data + b"\r\n"
    signature = chain.chunk_signature(EMPTY_SHA256.encode())
    chain.previous = signature
    final = b"0" + _SIG_EXT + signature + b"\r\n"
    if trailers is None:
        yield final + b"\r\n"
        return
    encoded = [(name.encode(), value.encode()) for name, value in trailers]
    digest = hashlib.sha256(canonical_trailer(encoded)).hexdigest().encode("ascii")
    lines = b"".join(name + b":" + value + b"\r\n" for name, value in encoded)
    yield final + lines + _TRAILER_SIG_NAME + b":" + chain.trailer_signature(digest) + b"\r\n\r\n"
