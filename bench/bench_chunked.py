"""Micro-benchmark: aws-chunked re-signing throughput (MB/s) of s3proxy.chunked.ChunkResigner.

Feeds a synthetic signed stream (256 MiB of object data by default) in 64 KiB pieces, as the proxy receives
it, and re-signs it for another key/region, for 64 KiB and 1 MiB chunks. For scale it also prints plain
SHA-256 over the same bytes: verifying needs one SHA-256 pass over the data, so that is the ceiling.

    .venv/bin/python bench/bench_chunked.py [--mib 256] [--piece-kib 64]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import time

from s3proxy.chunked import ChunkResigner, ChunkSeed, encode_signed_chunks

AMZ_DATE = "20130524T000000Z"


def signing_key(secret: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in ("20130524", region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def pieces_of(body: bytes, size: int) -> list[memoryview]:
    view = memoryview(body)
    return [view[i : i + size] for i in range(0, len(body), size)]


def bench(total: int, chunk_size: int, piece_size: int) -> None:
    old_key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1")
    new_key = signing_key("anotherSecretKeyForTheBenchmark/EXAMPLE0", "eu-west-1")
    old_seed, new_seed = "4f" * 32, "ab" * 32
    data = bytes(range(256)) * (chunk_size // 256)
    body = b"".join(
        encode_signed_chunks(
            [data] * (total // chunk_size),
            signing_key=old_key,
            amz_date=AMZ_DATE,
            scope="20130524/us-east-1/s3/aws4_request",
            seed_signature=old_seed,
        )
    )
    # bytes pieces, as mitmproxy hands them over (feed() copies any other buffer type first).
    pieces = [bytes(p) for p in pieces_of(body, piece_size)]
    seed = ChunkSeed(
        amz_date=AMZ_DATE,
        old_scope="20130524/us-east-1/s3/aws4_request",
        new_scope="20130524/eu-west-1/s3/aws4_request",
        old_signing_key=old_key,
        new_signing_key=new_key,
        old_seed_signature=old_seed,
        new_seed_signature=new_seed,
        trailer=False,
        decoded_length=total,
    )
    best = float("inf")
    for _ in range(3):
        resigner = ChunkResigner(seed, max_chunk_size=max(chunk_size, 1 << 20))
        out = 0
        lag = 0
        start = time.perf_counter()
        fed = 0
        for piece in pieces:
            fed += len(piece)
            out += len(resigner.feed(piece))
            lag = max(lag, fed - out)
        out += len(resigner.finish())
        best = min(best, time.perf_counter() - start)
        assert out == len(body)
    start = time.perf_counter()
    for piece in pieces:
        hashlib.sha256(piece).digest()
    sha = time.perf_counter() - start
    mib = len(body) / (1 << 20)
    print(
        f"chunk {chunk_size >> 10:5d} KiB, pieces {piece_size >> 10} KiB: re-sign {mib / best:7.0f} MiB/s "
        f"({total // chunk_size} chunks, {mib:.0f} MiB in {best:.2f} s; max buffered {lag >> 10} KiB); "
        f"plain sha256 {mib / sha:.0f} MiB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=256, help="object size in MiB (default 256)")
    parser.add_argument("--piece-kib", type=int, default=64, help="size of the pieces fed (default 64 KiB)")
    args = parser.parse_args()
    for chunk_size in (64 << 10, 1 << 20):
        bench(args.mib << 20, chunk_size, args.piece_kib << 10)


if __name__ == "__main__":
    main()
