"""End-to-end benchmark: a client straight to a fast TLS upstream vs a bare mitmproxy vs s3proxy, same run.

    .venv/bin/python bench/run.py [--quick] [--json out.json] [--workers N] [--rounds R]

Strategy: everything runs on loopback. nginx (Debian `nginx-light`, needs the dav module for PUT) serves
files and stores PUTs over TLS with a throwaway certificate for the vpce names; the stand-in DNS server
answers the vpce names with 127.0.0.1. The same client then talks, per test, to
- `direct`: nginx itself, the vpce name pinned to 127.0.0.1 (what an application with `endpoint_url` does);
- `bare`: mitmdump with bench/bare_addon.py (host rewrite + streamed bodies, nothing else);
- `s3proxy`: the real `s3proxy run` (keyring mode, workers: 1), so it verifies and re-signs every request;
- `s3proxy-wN`: the same with `workers: N` (only the concurrent tests), `s3proxy-vi30` with
  `upstream.verify_interval: 30` (the 256-client test, to show what the per-connection probe costs), and
  `s3proxy-noreuse` with `upstream.reuse_idle: 0` and `s3proxy-ecdsa` with `tls.ca_key: ecdsa` (a new
  client connection per request, to show what reusing endpoint connections across client connections and
  an ECDSA CA save).
Clients sign like an SDK (SigV4, `x-amz-content-sha256` as an SDK sends it); nginx ignores the signature,
s3proxy checks it. Signed headers are made once per test and reused (valid for 15 minutes), so client-side
signing is not part of any timing.

Clients: large transfers use curl (C, OpenSSL, 1.1, one connection) and MB/s = bytes / curl's
`time_total`. Sequential small GETs use a raw keep-alive HTTP/1.1 client on a blocking TLS socket (no
http.client parsing), latency per request from `perf_counter`. Concurrent tests run 2 load-client
processes of keep-alive connections (CONNECT, TLS, one GET each), then, all connected, GETs of a 1 KiB object
for a fixed time on non-blocking TLS sockets; the proxy's CPU is counted over that window. Peak RSS of the
proxy is VmHWM from /proc after resetting it (`clear_refs` 5) just before the transfer.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s3proxy import sigv4  # noqa: E402

VPCE = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
UPSTREAM_HOST = f"bucket.{VPCE}"
S3_HOST = "s3.us-east-1.amazonaws.com"  # what the application asks for (path style)
REGION = "us-east-1"
ACCESS_KEY = "AKIABENCHMARK0000001"
SECRET_KEY = "benchmarkSecretKey/EXAMPLE/0123456789abc"  # a throwaway key for loopback only
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MIB = 1024 * 1024
GIB = 1024 * MIB


# --------------------------------------------------------------------------------------------- signing


def sign(method: str, host: str, path: str, payload: str, extra: dict[str, str] | None = None) -> list[str]:
    """Header lines of a SigV4-signed request for `host` (what the SDK would send); no Host line."""
    now = datetime.now(UTC)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload}
    headers.update({k.lower(): v for k, v in (extra or {}).items()})
    names = sorted(headers)
    block = sigv4.canonical_headers(list(headers.items()), names)
    signed = sigv4.signed_headers_line(names)
    canonical = sigv4.canonical_request(method, sigv4.canonical_uri(path), "", block, signed, payload)
    scope = sigv4.credential_scope(date, REGION, "s3")
    key = sigv4.derive_signing_key(SECRET_KEY, date, REGION, "s3")
    sig = sigv4.sign(canonical, amz_date, scope, key)
    lines = [f"{k}: {v}" for k, v in headers.items() if k != "host"]
    lines.append(f"Authorization: {sigv4.authorization_value(ACCESS_KEY, scope, signed, sig)}")
    return lines


def chunked_body(path: Path, size: int, chunk: int) -> list[str]:
    """Write a signed aws-chunked body of `size` bytes (64 KiB chunks, as SDKs frame them) to `path`;
    returns the signed header lines (seed signature over the STREAMING-AWS4-HMAC-SHA256-PAYLOAD marker)."""
    from s3proxy.chunked import encode_signed_chunks

    data = (bytes(range(256)) * (chunk // 256 + 1))[:chunk]
    n = size // chunk
    # Signatures have a fixed length: the framed length is known before signing.
    framed = len(
        next(encode_signed_chunks([data], signing_key=b"k", amz_date="x", scope="s", seed_signature="0"))
    )
    final = len(
        b"".join(encode_signed_chunks([b"x"], signing_key=b"k", amz_date="x", scope="s", seed_signature="0"))
    ) - len(next(encode_signed_chunks([b"x"], signing_key=b"k", amz_date="x", scope="s", seed_signature="0")))
    length = framed * n + final
    extra = {
        "content-encoding": "aws-chunked",
        "content-length": str(length),
        "x-amz-decoded-content-length": str(n * chunk),
    }
    lines = sign("PUT", S3_HOST, "/bench/up-chunked", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", extra)
    auth = next(line for line in lines if line.startswith("Authorization: "))
    seed = auth.rsplit("Signature=", 1)[1]
    amz_date = next(line for line in lines if line.startswith("x-amz-date: ")).split(": ")[1]
    date = amz_date[:8]
    key = sigv4.derive_signing_key(SECRET_KEY, date, REGION, "s3")
    scope = sigv4.credential_scope(date, REGION, "s3")
    with path.open("wb") as f:
        for piece in encode_signed_chunks(
            (data for _ in range(n)), signing_key=key, amz_date=amz_date, scope=scope, seed_signature=seed
        ):
            f.write(piece)
    assert path.stat().st_size == length
    return [line for line in lines if not line.lower().startswith("content-length")]


# ------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {port} not listening") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    types {{ }}
    default_type application/octet-stream;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/body;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    output_buffers 2 256k;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {d}/www;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
}}
"""


