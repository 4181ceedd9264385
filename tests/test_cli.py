"""`s3proxy explain`: botocore is the oracle for what goes upstream, and no input ends in a traceback.

The key property: the request botocore sends to a default S3 name, pasted into `explain` as `-X`, `-H` and
the URL (exactly what an operator copies from a debug log), comes out as the request botocore itself sends
when configured with the vpce `endpoint_url` — same URL, same Host, same `Authorization` byte for byte (or
the same presigned query). Most tests call `s3proxy.cli.main` in-process; a few run the installed console
script to prove exit codes and that no traceback ever reaches the user.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config as BotoConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3proxy import cli

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//+token=="
OTHER_AKID = "AKIAUNKNOWNKEY000000"
FROZEN = datetime.datetime(2024, 7, 1, 12, 30, 45)
VPCE_ID = "vpce-1a2b3c4d-5e6f"
ACCOUNT = "123456789012"

REGIONS = [
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "sa-east-1",
    "cn-north-1",
    "us-gov-west-1",
]

S3PROXY = Path(sys.executable).with_name("s3proxy")


def vpce_domain(region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{VPCE_ID}.s3.{region}.vpce.{suffix}"


def write_config(path: Path, *, addressing: str = "path", extra: str = "") -> Path:
    endpoints = "\n".join(f"  {r}: {vpce_domain(r)}" for r in REGIONS)
    path.write_text(
        f"""\
endpoints:
{endpoints}
default_region: us-east-1
addressing: {addressing}
buckets:
  legacy-reports: eu-west-1
signing:
  mode: keyring
  keys:
    - access_key_id: {AKID}
      secret_access_key: {SECRET}
{extra}""",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cfg")
    return {a: write_config(d / f"{a}.yaml", addressing=a) for a in ("path", "virtual")}


@pytest.fixture
def cfg(configs: dict[str, Path]) -> str:
    return str(configs["path"])


# -- botocore capture ------------------------------------------------------------------------------------


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        return iter(())

    def read(self, *_: Any, **__: Any) -> bytes:
        return b""


@dataclasses.dataclass(frozen=True)
class Sent:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


_SESSION = botocore.session.get_session()
_CLIENTS: dict[str, tuple[Any, list[Sent]]] = {}


def _client(service: str, region: str, endpoint_url: str | None, token: str | None, cfg: dict[str, Any]) -> Any:
    """A cached botocore client whose requests are recorded by a before-send handler, never sent."""
    key = json.dumps([service, region, endpoint_url, token, cfg], sort_keys=True)
    if key not in _CLIENTS:
        client = _SESSION.create_client(
            service,
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=AKID,
            aws_secret_access_key=SECRET,
            aws_session_token=token,
            config=BotoConfig(retries={"max_attempts": 1}, **cfg),
        )
        sent: list[Sent] = []

        def before_send(request: Any, **_: Any) -> AWSResponse:
            hdrs = tuple((k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items())
            sent.append(Sent(request.method, request.url, hdrs))
            return AWSResponse(request.url, 200, {}, _Raw())

        client.meta.events.register("before-send", before_send)
        _CLIENTS[key] = (client, sent)
    return _CLIENTS[key]


Call = Callable[[Any], Any]


def capture(
    call: Call,
    region: str,
    endpoint_url: str | None = None,
    *,
    service: str = "s3",
    token: str | None = None,
    cfg: dict[str, Any] | None = None,
) -> Sent:
    """The first request botocore would send for `call(client)` at the frozen time, without sending it."""
    client, sent = _client(service, region, endpoint_url, token, cfg or {})
    sent.clear()
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        try:
            call(client)
        except Exception:  # the fake 200 response may not parse; only the request matters
            pass
    assert sent, "botocore sent nothing"
    return sent[0]


def presign(
    op: str,
    params: dict[str, Any],
    region: str,
    endpoint_url: str | None = None,
    *,
    token: str | None = None,
    cfg: dict[str, Any] | None = None,
) -> str:
    # botocore presigns with SigV2 unless told s3v4; SigV4 is what must be re-signed.
    client, _ = _client("s3", region, endpoint_url, token, {"signature_version": "s3v4", **(cfg or {})})
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        return str(client.generate_presigned_url(op, Params=params, ExpiresIn=3600))


# -- running explain -------------------------------------------------------------------------------------


def explain_args(config: str, sent: Sent, *extra: str) -> list[str]:
    """What an operator pastes: the method, every header botocore sent, the URL."""
    args = ["explain", "--config", config, *extra, "-X", sent.method]
    for k, v in sent.headers:
        args += ["-H", f"{k}: {v}"]
    return [*args, sent.url]


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, dict[str, Any]]:
    code, out, err = run(capsys, [*args[:1], "--json", *args[1:]])
    assert out.count("\n") == 1, (out, err)
    obj = json.loads(out)
    assert isinstance(obj, dict)
    return code, obj


def upstream_header(obj: dict[str, Any], name: str) -> str | None:
    values = [v for k, v in obj["headers"] if k.lower() == name.lower()]
    assert len(values) <= 1, f"{name} sent {len(values)} times"
    return values[0] if values else None


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        # Neither in a form JSON or a URL could have re-encoded it.
        assert SECRET.replace("/", "%2F") not in text and SECRET.replace("/", "\\/") not in text
