"""Local stand-ins for what s3proxy talks to, for `s3proxy demo` and the end-to-end tests.

Strategy: an S3 interface endpoint is simulated on loopback by real SeaweedFS serving the vpce names over
TLS with a throwaway CA (`seaweed`, `certs`), and a small authoritative DNS server answers the vpce names
with loopback addresses (`dns`). Nothing here is used by the proxy itself.

These modules need the development tools `scripts/setup.sh` installs (trustme, dnslib, SeaweedFS, boto3),
which are not s3proxy dependencies: they are imported only when a stand-in is used, and a missing one
raises `MissingTool` naming the package and the set-up command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SETUP_HINT = "run `bash scripts/setup.sh` (it installs s3proxy's test and demo tools)"


class MissingTool(RuntimeError):
    """A development tool the stand-ins need is not installed."""

    def __init__(self, package: str) -> None:
        super().__init__(f"{package} is not installed: {SETUP_HINT}")
        self.package = package


def require(module: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingTool naming the pip package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingTool(package or module.split(".")[0]) from e


__all__ = ["SETUP_HINT", "MissingTool", "require"]
