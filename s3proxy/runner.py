"""`s3proxy run`: embed mitmproxy with the options s3proxy needs and the s3proxy addon.

Options that matter and why:
- regular (explicit proxy) mode on `listen`, so applications use HTTPS_PROXY;
- `connection_strategy=lazy`: a CONNECT must never dial the public S3 name;
- `upstream_cert=False`: the client's certificate is made from the CONNECT/SNI name, without asking the
  public endpoint for its certificate;
- `allow_hosts` = the S3 name pattern: every other CONNECT is tunnelled as raw TCP and never decrypted;
- upstream TLS always verified (`ssl_insecure` stays False), optionally against `tls.upstream_ca_bundle`;
- the proxy CA lives in `tls.ca_dir` (mitmproxy's confdir layout: `mitmproxy-ca.pem` holds key + cert).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, TextIO

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


def configure_access_log(stream: TextIO) -> None:
    """Access lines (logger `s3proxy.access`, already formatted) go to `stream` on their own handler, so
    they are written whatever mitmproxy's termlog verbosity or `log.level` is; `log.access_log` turns
    them off."""
    access = logging.getLogger("s3proxy.access")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False


def run(config: Config, config_path: str) -> int:
    """Run the proxy until SIGINT/SIGTERM. Returns the process exit code."""
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from addons.s3proxy_addon import S3Proxy
    from addons.s3proxy_ops import Operations
    from s3proxy.ca import key_permission_problem

    # The CA key lets whoever reads it impersonate every S3 name to every client that trusts the CA.
    problem = key_permission_problem(config.tls.ca_dir)
    if problem:
        print(f"s3proxy: refusing to start: {problem}", file=sys.stderr)
        return 2
    config.tls.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def main() -> int:
        opts = options.Options()
        master = DumpMaster(opts, with_termlog=True, with_dumper=False)
        proxy = S3Proxy()
        ops = Operations(proxy)  # after S3Proxy: its hooks see what S3Proxy decided for each flow
        master.addons.add(proxy, ops)
        try:
            level = log_level(config, os.environ)
            # Only s3proxy's own loggers are raised; mitmproxy's stay at the root's WARNING.
            logging.getLogger("s3proxy").setLevel(level.upper())
            configure_access_log(sys.stderr)
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
        print(
            f"s3proxy listening on {config.listen.host}:{config.listen.port} "
            f"(CA: {config.tls.ca_dir / 'mitmproxy-ca-cert.pem'})",
            file=sys.stderr,
            flush=True,
        )
        await master.run()
        if ops.fatal:
            print(f"s3proxy: {ops.fatal}", file=sys.stderr)
            return 1
        return 0

    os.umask(0o077)  # the CA key mitmproxy writes must not be group/world readable
    return asyncio.run(main())
