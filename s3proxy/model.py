"""Plain request values shared by the core: what a client sent, independent of mitmproxy."""

from __future__ import annotations

from dataclasses import dataclass

Headers = tuple[tuple[str, str], ...]
"""Header fields in the order sent, names with their original case. Names may repeat."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the client sent it.

    `path` and `query` are raw: percent-encoding exactly as on the wire, never decoded or normalised
    (S3 signs and interprets them as sent). `query` excludes the `?`; `has_query` tells `/k?` from `/k`.
    `host` is the hostname from the Host header (or absolute-form URL) without port, lower-cased.
    """

    method: str
    scheme: str
    host: str
    port: int | None
    path: str
    query: str
    headers: Headers
    has_query: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def target(self) -> str:
        """Path plus query as sent (the HTTP request-target in origin form)."""
        if self.query or self.has_query:
            return f"{self.path}?{self.query}"
        return self.path


def split_target(target: str) -> tuple[str, str, bool]:
    """Split an origin-form request-target into (path, query, has_query) without decoding anything."""
    path, sep, query = target.partition("?")
    return path, query, bool(sep)


def replace_header(headers: Headers, name: str, value: str | None) -> Headers:
    """Headers with every `name` field removed and, unless value is None, one `name: value` put where the
    first one was (or appended)."""
    lname = name.lower()
    out: list[tuple[str, str]] = []
    placed = value is None
    for k, v in headers:
        if k.lower() == lname:
            if not placed and value is not None:
                out.append((k, value))
                placed = True
            continue
        out.append((k, v))
    if not placed and value is not None:
        out.append((name, value))
    return tuple(out)
