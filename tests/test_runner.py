"""s3proxy.runner's access-line writer: the bytes the `s3proxy.access` handler would write, without it."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from addons.s3proxy_ops import Operations
from s3proxy.runner import configure_access_log, whole_lines

ACCESS = logging.getLogger("s3proxy.access")


@pytest.fixture(autouse=True)
def access_logger_restored() -> Iterator[None]:
    saved = (ACCESS.handlers[:], ACCESS.level, ACCESS.propagate)
    yield
    ACCESS.handlers, ACCESS.level, ACCESS.propagate = saved[0], saved[1], saved[2]


def test_access_lines_are_what_the_logger_writes() -> None:
    stream = io.StringIO()
    write = configure_access_log(stream)
    ACCESS.info("%s", '{"op":"GetObject","key":"a%b"}')
    write('{"op":"GetObject","key":"a%b"}')
    first, second = stream.getvalue().splitlines(keepends=True)
    assert first == second == '{"op":"GetObject","key":"a%b"}\n'


def test_a_closed_stream_never_fails_a_request() -> None:
    stream = io.StringIO()
    write = configure_access_log(stream)
    stream.close()
    write("line")  # no exception: the request it describes was already served


def test_without_the_runner_access_lines_go_through_the_logger() -> None:
    stream = io.StringIO()
    configure_access_log(stream)
    Operations().write_access("one line")
    assert stream.getvalue() == "one line\n"


class Writes(io.RawIOBase):
    """A raw stream that records each write(2) it would have made."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.calls.append(bytes(b))
        return len(b)


def test_each_log_line_is_one_write_under_pythonunbuffered() -> None:
    """What PYTHONUNBUFFERED makes of stdout (write-through text over an unbuffered file): print() writes the
    text and its newline separately, so workers sharing stdout can merge lines; whole_lines stops that."""
    raw = Writes()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[arg-type]
    print("[12:00:00.000] worker 0: keyring is empty", file=stream)
    assert raw.calls == [b"[12:00:00.000] worker 0: keyring is empty", b"\n"]  # the problem
    raw.calls.clear()
    whole_lines(stream, object())  # an object without reconfigure is left alone
    print("[12:00:00.000] worker 1: keyring is empty", file=stream)
    print("second line", file=stream)
    assert raw.calls == [b"[12:00:00.000] worker 1: keyring is empty\n", b"second line\n"]


def test_the_addon_patches_are_in_place_before_the_listeners_start() -> None:
    """mitmproxy's Master.run brings up the listeners before it runs the `running` hooks (pinned in
    tests/test_tuning.py), so S3Proxy installs at `load`: a connection accepted at once already has the
    endpoint name lookups, the header limit, reuse and the cipher order."""
    from mitmproxy import options
    from mitmproxy.net import tls as net_tls
    from mitmproxy.proxy.layers import http as http_layers
    from mitmproxy.proxy.layers.http import _http1

    from addons.s3proxy_addon import S3Proxy
    from s3proxy.runner import lean_master

    async def main() -> None:
        master = lean_master(options.Options())
        master.addons.add(S3Proxy())  # load, as `s3proxy run` and mitmdump -s do; no `running` yet
        assert getattr(asyncio.get_running_loop().getaddrinfo, "_s3proxy", False)  # this loop's own
        for patched in (
            http_layers.HttpLayer.get_connection,
            _http1.Http1Server.read_headers,
            net_tls.create_client_proxy_context,
        ):
            assert getattr(patched, "_s3proxy", False), patched

    asyncio.run(main())


def test_a_multi_line_log_record_is_one_write() -> None:
    """mitmproxy's terminal log printed a record's text and its newline separately: with a traceback (or
    8 KiB of text) the text went out at once and the newline on its own, where another worker's line
    could land. whole_log_records makes it one write per record."""
    from mitmproxy.addons import termlog

    from s3proxy.runner import whole_log_records

    raw = Writes()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[arg-type]
    whole_lines(stream)
    handler = termlog.TermLogHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("s3proxy", logging.ERROR, __file__, 1, "boom\nTraceback: x", None, None)
    saved = termlog.TermLogHandler.emit
    try:
        handler.emit(record)
        assert raw.calls == [b"boom\nTraceback: x", b"\n"]  # mitmproxy's print(): the problem
        raw.calls.clear()
        whole_log_records()
        handler.emit(record)
        handler.emit(logging.LogRecord("s3proxy", logging.INFO, __file__, 1, "y" * 9000, None, None))
    finally:
        termlog.TermLogHandler.emit = saved  # type: ignore[method-assign]
    assert raw.calls == [b"boom\nTraceback: x\n", b"y" * 9000 + b"\n"]


def test_a_reloaded_addon_instance_answers_the_name_lookups() -> None:
    """mitmdump -s loads a new S3Proxy when the script file changes; the process-wide patches, installed
    once, must ask the new instance (its endpoints and limits), not the first one."""
    from mitmproxy import options

    from addons import s3proxy_addon
    from s3proxy.runner import lean_master

    class Pool:
        def __init__(self, address: str) -> None:
            self.address = address

        async def addresses(self, host: str, port: int) -> list[Any]:
            return [(2, 1, 6, "", (self.address, port))]

    async def main() -> None:
        master = lean_master(options.Options())
        first, second = s3proxy_addon.S3Proxy(), s3proxy_addon.S3Proxy()
        first.upstreams_for = lambda host: Pool("10.0.0.1")  # type: ignore[method-assign,assignment,return-value]
        master.addons.add(first)
        master.addons.remove(first)
        second.upstreams_for = lambda host: Pool("10.0.0.2")  # type: ignore[method-assign,assignment,return-value]
        master.addons.add(second)
        infos = await asyncio.get_running_loop().getaddrinfo(
            "bucket.vpce-1-a.s3.us-east-1.vpce.amazonaws.com", 443
        )
        assert infos[0][4] == ("10.0.0.2", 443)
        assert s3proxy_addon._max_header_bytes() == 64 * 1024  # the second one has no config yet

    asyncio.run(main())
