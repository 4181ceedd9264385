"""`s3proxy run`: embed mitmproxy with the options s3proxy needs and the s3proxy addon.

Options that matter and why:
- regular (explicit proxy) mode on `listen`, so applications use HTTPS_PROXY;
- `connection_strategy=lazy`: a CONNECT must never dial the public S3 name;
- `upstream_cert=False`: the client's certificate is made from the CONNECT/SNI name, without asking the
  public endpoint for its certificate;
- `allow_hosts` = the S3 name pattern: every other CONNECT is tunnelled as raw TCP and never decrypted;
- upstream TLS always verified (`ssl_insecure` stays False), optionally against `tls.upstream_ca_bundle`;
- the proxy CA lives in `tls.ca_dir` (mitmproxy's confdir layout: `mitmproxy-ca.pem` holds key + cert);
- a lean mitmproxy (`lean_master`: only the addons a forwarding proxy uses), tuned (`s3proxy.tuning`:
  larger reads, batched TLS output, cached hook dispatch); flows are never retained;
- `workers: N` processes share the port (SO_REUSEPORT, s3proxy.workers); worker 0 serves the admin
  listener, and its /metrics carries every worker's metrics labelled `worker` (`share_metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from s3proxy import tuning, workers
from s3proxy.config import Config
from s3proxy.hosts import S3_CONNECT_PATTERN

log = logging.getLogger("s3proxy")


def mitmproxy_options(config: Config, config_path: str) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "mode": [f"{config.listen.mode}"] if config.listen.mode != "regular" else ["regular"],
        "listen_host": config.listen.host,
        "listen_port": config.listen.port,
        "connection_strategy": "lazy",
        "upstream_cert": False,
        "ssl_insecure": False,
        "allow_hosts": [S3_CONNECT_PATTERN],
        "confdir": str(config.tls.ca_dir),
        "http2": False,
        "http3": False,
        # upstream.idle_timeout: mitmproxy closes a client connection (and its upstream ones) after this
        # long with no byte moving either way, so a stalled download ends as a cut connection.
        "tcp_timeout": max(1, math.ceil(config.upstream.idle_timeout)),
        "s3proxy_config": config_path,
    }
    if config.tls.upstream_ca_bundle is not None:
        opts["ssl_verify_upstream_trusted_ca"] = str(config.tls.upstream_ca_bundle)
    return opts


LOG_LEVELS = ("error", "warn", "info", "debug")


def log_level(config: Config, environ: Mapping[str, str]) -> str:
    """`log.level`, unless S3PROXY_LOG_LEVEL overrides it (one-off debugging without editing the config).
    Raises ValueError for a bad override."""
    override = environ.get("S3PROXY_LOG_LEVEL", "").strip().lower()
    if override and override not in LOG_LEVELS:
        raise ValueError(f"S3PROXY_LOG_LEVEL={override!r}: expected {', '.join(LOG_LEVELS)}")
    return override or config.log.level


def configure_access_log(stream: TextIO) -> Callable[[str], None]:
    """Access lines (logger `s3proxy.access`, already formatted) go to `stream` on their own handler, so
    they are written whatever mitmproxy's termlog verbosity or `log.level` is; `log.access_log` turns
    them off. Returns what that handler does with one line, without the LogRecord, the formatting and the
    handler's lock around them (one access line per request: `Operations.write_access`)."""
    access = logging.getLogger("s3proxy.access")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False

    def write(line: str) -> None:
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed or full: as logging, never fail the request for it
            pass

    return write


def whole_lines(*streams: Any) -> None:
    """Have each text stream write a line with one write(2), flushed at its newline.

    Under PYTHONUNBUFFERED (set by the systemd unit and the container image, so that lines show at once)
    Python's stdout and stderr write through: print() issues the text and its newline as two writes. With
    `workers: N`, N processes share the same stdout, so two workers' log lines could merge into one
    ("msg A msg B" then two newlines), breaking log collectors. Line buffering without write-through keeps
    each line whole and still flushes it at once. Streams that cannot be reconfigured are left as they are.
    """
    for stream in streams:
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError, TypeError):  # closed, or not a TextIOWrapper
                reconfigure(line_buffering=True, write_through=False)


