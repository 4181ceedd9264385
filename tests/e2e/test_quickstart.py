"""The README's "Quick start on a gateway host", followed step by step as an operator would.

The example config is copied and edited the way the README says (endpoints, dns.nameservers, listen, a key
whose secret comes from the environment; here also the stand-in's CA and port), then `s3proxy check`,
`s3proxy run`, `s3proxy ca --export`, and an unmodified AWS CLI configured only with HTTPS_PROXY and
AWS_CA_BUNDLE reaches the S3 stand-in through the proxy.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3proxy.standin.procs import clean_client_env, free_ports, kill_group, wait_for_port

from .harness import ADMIN, REPO, S3Backend

BIN = Path(sys.executable).parent


def operator_config(backend: S3Backend, workdir: Path, port: int) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load((REPO / "config" / "s3proxy.example.yaml").read_text())
    ep = backend.endpoints[0]
    cfg["endpoints"] = {ep.region: {"dns_name": f"*.{ep.domain}", "port": backend.endpoint_port}}
    cfg["buckets"] = {}
    cfg["dns"]["nameservers"] = [backend.dns.address]
    cfg["listen"]["port"] = port
    cfg["tls"] = {"ca_dir": str(workdir / "ca"), "upstream_ca_bundle": str(backend.certs.ca_cert)}
    cfg["signing"]["keys"] = [
        {"access_key_id": ADMIN.access_key_id, "secret_access_key_env": "S3PROXY_SECRET_APP1"}
    ]
    return cfg


@pytest.fixture
def gateway(s3_backend: S3Backend, tmp_path: Path) -> Iterator[tuple[Path, int, dict[str, str]]]:
    port = free_ports(1)[0]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(operator_config(s3_backend, tmp_path, port), sort_keys=False))
    env = clean_client_env()
    env["S3PROXY_SECRET_APP1"] = ADMIN.secret_access_key
    yield config, port, env


def test_readme_quick_start(gateway: tuple[Path, int, dict[str, str]], tmp_path: Path) -> None:
    config, port, env = gateway
    s3proxy = str(BIN / "s3proxy")

    # 3. check: config valid, endpoint names resolve, TLS to every address verifies.
    check = subprocess.run(
        [s3proxy, "check", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all endpoints reachable" in check.stdout

    # 4. run (S3PROXY_CONFIG instead of --config, as the README allows).
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen(
        [s3proxy, "run"],
        env={**env, "S3PROXY_CONFIG": str(config)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, lambda: proc.poll() is None)

        # 5. export the CA and point the application at the proxy.
        ca = tmp_path / "s3proxy-ca.pem"
        export = subprocess.run(
            [s3proxy, "ca", "--config", str(config), "--export", str(ca)],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert export.returncode == 0, export.stderr
        app_env = {
            **clean_client_env(),
            "HTTPS_PROXY": f"http://127.0.0.1:{port}",
            "AWS_CA_BUNDLE": str(ca),
            "AWS_ACCESS_KEY_ID": ADMIN.access_key_id,
            "AWS_SECRET_ACCESS_KEY": ADMIN.secret_access_key,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

        def aws(*args: str) -> subprocess.CompletedProcess[bytes]:
            r = subprocess.run([str(BIN / "aws"), *args], env=app_env, capture_output=True, timeout=120)
            assert r.returncode == 0, (args, r.stdout, r.stderr, (tmp_path / "proxy.log").read_text())
            return r

        data = os.urandom(3 * 1024 * 1024)
        src = tmp_path / "report.bin"
        src.write_bytes(data)
        aws("s3", "mb", "s3://quickstart-bucket")
        aws("s3", "cp", str(src), "s3://quickstart-bucket/reports/report.bin")
        assert b"reports/report.bin" in aws("s3", "ls", "--recursive", "s3://quickstart-bucket/").stdout
        got = aws("s3", "cp", "s3://quickstart-bucket/reports/report.bin", "-").stdout
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        kill_group(proc, 5)
        log.close()
