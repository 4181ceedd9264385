"""Micro-benchmark: verify + re-sign throughput of `s3proxy.signing.resign`.

    .venv/bin/python bench/bench_signing.py [--seconds 2]

Prints signatures per second for a typical GetObject (header auth, keyring: one verification and one
signature) and for a presigned GET URL, plus proxy-identity header auth (one signature, no verification).
Inputs are signed with the project's own SigV4 functions, so the script needs nothing but s3proxy.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s3proxy import sigv4
from s3proxy.model import Request
from s3proxy.signing import Credentials, Keyring, ProxyIdentity, Target, resign

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AMZ_DATE = "20240701T123045Z"
SCOPE = sigv4.credential_scope(AMZ_DATE[:8], "us-east-1", "s3")
KEY = sigv4.signing_key(SECRET, AMZ_DATE[:8], "us-east-1", "s3")
VPCE = "bucket.vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
NOW = datetime.datetime(2024, 7, 1, 12, 30, 45, tzinfo=datetime.UTC)


def get_object() -> tuple[Request, Target]:
    path = "/photos/2024/07/holiday%20snap%2B1.jpg"
    headers: tuple[tuple[str, str], ...] = (
        ("Host", "my-bucket.s3.amazonaws.com"),
        ("User-Agent", "Boto3/1.35 md/Botocore#1.35 ua/2.0 os/linux lang/python#3.12"),
        ("Accept-Encoding", "identity"),
        ("Range", "bytes=0-1048575"),
        ("X-Amz-Date", AMZ_DATE),
        ("X-Amz-Content-SHA256", sigv4.EMPTY_SHA256),
    )
    signed = ("host", "range", "x-amz-content-sha256", "x-amz-date")
    canonical = sigv4.canonical_request(
        "GET",
        path,
        sigv4.canonical_query(""),
        sigv4.canonical_headers(headers, signed),
        ";".join(signed),
        sigv4.EMPTY_SHA256,
    )
    sig = sigv4.sign(canonical, AMZ_DATE, SCOPE, KEY)
    headers += (("Authorization", sigv4.authorization_value(AKID, SCOPE, ";".join(signed), sig)),)
    req = Request("GET", "https", "my-bucket.s3.amazonaws.com", None, path, "", headers)
    return req, Target(VPCE, "/my-bucket" + path, "", False, "us-east-1")


def presigned_get() -> tuple[Request, Target]:
    path = "/reports/q2%20summary.pdf"
    query = (
        "response-content-disposition=attachment%3B%20filename%3Dq2.pdf&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={AKID}%2F{SCOPE.replace('/', '%2F')}&X-Amz-Date={AMZ_DATE}&X-Amz-Expires=3600"
        "&X-Amz-SignedHeaders=host"
    )
    headers = (("Host", "my-bucket.s3.amazonaws.com"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*"))
    canonical = sigv4.canonical_request(
        "GET",
        path,
        sigv4.canonical_query(query),
        sigv4.canonical_headers(headers, ("host",)),
        "host",
        sigv4.UNSIGNED_PAYLOAD,
    )
    query += "&X-Amz-Signature=" + sigv4.sign(canonical, AMZ_DATE, SCOPE, KEY)
    req = Request("GET", "https", "my-bucket.s3.amazonaws.com", None, path, query, headers, True)
    return req, Target(VPCE, "/my-bucket" + path, query, True, "us-east-1")


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per case (default 2)")
    args = parser.parse_args()
    keyring = Keyring([Credentials(AKID, SECRET)])
    identity = ProxyIdentity(lambda: Credentials("AKIAPROXY", "proxy-secret", "token"))
    cases = {
        "GetObject header auth, keyring (verify + sign)": (get_object(), keyring),
        "presigned GET URL, keyring (verify + sign)": (presigned_get(), keyring),
        "GetObject header auth, proxy-identity (sign)": (get_object(), identity),
    }
    for name, ((req, target), signer) in cases.items():
        outcome = resign(req, target, signer, NOW)
        assert outcome.action == "resigned", outcome.note
        per_second = rate(
            lambda req=req, target=target, signer=signer: resign(req, target, signer, NOW), args.seconds
        )
        print(f"{name:50s} {per_second:10,.0f} requests/s  ({1e6 / per_second:6.1f} µs each)")


if __name__ == "__main__":
    main()
