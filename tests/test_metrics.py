"""Metrics: what one access record moves, sources read at scrape time, exposition Prometheus parses."""

from __future__ import annotations

import datetime
from dataclasses import asdict
from typing import Any

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from s3proxy import __version__
from s3proxy.accesslog import AccessRecord
from s3proxy.metrics import LATENCY_BUCKETS, Metrics, certificate_expiry
from s3proxy.resolver import Stats
from s3proxy.upstream import UpstreamStats

NOW = datetime.datetime(2024, 7, 1, 12, 30, 45, tzinfo=datetime.UTC)


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, parsed back by prometheus_client's own parser."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, frozenset(labels.items())))


def rec(**kw: Any) -> AccessRecord:
    base: dict[str, Any] = {
        "time": NOW,
        "method": "GET",
        "host": "b.s3.us-east-1.amazonaws.com",
        "family": "virtual-hosted",
        "region": "us-east-1",
        "signing": "resigned",
        "status": 200,
        "upstream_status": 200,
        "bytes_in": 0,
        "bytes_out": 1000,
        "duration": 0.03,
    }
    return AccessRecord(**{**base, **kw})


@pytest.fixture
def m() -> Metrics:
    return Metrics(version=__version__, python_version="3.12.1", process=False)


def test_observe_moves_requests_bytes_latency(m: Metrics) -> None:
    m.observe(rec())
    m.observe(rec())
    m.observe(
        rec(method="PUT", bytes_in=5000, bytes_out=0, duration=7.0, region="eu-west-1", family="path-style")
    )
    labels = {"family": "virtual-hosted", "region": "us-east-1", "status": "200", "signing": "resigned"}
    assert value(m, "s3proxy_requests_total", **labels) == 2
    assert value(m, "s3proxy_response_bytes_total", family="virtual-hosted", region="us-east-1") == 2000
    assert value(m, "s3proxy_request_bytes_total", family="path-style", region="eu-west-1") == 5000
    assert value(m, "s3proxy_request_bytes_total", family="virtual-hosted", region="us-east-1") is None
    h = {"family": "path-style", "region": "eu-west-1"}
    assert value(m, "s3proxy_request_duration_seconds_count", **h) == 1
    assert value(m, "s3proxy_request_duration_seconds_sum", **h) == pytest.approx(7.0)
    assert value(m, "s3proxy_request_duration_seconds_bucket", **h, le="5.0") == 0
    assert value(m, "s3proxy_request_duration_seconds_bucket", **h, le="10.0") == 1
    assert max(LATENCY_BUCKETS) >= 300  # multi-GB transfers take minutes


def test_refusals_by_reason_and_unknown_labels(m: Metrics) -> None:
    m.observe(
        rec(action="reject", status=403, upstream_status=None, signing="refused", refusal="signing")
    )
    m.observe(
        rec(action="reject", status=400, family="fips", region=None, signing=None, refusal="unsupported-fips")
    )
    m.observe(rec(action="error", status=503, upstream_status=None, error_code="ServiceUnavailable"))
    m.refusal("non-s3-connect")
    assert value(m, "s3proxy_refusals_total", reason="signing") == 1
    assert value(m, "s3proxy_refusals_total", reason="unsupported-fips") == 1
    assert value(m, "s3proxy_refusals_total", reason="ServiceUnavailable") == 1  # no reason: the error code
    assert value(m, "s3proxy_refusals_total", reason="non-s3-connect") == 1
    labels = {"family": "fips", "region": "none", "status": "400", "signing": "none"}
    assert value(m, "s3proxy_requests_total", **labels) == 1


def test_upstream_5xx_counted(m: Metrics) -> None:
    m.observe(rec(status=503, upstream_status=503))
    m.observe(rec(status=200, upstream_status=200))
    assert value(m, "s3proxy_upstream_responses_error_total", region="us-east-1") == 1


def test_label_values_are_sanitised(m: Metrics) -> None:
    m.observe(rec(region='us-east-1"} 9\n', family="x" * 200, status=None))
    s = samples(m)  # still parses
    keys = [dict(k[1]) for k in s if k[0] == "s3proxy_requests_total"]
    assert keys == [{"family": "x" * 64, "region": "us-east-1___9_", "status": "none", "signing": "resigned"}]


