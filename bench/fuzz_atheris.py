"""Coverage-guided fuzzing (atheris) of the same targets as tests/test_fuzz.py: `python bench/fuzz_atheris.py
TARGET [libFuzzer flags]`, TARGET one of hosts, auth, presigned, chunked, config. Any exception other than
the project's own (S3Error, ConfigError) is a finding; libFuzzer writes the crashing input to a file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    import yaml

    from s3proxy import guard, hosts, sigv4
    from s3proxy.chunked import ChunkResigner, ChunkSeed
    from s3proxy.config import ConfigError, parse_config
    from s3proxy.errors import S3Error

SEED = ChunkSeed(
    "20260101T000000Z",
    "20260101/us-east-1/s3/aws4_request",
    "20260101/us-east-1/s3/aws4_request",
    b"k" * 32,
    b"k" * 32,
    "a" * 64,
    "a" * 64,
    trailer=True,
)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def hosts_target(data: bytes) -> None:
    text = _text(data)
    hosts.classify(text, "/" + text)
    guard.check_authority(text, text, text)
    guard.destination_refusal(text, 443, own_ports=(3128,))


def auth_target(data: bytes) -> None:
    try:
        sigv4.parse_authorization(_text(data))
    except S3Error:
        pass


def presigned_target(data: bytes) -> None:
    try:
        sigv4.parse_presigned(_text(data))
    except S3Error:
        pass


def chunked_target(data: bytes) -> None:
    r = ChunkResigner(SEED, max_chunk_size=4096, max_trailer_size=256)
    try:
        r.feed(data[: len(data) // 2])
        r.feed(data[len(data) // 2 :])
        r.finish()
    except S3Error:
        pass


def config_target(data: bytes) -> None:
    try:
        doc = yaml.safe_load(_text(data))
    except yaml.YAMLError:
        return
    try:
        parse_config(doc, base_dir=Path("/nonexistent"), environ={})
    except ConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "hosts": hosts_target,
    "auth": auth_target,
    "presigned": presigned_target,
    "chunked": chunked_target,
    "config": config_target,
}

if __name__ == "__main__":
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
