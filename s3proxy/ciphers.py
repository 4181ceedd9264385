"""TLS 1.3 cipher suite order (`tls.prefer_aes128`).

mitmproxy's TLS 1.2 cipher list already puts AES-128-GCM first (Mozilla's intermediate list), and its
contexts pick by the proxy's own order (OP_CIPHER_SERVER_PREFERENCE); for TLS 1.3, which every current
client speaks, it leaves OpenSSL's default order, AES-256-GCM first. So every byte the proxy relays is
decrypted and encrypted again with AES-256, which costs 9% more than AES-128 here (`openssl speed`,
AES-NI) and 2-3% of the proxy's CPU per GiB on each side (measured: bench/README.md). Both are
FIPS-approved AEADs of TLS 1.3; TLS_AES_128_GCM_SHA256 is the one every TLS 1.3 implementation must have.

With `prefer_aes128` (the default), the order is Mozilla's: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
TLS_CHACHA20_POLY1305_SHA256, for the TLS the proxy serves to clients and what it offers to endpoints (which
choose by their own order). A client that offers only AES-256 still gets it. Off: OpenSSL's default order,
as mitmproxy has it. Either way, a client that lists ChaCha20 first (hardware without AES instructions) gets
ChaCha20 from the proxy (OpenSSL's SSL_OP_PRIORITIZE_CHACHA), where mitmproxy would give it AES-256.
"""

from __future__ import annotations

import functools
from typing import Any

from OpenSSL import SSL

AES128_FIRST = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
OPENSSL_ORDER = b"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
# SSL_OP_PRIORITIZE_CHACHA (OpenSSL 1.1.1+, bit 21; pyOpenSSL does not name it): with the server's order in
# force, a client that lists ChaCha20 first gets it. tests/test_ciphers.py checks what it does.
OP_PRIORITIZE_CHACHA = 1 << 21


class _Order:
    prefer_aes128 = True


ORDER = _Order()


def configure(context: SSL.Context, *, prefer_aes128: bool, serving: bool) -> None:
    """Set the TLS 1.3 order on a context no connection has used yet. `serving`: the context of the TLS
    the proxy serves to its clients."""
    suites = AES128_FIRST if prefer_aes128 else OPENSSL_ORDER
    if not SSL._lib.SSL_CTX_set_ciphersuites(context._context, suites):  # type: ignore[attr-defined]
        raise RuntimeError(f"OpenSSL refused the TLS 1.3 cipher suites {suites.decode()}")
    if serving:
        context.set_options(OP_PRIORITIZE_CHACHA)


def install() -> None:
    """Have every TLS context mitmproxy's tlsconfig asks for (per process, once) carry the order in force.
    mitmproxy caches its contexts by their arguments (a context must not change once a connection used
    it); these are cached by the preference too, so a reload that changes it gets new contexts."""
    from mitmproxy.net import tls as net_tls

    if getattr(net_tls.create_client_proxy_context, "_s3proxy", False):
        return
    build_serving = net_tls.create_client_proxy_context.__wrapped__  # mitmproxy's, without its lru_cache
    build_upstream = net_tls.create_proxy_server_context.__wrapped__

    @functools.lru_cache(256)
    def serving(prefer_aes128: bool, **kwargs: Any) -> SSL.Context:
        context: SSL.Context = build_serving(**kwargs)
        configure(context, prefer_aes128=prefer_aes128, serving=True)
        return context

    @functools.lru_cache(256)
    def upstream(prefer_aes128: bool, **kwargs: Any) -> SSL.Context:
        context: SSL.Context = build_upstream(**kwargs)
        configure(context, prefer_aes128=prefer_aes128, serving=False)
        return context

    def create_client_proxy_context(**kwargs: Any) -> SSL.Context:
        return serving(ORDER.prefer_aes128, **kwargs)

    def create_proxy_server_context(**kwargs: Any) -> SSL.Context:
        return upstream(ORDER.prefer_aes128, **kwargs)

    create_client_proxy_context._s3proxy = True  # type: ignore[attr-defined]
    # As lru_cache's: mitmproxy's own function (tests/test_tuning.py pins it).
    create_client_proxy_context.__wrapped__ = build_serving  # type: ignore[attr-defined]
    create_proxy_server_context.__wrapped__ = build_upstream  # type: ignore[attr-defined]
    net_tls.create_client_proxy_context = create_client_proxy_context  # type: ignore[assignment]
    net_tls.create_proxy_server_context = create_proxy_server_context  # type: ignore[assignment]