def whole_log_records() -> None:
    """mitmproxy's terminal log prints each record: print() writes the text, then its newline. Line
    buffering sends the text as soon as it holds a newline (a traceback, a multi-line debug record) or
    fills the stream's buffer (8 KiB), and the final newline then goes as a write of its own, where another
    worker's line can land. One write per record, as logging's StreamHandler and the access log do."""
    from mitmproxy.addons import termlog

    handler_cls = termlog.TermLogHandler
    if getattr(handler_cls.emit, "_s3proxy", False):
        return

    def emit(self: Any, record: logging.LogRecord) -> None:
        try:
            self.file.write(self.format(record) + "\n")
        except OSError:
            sys.exit(1)  # as mitmproxy: "We cannot print, exit immediately."

    emit._s3proxy = True  # type: ignore[attr-defined]
    emit.__wrapped__ = handler_cls.emit  # type: ignore[attr-defined]  # tests/test_tuning.py pins it
    handler_cls.emit = emit  # type: ignore[method-assign]


def default_workers() -> int:
    """`workers: auto`: one worker per CPU core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run(config: Config, config_path: str) -> int:
    """Run the proxy until SIGINT/SIGTERM. Returns the process exit code."""
    from s3proxy.ca import CA_KEY, ensure_ca, key_permission_problem

    # Before the workers fork (they inherit both): they share these streams.
    whole_lines(sys.stdout, sys.stderr)
    whole_log_records()

    # The CA key lets whoever reads it impersonate every S3 name to every client that trusts the CA.
    problem = key_permission_problem(config.tls.ca_dir)
    if problem:
        print(f"s3proxy: refusing to start: {problem}", file=sys.stderr)
        return 2
    os.umask(0o077)  # the CA key must not be group/world readable
    # Every worker must present the same CA: create it once, before any worker starts (and in the key
    # type asked for; mitmproxy would create an RSA one).
    ensure_ca(config.tls.ca_dir, config.tls.ca_key)
    # Load it here, once: inside a worker, mitmproxy would only log an unreadable CA and serve without one.
    from cryptography.hazmat.primitives.asymmetric import ec
    from mitmproxy import certs
    from mitmproxy.options import CONF_BASENAME

    try:
        store = certs.CertStore.from_store(config.tls.ca_dir, CONF_BASENAME, 2048)
    except (ValueError, TypeError, OSError) as e:
        print(f"s3proxy: cannot load the CA in {config.tls.ca_dir} ({CA_KEY}): {e}", file=sys.stderr)
        return 2
    if config.tls.ca_key == "ecdsa" and not isinstance(store.default_privatekey, ec.EllipticCurvePrivateKey):
        print(
            f"s3proxy: tls.ca_key is ecdsa, but the CA in {config.tls.ca_dir} has an RSA key: it is kept "
            "(clients trust it); to switch, move it away and distribute the new one",
            file=sys.stderr,
        )
    count = config.workers or default_workers()
    if count <= 1 or not workers.supported():
        return serve(config, config_path)
    taken = workers.port_problem(config.listen.host, config.listen.port)
    if taken:
        listen = f"{config.listen.host}:{config.listen.port}"
        print(f"s3proxy: cannot listen on {listen}: {taken}", file=sys.stderr)
        return 1
    print(
        f"s3proxy listening on {config.listen.host}:{config.listen.port} with {count} workers "
        f"(CA: {config.tls.ca_dir / 'mitmproxy-ca-cert.pem'})",
        file=sys.stderr,
        flush=True,
    )
    # Workers publish their metrics here for worker 0's admin listener (see share_metrics).
    runtime = Path(tempfile.mkdtemp(prefix="s3proxy-workers-"))
    try:
        return workers.supervise(
            count, lambda index: serve(config, config_path, worker=index, count=count, runtime=runtime)
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


METRICS_PUBLISH_SECONDS = 2.0


def share_metrics(ops: Any, worker: int, count: int, runtime: Path) -> asyncio.Task[None] | None:
    """`workers: N`: worker 0 alone serves the admin listener; its /metrics merges every worker's metrics
    (each sample labelled `worker`), which the others publish to `runtime` every METRICS_PUBLISH_SECONDS.
    The other workers still refuse requests aimed at the admin listener."""
    if worker == 0:
        ops.render_metrics = lambda: workers.merge_metrics(
            workers.read_metrics(runtime, 0, ops.metrics.render(), count)
        )
        return None
    ops.serve_admin = False

    async def publish() -> None:
        while True:
            with contextlib.suppress(OSError):
                workers.write_metrics(runtime, worker, ops.metrics.render())
            await asyncio.sleep(METRICS_PUBLISH_SECONDS)

    return asyncio.get_running_loop().create_task(publish())


def share_listen_port() -> None:
    """Give every listener mitmproxy opens for its proxy modes SO_REUSEPORT, so the workers of `workers: N`
    each open their own socket on the same port and the kernel spreads connections across them. Scoped to
    mitmproxy's mode servers (which call `asyncio.start_server`); s3proxy's admin listener is unaffected."""
    from mitmproxy.proxy import mode_servers

    class _ReusePortAsyncio:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:
            kwargs.setdefault("reuse_port", True)
            return await asyncio.start_server(*args, **kwargs)

    setattr(mode_servers, "asyncio", _ReusePortAsyncio())  # noqa: B010 - the module's own name for asyncio


def lean_master(opts: Any) -> Any:
    """mitmproxy with only the addons a forwarding proxy uses. `DumpMaster` loads ~35 (onboarding app,
    map/modify/replay, cookies, HAR export, ...), and every hook of every flow visits each of them inside
    a context manager: measured as most of mitmproxy's own per-request cost (bench/README.md). Kept: the
    core options and commands, the proxy server, layer selection, TLS, block (mitmproxy's refusal of
    public client addresses, a second line behind access.allow_clients), h2c refusal and the startup error
    check."""
    from mitmproxy import master
    from mitmproxy.addons import block, core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig

    if os.environ.get("S3PROXY_FULL_MITMPROXY"):
        from mitmproxy.tools.dump import DumpMaster

        return DumpMaster(opts, with_termlog=True, with_dumper=False)
    m = master.Master(opts, with_termlog=True)
    m.addons.add(
        core.Core(),
        block.Block(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        disable_h2c.DisableH2C(),
        errorcheck.ErrorCheck(),
    )
    return m


def serve(
    config: Config, config_path: str, worker: int | None = None, count: int = 1, runtime: Path | None = None
) -> int:
    """One proxy process (`worker`: its index of `count` under `workers: N`, None when it is the only one;
    `runtime`: the directory the workers share)."""
    from mitmproxy import exceptions, options

    from addons.s3proxy_addon import S3Proxy
    from addons.s3proxy_ops import Operations

    if worker is not None:
        share_listen_port()
    tuning.tune_mitmproxy()
    if tuning.enabled("lean_log_records"):
        tuning.lean_log_records()

    async def main() -> int:
        opts = options.Options()
        master = lean_master(opts)
        tuning.fast_hooks(master.addons)
        proxy = S3Proxy()
        ops = Operations(proxy)  # after S3Proxy: its hooks see what S3Proxy decided for each flow
        master.addons.add(proxy, ops)
        publishing = share_metrics(ops, worker, count, runtime) if worker is not None and runtime else None
        try:
            level = log_level(config, os.environ)
            # Only s3proxy's own loggers are raised; mitmproxy's stay at the root's WARNING.
            logging.getLogger("s3proxy").setLevel(level.upper())
            ops.write_access = configure_access_log(sys.stderr)
            opts.update(termlog_verbosity=level)
            opts.update(**mitmproxy_options(config, config_path))
        except (exceptions.OptionsError, ValueError) as e:
            print(f"s3proxy: {e}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        if hasattr(signal, "SIGHUP"):
            # Reload the config (systemctl reload); without a handler SIGHUP would end the process.
            loop.add_signal_handler(signal.SIGHUP, ops.request_reload, "SIGHUP")
        if hasattr(signal, "SIGPIPE"):
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if worker is None:
            print(
                f"s3proxy listening on {config.listen.host}:{config.listen.port} "
                f"(CA: {config.tls.ca_dir / 'mitmproxy-ca-cert.pem'})",
                file=sys.stderr,
                flush=True,
            )
        await master.run()
        if publishing is not None:
            publishing.cancel()
        if ops.fatal:
            print(f"s3proxy: {ops.fatal}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())
