"""s3proxy.workers: the port check before forking and the merged metrics of several workers.

The supervision itself (fork, restart, signals) is driven end to end in tests/e2e/test_workers.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from s3proxy import workers
from s3proxy.config import ConfigError, parse_config

ENDPOINTS = {"us-east-1": "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("auto", None), (1, 1), (4, 4), (256, 256)],
)
def test_workers_option(value, expected):
    doc = {"endpoints": ENDPOINTS} if value is None else {"endpoints": ENDPOINTS, "workers": value}
    assert parse_config(doc, base_dir=Path("/"), environ={}).workers == expected


@pytest.mark.parametrize("value", [0, -1, 257, 1.5, "many", True])
def test_bad_workers_option_names_the_key(value):
    with pytest.raises(ConfigError, match=r"^workers: "):
        parse_config({"endpoints": ENDPOINTS, "workers": value}, base_dir=Path("/"), environ={})


def exposition(requests: float, region: str = "us-east-1") -> bytes:
    registry = CollectorRegistry()
    c = Counter("s3proxy_requests", "Requests.", ["region"], registry=registry)
    c.labels(region).inc(requests)
    return generate_latest(registry)


def test_merged_metrics_label_every_sample_with_its_worker():
    merged = workers.merge_metrics({1: exposition(5), 0: exposition(3)}).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    samples = [s for s in families["s3proxy_requests"].samples if s.name == "s3proxy_requests_total"]
    assert {(s.labels["worker"], s.labels["region"], s.value) for s in samples} == {
        ("0", "us-east-1", 3.0),
        ("1", "us-east-1", 5.0),
    }
    # One family, one TYPE line: Prometheus rejects a family split across the exposition.
    assert merged.count("# TYPE s3proxy_requests_total counter") == 1


def test_published_metrics_are_read_back_and_missing_workers_left_out(tmp_path):
    published = exposition(7)
    workers.write_metrics(tmp_path, 1, published)
    texts = workers.read_metrics(tmp_path, 0, exposition(1), count=3)
    assert sorted(texts) == [0, 1]
    assert texts[1] == published
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically (rename)


@pytest.mark.skipif(not workers.supported(), reason="needs fork and SO_REUSEPORT")
def test_port_problem_sees_a_listener_even_one_that_shares_its_port():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert workers.port_problem("127.0.0.1", port) is not None
    assert workers.port_problem("127.0.0.1", port) is None
