"""`workers: N`: N proxy processes sharing one listening port, and the parent that supervises them.

# Strategy: mitmproxy runs one asyncio event loop, so one process uses one core. The parent checks that the
# port is free, makes sure the CA exists (s3proxy.runner: every worker presents the same CA), then forks N
# workers; each runs the ordinary proxy and opens its own listening socket with SO_REUSEPORT, so the kernel
# spreads new connections across the workers (by a hash of the connection's addresses). Chosen over one
# socket bound by the parent and inherited by all: asyncio accepts up to `backlog` connections per wake-up,
# so on a shared socket whichever worker wakes first takes a whole burst; and Linux admits only sockets of
# the same user into a SO_REUSEPORT group. The parent serves nothing: it forwards SIGTERM, SIGINT and
# SIGHUP (reload) to the workers, starts a worker again when one dies (a signal, a crash, an exit nobody
# asked for; at most RESTART_LIMIT times in RESTART_WINDOW seconds), stops all when a worker exits with 1
# or 2 (a fatal problem such as an admin port in use, which a restart would only repeat), and exits when
# every worker has exited. Workers die with the parent (PR_SET_PDEATHSIG), so none is left serving alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType

RESTART_LIMIT = 10
RESTART_WINDOW = 60.0
FATAL_EXIT_CODES = (1, 2)  # what s3proxy.runner.serve returns for a problem a restart would repeat
CRASH_EXIT_CODE = 70  # EX_SOFTWARE: an exception escaped a worker; it is started again
_PR_SET_PDEATHSIG = 1


def supported() -> bool:
    return hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")


def port_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (None: it can). Bound without SO_REUSEPORT, so it also fails
    when another process's SO_REUSEPORT group (say a second s3proxy) holds the port, which the workers'
    own sockets would silently join."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return str(e)
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: TIME_WAIT is fine
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(address)
            except OSError as e:
                return e.strerror or str(e)
    return None


def _die_with_parent(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _spawn(index: int, run_worker: Callable[[int], int]) -> int:
    parent = os.getpid()
    for stream in (sys.stdout, sys.stderr):  # text still buffered would be written by parent and child
        with contextlib.suppress(Exception):
            stream.flush()
    pid = os.fork()
    if pid:
        return pid
    # The worker: default signal dispositions until its event loop installs its own handlers.
    code = CRASH_EXIT_CODE
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(parent)
        code = run_worker(index)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else CRASH_EXIT_CODE
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def supervise(
    count: int,
    run_worker: Callable[[int], int],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Fork `count` workers running `run_worker(index)` and supervise them until all have exited. Returns
    the exit status for the parent: 0 after a requested stop, else the status that ended the workers."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    result = 0
    restarts: list[float] = []

    def signal_all(sig: int) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def on_signal(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        signal_all(sig)

    # Handlers first: a signal that arrives between two forks still reaches the workers already started.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for index in range(count):
        children[_spawn(index, run_worker)] = index
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        if code in FATAL_EXIT_CODES:
            print(
                f"s3proxy: worker {index} {_describe(code)}; stopping all workers",
                file=sys.stderr,
                flush=True,
            )
            stopping, result = True, code
            signal_all(signal.SIGTERM)
            continue
        now = clock()
        restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
        if len(restarts) > RESTART_LIMIT:
            print(
                f"s3proxy: worker {index} {_describe(code)}; more than {RESTART_LIMIT} restarts in "
                f"{RESTART_WINDOW:g}s, stopping all workers",
                file=sys.stderr,
                flush=True,
            )
            stopping, result = True, 1
            signal_all(signal.SIGTERM)
            continue
        print(f"s3proxy: worker {index} {_describe(code)}; starting it again", file=sys.stderr, flush=True)
        children[_spawn(index, run_worker)] = index
    return result


# -- metrics of every worker on one admin listener --------------------------------------------------------


def write_metrics(directory: Path, index: int, text: bytes) -> None:
    """Publish worker `index`'s metrics (Prometheus text) for worker 0 to serve; atomic (rename)."""
    tmp = directory / f".worker-{index}.prom.tmp"
    tmp.write_bytes(text)
    tmp.replace(directory / f"worker-{index}.prom")


def read_metrics(directory: Path, own_index: int, own: bytes, count: int) -> dict[int, bytes]:
    """Every worker's last published metrics (this worker's own fresh), by index; missing ones left out."""
    texts = {own_index: own}
    for index in range(count):
        if index != own_index:
            with contextlib.suppress(OSError):
                texts[index] = (directory / f"worker-{index}.prom").read_bytes()
    return texts


def merge_metrics(texts: Mapping[int, bytes]) -> bytes:
    """One exposition of several workers' metrics: every sample gets a `worker` label, families merged."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text.decode("utf-8", "replace")):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            merged.samples.extend(
                Sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)
