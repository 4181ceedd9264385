"""The operations addon: access log, metrics, the admin listener (/metrics, /healthz, /readyz, /proxy.pac)
and config reload (SIGHUP, file change). Registered after `S3Proxy`, so each of its hooks sees what
S3Proxy decided for the flow.

Strategy:
- One `FlowTrack` per request in `flow.metadata`: what the access record needs, gathered across hooks.
  Body bytes are counted by `ByteCounter`s composed with whatever stream S3Proxy set (the aws-chunked
  re-signer, or plain pass-through), never replacing it. The record is written once, in `response` or
  `error` (and in `http_connect` for a refused CONNECT), then fed to `Metrics` so the log and the metrics
  can't disagree.
- One `Metrics` per process (not per config): counters survive reloads; the resolver's and the upstream
  pool's counters are read at scrape time from whatever objects are current.
- Reload builds a whole new Engine/resolver/upstream pool (`S3Proxy.reload`) and swaps it in for new
  requests; a flow in flight keeps the Decision and streams it captured. A config that fails validation is
  refused, logged, and the old one keeps serving. The file is polled (resolved path's stat, then a hash),
  because Kubernetes updates a mounted ConfigMap by swapping a symlink, which inotify on the path misses.
- Load as `mitmdump -s addons/s3proxy_addon.py -s addons/s3proxy_ops.py`, or via `s3proxy run`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import ctx, http

from addons.s3proxy_addon import (
    HEAD_ERROR_KEY,
    REFUSAL_KEY,
    REQUEST_KEY,
    S3Proxy,
    error_response,
    request_from_flow,
)
from s3proxy import __version__, admin, hosts, pac, reuse
from s3proxy.accesslog import ID_HEADERS, AccessRecord, build_record, format_json, format_text
from s3proxy.config import Config
from s3proxy.engine import Decision
from s3proxy.errors import S3Error
from s3proxy.metrics import Metrics, certificate_expiry
from s3proxy.model import Request

log = logging.getLogger("s3proxy")
access_log = logging.getLogger("s3proxy.access")

TRACK_KEY = "s3proxy_track"
_CHUNKS_KEY = "s3proxy_chunks"  # S3Proxy's ChunkStream, whose `error` says a chunk failed verification
_CODE_RE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")
POLL_SECONDS = 2.0


class ByteCounter:
    """A body stream callable that counts the bytes it is given and hands them to `inner` (or passes them
    on unchanged): composed with the stream already set, so what it counts is what crossed this side."""

    def __init__(self, inner: Callable[[bytes], Any] | None = None) -> None:
        self.inner = inner
        self.count = 0

    def __call__(self, data: bytes) -> Any:
        self.count += len(data)
        return data if self.inner is None else self.inner(data)


@dataclass(slots=True)
class FlowTrack:
    """What the access record of one request needs, gathered across its hooks."""

    start: float  # wall clock, when the request head arrived
    req: Request | None = None  # as the client sent it
    proxy_answer: bool = False  # the proxy answered itself: nothing was sent to S3
    upstream_status: int | None = None
    body_in: ByteCounter | None = None
    body_out: ByteCounter | None = None
    logged: bool = False


def _log_access(line: str) -> None:
    access_log.info("%s", line)


def _client(flow: http.HTTPFlow) -> tuple[str, int] | None:
    peer = flow.client_conn.peername
    return (str(peer[0]), int(peer[1])) if peer else None


def _address(peer: Any) -> str | None:
    if not peer:
        return None
    host = str(peer[0])
    return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"


def _own_error(response: http.Response, body: bytes | None = None) -> S3Error:
    """The S3Error behind a response the proxy built itself (`error_response`): status and code only. `body`:
    the error document when the response went without it (a HEAD's)."""
    m = _CODE_RE.search(body or response.raw_content or b"")
    return S3Error(response.status_code, m.group(1).decode() if m else "InternalError", "")


def file_fingerprint(path: Path) -> tuple[tuple[str, int, int, int], bytes]:
    """(resolved path + inode + mtime + size, SHA-256 of the content) of the file behind `path`; the stat
    part is cheap and says when to hash again. Raises OSError."""
    resolved = path.resolve()
    st = resolved.stat()
    return (str(resolved), st.st_ino, st.st_mtime_ns, st.st_size), hashlib.sha256(
        resolved.read_bytes()
    ).digest()


class Operations:
    def __init__(
        self,
        proxy: S3Proxy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._proxy = proxy
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.metrics = Metrics(version=__version__, python_version=platform.python_version())
        # Where access lines go: the `s3proxy.access` logger, or (`s3proxy run`) straight to its stream.
        self.write_access: Callable[[str], None] = _log_access
        self.metrics.attach_dns(self._dns_stats)
        self.metrics.attach_upstream(self._upstream_stats)
        self.metrics.attach_access(lambda: {"password_checks": self.proxy.password_checks})
        self.metrics.attach_idle_upstream(lambda: len(reuse.REUSE.pool))
        self.admin: admin.AdminServer | None = None
        self.admin_listen: tuple[str, int] | None = None
        self.fatal: str | None = None  # why the process must exit non-zero (e.g. the admin port is taken)
        # `workers: N` (s3proxy.runner): only worker 0 serves the admin listener, and its /metrics is
        # `render_metrics`, which the runner replaces with one that merges every worker's (label `worker`).
        self.serve_admin = True
        self.render_metrics: Callable[[], bytes] = self.metrics.render
        self._tasks: set[asyncio.Task[None]] = set()
        self._file_stat: tuple[str, int, int, int] | None = None
        self._file_hash: bytes | None = None

    # -- wiring ------------------------------------------------------------------------------------------
    @property
    def proxy(self) -> S3Proxy:
        if self._proxy is None:
            self._proxy = ctx.master.addons.get("s3proxy")
            if self._proxy is None:
                raise RuntimeError("the s3proxy addon (addons/s3proxy_addon.py) is not loaded")
        return self._proxy

    def _dns_stats(self) -> dict[str, int] | None:
        resolver = self.proxy.resolver
        return resolver.stats.as_dict() if resolver is not None else None

    def _upstream_stats(self) -> dict[str, int] | None:
        pool = self.proxy.upstreams
        return dataclasses.asdict(pool.stats) if pool is not None else None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def configure(self, updated: set[str]) -> None:
        # S3Proxy.configure ran first (addon order) and loaded the file named by the option.
        if "s3proxy_config" in updated and self.proxy.config is not None and ctx.options.s3proxy_config:
            self.metrics.config_reload(True, self.clock())
            self._remember_file()

    async def running(self) -> None:
        config = self.proxy.config
        if config is None:
            return
        self._read_ca_expiry(config)
        self._count_learned_regions()
        if config.admin.listen is not None:
            await self._start_admin(config.admin.listen)
        if ctx.options.s3proxy_config:
            self._spawn(self._watch_file(Path(ctx.options.s3proxy_config)))

    async def done(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.admin is not None:
            await self.admin.close()
            self.admin = None

    async def _start_admin(self, listen: tuple[str, int]) -> None:
        if not self.serve_admin:
            self.admin_listen = listen  # served by worker 0; requests to it are still refused here
            return
        server = admin.AdminServer(
            metrics=self.render_metrics,
            metrics_content_type=self.metrics.content_type,
            ready=self.readiness,
            pac=self.pac_text,
        )
        try:
            await server.start(*listen)
        except OSError as e:
            self.fatal = f"cannot listen on admin.listen {listen[0]}:{listen[1]}: {e.strerror or e}"
            log.error("%s", self.fatal)
            ctx.master.shutdown()
            return
        self.admin, self.admin_listen = server, listen
        host, port = server.address
        log.info("admin listener on %s:%s (/metrics /healthz /readyz /proxy.pac)", host, port)

    async def _restart_admin(self, listen: tuple[str, int] | None) -> None:
        if self.admin is not None:
            await self.admin.close()
        self.admin, self.admin_listen = None, None
        if listen is not None:
            await self._start_admin(listen)

    def _count_learned_regions(self) -> None:
        """s3proxy_redirects_learned_total: count each bucket region S3 told the proxy (redirect or
        discovery), as S3Proxy's region cache learns it."""
        regions = getattr(self.proxy, "regions", None)
        learn = getattr(regions, "learn", None)
        if learn is None or getattr(learn, "_s3proxy_counted", False):
            return

        def counted(bucket: str, region: str) -> bool:
            learned = bool(learn(bucket, region))
            if learned:
                self.metrics.redirect_learned()
            return learned

        counted._s3proxy_counted = True  # type: ignore[attr-defined]
        regions.learn = counted  # type: ignore[union-attr]

    def _read_ca_expiry(self, config: Config) -> None:
        try:
            pem = (config.tls.ca_dir / "mitmproxy-ca-cert.pem").read_bytes()
            self.metrics.set_ca_expiry(certificate_expiry(pem))
        except (OSError, ValueError) as e:
            log.warning("cannot read the proxy CA certificate for s3proxy_ca_expiry: %s", e)

    # -- admin endpoints ---------------------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, str]:
        """Ready: a config is loaded and every endpoint has at least one resolvable candidate address."""
        config, resolver = self.proxy.config, self.proxy.resolver
        if config is None or resolver is None:
            self.metrics.set_ready(False)
            return False, "no configuration loaded"
        endpoints = list(config.endpoints.values())
        results = await asyncio.gather(
            *(resolver.pick(ep, "bucket") for ep in endpoints), return_exceptions=True
        )
        failed = [
            f"{ep.region}: {r}"
            for ep, r in zip(endpoints, results, strict=True)
            if isinstance(r, BaseException)
        ]
        self.metrics.set_ready(not failed)
        if failed:
            return False, "; ".join(failed)
        return True, f"{len(endpoints)} endpoint(s) resolvable"

    def pac_text(self, requested_host: str | None) -> str:
        config = self.proxy.config
        if config is None:
            raise ValueError("no configuration loaded")
        if config.admin.pac_proxy:
            host, _, port = config.admin.pac_proxy.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("admin.pac_proxy must be HOST:PORT")
            return pac.pac_file(config, host, int(port))
        host = pac.proxy_host_for(config.listen.host, requested_host)
        return pac.pac_file(config, host, config.listen.port)

    # -- reload ------------------------------------------------------------------------------------------
    def request_reload(self, reason: str) -> None:
        """SIGHUP handler (called in the event loop)."""
        self.reload(reason)

    def reload(self, reason: str) -> bool:
        """Load the config file again: valid -> used for new requests; invalid -> logged, old one kept."""
        old = self.proxy.config
        if old is None:
            return False
        self._remember_file()
        error = self.proxy.reload()
        if error is not None:
            log.error("config reload (%s) refused; the previous config stays in use: %s", reason, error)
            self.metrics.config_reload(False, self.clock())
            return False
        new = self.proxy.config
        assert new is not None
        self.metrics.config_reload(True, self.clock())
        log.warning("config reloaded (%s); endpoints: %s", reason, ", ".join(new.endpoints))
        for what, before, after in (
            ("listen", old.listen, new.listen),
            ("tls.ca_dir", old.tls.ca_dir, new.tls.ca_dir),
            ("tls.ca_key (only for a CA created then)", old.tls.ca_key, new.tls.ca_key),
            ("workers", old.workers, new.workers),
        ):
            if before != after:
                log.warning("%s changed: takes effect at the next restart (still using %s)", what, before)
        self._apply_log_level(new)
        self._read_ca_expiry(new)
        if new.admin.listen != self.admin_listen:
            self._spawn(self._restart_admin(new.admin.listen))
        return True

    def _apply_log_level(self, config: Config) -> None:
        from s3proxy.runner import log_level

        try:
            level = log_level(config, os.environ)
        except ValueError:
            return  # a bad override was refused at start; keep what is set
        logging.getLogger("s3proxy").setLevel(level.upper())
        current = getattr(ctx.options, "termlog_verbosity", None)  # absent without the termlog addon
        if current is not None and current != level:
            ctx.options.update(termlog_verbosity=level)

    def _remember_file(self) -> None:
        try:
            self._file_stat, self._file_hash = file_fingerprint(Path(ctx.options.s3proxy_config))
        except OSError:
            pass

    async def _watch_file(self, path: Path) -> None:
        """Reload when the file's content changes (polled: survives symlink swaps and editors' renames)."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                resolved = path.resolve()
                st = resolved.stat()
                if (str(resolved), st.st_ino, st.st_mtime_ns, st.st_size) == self._file_stat:
                    continue
                stat_key, digest = file_fingerprint(path)
            except OSError:
                continue  # mid-swap, or removed: keep serving, look again later
            if digest == self._file_hash:
                self._file_stat = stat_key
                continue
            self.reload("config file changed")

    # -- flows -------------------------------------------------------------------------------------------
    def _refuse(self, flow: http.HTTPFlow, reason: str, message: str) -> None:
        flow.metadata[REFUSAL_KEY] = reason
        flow.request.stream = False  # mitmproxy cannot stream a request that already has a response
        flow.response = error_response(S3Error(403, "AccessDenied", message))

    def _targets_admin(self, host: str, port: int) -> bool:
        listen = self.admin_listen
        return listen is not None and admin.targets_admin(host, port, listen[0], listen[1])

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and self._targets_admin(flow.request.host, flow.request.port):
            log.warning("refused CONNECT to the admin listener %s:%s", flow.request.host, flow.request.port)
            self._refuse(flow, "admin", "the admin listener is not reachable through the proxy")
        if flow.response is not None and flow.response.status_code >= 400:
            if REFUSAL_KEY not in flow.metadata:
                config = self.proxy.config
                deny = config is not None and config.non_s3 == "deny"
                flow.metadata[REFUSAL_KEY] = "not-s3" if deny else "tunnel"
            req = Request("CONNECT", "http", flow.request.host, flow.request.port, "", "", ())
            track = FlowTrack(flow.request.timestamp_start or self.clock(), req, proxy_answer=True)
            flow.metadata[TRACK_KEY] = track
            self._finish(flow, track)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.metadata.get(REQUEST_KEY)
        if not isinstance(req, Request):  # answered before S3Proxy looked at it: nothing rewritten yet
            req = request_from_flow(flow.request)
        track = FlowTrack(flow.request.timestamp_start or self.clock(), req)
        flow.metadata[TRACK_KEY] = track
        self.metrics.in_flight.inc()
        if (
            flow.response is None
            and flow.metadata.get("s3proxy") is None
            and self._targets_admin(req.host, req.port or flow.request.port)
        ):
            self._refuse(flow, "admin", "the admin listener is not reachable through the proxy")
        if flow.response is not None:
            track.proxy_answer = True
        elif flow.request.stream:
            stream = flow.request.stream
            track.body_in = ByteCounter(stream if callable(stream) else None)
            flow.request.stream = track.body_in

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        track = flow.metadata.get(TRACK_KEY)
        if not isinstance(track, FlowTrack) or flow.response is None or track.proxy_answer:
            return
        track.upstream_status = flow.response.status_code
        stream = flow.response.stream
        if stream:
            track.body_out = ByteCounter(stream if callable(stream) else None)
            flow.response.stream = track.body_out

    def response(self, flow: http.HTTPFlow) -> None:
        track = flow.metadata.get(TRACK_KEY)
        if isinstance(track, FlowTrack):
            self._finish(flow, track)

    def error(self, flow: http.HTTPFlow) -> None:
        track = flow.metadata.get(TRACK_KEY)
        if isinstance(track, FlowTrack):
            self._finish(flow, track, failed=flow.error.msg if flow.error else "error")

    def _finish(self, flow: http.HTTPFlow, track: FlowTrack, failed: str | None = None) -> None:
        if track.logged or track.req is None:
            return
        track.logged = True
        if flow.request.method != "CONNECT":
            self.metrics.in_flight.dec()
        config = self.proxy.config
        record = self.record(flow, track, failed, redact=bool(config and config.log.redact_keys))
        self.metrics.observe(record)
        if config is None or config.log.access_log:
            text_form = config is not None and config.log.format == "text"
            self.write_access(format_text(record) if text_form else format_json(record))

    def record(
        self, flow: http.HTTPFlow, track: FlowTrack, failed: str | None, *, redact: bool
    ) -> AccessRecord:
        assert track.req is not None
        decision = flow.metadata.get("s3proxy")
        if not isinstance(decision, Decision):
            decision = None
        resp = flow.response
        refusal = flow.metadata.get(REFUSAL_KEY)
        error: S3Error | None = None
        status = resp.status_code if resp is not None else None
        chunks = flow.metadata.get(_CHUNKS_KEY)
        chunk_error = getattr(chunks, "error", None)
        if isinstance(chunk_error, S3Error):
            error, refusal = chunk_error, "chunk"
        elif track.proxy_answer and resp is not None:
            error = _own_error(resp, flow.metadata.get(HEAD_ERROR_KEY))
            if decision is None and refusal is None:
                refusal = "not-s3" if not hosts.is_s3_host(track.req.host) else "invalid-request"
        elif failed is not None:
            # The connection failed: before a response the client got the proxy's 503, else a cut body.
            status = status or 503
            error = S3Error(status, "ServiceUnavailable" if resp is None else "IncompleteBody", failed)
            refusal = refusal or "connection"
        bytes_in = track.body_in.count if track.body_in else len(flow.request.raw_content or b"")
        if track.body_out is not None:
            bytes_out = track.body_out.count
        else:
            has_body = resp is not None and flow.request.method != "HEAD"
            bytes_out = len(resp.raw_content or b"") if resp is not None and has_body else 0
        end = resp.timestamp_end if resp is not None and resp.timestamp_end else self.clock()
        headers: tuple[tuple[str, str], ...] = ()
        if resp is not None:  # only the ids the record keeps (items() would scan every header per header)
            headers = tuple((n, v) for n in ID_HEADERS if (v := resp.headers.get(n)) is not None)
        return build_record(
            track.req,
            decision,
            time=datetime.fromtimestamp(track.start, UTC),
            duration=max(0.0, end - track.start),
            client=_client(flow),
            status=status,
            upstream_status=track.upstream_status,
            response_headers=headers,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            endpoint_address=None if track.proxy_answer else _address(flow.server_conn.peername),
            error=error,
            refusal=refusal if isinstance(refusal, str) else None,
            redact_keys=redact,
        )


addons = [Operations()]
