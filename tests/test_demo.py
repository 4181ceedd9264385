"""Unit checks for what `s3proxy demo` relies on without running it: the proxy's per-request log line
never carries a signature or a session token, and a missing development tool is a one-line message."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from addons.s3proxy_addon import _loggable, describe
from s3proxy import demo as demo_mod
from s3proxy.cli import main, request_from_url
from s3proxy.config import load_config
from s3proxy.engine import Engine
from s3proxy.signing import signer_from_config
from s3proxy.standin import MissingTool

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
VPCE = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/b/k", "/b/k"),
        ("/b/k?", "/b/k?"),
        ("/b/k?uploads", "/b/k?uploads"),
        ("/b/k?partNumber=1&uploadId=abc", "/b/k?partNumber=1&uploadId=abc"),
        (
            "/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=f00d&X-Amz-SignedHeaders=host",
            "/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=...&X-Amz-SignedHeaders=host",
        ),
        ("/k?x-amz-security-token=SECRET%2Fx&a=1", "/k?x-amz-security-token=...&a=1"),
        (
            "/k?AWSAccessKeyId=AKIA&Signature=abc%3D&Expires=1",
            "/k?AWSAccessKeyId=AKIA&Signature=...&Expires=1",
        ),
    ],
)
def test_log_target_hides_signatures_and_tokens(target: str, logged: str) -> None:
    assert _loggable(target) == logged


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"endpoints: {{us-east-1: {VPCE}}}\n"
        f"signing: {{keys: [{{access_key_id: {KEY_ID}, secret_access_key: '{SECRET}'}}]}}\n"
    )
    config = load_config(cfg, {})
    return Engine(config, signer_from_config(config.signing, access_restricted=config.access.restricted))


def _presigned(url: str) -> str:
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(signature_version="s3v4"),
    )
    bucket, key = url.split("/", 1)
    return str(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}))


def test_describe_forward_presigned_and_reject(engine: Engine) -> None:
    now = datetime.now(UTC)
    url = _presigned("my-bucket/a b.txt")
    req = request_from_url("GET", url, [])
    d = engine.decide(req, now)
    line = describe(req, d)
    assert d.action == "forward", d.error
    asked, sent = line.split(" -> ")
    assert asked.startswith("GET https://my-bucket.s3.amazonaws.com/a%20b.txt?")
    assert sent.startswith(f"GET https://bucket.{VPCE}/my-bucket/a%20b.txt?")
    assert sent.endswith("(us-east-1 from credential-scope; signature resigned)")
    # Neither the client's nor the proxy's signature value appears.
    sig = url.split("X-Amz-Signature=")[1]
    assert sig not in line and "X-Amz-Signature=..." in asked and "X-Amz-Signature=..." in sent
    assert SECRET not in line

    fips = request_from_url("GET", "https://b.s3-fips.us-east-1.amazonaws.com/k", [])
    assert describe(fips, engine.decide(fips, now)) == (
        "GET https://b.s3-fips.us-east-1.amazonaws.com/k -> refused 400 InvalidRequest (fips)"
    )


def test_missing_tool_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_aws(name: str) -> str:
        raise MissingTool("awscli")

    monkeypatch.setattr(demo_mod, "_tool", no_aws)
    assert demo_mod.run_demo(out=io.StringIO()) == demo_mod.EXIT_SETUP
    err = capsys.readouterr().err
    assert (
        err.strip() == "s3proxy demo: awscli is not installed: run `bash scripts/setup.sh` "
        "(it installs s3proxy's test and demo tools)"
    )


def test_demo_subcommand_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    assert "--keep" in capsys.readouterr().out
