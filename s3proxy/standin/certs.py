"""A throwaway CA and one server certificate for S3 interface endpoint names (trustme)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from s3proxy.standin import require


@dataclass(frozen=True, slots=True)
class CertFiles:
    ca_cert: Path  # the throwaway CA: what the proxy's tls.upstream_ca_bundle trusts
    cert: Path  # server leaf (chain) for every endpoint name
    key: Path


def endpoint_sans(domain: str) -> list[str]:
    """Names S3 answers under an endpoint domain: the domain, `*.D` (bucket., accesspoint., control.), and
    one wildcard level below each of those (virtual-hosted buckets, access point and account hosts)."""
    return [domain, f"*.{domain}", f"*.bucket.{domain}", f"*.accesspoint.{domain}", f"*.control.{domain}"]


def make_certs(
    directory: Path, domains: Iterable[str], organization: str = "s3proxy tests upstream CA"
) -> CertFiles:
    trustme = require("trustme")
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name=organization)
    sans = [n for d in domains for n in endpoint_sans(d)]
    # No IP SAN on purpose: the proxy must verify the certificate against the vpce name, not the address.
    leaf = ca.issue_cert(*sans)
    files = CertFiles(
        directory / "upstream-ca.pem", directory / "upstream-cert.pem", directory / "upstream-key.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca_cert))
    with files.cert.open("wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


__all__ = ["CertFiles", "endpoint_sans", "make_certs"]
