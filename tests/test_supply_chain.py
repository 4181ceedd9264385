"""Supply chain: every dependency pinned with hashes in requirements.lock, and a vulnerability audit of that
pinned set when the tools and the advisory database are reachable (otherwise skipped, saying why)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from the lock file (pip's requirements format with --hash lines)."""
    out: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("--hash") else raw.strip()
        if not line:
            continue
        if line.startswith("--hash="):
            assert current is not None, raw
            out[current][1].append(line.removeprefix("--hash=").rstrip(" \\"))
            continue
        m = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line)
        assert m, f"not pinned with ==: {raw!r}"
        current = _canon(m.group(1))
        out[current] = (m.group(2), [])
    return out


def _direct_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [_NAME.match(d).group(1) for d in project["dependencies"]]  # type: ignore[union-attr]
    for raw in (ROOT / "requirements-dev.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(_NAME.match(line).group(1))  # type: ignore[union-attr]
    return [_canon(n) for n in names]


def test_lock_pins_every_installed_package_with_hashes() -> None:
    locked = _locked()
    assert locked, "requirements.lock is empty"
    for name, (version, hashes) in locked.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (name, hashes)
        assert version
    missing = [n for n in _direct_requirements() if n not in locked]
    assert not missing, f"in pyproject.toml / requirements-dev.txt but not in requirements.lock: {missing}"
    # Everything the project needs at run time (and what that pulls in) is locked: walk the installed
    # dependency graph from s3proxy and find each distribution in the lock.
    seen: set[str] = set()
    todo = ["s3proxy"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional or other-platform dependency that is not installed here
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            m = _NAME.match(req)
            if m:
                todo.append(_canon(m.group(1)))
    unlocked = sorted(n for n in seen - {"s3proxy"} if n not in locked and _installed(n))
    assert not unlocked, f"installed run-time dependencies missing from requirements.lock: {unlocked}"


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_pip_audit_of_the_lock() -> None:
    exe = shutil.which("pip-audit") or str(Path(sys.executable).parent / "pip-audit")
    if not Path(exe).exists():
        pytest.skip(
            "pip-audit is not installed: the vulnerability audit of requirements.lock did not run "
            "(install it with `.venv/bin/pip install pip-audit` where the advisory database is reachable)"
        )
    out = subprocess.run(
        [exe, "--requirement", str(LOCK), "--require-hashes", "--disable-pip", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    if out.returncode != 0 and re.search(r"(?i)connection|resolve|timed out|network|unreachable|HTTPS", text):
        pytest.skip(f"pip-audit could not reach its vulnerability database (offline): {text.strip()[-300:]}")
    unaudited = re.findall(r"(?m)^(\S+)\s+Dependency not found on PyPI and could not be audited", text)
    if unaudited:
        # Exit status 0 here would be a false all-clear: the advisory API was not reachable.
        pytest.skip(
            f"pip-audit could not fetch advisories for {len(unaudited)} packages (advisory API unreachable)"
        )
    assert out.returncode == 0, text
