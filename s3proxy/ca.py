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


def ensure_ca(ca_dir: Path) -> Path:
    """Create the CA in `ca_dir` if there is none yet; return the certificate path."""
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert = ca_dir / CA_CERT
    if not (ca_dir / CA_KEY).exists():
        from mitmproxy import certs  # the proxy's own CA format; only needed to create one

        old = os.umask(0o077)
        try:
            certs.CertStore.from_store(str(ca_dir), "mitmproxy", 2048)
        finally:
            os.umask(old)
    return cert


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
    ]


def ca_command(config: Config, *, export: str | None, out: TextIO) -> int:
    problem = key_permission_problem(config.tls.ca_dir)
    if problem:
        print(f"s3proxy ca: {problem}", file=sys.stderr)
        return 2
    cert_path = ensure_ca(config.tls.ca_dir)
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
