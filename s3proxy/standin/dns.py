"""A tiny authoritative DNS server for the stand-ins: S3 interface endpoint names -> loopback addresses.

Strategy: dnslib's threaded UDP and TCP servers on one 127.0.0.1 port, answering from a suffix table
(longest suffix on a label boundary wins). Names under `vpce.amazonaws.com[.cn]` that no table entry
covers, and every other name, are NXDOMAIN -- so a test that resolves through this server also proves
that nothing asked for a public name got an answer. A switchable `mode` lets tests simulate a DNS outage
(NXDOMAIN for everything, SERVFAIL, or no answer at all), and every query is logged so tests can assert
which names the proxy asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from s3proxy.standin import MissingTool

# dnslib is a development tool, not an s3proxy dependency: importing this module without it says so.
try:
    from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]
    from dnslib.server import (  # type: ignore[import-untyped]
        BaseResolver,
        DNSError,
        DNSHandler,
        DNSLogger,
        DNSServer,
    )
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingTool("dnslib") from e

Mode = Literal["normal", "nxdomain", "servfail", "drop"]
MODES: tuple[Mode, ...] = ("normal", "nxdomain", "servfail", "drop")

# Zones the server considers itself authoritative for; anything else is NXDOMAIN (never forwarded).
DEFAULT_TABLE: Mapping[str, tuple[str, ...]] = {
    "vpce.amazonaws.com": ("127.0.0.1",),
    "vpce.amazonaws.com.cn": ("127.0.0.1",),
}


@dataclass(frozen=True, slots=True)
class Query:
    """One question the server received."""

    name: str  # lower case, no trailing dot
    qtype: str  # "A", "AAAA", ...
    protocol: str  # "udp" | "tcp"
    client: tuple[str, int]
    rcode: str  # what was answered: "NOERROR", "NXDOMAIN", "SERVFAIL", or "DROPPED"
    answers: tuple[str, ...]
    at: float  # time.monotonic()


def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _covers(suffix: str, name: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        return self._server._answer(request, handler)


class DnsServer:
    """Authoritative test DNS on 127.0.0.1:<port> over UDP and TCP.

    `table` maps a name suffix (e.g. `vpce-1a2b3c4d-5e6f-us-east-1a.s3.us-east-1.vpce.amazonaws.com`)
    to the addresses its names resolve to; the longest matching suffix wins. Addresses containing `:`
    are AAAA records, others A records.
    """

    def __init__(
        self,
        table: Mapping[str, Iterable[str]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl: int = 1,
    ) -> None:
        self.host = host
        self.ttl = ttl  # short by default so tests that change answers don't wait on resolver caches
        self.mode: Mode = "normal"
        self._lock = threading.Lock()
        self._table: dict[str, tuple[str, ...]] = {}
        self._log: list[Query] = []
        self.set_table(DEFAULT_TABLE if table is None else table)
        self._requested_port = port
        self._servers: list[DNSServer] = []
        self.port = 0

    # --- configuration, safe to call while serving -------------------------------------------------

    def set_table(self, table: Mapping[str, Iterable[str]]) -> None:
        with self._lock:
            self._table = {_norm(k): tuple(v) for k, v in table.items()}

    def set_records(self, suffix: str, addresses: Iterable[str]) -> None:
        """Add or replace one entry; an empty `addresses` makes the names exist with no records (NODATA)."""
        with self._lock:
            self._table[_norm(suffix)] = tuple(addresses)

    def remove_records(self, suffix: str) -> None:
        """Forget an entry: its names fall back to a shorter suffix, or NXDOMAIN."""
        with self._lock:
            self._table.pop(_norm(suffix), None)

    def set_mode(self, mode: Mode) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown DNS mode {mode!r}; expected one of {MODES}")
        self.mode = mode

    def lookup(self, name: str) -> tuple[str, ...] | None:
        """What the table says for `name`: addresses, or None when the name does not exist."""
        name = _norm(name)
        with self._lock:
            best = max((s for s in self._table if _covers(s, name)), key=len, default=None)
            return None if best is None else self._table[best]

    # --- query log ---------------------------------------------------------------------------------

    def queries(self, since: int = 0) -> list[Query]:
        """Queries received, oldest first; `since` is a value earlier returned by `mark()`."""
        with self._lock:
            return self._log[since:]

    def mark(self) -> int:
        with self._lock:
            return len(self._log)

    def names_asked(self, since: int = 0) -> list[str]:
        return [q.name for q in self.queries(since)]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """`host:port`, the form s3proxy's `dns.nameservers` takes."""
        return f"{self.host}:{self.port}"

    def start(self) -> DnsServer:
        if self._servers:
            return self
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        for _attempt in range(20):
            udp = DNSServer(_Resolver(self), address=self.host, port=self._requested_port, logger=logger)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(_Resolver(self), address=self.host, port=port, tcp=True, logger=logger)
            except OSError:
                udp.server.server_close()
                if self._requested_port:
                    raise
                continue  # the TCP side of a kernel-chosen UDP port was taken; pick another
            self._servers = [udp, tcp]
            self.port = port
            break
        else:
            raise RuntimeError("could not bind a UDP+TCP port pair for the test DNS server")
        for s in self._servers:
            s.server.daemon_threads = True
            # dnslib's start_thread() polls every 0.5 s, which makes stop() slow; poll faster.
            s.thread = threading.Thread(
                target=s.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            s.thread.start()
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.server.shutdown()
            s.server.server_close()
        self._servers = []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- answering ---------------------------------------------------------------------------------

    def _answer(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        q = request.q
        name = _norm(str(q.qname))
        qtype = QTYPE.get(q.qtype, str(q.qtype))
        reply = request.reply()
        answers: list[str] = []
        mode = self.mode
        if mode == "drop":
            self._record(name, qtype, handler, "DROPPED", ())
            # dnslib's handler logs a DNSError and sends nothing: the client sees a timeout.
            raise DNSError("dropped by test mode")
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif mode == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            addresses = self.lookup(name)
            if addresses is None:
                reply.header.rcode = RCODE.NXDOMAIN
            else:
                for addr in addresses:
                    is_v6 = ":" in addr
                    if qtype in ("A", "ANY") and not is_v6:
                        reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(addr), ttl=self.ttl))
                        answers.append(addr)
                    elif qtype in ("AAAA", "ANY") and is_v6:
                        reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA(addr), ttl=self.ttl))
                        answers.append(addr)
                # Other types for an existing name: NOERROR with no answers (NODATA), as real DNS does.
        self._record(name, qtype, handler, RCODE.get(reply.header.rcode), tuple(answers))
        return reply

    def _record(
        self, name: str, qtype: str, handler: DNSHandler, rcode: str, answers: tuple[str, ...]
    ) -> None:
        entry = Query(
            name, qtype, handler.protocol, handler.client_address[:2], rcode, answers, time.monotonic()
        )
        with self._lock:
            self._log.append(entry)


__all__ = ["DEFAULT_TABLE", "MODES", "DnsServer", "Mode", "Query"]
