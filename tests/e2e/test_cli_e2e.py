"""The `s3proxy` command as an operator uses it: `ca`, `check` and `run` as real subprocesses.

`ca` shows and exports the proxy's CA (the exported PEM is a valid CA certificate, and clients that trust
only that file get through the running proxy); `check` reports, against the real DNS server and TLS tap,
what works and what does not; `run` with a bad or missing configuration says what is wrong in one message,
with the key path, and exits non-zero without a traceback.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from e2e.harness import (
    ProxyProcess,
    base_proxy_config,
    clean_client_env,
    deep_merge,
    ensure_bucket,
    free_ports,
    proxy_executable,
    sha256,
    wait_for_port,
)

S3PROXY = proxy_executable()
# An endpoint the test DNS server does not know (NXDOMAIN), as for a typo or a foreign VPC's endpoint.
MISSING_ENDPOINT = "vpce-0badbadbadbadbad0-zzzzzzzz.s3.us-west-2.vpce.amazonaws.com"


def write_config(directory: Path, cfg: dict[str, Any] | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "s3proxy.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    return path


def s3proxy(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [S3PROXY, *args],
        capture_output=True,
        text=True,
        env=clean_client_env() if env is None else env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def assert_no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    out = r.stdout + r.stderr
    assert "Traceback" not in out and 'File "' not in out, out


@pytest.fixture
def cfg(s3_backend, tmp_path) -> dict[str, Any]:
    """The harness config with every endpoint's zones listed, so `check` probes zonal names too."""
    base = base_proxy_config(s3_backend, tmp_path, free_ports(1)[0])
    zones = {ep.region: {"zones": list(ep.zones)} for ep in s3_backend.endpoints if ep.zones}
    return deep_merge(base, {"endpoints": zones})


# --- s3proxy ca ------------------------------------------------------------------------------------------


