"""docs/config-reference.md is generated from the validator: it must be current and describe every key."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3proxy import config_reference as ref

DOC = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
REGENERATE = "regenerate it: python -m s3proxy.config_reference > docs/config-reference.md"


def test_reference_file_is_up_to_date() -> None:
    assert DOC.read_text() == ref.render(), f"docs/config-reference.md is stale; {REGENERATE}"


def test_every_key_is_described_and_every_description_is_a_key() -> None:
    paths = [k.path for k in ref.walk()]
    undescribed = [p for p in paths if p not in ref.DESCRIPTIONS]
    assert not undescribed, f"describe these keys in s3proxy/config_reference.py DESCRIPTIONS: {undescribed}"
    stale = sorted(set(ref.DESCRIPTIONS) - set(paths))
    assert not stale, f"DESCRIPTIONS names keys the validator does not accept: {stale}"
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize(
    ("path", "default"),
    [
        ("endpoints.<region>.dns_name", "(required)"),
        ("signing.keys[].secret_access_key_env", "—"),
        ("access.users[].password_hash", "(required)"),
        ("dns.negative_ttl", "5"),
        ("admin.listen", "off"),
        ("log.format", "json"),
        ("log.level", "info"),
        ("upstream.connect_timeout", "5"),
        ("access.allow_clients", "[127.0.0.0/8, ::1/128]"),
        ("unsupported.fips", "reject"),
    ],
)
def test_keys_come_from_the_validator(path: str, default: str) -> None:
    keys = {k.path: k for k in ref.walk()}
    assert keys[path].default == default


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((), "endpoints"),
        (("dns",), "negative_ttl"),
        (("endpoints", "us-east-1"), "prefer_zone"),
        (("signing", "keys", "[]"), "access_key_id"),
    ],
)
def test_probe_reads_known_keys(parts: tuple[str, ...], expected: str) -> None:
    keys = ref.accepted_keys(parts)
    assert keys is not None and expected in keys


@pytest.mark.parametrize("parts", [("default_region",), ("dns", "timeout"), ("endpoints",)])
def test_probe_says_none_for_values_that_are_no_fixed_mapping(parts: tuple[str, ...]) -> None:
    assert ref.accepted_keys(parts) is None