@dataclass
class Env:
    root: Path
    nginx_port: int
    ca_bundle: Path  # upstream CA + proxy CA: what clients trust
    upstream_ca: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for p in self.procs.values():
            stop(p)


def find_nginx() -> str:
    """nginx, installed from Debian's packages first when it is missing and this runs as root with apt-get
    (as scripts/test.sh does for curl and iptables): the benchmark is one command on a fresh machine."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        print("bench: installing nginx-light (the upstream)", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
        install = ["apt-get", "install", "-y", "-qq", "nginx-light"]
        subprocess.run(install, env=env, check=False, stdout=subprocess.DEVNULL)
    if not Path(nginx).exists():
        sys.exit("nginx not found, could not install it: apt-get install -y nginx-light (bench/README.md)")
    return nginx


def proxy_venv(args: argparse.Namespace) -> Path:
    """The venv whose `s3proxy` and `mitmdump` run as the proxies (`--venv`; the clients always run in this
    interpreter)."""
    return Path(getattr(args, "venv", None) or REPO / ".venv")


def proxy_python(args: argparse.Namespace) -> str:
    """The proxies' Python, as `sys.version` reports it, and whether it was built with PGO and LTO."""
    probe = (
        "import sys, sysconfig; a = sysconfig.get_config_var('CONFIG_ARGS') or ''; "
        "print(sys.version.split()[0], sys.executable, "
        "'PGO' if '--enable-optimizations' in a else 'no PGO', 'LTO' if '--with-lto' in a else 'no LTO')"
    )
    python = proxy_venv(args) / "bin" / "python"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return done.stdout.strip() or f"{python}: {done.stderr.strip()[-200:]}"


