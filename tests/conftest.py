"""Session fixtures for end-to-end tests: real SeaweedFS, DNS server and `s3proxy run` on loopback.

Fixtures:
  s3_backend     (session) e2e.harness.S3Backend: certs, DNS (`.dns`), SeaweedFS (`.seaweed`), recording tap
                 (`.tap`), `.endpoints`, `.endpoint_port`, `.ca_cert`, `.direct_client()`, `.object_sha256()`,
                 `.upstream_requests(since)` / `.mark()`.
  proxy_factory  (function) `proxy_factory(overrides=None, env=None) -> ProxyProcess`: a fresh proxy with
                 the base config deep-merged with `overrides` (None deletes a key); stopped after the test.
  proxy          (session) one ProxyProcess with the base config, shared by tests that need no special config.
  proxy_config   (function) the base config dict (for tests that build their own).
Tests under tests/e2e/ are marked `e2e` automatically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.harness import (
    ProxyProcess,
    S3Backend,
    base_proxy_config,
    clean_client_env,
    deep_merge,
    free_ports,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_dir = Path(__file__).parent / "e2e"
    for item in items:
        if e2e_dir in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)  # lets fixtures see whether the test failed


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_environment() -> Iterator[None]:
    """No ambient AWS config, credentials, region or proxy may leak into any test (or reach the internet:
    instance metadata is disabled)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(clean_client_env(saved))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def s3_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Backend]:
    backend = S3Backend(tmp_path_factory.mktemp("s3backend")).start()
    try:
        yield backend
    finally:
        backend.stop()


def _new_proxy(
    backend: S3Backend, workdir: Path, overrides: dict[str, Any] | None, env: dict[str, str] | None
) -> ProxyProcess:
    port = free_ports(1)[0]
    cfg = deep_merge(base_proxy_config(backend, workdir, port), overrides or {})
    return ProxyProcess(cfg, workdir, env).start()


@pytest.fixture
def proxy_config(s3_backend: S3Backend, tmp_path: Path) -> dict[str, Any]:
    return base_proxy_config(s3_backend, tmp_path / "proxy", free_ports(1)[0])


@pytest.fixture
def proxy_factory(
    s3_backend: S3Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def factory(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> ProxyProcess:
        proxy = _new_proxy(s3_backend, tmp_path / f"proxy{len(started)}", overrides, env)
        started.append(proxy)
        return proxy

    yield factory
    rep = getattr(request.node, "rep_call", None)
    for proxy in started:
        if rep is not None and rep.failed:
            print(f"--- s3proxy log ({proxy.log_path}) ---\n{proxy.logs()[-8000:]}")
        proxy.stop()


@pytest.fixture(scope="session")
def proxy(s3_backend: S3Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    p = _new_proxy(s3_backend, tmp_path_factory.mktemp("proxy"), None, None)
    try:
        yield p
    finally:
        p.stop()