def test_ca_shows_path_and_details(cfg, tmp_path):
    path = write_config(tmp_path, cfg)
    r = s3proxy("ca", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert_no_traceback(r)
    cert = Path(cfg["tls"]["ca_dir"]) / "mitmproxy-ca-cert.pem"
    assert cert.is_file()  # created on first use
    assert str(cert) in r.stdout
    ca = x509.load_pem_x509_certificate(cert.read_bytes())
    from cryptography.hazmat.primitives import serialization

    fingerprint = sha256(ca.public_bytes(serialization.Encoding.DER))
    assert fingerprint in r.stdout
    assert "subject" in r.stdout and "expires" in r.stdout
    assert "AWS_CA_BUNDLE" in r.stdout
    # The private key is never shown, and is kept private on disk.
    assert "PRIVATE KEY" not in r.stdout + r.stderr
    key = Path(cfg["tls"]["ca_dir"]) / "mitmproxy-ca.pem"
    assert key.stat().st_mode & 0o077 == 0

    # Running it again shows the same CA (not a new one).
    again = s3proxy("ca", "--config", str(path))
    assert fingerprint in again.stdout


def test_ca_export_file_and_stdout_are_a_valid_ca(cfg, tmp_path):
    path = write_config(tmp_path, cfg)
    out_file = tmp_path / "exported" / "s3proxy-ca.pem"
    out_file.parent.mkdir()
    r = s3proxy("ca", "--config", str(path), "--export", str(out_file))
    assert r.returncode == 0, r.stderr
    assert_no_traceback(r)
    pem = out_file.read_bytes()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE KEY" not in pem

    stdout = s3proxy("ca", "--config", str(path), "--export", "-")
    assert stdout.returncode == 0, stdout.stderr
    assert stdout.stdout.encode() == pem  # stdout carries the PEM and nothing else

    cert = x509.load_pem_x509_certificate(pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    assert cert.issuer == cert.subject  # self-signed root, what trust stores want
    if shutil.which("openssl"):
        text = subprocess.run(
            ["openssl", "x509", "-in", str(out_file), "-noout", "-text"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "CA:TRUE" in text
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(out_file), str(out_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0 and "OK" in verify.stdout, verify.stdout + verify.stderr


def test_exported_ca_is_what_the_running_proxy_uses(s3_backend, tmp_path):
    """Export before the first run, then start the proxy on the same ca_dir: a client that trusts only
    the exported file gets through (the proxy did not make a different CA)."""
    port = free_ports(1)[0]
    cfg = base_proxy_config(s3_backend, tmp_path / "proxy", port)
    path = write_config(tmp_path / "proxy", cfg)
    exported = tmp_path / "trust-me.pem"
    assert s3proxy("ca", "--config", str(path), "--export", str(exported)).returncode == 0
    with ProxyProcess(cfg, tmp_path / "proxy") as proxy:
        import boto3
        from botocore.config import Config

        from e2e.harness import ADMIN

        session = boto3.session.Session(
            aws_access_key_id=ADMIN.access_key_id,
            aws_secret_access_key=ADMIN.secret_access_key,
            region_name="us-east-1",
        )
        s3 = session.client("s3", verify=str(exported), config=Config(proxies={"https": proxy.url}))
        s3.list_buckets()


def test_ecdsa_ca_is_created_and_every_client_handshake_uses_it(s3_backend, tmp_path):
    """`tls.ca_key: ecdsa`: the CA s3proxy creates has a P-256 key, `s3proxy ca` says so, and the proxy shows
    clients certificates with that key, signed by it (curl and boto3 trusting only that CA get through)."""
    import ssl

    from cryptography.hazmat.primitives.asymmetric import ec

    port = free_ports(1)[0]
    cfg = deep_merge(base_proxy_config(s3_backend, tmp_path / "proxy", port), {"tls": {"ca_key": "ecdsa"}})
    path = write_config(tmp_path / "proxy", cfg)
    r = s3proxy("ca", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "key:         ECDSA secp256r1" in r.stdout
    ca_file = Path(cfg["tls"]["ca_dir"]) / "mitmproxy-ca-cert.pem"
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert (Path(cfg["tls"]["ca_dir"]) / "mitmproxy-ca.pem").stat().st_mode & 0o077 == 0
    with ProxyProcess(cfg, tmp_path / "proxy") as proxy:
        # The certificate the proxy shows for an S3 name: an EC key, issued and signed by this CA.
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(b"CONNECT s3.amazonaws.com:443 HTTP/1.1\r\nHost: s3.amazonaws.com:443\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(ca_file))
        with ctx.wrap_socket(raw, server_hostname="s3.amazonaws.com") as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        leaf = x509.load_der_x509_certificate(der)
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        # Real clients that trust only the exported CA.
        s3 = proxy.boto3_client(region="us-east-1")
        ensure_bucket(s3, "ecdsa-ca")
        s3.put_object(Bucket="ecdsa-ca", Key="k", Body=b"ec")
        assert s3.get_object(Bucket="ecdsa-ca", Key="k")["Body"].read() == b"ec"
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "ecdsa-ca", "Key": "k"})
        out = subprocess.run(
            ["curl", "-sSf", "--proxy", proxy.url, "--cacert", str(ca_file), url],
            capture_output=True,
            timeout=60,
            env=proxy.env(None),
        )
        assert out.returncode == 0 and out.stdout == b"ec", out.stderr


def test_an_existing_rsa_ca_is_kept_when_ecdsa_is_asked_for(s3_backend, tmp_path):
    """Clients already trust the CA in ca_dir: asking for ecdsa later never replaces it, and says so."""
    port = free_ports(1)[0]
    cfg = base_proxy_config(s3_backend, tmp_path / "proxy", port)
    path = write_config(tmp_path / "proxy", cfg)
    assert s3proxy("ca", "--config", str(path)).returncode == 0
    ca_file = Path(cfg["tls"]["ca_dir"]) / "mitmproxy-ca-cert.pem"
    before = ca_file.read_bytes()
    cfg = deep_merge(cfg, {"tls": {"ca_key": "ecdsa"}})
    with ProxyProcess(cfg, tmp_path / "proxy") as proxy:
        proxy.boto3_client(region="us-east-1").list_buckets()
        assert "tls.ca_key is ecdsa, but the CA" in proxy.logs()
    assert ca_file.read_bytes() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_ca_refuses_to_start(cfg, tmp_path, workers):
    """A damaged CA file stops `s3proxy run` at once with the reason, before any worker starts (a worker's
    mitmproxy would only log it and then fail every client handshake)."""
    cfg = deep_merge(cfg, {"workers": workers})
    path = write_config(tmp_path, cfg)
    assert s3proxy("ca", "--config", str(path)).returncode == 0
    key = Path(cfg["tls"]["ca_dir"]) / "mitmproxy-ca.pem"
    key.write_bytes(key.read_bytes()[:200])  # truncated
    r = s3proxy("run", "--config", str(path), timeout=30)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot load the CA in" in r.stderr and "mitmproxy-ca.pem" in r.stderr
    assert_no_traceback(r)


def test_ca_key_with_open_permissions_is_reported(cfg, tmp_path):
    path = write_config(tmp_path, cfg)
    assert s3proxy("ca", "--config", str(path)).returncode == 0
    key = Path(cfg["tls"]["ca_dir"]) / "mitmproxy-ca.pem"
    key.chmod(0o644)
    r = s3proxy("ca", "--config", str(path))
    assert r.returncode != 0
    assert "chmod 600" in r.stderr and str(key) in r.stderr
    assert_no_traceback(r)


# --- s3proxy check ---------------------------------------------------------------------------------------


def test_check_all_ok(cfg, tmp_path, s3_backend):
    path = write_config(tmp_path, cfg)
    r = s3proxy("check", "--config", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_no_traceback(r)
    out = r.stdout
    assert f"config {path}: OK" in out
    for ep in s3_backend.endpoints:
        assert f"endpoint {ep.region}: {ep.domain}" in out
    assert "all endpoints reachable" in out
    ok_lines = [ln for ln in out.splitlines() if ln.startswith(" ") and ": OK (" in ln]
    # every regional and zonal name answered TLS with a certificate valid for the vpce name
    assert len(ok_lines) == sum(len(ep.domains) for ep in s3_backend.endpoints)
    assert all("certificate valid for" in ln for ln in ok_lines)


def test_check_reports_dns_failure(cfg, tmp_path, s3_backend):
    cfg = deep_merge(
        cfg, {"endpoints": {"us-west-2": {"dns_name": MISSING_ENDPOINT, "port": s3_backend.endpoint_port}}}
    )
    path = write_config(tmp_path, cfg)
    r = s3proxy("check", "--config", str(path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert_no_traceback(r)
    lines = r.stdout.splitlines()
    dns_lines = [ln for ln in lines if MISSING_ENDPOINT in ln and "DNS" in ln]
    assert dns_lines, r.stdout
    assert any(w in dns_lines[0].lower() for w in ("nxdomain", "does not exist", "no such")), dns_lines
    assert any("FAIL" in ln and MISSING_ENDPOINT in ln for ln in lines), r.stdout
    assert "1 endpoint(s) unreachable" in r.stdout
    # the other endpoints are still reported as working
    assert sum(ln.startswith(" ") and ": OK (" in ln for ln in lines) == sum(
        len(ep.domains) for ep in s3_backend.endpoints
    )


def test_check_reports_untrusted_upstream_certificate(cfg, tmp_path):
    cfg = deep_merge(cfg, {"tls": {"upstream_ca_bundle": None}})  # system store: the test CA is unknown
    path = write_config(tmp_path, cfg)
    r = s3proxy("check", "--config", str(path))
    assert r.returncode == 1
    assert_no_traceback(r)
    bad = [ln for ln in r.stdout.splitlines() if "certificate not trusted" in ln]
    assert bad, r.stdout
    assert any("unable to get local issuer certificate" in ln or "self" in ln for ln in bad), bad


def test_check_reports_endpoint_down(cfg, tmp_path, s3_backend):
    s3_backend.tap.set_mode("refuse", ["127.0.0.2"])  # one zone of us-east-1 is down
    try:
        path = write_config(tmp_path, cfg)
        r = s3proxy("check", "--config", str(path))
    finally:
        s3_backend.tap.set_mode("up", ["127.0.0.2"])
    # the endpoint as a whole is still reachable through its other addresses
    assert r.returncode == 0, r.stdout
    down = [ln for ln in r.stdout.splitlines() if "127.0.0.2" in ln]
    assert down and "cannot connect" in down[0], r.stdout


# --- s3proxy run: configuration problems -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"listen": {"port": "http"}}, ["listen.port"]),
        (
            {"endpoints": {"eu-west-1": {"dns_name": "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"}}},
            ["endpoints.eu-west-1.dns_name", "us-east-1"],
        ),
        ({"access": {"allow_clients": ["10.0.0.1/8"]}}, ["access.allow_clients[0]"]),
        (
            {"signing": {"mode": "proxy-identity", "keys": None}, "access": {"allow_clients": ["0.0.0.0/0"]}},
            ["proxy-identity", "0.0.0.0/0"],
        ),
        ({"listne": {"port": 1}}, ["listne", "listen"]),
        ({"dns": {"nameservers": ["dns.example.com"]}}, ["dns.nameservers[0]"]),
        (
            {"access": {"users": [{"username": "u", "password_hash": "plaintext-password"}]}},
            ["access.users[0].password_hash", "hash_password"],
        ),
    ],
    ids=["port-not-number", "region-mismatch", "bad-cidr", "identity-open", "typo", "ns-not-ip", "bad-hash"],
)
def test_run_with_broken_config(cfg, tmp_path, override, needles):
    path = write_config(tmp_path, deep_merge(cfg, override))
    r = s3proxy("run", "--config", str(path), timeout=30)
    assert r.returncode != 0
    assert_no_traceback(r)
    for n in needles:
        assert n in r.stderr, r.stderr
    assert str(path) in r.stderr
    assert "plaintext-password" not in r.stdout + r.stderr  # a password hash (or password) is never echoed
    assert len(r.stderr.strip().splitlines()) <= 3, r.stderr  # one message, not a log dump


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("endpoints: [unclosed\n", "line 2 column 1"),
        ("- just\n- a list\n", "mapping"),
        ("", "endpoints"),
    ],
    ids=["yaml-syntax", "not-a-mapping", "empty"],
)
def test_run_with_unparseable_config(tmp_path, text, needle):
    path = write_config(tmp_path, text)
    r = s3proxy("run", "--config", str(path), timeout=30)
    assert r.returncode != 0
    assert_no_traceback(r)
    assert needle.lower() in r.stderr.lower(), r.stderr


def test_run_with_listen_port_in_use(s3_backend, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, base_proxy_config(s3_backend, tmp_path, port))
        r = s3proxy("run", "--config", str(path), timeout=30)
    assert r.returncode != 0
    assert_no_traceback(r)
    out = r.stdout + r.stderr
    assert f"127.0.0.1:{port}" in out and "in use" in out, out


def test_run_with_missing_config_file(tmp_path):
    r = s3proxy("run", "--config", str(tmp_path / "nope.yaml"), timeout=30)
    assert r.returncode != 0
    assert_no_traceback(r)
    assert "nope.yaml" in r.stderr and ("No such file" in r.stderr or "not found" in r.stderr.lower())


@pytest.mark.parametrize("command", ["run", "check", "ca"])
def test_no_config_and_no_env(command):
    r = s3proxy(command, timeout=30)
    assert r.returncode == 2
    assert_no_traceback(r)
    assert "--config" in r.stderr and "S3PROXY_CONFIG" in r.stderr


def test_s3proxy_config_env_is_honoured(s3_backend, tmp_path):
    port = free_ports(1)[0]
    cfg = base_proxy_config(s3_backend, tmp_path, port)
    path = write_config(tmp_path, cfg)
    env = clean_client_env()
    env["S3PROXY_CONFIG"] = str(path)

    check = s3proxy("check", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"config {path}: OK" in check.stdout

    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [S3PROXY, "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, lambda: proc.poll() is None)
        proxy = ProxyProcess(cfg, tmp_path)  # not started: used only for its client helpers
        deadline = time.monotonic() + 5
        while not proxy.ca_cert.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        s3 = proxy.boto3_client(region="us-east-1")
        s3.list_buckets()
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
    assert rc == 0, (tmp_path / "run.log").read_text()  # SIGTERM is a clean shutdown


def test_explicit_config_wins_over_env(s3_backend, tmp_path):
    good = write_config(tmp_path / "good", base_proxy_config(s3_backend, tmp_path / "good", free_ports(1)[0]))
    bad = write_config(tmp_path / "bad", "listen: {port: nope}\n")
    env = clean_client_env()
    env["S3PROXY_CONFIG"] = str(bad)
    r = s3proxy("check", "--config", str(good), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