def start_env(root: Path, args: argparse.Namespace, sizes: dict[str, int]) -> tuple[Env, Any]:
    from s3proxy.standin.certs import make_certs
    from s3proxy.standin.dns import DnsServer

    nginx = find_nginx()
    certs = make_certs(root / "certs", [VPCE])
    www = root / "www" / "bench"
    www.mkdir(parents=True)
    (root / "body").mkdir()
    # Sparse files: nginx reads zeros from the page cache, so the upstream's disk is never the bottleneck.
    for name, size in (("big", sizes["big"]), ("huge", sizes["huge"])):
        with (www / name).open("wb") as f:
            f.truncate(size)
    (www / "small").write_bytes(os.urandom(1024))
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user="user root root;" if os.geteuid() == 0 else "",
            d=root,
            port=port,
            cert=certs.cert,
            key=certs.key,
        )
    )
    env = Env(root, port, root / "clients-ca.pem", certs.ca_cert)
    env.procs["nginx"] = subprocess.Popen(
        [nginx, "-c", str(conf), "-e", str(root / "nginx-error.log")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, env.procs["nginx"])
    dns = DnsServer(table={VPCE: ("127.0.0.1",)}, ttl=300).start()

    ca_dir = root / "proxy-ca"
    base_config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "default_region": REGION,
        "endpoints": {REGION: {"dns_name": VPCE, "port": port}},
        "dns": {"nameservers": [dns.address]},
        "tls": {"ca_dir": str(ca_dir), "upstream_ca_bundle": str(certs.ca_cert)},
        "signing": {
            "mode": "keyring",
            "keys": [{"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}],
        },
    }
    variants: dict[str, dict[str, Any]] = {"s3proxy": {"workers": 1}}
    if args.workers > 1:
        variants[f"s3proxy-w{args.workers}"] = {"workers": args.workers}
    variants["s3proxy-vi30"] = {"workers": 1, "upstream": {"verify_interval": 30}}
    variants["s3proxy-noreuse"] = {"workers": 1, "upstream": {"reuse_idle": 0}}
    variants["s3proxy-aes256"] = {"workers": 1, "tls": {**base_config["tls"], "prefer_aes128": False}}
    ec_ca_dir = root / "proxy-ca-ecdsa"
    variants["s3proxy-ecdsa"] = {
        "workers": 1,
        "tls": {"ca_dir": str(ec_ca_dir), "upstream_ca_bundle": str(certs.ca_cert), "ca_key": "ecdsa"},
    }
    import yaml

    for name, extra in variants.items():
        cfg = json.loads(json.dumps(base_config))
        cfg["listen"]["port"] = env.ports[name] = free_port()
        cfg.update(extra)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        log = (root / f"{name}.log").open("wb")
        env.procs[name] = subprocess.Popen(
            [str(proxy_venv(args) / "bin" / "s3proxy"), "run", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=root,
        )
        wait_port(env.ports[name], env.procs[name])
    env.ports["bare"] = free_port()
    env.procs["bare"] = subprocess.Popen(
        [
            str(proxy_venv(args) / "bin" / "mitmdump"),
            "-q",
            "-s",
            str(REPO / "bench" / "bare_addon.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(env.ports["bare"]),
            "--set",
            f"confdir={ca_dir}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            "upstream_cert=false",
            "--set",
            "http2=false",
            "--set",
            f"ssl_verify_upstream_trusted_ca={certs.ca_cert}",
            "--set",
            f"bare_upstream={UPSTREAM_HOST}:{port}",
        ],
        stdout=(root / "bare.log").open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_port(env.ports["bare"], env.procs["bare"])
    trusted = (certs.ca_cert, ca_dir / "mitmproxy-ca-cert.pem", ec_ca_dir / "mitmproxy-ca-cert.pem")
    env.ca_bundle.write_bytes(b"".join(p.read_bytes() for p in trusted))
    return env, dns


# -------------------------------------------------------------------------------------------- clients


def target(env: Env, mode: str) -> tuple[str, int, str | None]:
    """(host to connect to, port, proxy CONNECT authority or None) for a mode."""
    if mode == "direct":
        return "127.0.0.1", env.nginx_port, None
    return "127.0.0.1", env.ports[mode], f"{S3_HOST}:443"


def host_header(env: Env, mode: str) -> str:
    return f"{UPSTREAM_HOST}:{env.nginx_port}" if mode == "direct" else S3_HOST


def curl(
    env: Env, mode: str, method: str, path: str, headers: list[str], upload: Path | None
) -> dict[str, float]:
    host = host_header(env, mode)
    url = f"https://{host}{path}"
    cmd = [
        "curl",
        "-sS",
        "--http1.1",
        "-o",
        "/dev/null",
        "--cacert",
        str(env.ca_bundle),
        "-w",
        "%{http_code} %{size_download} %{size_upload} %{time_total}",
        "-H",
        "Expect:",
    ]
    if mode == "direct":
        cmd += ["--resolve", f"{UPSTREAM_HOST}:{env.nginx_port}:127.0.0.1"]
    else:
        cmd += ["-x", f"http://127.0.0.1:{env.ports[mode]}"]
    for h in headers:
        cmd += ["-H", h]
    if upload is not None:
        cmd += ["-T", str(upload)]
    if method not in ("GET", "PUT"):
        cmd += ["-X", method]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=1800)
    code, down, up, total = out.stdout.split()
    if not code.startswith("2"):
        raise RuntimeError(f"{mode} {method} {path}: HTTP {code} {out.stderr}")
    size = float(up if upload is not None else down)
    return {"mb_s": size / MIB / float(total), "seconds": float(total), "bytes": size}


def open_tls(env: Env, mode: str, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    host, port, authority = target(env, mode)
    return tunnel(host, port, authority, UPSTREAM_HOST if authority is None else S3_HOST, ctx)


def tunnel(host: str, port: int, authority: str | None, sni: str, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A blocking TLS connection to `host:port`, through a CONNECT to `authority` first unless None."""
    sock = socket.create_connection((host, port), timeout=60)  # a hung proxy is an error, not a hang
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if authority is not None:
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                more = sock.recv(4096)
                if not more:
                    raise ConnectionError("proxy closed the connection after CONNECT")
                head += more
            if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                raise ConnectionError(f"CONNECT refused: {head[:100]!r}")
        return ctx.wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise


def request_bytes(env: Env, mode: str, path: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host_header(env, mode)}",
        *sign("GET", S3_HOST, path, EMPTY_SHA256),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: ssl.SSLSocket, buf: bytearray) -> int:
    """Read one response (Content-Length framed) from `sock`; returns the status."""
    while (head := _head(buf)) is None or len(buf) < head[1] + head[2]:
        more = sock.recv(262144)
        if not more:
            raise ConnectionError("connection closed" if head is None else "connection closed in body")
        buf += more
    del buf[: head[1] + head[2]]
    return head[0]


def new_connection_gets(env: Env, mode: str, n: int) -> dict[str, float]:
    """`n` small GETs, each on a new client connection (CONNECT + TLS): what a client without keep-alive,
    or a pool that was idle, costs. Without connection reuse across client connections (bare mitmproxy,
    s3proxy-noreuse) every one makes the proxy open a new upstream connection too."""
    ctx = ssl.create_default_context(cafile=str(env.ca_bundle))
    req = request_bytes(env, mode, "/bench/small")
    t0 = time.perf_counter()
    for _ in range(n):
        sock = open_tls(env, mode, ctx)
        sock.sendall(req)
        status = read_response(sock, bytearray())
        sock.close()
        if status != 200:
            raise RuntimeError(f"{mode}: small GET answered {status}")
    total = time.perf_counter() - t0
    return {"requests": n, "req_s": n / total, "mean_ms": total / n * 1000}


def sequential_gets(env: Env, mode: str, n: int) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=str(env.ca_bundle))
    sock = open_tls(env, mode, ctx)
    req = request_bytes(env, mode, "/bench/small")
    buf = bytearray()
    for _ in range(20):  # warm-up: first request opens the upstream connection
        sock.sendall(req)
        read_response(sock, buf)
    lat: list[float] = []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        sock.sendall(req)
        status = read_response(sock, buf)
        lat.append(time.perf_counter() - s)
        if status != 200:
            raise RuntimeError(f"{mode}: small GET answered {status}")
    total = time.perf_counter() - t0
    sock.close()
    lat.sort()
    return {
        "requests": n,
        "req_s": n / total,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "mean_ms": statistics.fmean(lat) * 1000,
    }


class _Conn:
    """One keep-alive connection of a load client: its TLS socket, unread bytes, when its GET was sent."""

    __slots__ = ("buf", "sent", "sock")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock, self.buf, self.sent = sock, bytearray(), 0.0


def _head(buf: bytearray) -> tuple[int, int, int] | None:
    """(status, end of the head, Content-Length) of the response at the start of `buf`, None if its head
    has not all arrived."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(head[9:12]), end + 4, length


def _send(sock: ssl.SSLSocket, data: bytes) -> None:
    """All of `data` on a non-blocking TLS socket (a GET fits its empty send buffer: one call)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except ssl.SSLWantWriteError:  # not expected: wait until the socket takes more
            with selectors.DefaultSelector() as sel:
                sel.register(sock, selectors.EVENT_WRITE)
                sel.select(1.0)


def _load(spec: dict[str, Any]) -> dict[str, Any]:
    """One load-client process: `conns` keep-alive connections (CONNECT, TLS, one GET each), opened
    concurrently; then `ready` on stdout, and once the parent answers on stdin, GETs for `seconds`, each
    connection sending its next request as soon as its response is complete. Non-blocking TLS sockets on
    one selector, no asyncio: less CPU per request than asyncio streams (which the load clients share the
    cores with the proxies for), and every process measures the same window, from the parent's go."""
    import concurrent.futures

    ctx = ssl.create_default_context(cafile=spec["ca"])
    req = spec["request"].encode("latin-1")
    ok = errors = 0
    lat: list[float] = []
    failures = (OSError, ConnectionError, ssl.SSLError, ValueError)

    def connect() -> ssl.SSLSocket:
        sock = tunnel(spec["host"], spec["port"], spec["authority"], spec["sni"], ctx)
        try:
            sock.sendall(req)
            if (status := read_response(sock, bytearray())) != 200:
                raise ConnectionError(f"GET answered {status}")
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def try_connect(_: int) -> ssl.SSLSocket | None:
        try:
            return connect()
        except failures:
            return None

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        socks = list(pool.map(try_connect, range(spec["conns"])))
    connected_s = time.perf_counter() - t0
    errors += sum(s is None for s in socks)
    conns = [_Conn(s) for s in socks if s is not None]
    lost = spec["conns"] - len(conns)  # connections to open again during the run
    print("ready", flush=True)
    sys.stdin.readline()
    sel = selectors.DefaultSelector()
    now = time.perf_counter()
    stop, retry_at = now + spec["seconds"], now
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.sent = time.perf_counter()
        _send(c.sock, req)
    while (now := time.perf_counter()) < stop:
        if lost and now >= retry_at:  # a connection failed: another in its place, at most every 10 ms
            try:
                c = _Conn(connect())
            except failures:
                errors += 1
                retry_at = now + 0.01
            else:
                lost -= 1
                conns.append(c)
                sel.register(c.sock, selectors.EVENT_READ, c)
                c.sent = time.perf_counter()
                _send(c.sock, req)
        for key, _ in sel.select(min(stop - now, 0.01) if lost else stop - now):
            c = key.data
            try:
                while True:
                    data = c.sock.recv(262144)
                    if not data:
                        raise ConnectionError("connection closed")
                    c.buf += data
                    if not c.sock.pending():
                        break
            except ssl.SSLWantReadError:
                pass
            except failures:
                errors += 1
                sel.unregister(c.sock)
                c.sock.close()
                conns.remove(c)
                lost += 1
                continue
            head = _head(c.buf)
            if head is None or len(c.buf) < head[1] + head[2]:
                continue
            del c.buf[: head[1] + head[2]]
            t = time.perf_counter()
            if t >= stop:
                break
            lat.append(t - c.sent)
            if head[0] == 200:
                ok += 1
            else:
                errors += 1
            c.sent = t
            _send(c.sock, req)
    for c in conns:
        c.sock.close()
    lat.sort()
    return {
        "ok": ok,
        "errors": errors,
        "seconds": spec["seconds"],
        "all_connected_s": connected_s,
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
    }


def concurrent_gets(env: Env, mode: str, clients: int, seconds: float, procs: int = 2) -> dict[str, Any]:
    """`clients` keep-alive connections in `procs` load-client processes, GETs for `seconds` once all
    are connected; the proxy's CPU is counted over that window only (not the connections' set-up)."""
    host, port, authority = target(env, mode)
    spec = {
        "ca": str(env.ca_bundle),
        "host": host,
        "port": port,
        "authority": authority,
        "sni": UPSTREAM_HOST if authority is None else S3_HOST,
        "request": request_bytes(env, mode, "/bench/small").decode("latin-1"),
        "seconds": seconds,
    }
    running = []
    for i in range(procs):
        s = dict(spec, conns=clients // procs + (1 if i < clients % procs else 0))
        running.append(
            subprocess.Popen(
                [sys.executable, __file__, "--load-client", json.dumps(s)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for p in running:
            assert p.stdout is not None
            if (line := p.stdout.readline().strip()) != "ready":
                raise RuntimeError(f"{mode}: a load client said {line!r} instead of ready")
        before = cpu_seconds(env, mode)
        for p in running:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=seconds + 300)[0]) for p in running]
        after = cpu_seconds(env, mode)
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    ok = sum(r["ok"] for r in results)
    p50 = [r["p50_ms"] for r in results if r["p50_ms"] is not None]
    p99 = [r["p99_ms"] for r in results if r["p99_ms"] is not None]
    out = {
        "requests": ok,
        "req_s": ok / seconds,
        "errors": sum(r["errors"] for r in results),
        "p50_ms": max(p50) if p50 else None,
        "p99_ms": max(p99) if p99 else None,
        "all_connected_s": max(r["all_connected_s"] for r in results),
    }
    if before is not None and after is not None:
        out["proxy_cpu_s"] = after - before
        out["proxy_cores"] = (after - before) / seconds
        if ok:
            out["cpu_us_per_req"] = (after - before) / ok * 1e6
    return out


# ------------------------------------------------------------------------------------------- RSS


def proxy_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """The proxy process and its worker children (workers: N)."""
    pids = [proc.pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        pids += [int(c) for c in children]
    return pids


def status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(env: Env, mode: str) -> float | None:
    """user+system CPU seconds used so far by the proxy of `mode` (all its processes); None for direct."""
    if mode == "direct":
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in proxy_pids(env.procs[mode]):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def with_cpu(env: Env, mode: str, run: Any, *args: Any) -> dict[str, Any]:
    """`run()`'s figures plus the proxy's CPU per unit of work: per GiB moved or per request. CPU time
    barely depends on how loaded the machine is, so it shows what each proxy costs even when wall-clock
    figures are noisy."""
    before, t0 = cpu_seconds(env, mode), time.monotonic()
    result = dict(run(*args))
    after, wall = cpu_seconds(env, mode), time.monotonic() - t0
    if before is not None and after is not None:
        used = after - before
        result["proxy_cpu_s"] = used
        result["proxy_cores"] = used / wall  # cores the proxy kept busy, connection set-up included
        if result.get("bytes"):
            result["cpu_s_per_gib"] = used / (result["bytes"] / GIB)
        if result.get("requests"):
            result["cpu_us_per_req"] = used / result["requests"] * 1e6
    return result


def peak_rss(env: Env, mode: str, run: Any) -> dict[str, float]:
    """Peak RSS (MiB) of the busiest proxy process while `run()` transfers; VmHWM reset first."""
    pids = proxy_pids(env.procs[mode])
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = max(status_kib(p, "VmRSS") for p in pids)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(max(status_kib(p, "VmRSS") for p in pids))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = run()
    finally:
        done.set()
        t.join()
    hwm = max(status_kib(p, "VmHWM") for p in pids)
    return {
        "peak_rss_mib": hwm / 1024,
        "rss_before_mib": before / 1024,
        "max_sampled_rss_mib": max(samples, default=0) / 1024,
        "mb_s": result["mb_s"],
    }


# -------------------------------------------------------------------------------------------- main


def best(results: list[dict[str, Any]], key: str, higher: bool = True) -> dict[str, Any]:
    valid = [r for r in results if r.get(key) is not None]
    return (max if higher else min)(valid, key=lambda r: r[key]) if valid else results[0]


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    sizes = {"big": 64 * MIB if quick else GIB, "huge": 256 * MIB if quick else 5 * GIB}
    small_n = 300 if quick else 3000
    seconds = 2.0 if quick else 8.0
    rounds = 1 if quick else args.rounds
    root = Path(tempfile.mkdtemp(prefix="s3proxy-bench-"))
    env, dns = start_env(root, args, sizes)
    wN = f"s3proxy-w{args.workers}"
    modes = ["direct", "bare", "s3proxy"]
    out: dict[str, Any] = {
        "quick": quick,
        "sizes": sizes,
        "cores": os.cpu_count(),
        "workers": args.workers,
        "proxy_python": proxy_python(args),
        "load_before": os.getloadavg(),
        "seconds": seconds,
        "results": {},
    }
    res: dict[str, dict[str, Any]] = out["results"]

    def want(test: str) -> bool:
        return not args.tests or test in args.tests.split(",")

    def record(test: str, mode: str, value: dict[str, Any], key: str, higher: bool = True) -> None:
        slot = res.setdefault(test, {})
        runs = [v for v in (slot.get(mode), value) if v is not None]
        slot[mode] = dict(best(runs, key, higher))
        for cpu in ("cpu_s_per_gib", "cpu_us_per_req"):  # the cheapest run: least disturbed by others
            if any(cpu in v for v in runs):
                slot[mode][cpu] = min(v[cpu] for v in runs if cpu in v)
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in value.items()}
        print(f"  {test:<14} {mode:<13} {json.dumps(shown)}", flush=True)

    try:
        time.sleep(1.0)  # workers finish starting
        for m in [*modes, *(m for m in env.ports if m.startswith("s3proxy-"))]:
            sequential_gets(env, m, 5)  # warm-up: leaf certificates, DNS, upstream connections
        upload = root / "upload.bin"
        with upload.open("wb") as f:
            f.truncate(sizes["big"])
        chunked = root / "upload.chunked"
        # Peak RSS first, on fresh processes (workers: 1): a `huge` object goes up and comes back down.
        huge = root / "upload-huge.bin"
        with huge.open("wb") as f:
            f.truncate(sizes["huge"])
        get_h = sign("GET", S3_HOST, "/bench/huge", EMPTY_SHA256)
        put_h = sign("PUT", S3_HOST, "/bench/up-huge", "UNSIGNED-PAYLOAD")
        for m in ("bare", "s3proxy") if want("rss") else ():
            record(
                "rss_put_huge",
                m,
                peak_rss(env, m, lambda m=m: curl(env, m, "PUT", "/bench/up-huge", put_h, huge)),
                "peak_rss_mib",
                higher=False,
            )
            (root / "www" / "bench" / "up-huge").unlink(missing_ok=True)
            record(
                "rss_get_huge",
                m,
                peak_rss(env, m, lambda m=m: curl(env, m, "GET", "/bench/huge", get_h, None)),
                "peak_rss_mib",
                higher=False,
            )
        for rnd in range(rounds):
            print(f"round {rnd + 1}/{rounds}", flush=True)
            chunk_headers = chunked_body(chunked, sizes["big"], 64 * 1024) if want("big") else []
            get_h = sign("GET", S3_HOST, "/bench/big", EMPTY_SHA256)
            put_h = sign("PUT", S3_HOST, "/bench/up-big", "UNSIGNED-PAYLOAD")
            for m in [*modes, "s3proxy-aes256"] if want("big") else ():
                record(
                    "get_big",
                    m,
                    with_cpu(env, m, curl, env, m, "GET", "/bench/big", get_h, None),
                    "mb_s",
                )
                record(
                    "put_big",
                    m,
                    with_cpu(env, m, curl, env, m, "PUT", "/bench/up-big", put_h, upload),
                    "mb_s",
                )
                (root / "www" / "bench" / "up-big").unlink(missing_ok=True)
                chunk_args = (env, m, "PUT", "/bench/up-chunked", chunk_headers, chunked)
                record("put_chunked", m, with_cpu(env, m, curl, *chunk_args), "mb_s")
                (root / "www" / "bench" / "up-chunked").unlink(missing_ok=True)
            for m in modes if want("small") else ():
                record("small_seq", m, with_cpu(env, m, sequential_gets, env, m, small_n), "req_s")
            for m in [*modes, *NEWCONN_VARIANTS] if want("newconn") else ():
                record("new_conn", m, with_cpu(env, m, new_connection_gets, env, m, small_n // 10), "req_s")
            for clients in (32, 256) if want("conc") else ():
                cmodes = [*modes, *([wN] if wN in env.ports else [])]
                if clients == 256:
                    cmodes.append("s3proxy-vi30")
                for m in cmodes:
                    record(f"conc_{clients}", m, concurrent_gets(env, m, clients, seconds), "req_s")
        chunked.unlink(missing_ok=True)
        for m in ("bare", "s3proxy"):  # memory after every test, the 256-client ones included
            res.setdefault("rss_after_load", {})[m] = {
                "rss_mib": max(status_kib(p, "VmRSS") for p in proxy_pids(env.procs[m])) / 1024
            }
        out["proxy_log_tail"] = {
            m: (root / f"{m}.log").read_text(errors="replace")[-2000:]
            for m in env.ports
            if (root / f"{m}.log").exists()
        }
    finally:
        out["load_after"] = os.getloadavg()
        env.close()
        dns.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return out


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


NEWCONN_VARIANTS = ("s3proxy-vi30", "s3proxy-noreuse", "s3proxy-ecdsa")
VARIANT_LABELS = {
    "s3proxy-vi30": "verify_interval 30",
    "s3proxy-noreuse": "reuse_idle 0",
    "s3proxy-ecdsa": "ECDSA CA",
    "s3proxy-aes256": "prefer_aes128 false",
}


def _variants(r: dict[str, Any], test: str, metric: str, fmt: str) -> str:
    """The s3proxy variants' figures for `test` (those of VARIANT_LABELS that ran it), labelled."""
    found = r.get(test, {})
    return "; ".join(
        f"{label}: " + fmt.format(found[m][metric])
        for m, label in VARIANT_LABELS.items()
        if found.get(m, {}).get(metric) is not None
    )


def table(out: dict[str, Any]) -> str:
    r = out["results"]
    rows = [("test", "metric", "direct", "bare", "s3proxy", "s3p/bare", "s3p/direct", "more")]

    def row(test: str, metric: str, fmt: str = "{:.0f}", extra: str = "") -> None:
        if test not in r:
            return
        v = {m: r[test].get(m, {}).get(metric) for m in ("direct", "bare", "s3proxy")}
        cells = [fmt.format(x) if x is not None else "-" for x in v.values()]
        rows.append(
            (test, metric, *cells, ratio(v["s3proxy"], v["bare"]), ratio(v["s3proxy"], v["direct"]), extra)
        )

    for t in ("get_big", "put_big", "put_chunked"):
        row(t, "mb_s", extra=_variants(r, t, "mb_s", "{:.0f} MB/s"))
        row(t, "cpu_s_per_gib", "{:.2f}", extra=_variants(r, t, "cpu_s_per_gib", "{:.2f}"))
    row("small_seq", "req_s")
    row("small_seq", "cpu_us_per_req")
    row("small_seq", "p50_ms", "{:.3f}")
    row("small_seq", "p99_ms", "{:.3f}")
    s = r.get("small_seq", {})
    if "direct" in s and "s3proxy" in s:
        added = {
            m: (s[m]["p50_ms"] - s["direct"]["p50_ms"], s[m]["p99_ms"] - s["direct"]["p99_ms"])
            for m in ("bare", "s3proxy")
            if m in s
        }
        rows.append(
            (
                "small_seq",
                "added p50/p99 ms",
                "0",
                *(f"{a:.3f}/{b:.3f}" for a, b in added.values()),
                "",
                "",
                "",
            )
        )
    row("new_conn", "req_s", extra=_variants(r, "new_conn", "req_s", "{:.0f} req/s"))
    row("new_conn", "cpu_us_per_req", extra=_variants(r, "new_conn", "cpu_us_per_req", "{:.0f} us/req"))
    for c in (32, 256):
        t = f"conc_{c}"
        if t not in r:
            continue
        wn = next((m for m in r[t] if m.startswith("s3proxy-w")), None)
        more = ""
        if wn:
            many, one = r[t][wn]["req_s"], r[t]["s3proxy"]["req_s"]
            more = f"{wn}: {many:.0f} req/s ({ratio(many, one)} of 1 worker)"
            cores = [r[t][m].get("proxy_cores", 0) for m in ("s3proxy", wn)]
            more += f", CPU used {cores[1]:.2f} vs {cores[0]:.2f} cores"
        if "s3proxy-vi30" in r[t]:
            more += f"; verify_interval 30: {r[t]['s3proxy-vi30']['req_s']:.0f} req/s"
        row(t, "req_s", extra=more)
        row(t, "cpu_us_per_req")
        errs = {m: r[t][m]["errors"] for m in r[t]}
        rows.append(
            (
                t,
                "errors",
                *(str(errs.get(m, "-")) for m in ("direct", "bare", "s3proxy")),
                "",
                "",
                ", ".join(f"{m}: {e}" for m, e in errs.items() if m.startswith("s3proxy-")),
            )
        )
        conn = {m: r[t][m].get("all_connected_s") for m in r[t]}
        rows.append(
            (
                t,
                "all connected s",
                *(f"{conn[m]:.2f}" if conn.get(m) else "-" for m in ("direct", "bare", "s3proxy")),
                "",
                "",
                ", ".join(f"{m}: {c:.2f}" for m, c in conn.items() if m.startswith("s3proxy-") and c),
            )
        )
    for t in ("rss_put_huge", "rss_get_huge"):
        if t in r:
            v = {m: r[t].get(m, {}).get("peak_rss_mib") for m in ("direct", "bare", "s3proxy")}
            rows.append(
                (
                    t,
                    "peak RSS MiB",
                    "-",
                    *(f"{x:.0f}" if x else "-" for x in list(v.values())[1:]),
                    ratio(v["s3proxy"], v["bare"]),
                    "",
                    f"{out['sizes']['huge'] // MIB} MiB object",
                )
            )
    after = r.get("rss_after_load", {})
    if after:
        v = {m: after.get(m, {}).get("rss_mib") for m in ("bare", "s3proxy")}
        rows.append(
            (
                "after all tests",
                "RSS MiB",
                "-",
                *(f"{x:.0f}" if x else "-" for x in v.values()),
                ratio(v["s3proxy"], v["bare"]),
                "",
                "after the 256-client tests",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and short runs: a smoke test")
    p.add_argument("--json", type=Path, help="write all figures to this file")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="workers for the s3proxy-wN variant"
    )
    p.add_argument("--rounds", type=int, default=2, help="repeat each test; the best figure is kept")
    p.add_argument("--tests", help="comma-separated subset: big,small,newconn,conc,rss (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    p.add_argument(
        "--venv",
        type=Path,
        help="run the proxies (s3proxy, mitmdump) from this venv, e.g. one on another Python build "
        "(default: the repository's .venv); it needs `pip install --require-hashes -r requirements.lock` "
        "and `pip install --no-deps -e .`",
    )
    p.add_argument("--table", type=Path, help="print the table of a JSON file written by --json, run nothing")
    p.add_argument("--load-client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if args.load_client:
        print(json.dumps(_load(json.loads(args.load_client))))
        return 0
    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so nginx, the DNS server and the proxies are
    # stopped instead of being left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    missing = [p for p in ("python", "s3proxy", "mitmdump") if not (proxy_venv(args) / "bin" / p).exists()]
    if missing:
        print(f"{proxy_venv(args)}/bin has no {', '.join(missing)}: see --help for --venv", file=sys.stderr)
        return 2
    out = run_bench(args)
    print()
    print(table(out))
    print(f"\nload average before {out['load_before']}, after {out['load_after']}; {out['cores']} cores")
    print(f"proxies' Python: {out['proxy_python']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
