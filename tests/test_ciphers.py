"""The TLS 1.3 order of `tls.prefer_aes128` (s3proxy.ciphers): in-memory handshakes between pyOpenSSL
contexts built by mitmproxy's own functions, as its tlsconfig builds them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.addons import tlsconfig
from mitmproxy.net import tls as net_tls
from OpenSSL import SSL

from s3proxy import ciphers
from s3proxy.standin.certs import make_certs

AES128, AES256, CHACHA = "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    files = make_certs(tmp_path_factory.mktemp("certs"), ["vpce-1-a.s3.us-east-1.vpce.amazonaws.com"])
    return files.ca_cert, files.cert, files.key


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    ciphers.install()
    yield
    ciphers.ORDER.prefer_aes128 = True


def serving_context() -> SSL.Context:
    """The context mitmproxy's tlsconfig gets for a client's TLS (tls_start_client's arguments)."""
    return net_tls.create_client_proxy_context(
        method=net_tls.Method.TLS_SERVER_METHOD,
        min_version=net_tls.Version.TLS1_2,
        max_version=net_tls.Version.UNBOUNDED,
        cipher_list=tlsconfig._DEFAULT_CIPHERS,  # what tls_start_client passes unless ciphers_client is set
        ecdh_curve=None,
        chain_file=None,
        alpn_select_callback=None,
        request_client_cert=False,
        extra_chain_certs=(),
        dhparams=None,  # type: ignore[arg-type]
    )


def upstream_context(ca: Path) -> SSL.Context:
    """The context mitmproxy's tlsconfig gets for a connection to an endpoint (tls_start_server's)."""
    return net_tls.create_proxy_server_context(
        method=net_tls.Method.TLS_CLIENT_METHOD,
        min_version=net_tls.Version.TLS1_2,
        max_version=net_tls.Version.UNBOUNDED,
        cipher_list=None,
        ecdh_curve=None,
        verify=net_tls.Verify.VERIFY_PEER,
        ca_path=None,
        ca_pemfile=str(ca),
        client_cert=None,
        legacy_server_connect=False,
    )


def plain_context(method: int, suites: str | None, *, tls12: str | None = None) -> SSL.Context:
    """A context that lists TLS 1.3 `suites` (None: OpenSSL's order) or speaks only TLS 1.2 with `tls12`."""
    context = SSL.Context(method)
    if suites is not None:
        assert SSL._lib.SSL_CTX_set_ciphersuites(context._context, suites.encode())  # type: ignore[attr-defined]
    if tls12 is not None:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(tls12.encode())
    return context


def handshake(
    server_ctx: SSL.Context, client_ctx: SSL.Context, cert: Path, key: Path, version: str = "TLSv1.3"
) -> str:
    """The suite the two agree on (the certificate is the connection's, as tlsconfig sets it)."""
    server = SSL.Connection(server_ctx)
    server.use_certificate(x509.load_pem_x509_certificate(cert.read_bytes()))
    server.use_privatekey(serialization.load_pem_private_key(key.read_bytes(), None))  # type: ignore[arg-type]
    server.set_accept_state()
    client = SSL.Connection(client_ctx)
    client.set_tlsext_host_name(b"vpce-1-a.s3.us-east-1.vpce.amazonaws.com")
    client.set_connect_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    assert client.get_protocol_version_name() == version
    name = client.get_cipher_name()
    assert name == server.get_cipher_name()
    return str(name)


# The order clients send when nothing is configured: OpenSSL's (AES-256 first), as curl, Python, the AWS CLI.
CLIENT_DEFAULT = None


@pytest.mark.parametrize(
    ("prefer", "client_suites", "expected"),
    [
        (True, CLIENT_DEFAULT, AES128),
        (True, f"{AES256}:{AES128}", AES128),  # the proxy's order decides
        (True, AES256, AES256),  # a client that offers only AES-256 gets it
        (True, f"{CHACHA}:{AES256}:{AES128}", CHACHA),  # ChaCha20 first: no AES instructions there
        (False, CLIENT_DEFAULT, AES256),  # mitmproxy's context: OpenSSL's order
        (False, f"{CHACHA}:{AES256}:{AES128}", AES256),
    ],
)
def test_what_the_proxy_serves_to_clients(
    cert_files: tuple[Path, Path, Path], prefer: bool, client_suites: str | None, expected: str
) -> None:
    _, cert, key = cert_files
    ciphers.ORDER.prefer_aes128 = prefer
    server_ctx = serving_context()
    client = plain_context(SSL.TLS_CLIENT_METHOD, client_suites)
    assert handshake(server_ctx, client, cert, key) == expected


@pytest.mark.parametrize(("prefer", "expected"), [(True, AES128), (False, AES256)])
def test_what_the_proxy_offers_to_an_endpoint_that_follows_its_client(
    cert_files: tuple[Path, Path, Path], prefer: bool, expected: str
) -> None:
    # nginx (ssl_prefer_server_ciphers off, its default) and others pick the first suite the client lists.
    ca, cert, key = cert_files
    ciphers.ORDER.prefer_aes128 = prefer
    endpoint = plain_context(SSL.TLS_SERVER_METHOD, f"{AES128}:{AES256}:{CHACHA}")
    assert handshake(endpoint, upstream_context(ca), cert, key) == expected


# TLS 1.2: mitmproxy's list already starts with AES-128-GCM; only a client that lists ChaCha20 first changes.
ECDHE_CHACHA_FIRST = (
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:"
    + ("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
)


@pytest.mark.parametrize(
    ("prefer", "client_ciphers", "expected"),
    [
        (True, "DEFAULT", "AES128-GCM"),
        (True, ECDHE_CHACHA_FIRST, "CHACHA20-POLY1305"),
        (False, "DEFAULT", "AES128-GCM"),
        (False, ECDHE_CHACHA_FIRST, "AES128-GCM"),  # mitmproxy's own order
    ],
)
def test_tls12_clients(
    cert_files: tuple[Path, Path, Path], prefer: bool, client_ciphers: str, expected: str
) -> None:
    _, cert, key = cert_files
    ciphers.ORDER.prefer_aes128 = prefer
    client = plain_context(SSL.TLS_CLIENT_METHOD, None, tls12=client_ciphers)
    assert expected in handshake(serving_context(), client, cert, key, version="TLSv1.2")


def test_a_reload_that_turns_it_off_gets_other_contexts(cert_files: tuple[Path, Path, Path]) -> None:
    _, cert, key = cert_files
    first = serving_context()
    assert handshake(first, plain_context(SSL.TLS_CLIENT_METHOD, None), cert, key) == AES128
    assert serving_context() is first  # cached, as mitmproxy caches it
    ciphers.ORDER.prefer_aes128 = False
    other = serving_context()
    assert other is not first  # a used context is never changed: this one is mitmproxy's own
    assert handshake(other, plain_context(SSL.TLS_CLIENT_METHOD, None), cert, key) == AES256
    ciphers.ORDER.prefer_aes128 = True
    assert serving_context() is first


def test_install_is_once() -> None:
    wrapped = net_tls.create_client_proxy_context
    ciphers.install()
    assert net_tls.create_client_proxy_context is wrapped
