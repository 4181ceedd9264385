"""`s3proxy ca`: where the proxy's CA certificate is, what it is, and an export for trust stores.

The CA lives in `tls.ca_dir` in mitmproxy's layout: `mitmproxy-ca.pem` (private key + certificate, mode 0600)
and `mitmproxy-ca-cert.pem` (certificate only: the file clients trust). On first use it is generated; an
operator who wants an enterprise-issued CA puts its key and certificate into `mitmproxy-ca.pem` instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from s3proxy.config import Config

CA_CERT = "mitmproxy-ca-cert.pem"
CA_KEY = "mitmproxy-ca.pem"


def ensure_ca(ca_dir: Path, key_type: str = "rsa") -> Path:
    """Create the CA in `ca_dir` if there is none yet (`key_type`: "rsa" 2048 bits, or "ecdsa" P-256);
    return the certificate path. An existing CA is never replaced, whatever its key."""
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert = ca_dir / CA_CERT
    if not (ca_dir / CA_KEY).exists():
        from mitmproxy import certs  # the proxy's own CA format; only needed to create one

        old = os.umask(0o077)
        try:
            if key_type == "ecdsa":
                _create_ecdsa_ca(ca_dir)
            else:
                certs.CertStore.from_store(str(ca_dir), "mitmproxy", 2048)
        finally:
            os.umask(old)
    return cert


def _create_ecdsa_ca(ca_dir: Path) -> None:
    """A CA with a P-256 key in mitmproxy's layout and naming. mitmproxy signs each certificate it shows
    clients with the CA's key, so every client handshake signs with ECDSA instead of RSA-2048."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "mitmproxy"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mitmproxy"),
        ]
    )
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(now + timedelta(days=10 * 365))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    # Each file appears whole (written aside, then renamed), the key file last: its presence is what says
    # a CA exists, so an interrupted creation is simply done again.
    for filename, data in (
        (CA_CERT, pem_cert),
        ("mitmproxy-ca-cert.cer", pem_cert),  # the name Android wants
        (CA_KEY, key_pem + pem_cert),
    ):
        tmp = ca_dir / f".{filename}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, ca_dir / filename)


def key_description(cert_path: Path) -> str:
    """The key of the CA certificate at `cert_path`: "RSA 2048", "ECDSA secp256r1", ..."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    public = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA {public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"ECDSA {public.curve.name}"
    return type(public).__name__


def key_permission_problem(ca_dir: Path) -> str | None:
    key = ca_dir / CA_KEY
    try:
        mode = key.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{key} is readable by group/others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {key}"
    return None


def describe(cert_path: Path) -> list[str]:
    pem = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    return [
        f"certificate: {cert_path}",
        f"subject:     {cert.subject.rfc4514_string()}",
        f"expires:     {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"sha256:      {hashlib.sha256(der).hexdigest()}",
        f"key:         {key_description(cert_path)}",
    ]


def ca_command(config: Config, *, export: str | None, out: TextIO) -> int:
    problem = key_permission_problem(config.tls.ca_dir)
    if problem:
        print(f"s3proxy ca: {problem}", file=sys.stderr)
        return 2
    cert_path = ensure_ca(config.tls.ca_dir, config.tls.ca_key)
    if export:
        pem = cert_path.read_text()
        if export == "-":
            out.write(pem)
        else:
            Path(export).write_text(pem)
            print(f"wrote {export}", file=sys.stderr)
        return 0
    for line in describe(cert_path):
        print(line, file=out)
    print(
        "\nTrust it in clients, e.g.  export AWS_CA_BUNDLE="
        + str(cert_path)
        + "  (see README: 'Trusting the CA')",
        file=out,
    )
    return 0
