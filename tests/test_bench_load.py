"""bench/run.py's concurrent load client, against a small keep-alive HTTPS server on loopback: it counts
what it measures (every complete 200 is one request, anything else an error), reconnects after a dropped
connection, and every load process measures the same window, from the parent's go."""

from __future__ import annotations

import http.server
import importlib.util
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from s3proxy.standin.certs import make_certs

REPO = Path(__file__).resolve().parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


class _Upstream(http.server.ThreadingHTTPServer):
    daemon_threads = True
    served = 0
    fail_from = -1  # from this request on, every one is answered 503 (-1: never)
    drop_every = 0  # close the connection after every Nth request without answering (0: never)

    def handle_error(self, *_args: Any) -> None:
        pass  # a client gone at the end of the window


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the head and the body are two writes
    server: _Upstream

    def do_GET(self) -> None:
        srv = self.server
        srv.served += 1
        n = srv.served
        if srv.drop_every and n % srv.drop_every == 0:
            self.close_connection = True
            return
        status = 503 if 0 <= srv.fail_from <= n else 200
        body = b"x" * 1024
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[_Upstream, Any]]:
    bench = _bench()
    certs = make_certs(tmp_path / "certs", [bench.VPCE])
    srv = _Upstream(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert, certs.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = bench.Env(tmp_path, srv.server_address[1], certs.ca_cert, certs.ca_cert)
    try:
        yield srv, (bench, env)
    finally:
        srv.shutdown()
        srv.server_close()


def test_counts_every_complete_response(upstream: tuple[_Upstream, Any]) -> None:
    srv, (bench, env) = upstream
    out = bench.concurrent_gets(env, "direct", 6, 0.5, procs=2)
    assert out["errors"] == 0
    assert out["requests"] > 0
    # The window's requests, the 6 set-up GETs and at most one unfinished request per connection.
    assert out["requests"] + 6 <= srv.served <= out["requests"] + 6 + 6
    assert out["req_s"] == out["requests"] / 0.5
    assert out["p50_ms"] is not None and out["p50_ms"] <= out["p99_ms"]
    assert out["all_connected_s"] > 0


def test_non_200_answers_are_errors(upstream: tuple[_Upstream, Any]) -> None:
    srv, (bench, env) = upstream
    srv.fail_from = 5  # the 4 set-up GETs succeed, then every answer is a 503
    out = bench.concurrent_gets(env, "direct", 4, 0.3, procs=1)
    assert out["requests"] == 0
    assert out["errors"] > 0


def test_a_dropped_connection_is_an_error_and_replaced(upstream: tuple[_Upstream, Any]) -> None:
    srv, (bench, env) = upstream
    srv.drop_every = 25
    out = bench.concurrent_gets(env, "direct", 4, 0.5, procs=1)
    assert out["errors"] > 0
    # Load went on over new connections after the drops, far beyond what 4 connections give before one.
    assert out["requests"] > 4 * 25


def test_a_failed_connection_is_an_error(upstream: tuple[_Upstream, Any]) -> None:
    srv, (bench, env) = upstream
    srv.fail_from = 1  # even the set-up GET is refused
    out = bench.concurrent_gets(env, "direct", 3, 0.2, procs=1)
    assert out["requests"] == 0
    assert out["errors"] >= 3
