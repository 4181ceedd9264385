"""TLS 1.3 cipher suite order (`tls.prefer_aes128`).

mitmproxy's TLS 1.2 cipher list already puts AES-128-GCM first, and its contexts pick by the proxy's own
order (OP_CIPHER_SERVER_PREFERENCE); for TLS 1.3, which every current client speaks, it leaves OpenSSL's
order, AES-256-GCM first. So every byte the proxy relays is decrypted and encrypted again with AES-256,
which costs 9% more than AES-128 here (`openssl speed`, AES-NI): about 2% of the proxy's CPU per GiB
(measured: bench/README.md). Both are FIPS-approved AEADs of TLS 1.3; TLS_AES_128_GCM_SHA256 is the one
every TLS 1.3 implementation must have.

With `prefer_aes128` (the default), the TLS 1.3 order is TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
TLS_CHACHA20_POLY1305_SHA256 for the TLS the proxy serves to clients and in what it offers to endpoints
(which choose by their own order, or by the proxy's where they follow the client's). A client that offers
only AES-256 still gets it. A client that lists ChaCha20 first (hardware without AES instructions) gets
ChaCha20 from the proxy, in TLS 1.3 and in TLS 1.2 (OpenSSL's SSL_OP_PRIORITIZE_CHACHA), where mitmproxy
would give it AES. Off: the contexts are exactly mitmproxy's (OpenSSL's order, or what openssl.cnf sets).
"""

from __future__ import annotations

import functools
from typing import Any

from OpenSSL import SSL

AES128_FIRST = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# SSL_OP_PRIORITIZE_CHACHA (OpenSSL 1.1.1+, bit 21; pyOpenSSL does not name it): with the server's order in
# force, a client that lists ChaCha20 first gets it. tests/test_ciphers.py checks what it does.
OP_PRIORITIZE_CHACHA = 1 << 21


class _Order:
    prefer_aes128 = True


ORDER = _Order()


def configure(context: SSL.Context, *, serving: bool) -> None:
    """Put AES-128-GCM first on a context no connection has used yet. `serving`: the context of the TLS
    the proxy serves to its clients."""
    lib: Any = SSL._lib  # type: ignore[attr-defined]
    if not lib.SSL_CTX_set_ciphersuites(context._context, AES128_FIRST):
        lib.ERR_clear_error()  # leave nothing queued for an unrelated call to find
        raise RuntimeError(f"OpenSSL refused the TLS 1.3 cipher suites {AES128_FIRST.decode()}")
    if serving:
        context.set_options(OP_PRIORITIZE_CHACHA)


def install() -> None:
    """Have the TLS contexts mitmproxy's tlsconfig asks for (per process, once) carry the order while
    `ORDER.prefer_aes128` is set, and be mitmproxy's own while it is not. mitmproxy caches its contexts
    by their arguments (a context must not change once a connection used it); these are cached the same
    way, apart from its, so a reload that changes the setting switches between the two."""
    from mitmproxy.net import tls as net_tls

    if getattr(net_tls.create_client_proxy_context, "_s3proxy", False):
        return
    mitmproxy_serving, mitmproxy_upstream = (
        net_tls.create_client_proxy_context,
        net_tls.create_proxy_server_context,
    )
    build_serving = mitmproxy_serving.__wrapped__  # mitmproxy's builders, without their lru_cache
    build_upstream = mitmproxy_upstream.__wrapped__

    @functools.lru_cache(256)
    def serving(**kwargs: Any) -> SSL.Context:
        context: SSL.Context = build_serving(**kwargs)
        configure(context, serving=True)
        return context

    @functools.lru_cache(256)
    def upstream(**kwargs: Any) -> SSL.Context:
        context: SSL.Context = build_upstream(**kwargs)
        configure(context, serving=False)
        return context

    def create_client_proxy_context(**kwargs: Any) -> SSL.Context:
        return (serving if ORDER.prefer_aes128 else mitmproxy_serving)(**kwargs)

    def create_proxy_server_context(**kwargs: Any) -> SSL.Context:
        return (upstream if ORDER.prefer_aes128 else mitmproxy_upstream)(**kwargs)

    create_client_proxy_context._s3proxy = True  # type: ignore[attr-defined]
    # As lru_cache's: mitmproxy's own function (tests/test_tuning.py pins it).
    create_client_proxy_context.__wrapped__ = build_serving  # type: ignore[attr-defined]
    create_proxy_server_context.__wrapped__ = build_upstream  # type: ignore[attr-defined]
    net_tls.create_client_proxy_context = create_client_proxy_context  # type: ignore[assignment]
    net_tls.create_proxy_server_context = create_proxy_server_context  # type: ignore[assignment]
