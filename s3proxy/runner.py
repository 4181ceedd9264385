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
import os
import signal
import sys
from typing import Any

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
        "s3proxy_config": config_path,
    }
    if config.tls.upstream_ca_bundle is not None:
        opts["ssl_verify_upstream_trusted_ca"] = str(config.tls.upstream_ca_bundle)
    return opts


def run(config: Config, config_path: str) -> int:
    """Run the proxy until SIGINT/SIGTERM. Returns the process exit code."""
    from mitmproxy import exceptions, options
    from mitmproxy.tools.dump import DumpMaster

    from addons.s3proxy_addon import S3Proxy

    config.tls.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def main() -> int:
        opts = options.Options()
        master = DumpMaster(opts, with_termlog=True, with_dumper=False)
        master.addons.add(S3Proxy())
        try:
            opts.update(**mitmproxy_options(config, config_path))
            # S3PROXY_LOG_LEVEL=info adds one line per request ("asked -> sent upstream"), never a secret.
            level = os.environ.get("S3PROXY_LOG_LEVEL", "warn").lower()
            if level not in ("error", "warn", "info", "debug"):
                raise exceptions.OptionsError(
                    f"S3PROXY_LOG_LEVEL={level!r}: expected error, warn, info or debug"
                )
            # Only s3proxy's own logger is raised; mitmproxy's stay at the root's WARNING.
            logging.getLogger("s3proxy").setLevel(level.upper())
            opts.update(termlog_verbosity=level)
        except exceptions.OptionsError as e:
            print(f"s3proxy: {e}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, master.shutdown)
        if hasattr(signal, "SIGPIPE"):
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        print(
            f"s3proxy listening on {config.listen.host}:{config.listen.port} "
            f"(CA: {config.tls.ca_dir / 'mitmproxy-ca-cert.pem'})",
            file=sys.stderr,
            flush=True,
        )
        await master.run()
        return 0

    os.umask(0o077)  # the CA key mitmproxy writes must not be group/world readable
    return asyncio.run(main())
