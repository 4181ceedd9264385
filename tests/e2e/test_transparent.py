"""Transparent mode end to end: no HTTPS_PROXY anywhere; the kernel redirects S3 traffic into s3proxy.

Layout (all inside one throwaway network namespace, so nothing touches the host's firewall or names):

    client (boto3 / aws CLI / curl, no proxy settings)
      -> BUCKET.s3.amazonaws.com:443   (/etc/netns/NS/hosts: S3 names -> 127.0.0.100, loopback range)
      -> iptables -t nat OUTPUT --dport 443 ... REDIRECT --to-ports P
      -> s3proxy run (listen.mode: transparent; mitmproxy reads SO_ORIGINAL_DST and the TLS SNI)
      -> tap + SeaweedFS + DNS (the usual e2e backend, started inside the namespace too)

A network namespace cannot reach the host's loopback, so the whole backend runs inside it: this file
re-executes itself with `ip netns exec NS python test_transparent.py --inner DIR`, and the inner run does
the checks and prints one JSON summary line that the outer test asserts on.

The proxy's own connections must not be redirected back into itself (a non-S3 connection is tunnelled to
its original destination, port 443). As on a real gateway, the rule excludes the proxy by owner: the proxy
runs with its own group (setpriv --regid 65534) and the rule has `-m owner ! --gid-owner 65534`.
Production would run it as a dedicated user and use `! --uid-owner s3proxy`.

Skipped (with the reason) when not root, or `ip netns` / iptables / setpriv are unavailable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve()
TESTS_DIR = HERE.parents[1]
S3_ADDRESS = "127.0.0.100"  # what S3's public names resolve to inside the namespace
OTHER_ADDRESS = "127.0.0.101"  # a non-S3 HTTPS site inside the namespace
OTHER_NAME = "www.example.test"
PROXY_GID = 65534
BUCKET = "transparent-bucket"
S3_NAMES = (
    f"{BUCKET}.s3.amazonaws.com",
    "s3.amazonaws.com",
    "s3.us-east-1.amazonaws.com",
    f"{BUCKET}.s3.us-east-1.amazonaws.com",
)


# --- outer: the pytest side -------------------------------------------------------------------------------


def _unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "transparent mode test needs Linux (netns, iptables REDIRECT, SO_ORIGINAL_DST)"
    if os.geteuid() != 0:
        return "transparent mode test needs root (ip netns, iptables)"
    for tool in ("ip", "iptables", "setpriv", "curl"):
        if shutil.which(tool) is None:
            return f"transparent mode test needs `{tool}` (apt-get install iproute2 iptables util-linux curl)"
    return None


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def netns():
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    name = f"s3ptest-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    probe = _sh("ip", "netns", "add", name, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {probe.stderr.strip()}")
    try:
        etc.mkdir(parents=True)
        hosts = ["127.0.0.1 localhost", "::1 localhost"]
        hosts += [f"{S3_ADDRESS} {n}" for n in S3_NAMES]
        hosts.append(f"{OTHER_ADDRESS} {OTHER_NAME}")
        (etc / "hosts").write_text("\n".join(hosts) + "\n")
        _sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        nat = _sh("ip", "netns", "exec", name, "iptables", "-t", "nat", "-L", "-n", check=False)
        if nat.returncode != 0:
            pytest.skip(f"iptables NAT unavailable in a namespace: {nat.stderr.strip()}")
        yield name
    finally:
        _sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(etc, ignore_errors=True)


def test_transparent_mode_in_a_network_namespace(netns, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    r = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, str(HERE), "--inner", str(tmp_path), netns],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (
        f"inner run failed (rc {r.returncode})\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    )
    result = json.loads(lines[-1][len("RESULT ") :])
    ep_host = result["bucket_host"]
    # Every S3 request reached the endpoint under its vpce name, over TLS with that SNI, never elsewhere.
    assert result["upstream_hosts"] == [ep_host]
    assert result["upstream_snis"] == [ep_host]
    assert result["forwarded_headers"] == []
    assert result["boto3_sha256_ok"] and result["cli_sha256_ok"] and result["curl_sha256_ok"]
    assert result["original_dst_seen"]  # the proxy really was in the path (REDIRECT counters moved)
    # A non-S3 site was tunnelled: the client saw the site's own certificate, not one from the proxy's CA.
    assert result["non_s3_issuer"] == "s3proxy transparent test: other site CA"
    assert result["non_s3_reply"] == "pong"
    # non_s3: deny refuses that connection instead, and S3 still works.
    assert result["deny_reply"] is None and not result["deny_site_reached"], result
    assert result["deny_logged"] and result["s3_after_deny_ok"]
    assert result["upstream_count"] >= 5
    # Endpoint connections outlive the client connections that used them in transparent mode too.
    assert result["curl_again_on_a_kept_connection"] and result["reused"] >= 1, result


# --- inner: runs inside the namespace ---------------------------------------------------------------------


def _other_site(cert_dir: Path) -> tuple[Any, Path]:
    """A TLS server for a non-S3 name on OTHER_ADDRESS:443 answering 'pong'; returns (server, its CA file)."""
    import socketserver
    import ssl
    import threading

    import trustme

    ca = trustme.CA(organization_name="s3proxy transparent test: other site CA")
    leaf = ca.issue_cert(OTHER_NAME)
    ca_file = cert_dir / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            server.connections += 1  # type: ignore[attr-defined]
            with ctx.wrap_socket(self.request, server_side=True) as tls:
                if tls.recv(100).startswith(b"ping"):
                    tls.sendall(b"pong")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer((OTHER_ADDRESS, 443), Handler)
    server.connections = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, ca_file


def _redirect_packets(proxy_port: int) -> int:
    out = _sh("iptables", "-t", "nat", "-L", "OUTPUT", "-n", "-v", "-x").stdout
    return sum(
        int(ln.split()[0])
        for ln in out.splitlines()
        if "REDIRECT" in ln and f"redir ports {proxy_port}" in ln
    )


def inner(workdir: Path, netns: str) -> dict[str, Any]:
    import hashlib
    import socket
    import ssl

    import boto3
    from botocore.config import Config

    from e2e.harness import (
        ADMIN,
        Admin,
        ProxyProcess,
        S3Backend,
        base_proxy_config,
        clean_client_env,
        deep_merge,
        free_ports,
    )

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    # The namespace's /etc/hosts is the one `ip netns exec` bind-mounted: S3 names are loopback here.
    assert socket.gethostbyname(f"{BUCKET}.s3.amazonaws.com") == S3_ADDRESS, "netns hosts file not in effect"

    backend = S3Backend(workdir / "backend").start()
    other, other_ca = _other_site(workdir)
    port, admin_port = free_ports(2)
    cfg = deep_merge(
        base_proxy_config(backend, workdir / "proxy", port),
        {
            "listen": {"host": "127.0.0.1", "port": port, "mode": "transparent"},
            "admin": {"listen": f"127.0.0.1:{admin_port}"},
            # Long enough that a kept endpoint connection cannot expire between the checks below.
            "upstream": {"reuse_idle": 30},
        },
    )
    setpriv = ["setpriv", f"--regid={PROXY_GID}", "--clear-groups", "--"]
    proxy = ProxyProcess(
        cfg, workdir / "proxy", command=[*setpriv, str(Path(sys.executable).parent / "s3proxy")]
    )
    rule = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "--dport",
        "443",
        "-m",
        "owner",
        "!",
        "--gid-owner",
        str(PROXY_GID),
        "-j",
        "REDIRECT",
        "--to-ports",
        str(port),
    ]
    try:
        proxy.start()
        _sh("iptables", *rule)
        result: dict[str, Any] = {"bucket_host": backend.endpoint("us-east-1").bucket_host}
        since = backend.mark()
        before = _redirect_packets(port)

        # boto3 with no proxy and no endpoint_url: it simply dials BUCKET.s3.amazonaws.com:443.
        session = boto3.session.Session(
            aws_access_key_id=ADMIN.access_key_id,
            aws_secret_access_key=ADMIN.secret_access_key,
            region_name="us-east-1",
        )
        s3 = session.client(
            "s3", verify=str(proxy.ca_cert), config=Config(proxies={}, retries={"total_max_attempts": 1})
        )
        s3.create_bucket(Bucket=BUCKET)
        body = hashlib.sha256(b"transparent").digest() * 50000  # 1.6 MB
        s3.put_object(Bucket=BUCKET, Key="t/a b+c~.bin", Body=body)
        got = s3.get_object(Bucket=BUCKET, Key="t/a b+c~.bin")["Body"].read()
        result["boto3_sha256_ok"] = sha(got) == sha(body) == backend.object_sha256(BUCKET, "t/a b+c~.bin")

        # The AWS CLI, likewise configured with nothing but the CA bundle.
        src = workdir / "cli-src.bin"
        src.write_bytes(hashlib.sha256(b"cli").digest() * 4000)
        env = clean_client_env()
        env.update(
            AWS_ACCESS_KEY_ID=ADMIN.access_key_id,
            AWS_SECRET_ACCESS_KEY=ADMIN.secret_access_key,
            AWS_CA_BUNDLE=str(proxy.ca_cert),
        )
        aws = str(Path(sys.executable).parent / "aws")
        cp = subprocess.run(
            [aws, "s3", "cp", str(src), f"s3://{BUCKET}/cli/obj.bin"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cp.returncode == 0, cp.stderr
        result["cli_sha256_ok"] = backend.object_sha256(BUCKET, "cli/obj.bin") == sha(src.read_bytes())

        # curl with a presigned URL (no --proxy).
        url = session.client("s3", config=Config(signature_version="s3v4")).generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "t/a b+c~.bin"}, ExpiresIn=300
        )

        def curl_get() -> bytes:
            c = subprocess.run(
                ["curl", "-sS", "--fail-with-body", "--cacert", str(proxy.ca_cert), url],
                capture_output=True,
                env=env,
                timeout=30,
            )
            assert c.returncode == 0, c.stderr
            return c.stdout

        result["curl_sha256_ok"] = sha(curl_get()) == sha(body)

        # The client connections that ended left their endpoint connections idle: the next curl (a new
        # client connection) takes one instead of opening a new endpoint connection.
        admin = Admin(admin_port)
        admin.wait_for("s3proxy_upstream_idle_connections", 1)
        opened = max(r.connection for r in backend.upstream_requests(since))
        again_mark = backend.mark()
        got_again = curl_get()
        again = backend.upstream_requests(again_mark)
        result["curl_again_on_a_kept_connection"] = (
            sha(got_again) == sha(body) and len(again) == 1 and again[0].connection <= opened
        )
        result["reused"] = admin.value("s3proxy_upstream_connections_reused_total")

        seen = backend.upstream_requests(since)
        result["upstream_count"] = len(seen)
        result["upstream_hosts"] = sorted({r.host or "" for r in seen})
        result["upstream_snis"] = sorted({r.sni or "" for r in seen})
        result["forwarded_headers"] = [h for r in seen for h in r.forwarded_headers()]

        # A non-S3 HTTPS site is tunnelled untouched to its original destination.
        ctx = ssl.create_default_context(cafile=str(other_ca))
        with socket.create_connection((OTHER_NAME, 443), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=OTHER_NAME) as tls:
                issuer = tls.getpeercert()["issuer"]
                tls.sendall(b"ping")
                result["non_s3_reply"] = tls.recv(10).decode()
        result["non_s3_issuer"] = dict(x[0] for x in issuer).get("organizationName")
        result["original_dst_seen"] = _redirect_packets(port) > before

        # With non_s3: deny the same non-S3 connection is refused (no CONNECT exists to answer 403 to),
        # never decrypted and never reaching the site; S3 keeps working.
        _sh("iptables", "-t", "nat", "-F", "OUTPUT")
        proxy.stop()
        port = free_ports(1)[0]
        cfg = deep_merge(cfg, {"listen": {"port": port}, "non_s3": "deny"})
        proxy = ProxyProcess(cfg, workdir / "proxy", command=proxy.command).start()
        rule[-1] = str(port)
        _sh("iptables", *rule)
        reached = other.connections
        try:
            with socket.create_connection((OTHER_NAME, 443), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=OTHER_NAME) as tls:
                    tls.sendall(b"ping")
                    result["deny_reply"] = tls.recv(10).decode()
        except (OSError, ssl.SSLError) as e:
            result["deny_reply"] = None
            result["deny_error"] = type(e).__name__
        result["deny_site_reached"] = other.connections > reached
        result["deny_logged"] = "non_s3: deny" in proxy.logs()
        fresh = session.client("s3", verify=str(proxy.ca_cert), config=Config(proxies={}))
        fresh.head_object(Bucket=BUCKET, Key="t/a b+c~.bin")  # the old client's pool held the dead proxy
        result["s3_after_deny_ok"] = True
        return result
    except BaseException:
        print("--- proxy log ---\n" + proxy.logs()[-6000:])
        raise
    finally:
        _sh("iptables", "-t", "nat", "-F", "OUTPUT", check=False)
        proxy.stop()
        other.shutdown()
        backend.stop()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--inner":
    summary = inner(Path(sys.argv[2]), sys.argv[3])
    print("RESULT " + json.dumps(summary), flush=True)
