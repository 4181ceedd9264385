"""Process and port helpers for the stand-ins: free ports, waiting for a listener, stopping a process group,
and an environment with nothing that could point an AWS client or HTTP library elsewhere."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct currently free TCP ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_port(host: str, port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if not alive():
                raise RuntimeError(f"process exited before {host}:{port} was listening") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} not listening after {timeout:.0f}s") from None
            time.sleep(0.05)


def kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop a process started with `start_new_session=True` and everything it started: SIGTERM, then
    SIGKILL after `grace` seconds (grace 0: SIGKILL at once). Reaps the process."""
    if proc.poll() is not None:
        # The leader is gone, but children it left in its group may not be.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
    try:
        proc.wait(timeout=grace if grace > 0 else 10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def clean_client_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment minus anything that could point an AWS client or HTTP library elsewhere."""
    env = dict(os.environ if base is None else base)
    for k in list(env):
        ku = k.upper()
        if (
            ku.startswith("AWS_")
            or ku.endswith("_PROXY")
            or ku
            in (
                "REQUESTS_CA_BUNDLE",
                "SSL_CERT_FILE",
                "SSL_CERT_DIR",
                "CURL_CA_BUNDLE",
            )
        ):
            del env[k]
    env.update(
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
    )
    return env


__all__ = ["clean_client_env", "free_ports", "kill_group", "wait_for_port"]
