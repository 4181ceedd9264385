"""Prometheus metrics for the admin listener's `/metrics`, with `prometheus_client`.

# Strategy: one `Metrics` object owns its own `CollectorRegistry` (never the global one), so a reload, a test
# or two proxies in one process never collide. Per-request metrics move in `observe(record)` from the access
# record, so the log and the metrics can't disagree. Counters that live elsewhere (the resolver's and the
# upstream pool's `Stats` dataclasses) are read at scrape time through callables by a custom collector;
# reloading may replace those objects and restart their counts at zero, so each value is kept monotonic
# across such resets (Prometheus counters must never go down within one process).
#
# Label values are bounded: family, region, status, signing and refusal reasons come from the proxy's own
# vocabulary, never from free client text (a region is only ever one the host or config named).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from s3proxy.accesslog import AccessRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST
StatsSource = Callable[[], Mapping[str, int] | None]

# S3 transfers range from milliseconds (HEAD) to minutes (multi-GB GET): the default buckets stop at 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")

# (source, stats field, metric name without _total, help). Sources: resolver.Stats, upstream.UpstreamStats,
# the addon's proxy-auth counters.
_SOURCE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("dns", "lookups", "s3proxy_dns_lookups", "DNS lookups of endpoint names sent to the nameservers."),
    ("dns", "failures", "s3proxy_dns_failures", "DNS lookups of endpoint names that failed."),
    ("dns", "cache_hits", "s3proxy_dns_cache_hits", "Endpoint name lookups answered from the cache."),
    ("dns", "coalesced", "s3proxy_dns_coalesced", "Lookups that joined one already in flight."),
    ("dns", "nameserver_errors", "s3proxy_dns_nameserver_errors", "Nameserver errors and timeouts."),
    ("dns", "stale_served", "s3proxy_dns_stale_served", "Expired answers served while DNS failed."),
    ("upstream", "connect_failures", "s3proxy_upstream_connect_errors", "Failed connections to endpoints."),
    ("upstream", "failovers", "s3proxy_failovers", "Times a request moved to another endpoint address."),
    ("upstream", "probes", "s3proxy_upstream_probes", "TCP+TLS probes of endpoint addresses."),
    ("upstream", "probe_failures", "s3proxy_upstream_probe_failures", "Endpoint address probes that failed."),
    (
        "upstream",
        "reused",
        "s3proxy_upstream_connections_reused",
        "Idle endpoint connections of ended client connections taken by new ones instead of a new "
        "connection (upstream.reuse_idle).",
    ),
    (
        "access",
        "password_checks",
        "s3proxy_proxy_auth_password_checks",
        "Proxy-Authorization headers checked against access.users' password hashes (costly by design); "
        "a credential that passed is remembered and not checked again.",
    ),
)


@functools.lru_cache(maxsize=1024, typed=True)  # few values (see the note above), repeated per request
def _label(value: object) -> str:
    if value is None or value == "":
        return "none"
    return _LABEL_SAFE.sub("_", str(value))[:64]


class _Monotonic:
    """A counter fed by a value that may restart at zero (a replaced Stats object): each drop is taken as a
    reset and the value before it is carried, so the exported total never goes down."""

    __slots__ = ("_base", "_last", "local")

    def __init__(self) -> None:
        self._base = 0
        self._last = 0
        self.local = 0  # increments made directly on Metrics (e.g. by the addon)

    def update(self, value: int) -> int:
        if value < self._last:
            self._base += self._last
        self._last = value
        return self.current()

    def current(self) -> int:
        return self._base + self._last + self.local


class _SourceCollector(Collector):
    """Counters whose values live in other objects, read when Prometheus scrapes."""

    def __init__(self) -> None:
        self.sources: dict[str, StatsSource] = {}
        self.values = {name: _Monotonic() for _, _, name, _ in _SOURCE_COUNTERS}

    def collect(self) -> Iterable[Metric]:
        snapshots: dict[str, Mapping[str, int]] = {}
        for src, fn in self.sources.items():
            try:
                snapshots[src] = fn() or {}
            except Exception:
                snapshots[src] = {}
        for src, field, name, help_text in _SOURCE_COUNTERS:
            snap, counter = snapshots.get(src, {}), self.values[name]
            value = counter.update(int(snap[field])) if field in snap else counter.current()
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], float(value))
            yield family

    def describe(self) -> Iterable[Metric]:
        # Describing without collecting keeps registration free of calls into the sources.
        for _, _, name, help_text in _SOURCE_COUNTERS:
            yield CounterMetricFamily(name, help_text)


class Metrics:
    """Every metric s3proxy exports, in a registry of its own."""

    def __init__(
        self,
        *,
        version: str,
        python_version: str = "",
        process: bool = True,
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.content_type = CONTENT_TYPE
        Info("s3proxy_build", "s3proxy version.", registry=r).info(
            {"version": version, "python": python_version}
        )
        self.requests = Counter(
            "s3proxy_requests",
            "Requests handled, by request family, region, status returned and signing action.",
            ("family", "region", "status", "signing"),
            registry=r,
        )
        self.bytes_in = Counter(
            "s3proxy_request_bytes",
            "Request body bytes received from clients.",
            ("family", "region"),
            registry=r,
        )
        self.bytes_out = Counter(
            "s3proxy_response_bytes", "Response body bytes sent to clients.", ("family", "region"), registry=r
        )
        self.latency = Histogram(
            "s3proxy_request_duration_seconds",
            "Time from request to end of response.",
            ("family", "region"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[object, ...], Any] = {}
        self.refusals = Counter(
            "s3proxy_refusals",
            "Requests the proxy refused or failed itself, by reason (signing, dns, unsupported-fips, ...).",
            ("reason",),
            registry=r,
        )
        self.upstream_errors = Counter(
            "s3proxy_upstream_responses_error",
            "Responses from S3 with status 500 or above.",
            ("region",),
            registry=r,
        )
        self.redirects_learned = Counter(
            "s3proxy_redirects_learned", "Bucket regions learned from S3 redirect answers.", registry=r
        )
        self.in_flight = Gauge("s3proxy_requests_in_flight", "Requests being handled now.", registry=r)
        self.ca_expiry = Gauge(
            "s3proxy_ca_expiry_timestamp_seconds",
            "When the proxy CA certificate expires (Unix time).",
            registry=r,
        )
        self.reloads = Counter(
            "s3proxy_config_reload",
            "Configuration loads, by result (success, failure).",
            ("result",),
            registry=r,
        )
        self.last_reload_ok = Gauge(
            "s3proxy_config_last_reload_successful", "1 if the last configuration load succeeded.", registry=r
        )
        self.last_reload_time = Gauge(
            "s3proxy_config_last_reload_success_timestamp_seconds",
            "When a configuration was last loaded successfully (Unix time).",
            registry=r,
        )
        self.ready = Gauge("s3proxy_ready", "1 when /readyz reports ready.", registry=r)
        self.idle_upstream = Gauge(
            "s3proxy_upstream_idle_connections",
            "Endpoint connections kept idle for the next client connection (upstream.reuse_idle).",
            registry=r,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result=result)  # both series exist from the start: rate() works at once
        self._sources = _SourceCollector()
        r.register(self._sources)
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # -- per request -------------------------------------------------------------------------------------
    def observe(self, record: AccessRecord) -> None:
        """Count one finished request from its access record."""
        family, region = _label(record.family), _label(record.region)
        # prometheus_client's labels() validates and locks on every call: the children are looked up once
        # per label set (as many as families x regions x statuses, which bound the series anyway).
        self._child(self.requests, family, region, _label(record.status), _label(record.signing)).inc()
        if record.bytes_in > 0:
            self._child(self.bytes_in, family, region).inc(record.bytes_in)
        if record.bytes_out > 0:
            self._child(self.bytes_out, family, region).inc(record.bytes_out)
        self._child(self.latency, family, region).observe(max(record.duration, 0.0))
        if record.action in ("reject", "error"):
            self._child(self.refusals, _label(record.refusal or record.error_code)).inc()
        if record.upstream_status is not None and record.upstream_status >= 500:
            self._child(self.upstream_errors, region).inc()

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once per label set."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def refusal(self, reason: str) -> None:
        """A refusal that has no access record (a CONNECT refused before any request)."""
        self._child(self.refusals, _label(reason)).inc()

    # -- events from the addon -----------------------------------------------------------------------------
    def redirect_learned(self) -> None:
        self.redirects_learned.inc()

    def upstream_connect_error(self) -> None:
        """A connect error the upstream pool's stats miss (added to s3proxy_upstream_connect_errors)."""
        self._sources.values["s3proxy_upstream_connect_errors"].local += 1

    def failover(self) -> None:
        """A failover the upstream pool's stats do not count (added to s3proxy_failovers)."""
        self._sources.values["s3proxy_failovers"].local += 1

    def config_reload(self, ok: bool, now: float) -> None:
        """A configuration load (the first one too) finished; `now` is Unix time."""
        self.reloads.labels(result="success" if ok else "failure").inc()
        self.last_reload_ok.set(1 if ok else 0)
        if ok:
            self.last_reload_time.set(now)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def set_ca_expiry(self, when: datetime | float) -> None:
        self.ca_expiry.set(when.timestamp() if isinstance(when, datetime) else when)

    # -- sources read at scrape time ---------------------------------------------------------------------
    def attach_dns(self, stats: StatsSource) -> None:
        """`stats` returns the resolver's `Stats.as_dict()` (or None while there is no resolver)."""
        self._sources.sources["dns"] = stats

    def attach_upstream(self, stats: StatsSource) -> None:
        """`stats` returns the upstream pool's counters (`dataclasses.asdict(UpstreamStats)`)."""
        self._sources.sources["upstream"] = stats

    def attach_idle_upstream(self, count: Callable[[], int]) -> None:
        """`count` returns how many endpoint connections are kept idle now (read at scrape time)."""
        self.idle_upstream.set_function(count)

    def attach_access(self, stats: StatsSource) -> None:
        """`stats` returns the proxy-auth counters (`password_checks`)."""
        self._sources.sources["access"] = stats

    # -- exposition --------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (`content_type` says which format)."""
        return generate_latest(self.registry)


def certificate_expiry(pem: bytes) -> datetime:
    """The notAfter time of the first certificate in `pem` (for `set_ca_expiry`)."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc
