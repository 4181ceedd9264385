"""The operations addon's pieces that need no running proxy: body byte counting composed with another
stream, and the config-file watcher (Kubernetes ConfigMap symlink swaps, touch without change)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from addons.s3proxy_ops import ByteCounter, Operations, file_fingerprint


def test_byte_counter_passes_through_and_counts() -> None:
    c = ByteCounter()
    assert [c(b"abc"), c(b""), c(b"de")] == [b"abc", b"", b"de"]
    assert c.count == 5


def test_byte_counter_composes_with_the_stream_already_set() -> None:
    seen: list[bytes] = []

    def inner(data: bytes) -> bytes:  # e.g. the aws-chunked re-signer: output differs from input
        seen.append(data)
        return data.upper() + b"!"

    c = ByteCounter(inner)
    assert c(b"ab") == b"AB!" and c(b"") == b"!"
    assert seen == [b"ab", b""] and c.count == 2  # what the client sent, not what went upstream


def _configmap(root: Path, version: str, text: str) -> None:
    """Kubernetes' layout: config.yaml -> ..data/config.yaml, ..data -> ..<version> (swapped atomically)."""
    (root / version).mkdir()
    (root / version / "config.yaml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(version)
    os.replace(tmp, root / "..data")
    if not (root / "config.yaml").is_symlink():
        (root / "config.yaml").symlink_to("..data/config.yaml")


def test_watcher_follows_symlink_swaps_and_ignores_touches(tmp_path: Path) -> None:
    asyncio.run(_watch(tmp_path))


async def _watch(tmp_path: Path) -> None:
    _configmap(tmp_path, "..v1", "endpoints: {}\n")
    path = tmp_path / "config.yaml"
    ops = Operations(proxy=None, poll_seconds=0.01)
    calls: list[str] = []

    def reload(reason: str) -> bool:  # what Operations.reload does to the watcher's state
        calls.append(reason)
        ops._file_stat, ops._file_hash = file_fingerprint(path)
        return True

    ops.reload = reload  # type: ignore[method-assign]
    ops._file_stat, ops._file_hash = file_fingerprint(path)
    task = asyncio.create_task(ops._watch_file(path))
    try:
        os.utime(tmp_path / "..v1" / "config.yaml")  # same content, new mtime: no reload
        await asyncio.sleep(0.1)
        assert calls == []
        _configmap(tmp_path, "..v2", "endpoints: {us-east-1: x}\n")
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert calls == ["config file changed"]  # once, not on every poll after
    finally:
        task.cancel()