def test_sources_read_at_scrape_time_and_survive_resets(m: Metrics) -> None:
    dns = Stats()
    up = UpstreamStats()
    holder = {"dns": dns}
    m.attach_dns(lambda: holder["dns"].as_dict())
    m.attach_upstream(lambda: asdict(up))
    assert value(m, "s3proxy_dns_lookups_total") == 0
    dns.lookups, dns.failures = 5, 2
    up.connect_failures, up.failovers = 3, 1
    assert value(m, "s3proxy_dns_lookups_total") == 5
    assert value(m, "s3proxy_dns_failures_total") == 2
    assert value(m, "s3proxy_upstream_connect_errors_total") == 3
    assert value(m, "s3proxy_failovers_total") == 1
    # A reload builds a new resolver: its Stats start at zero, the exported counter must not go down.
    holder["dns"] = Stats(lookups=1)
    assert value(m, "s3proxy_dns_lookups_total") == 6
    holder["dns"].lookups = 4
    assert value(m, "s3proxy_dns_lookups_total") == 9
    m.failover()
    m.upstream_connect_error()
    assert value(m, "s3proxy_failovers_total") == 2
    assert value(m, "s3proxy_upstream_connect_errors_total") == 4


def test_broken_source_does_not_break_the_scrape(m: Metrics) -> None:
    def boom() -> dict[str, int]:
        raise RuntimeError("resolver gone")

    m.attach_dns(boom)
    m.attach_upstream(lambda: None)
    m.failover()
    assert value(m, "s3proxy_dns_lookups_total") == 0
    assert value(m, "s3proxy_failovers_total") == 1


def test_proxy_auth_password_checks_are_read_from_the_addon(m: Metrics) -> None:
    counts = {"password_checks": 0}
    assert value(m, "s3proxy_proxy_auth_password_checks_total") == 0
    m.attach_access(lambda: counts)
    counts["password_checks"] = 3
    assert value(m, "s3proxy_proxy_auth_password_checks_total") == 3


def test_reload_ready_redirects_build_info(m: Metrics) -> None:
    assert value(m, "s3proxy_config_reload_total", result="failure") == 0  # present before the first event
    m.config_reload(True, 1_700_000_000.0)
    m.config_reload(False, 1_700_000_100.0)
    assert value(m, "s3proxy_config_reload_total", result="success") == 1
    assert value(m, "s3proxy_config_reload_total", result="failure") == 1
    assert value(m, "s3proxy_config_last_reload_successful") == 0
    assert value(m, "s3proxy_config_last_reload_success_timestamp_seconds") == 1_700_000_000.0
    m.set_ready(True)
    assert value(m, "s3proxy_ready") == 1
    m.redirect_learned()
    assert value(m, "s3proxy_redirects_learned_total") == 1
    assert value(m, "s3proxy_build_info", version=__version__, python="3.12.1") == 1


def test_ca_expiry_from_certificate(m: Metrics) -> None:
    ca = trustme.CA()
    pem = ca.cert_pem.bytes()
    expiry = certificate_expiry(pem)
    assert expiry.tzinfo is not None and expiry > datetime.datetime.now(datetime.UTC)
    m.set_ca_expiry(expiry)
    assert value(m, "s3proxy_ca_expiry_timestamp_seconds") == expiry.timestamp()


def test_registries_are_independent() -> None:
    a = Metrics(version="1", process=False)
    b = Metrics(version="1", process=True)  # building a second one must not raise "Duplicated timeseries"
    a.observe(rec())
    labels = {"family": "virtual-hosted", "region": "us-east-1", "status": "200", "signing": "resigned"}
    assert value(a, "s3proxy_requests_total", **labels) == 1
    assert value(b, "s3proxy_requests_total", **labels) is None
    assert any(name.startswith("process_") for name, _ in samples(b))
    assert b.content_type.startswith("text/plain")


def test_in_flight_gauge(m: Metrics) -> None:
    m.in_flight.inc()
    m.in_flight.inc()
    m.in_flight.dec()
    assert value(m, "s3proxy_requests_in_flight") == 1
