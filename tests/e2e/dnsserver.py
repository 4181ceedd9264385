"""The stand-in DNS server for end-to-end tests; it lives in `s3proxy.standin.dns` (the demo uses it too).

Manual use: `python -m tests.e2e.dnsserver` serves the default table until Ctrl-C.
"""

from __future__ import annotations

import time

from s3proxy.standin.dns import DEFAULT_TABLE, MODES, DnsServer, Mode, Query


def _main() -> None:  # pragma: no cover - manual use
    srv = DnsServer().start()
    print(f"serving on {srv.address}; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    _main()

__all__ = ["DEFAULT_TABLE", "MODES", "DnsServer", "Mode", "Query"]
