"""`s3proxy explain` reports the policy decision and its deciding statement; `s3proxy policy lint` exits by
its findings; the Engine warns, enforces or skips per `policy_mode`.

The policies are the examples of AWS's "AWS PrivateLink for Amazon S3" guide (restrict to a bucket, restrict
to an account with aws:ResourceAccount, restrict a bucket to one aws:sourceVpce); the requests are what
botocore sends to the default S3 names, captured before they leave (nothing is sent).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.session
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config as BotoConfig

from s3proxy import cli
from s3proxy.check import report_policies
from s3proxy.config import Config, load_config
from s3proxy.engine import Engine
from s3proxy.model import Request, split_target
from s3proxy.signing import signer_from_config

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
OTHER_AKID = "AKIAI44QH8DHBEXAMPLE"
OTHER_SECRET = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"
FROZEN = datetime(2024, 7, 1, 12, 30, 45)
EP_NAME = "vpce-1a2b3c4d-5e6f.s3.us-east-1.vpce.amazonaws.com"
EP = "vpce-1a2b3c4d"
OTHER_EP_NAME = "vpce-0f0f0f0f-abcd.s3.us-east-1.vpce.amazonaws.com"
OTHER_EP = "vpce-0f0f0f0f"

# --- AWS's PrivateLink for S3 guide examples --------------------------------------------------------------

RESTRICT_TO_BUCKET: dict[str, Any] = {
    "Version": "2012-10-17",
    "Id": "Policy1415115909151",
    "Statement": [
        {
            "Sid": "Access-to-specific-bucket-only",
            "Principal": "*",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Effect": "Allow",
            "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket1", "arn:aws:s3:::amzn-s3-demo-bucket1/*"],
        }
    ],
}
# The account example is a statement added to the default (full access) endpoint policy.
RESTRICT_TO_ACCOUNT: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "DefaultFullAccess", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"},
        {
            "Sid": "Access-to-bucket-in-specific-account-only",
            "Principal": "*",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Effect": "Deny",
            "Resource": "arn:aws:s3:::*",
            "Condition": {"StringNotEquals": {"aws:ResourceAccount": "111122223333"}},
        },
    ],
}
RESTRICT_BUCKET_TO_VPCE: dict[str, Any] = {
    "Version": "2012-10-17",
    "Id": "Policy1415115909152",
    "Statement": [
        {
            "Sid": "Access-to-specific-VPCE-only",
            "Principal": "*",
            "Action": "s3:*",
            "Effect": "Deny",
            "Resource": ["arn:aws:s3:::amzn-s3-demo-bucket2", "arn:aws:s3:::amzn-s3-demo-bucket2/*"],
            "Condition": {"StringNotEquals": {"aws:sourceVpce": EP}},
        }
    ],
}


def write_config(
    tmp: Path,
    *,
    endpoint_name: str = EP_NAME,
    endpoint_policy: dict[str, Any] | None = None,
    bucket_policies: dict[str, dict[str, Any]] | None = None,
    mode: str = "off",
    extra: dict[str, Any] | None = None,
    name: str = "s3proxy.yaml",
) -> Path:
    """A config with policy files next to it, as an operator writes them."""
    ep: dict[str, Any] = {"dns_name": endpoint_name}
    if endpoint_policy is not None:
        (tmp / "endpoint-policy.json").write_text(json.dumps(endpoint_policy, indent=2))
        ep["policy"] = "endpoint-policy.json"
    bps = {}
    for bucket, doc in (bucket_policies or {}).items():
        (tmp / f"{bucket}.json").write_text(json.dumps(doc))
        bps[bucket] = f"{bucket}.json"
    data: dict[str, Any] = {
        "endpoints": {"us-east-1": ep},
        "signing": {
            "keys": [
                {"access_key_id": AKID, "secret_access_key": SECRET},
                {"access_key_id": OTHER_AKID, "secret_access_key": OTHER_SECRET},
            ]
        },
        "policy_mode": mode,
        "bucket_policies": bps,
        **(extra or {}),
    }
    path = tmp / name
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


# --- botocore as the client ---------------------------------------------------------------------------------

Sent = tuple[str, str, list[tuple[str, str]]]


def capture(call: Callable[[Any], Any], *, akid: str = AKID, secret: str = SECRET) -> Sent:
    """(method, url, headers) botocore sends for `call(client)` to the default S3 name; nothing is sent."""
    client = botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        config=BotoConfig(retries={"max_attempts": 1}, s3={"addressing_style": "virtual"}),
    )
    sent: list[Sent] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        hdrs = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()]
        sent.append((request.method, request.url, hdrs))
        return AWSResponse(request.url, 200, {}, mock.Mock(stream=lambda **_: iter(()), read=lambda *_: b""))

    client.meta.events.register("before-send", before_send)
    with mock.patch("botocore.auth.get_current_datetime", return_value=FROZEN):
        try:
            call(client)
        except Exception:  # the fake response may not parse; only the request matters
            if not sent:
                raise
    return sent[0]


def get(bucket: str, key: str = "a.txt") -> Callable[[Any], Any]:
    return lambda c: c.get_object(Bucket=bucket, Key=key)


def put(bucket: str, key: str = "a.txt") -> Callable[[Any], Any]:
    return lambda c: c.put_object(Bucket=bucket, Key=key, Body=b"x")


def list_objects(bucket: str) -> Callable[[Any], Any]:
    return lambda c: c.list_objects_v2(Bucket=bucket)


def explain(
    capsys: pytest.CaptureFixture[str], config: Path, sent: Sent, *extra: str
) -> tuple[int, str, str]:
    method, url, headers = sent
    args = ["explain", "--config", str(config), *extra, "-X", method]
    for k, v in headers:
        args += ["-H", f"{k}: {v}"]
    code = cli.main([*args, url])
    out, err = capsys.readouterr()
    return code, out, err


# --- explain: decision + deciding statement, for allowed and denied requests ------------------------------

EP_DOC = f"VPC endpoint policy of {EP}"

CASES = [
    # (id, config kwargs, request, outcome, sid, document, unknown)
    (
        "bucket-example allows GetObject in the bucket",
        {"endpoint_policy": RESTRICT_TO_BUCKET},
        get("amzn-s3-demo-bucket1"),
        "allow",
        "Access-to-specific-bucket-only",
        EP_DOC,
        [],
    ),
    (
        "bucket-example allows PutObject in the bucket",
        {"endpoint_policy": RESTRICT_TO_BUCKET},
        put("amzn-s3-demo-bucket1", "dir/b c"),
        "allow",
        "Access-to-specific-bucket-only",
        EP_DOC,
        [],
    ),
    (
        "bucket-example: another bucket is implicitly denied",
        {"endpoint_policy": RESTRICT_TO_BUCKET},
        get("other-bucket"),
        "implicit-deny",
        None,
        EP_DOC,
        [],
    ),
    (
        "bucket-example: listing is not among the allowed actions",
        {"endpoint_policy": RESTRICT_TO_BUCKET},
        list_objects("amzn-s3-demo-bucket1"),
        "implicit-deny",
        None,
        EP_DOC,
        [],
    ),
    (
        "account-example allows the account's bucket",
        {"endpoint_policy": RESTRICT_TO_ACCOUNT},
        get("amzn-s3-demo-bucket1"),
        "allow",
        "DefaultFullAccess",
        EP_DOC,
        [],
    ),
    (
        "account-example denies another account's bucket",
        {"endpoint_policy": RESTRICT_TO_ACCOUNT},
        put("theirs"),
        "deny",
        "Access-to-bucket-in-specific-account-only",
        EP_DOC,
        [],
    ),
    (
        "account-example: owner not configured is undetermined",
        {"endpoint_policy": RESTRICT_TO_ACCOUNT},
        get("unmapped-bucket"),
        "undetermined",
        "Access-to-bucket-in-specific-account-only",
        EP_DOC,
        ["aws:ResourceAccount"],
    ),
    (
        "vpce-example: through the named endpoint the bucket policy does not deny",
        {"bucket_policies": {"amzn-s3-demo-bucket2": RESTRICT_BUCKET_TO_VPCE}},
        get("amzn-s3-demo-bucket2"),
        "not-denied",
        None,
        None,
        [],
    ),
    (
        "vpce-example: through another endpoint the bucket policy denies",
        {
            "endpoint_name": OTHER_EP_NAME,
            "bucket_policies": {"amzn-s3-demo-bucket2": RESTRICT_BUCKET_TO_VPCE},
        },
        get("amzn-s3-demo-bucket2"),
        "deny",
        "Access-to-specific-VPCE-only",
        "bucket policy of amzn-s3-demo-bucket2",
        [],
    ),
]
ACCOUNTS = {"bucket_accounts": {"amzn-s3-demo-bucket1": "111122223333", "theirs": "444455556666"}}


@pytest.mark.parametrize(
    ("config_kw", "call", "outcome", "sid", "document", "unknown"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
@pytest.mark.parametrize("mode", ["off", "warn", "enforce"])
def test_explain_reports_decision_and_sid(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    mode: str,
    config_kw: dict[str, Any],
    call: Callable[[Any], Any],
    outcome: str,
    sid: str | None,
    document: str | None,
    unknown: list[str],
) -> None:
    config = write_config(tmp_path, mode=mode, extra=ACCOUNTS, **config_kw)
    sent = capture(call)
    denied = outcome in ("deny", "implicit-deny")

    code, out, err = explain(capsys, config, sent, "--json")
    assert err == ""
    d = json.loads(out)
    pol = d["policy"]
    assert (pol["outcome"], pol["sid"], pol["document"], pol["unknown"]) == (outcome, sid, document, unknown)
    assert pol["reason"]
    # Only enforce changes what the proxy does; explain shows the verdict in every mode.
    if mode == "enforce" and denied:
        assert code == cli.EXIT_REJECT
        assert (d["action"], d["status"], d["code"]) == ("reject", 403, "AccessDenied")
        assert d["url"] is None
        assert (sid or document or "") in d["message"]
    else:
        assert code == cli.EXIT_OK
        assert d["action"] == "forward"
        assert d["url"].startswith(f"https://bucket.{config_kw.get('endpoint_name', EP_NAME)}/")

    code, text, _ = explain(capsys, config, sent)
    line = next(ln for ln in text.splitlines() if ln.startswith("policy:"))
    assert line.startswith(f"policy:    {outcome} (policy_mode: {mode}")
    if sid:
        assert f"statement: {sid!r}" in text
        assert f"in the {document}" in text
    elif document:
        assert f"document:  {document}" in text
    assert "reason:" in text
    if unknown:
        assert f"unknown:   {', '.join(unknown)}" in text
    if mode == "enforce" and denied:
        assert "error:     403 AccessDenied" in text


def test_enforced_deny_message_names_sid_and_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        mode="enforce",
        endpoint_name=OTHER_EP_NAME,
        bucket_policies={"amzn-s3-demo-bucket2": RESTRICT_BUCKET_TO_VPCE},
    )
    code, out, _ = explain(capsys, config, capture(get("amzn-s3-demo-bucket2", "x/y.txt")), "--json")
    assert code == cli.EXIT_REJECT
    msg = json.loads(out)["message"]
    assert "s3:GetObject" in msg and "arn:aws:s3:::amzn-s3-demo-bucket2/x/y.txt" in msg
    assert "explicit deny in the bucket policy of amzn-s3-demo-bucket2" in msg
    assert "'Access-to-specific-VPCE-only'" in msg


def test_principal_account_from_accounts_map(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A bucket policy allowing one account: the access key's account (from `accounts`) decides."""
    bucket_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyOtherAccounts",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": ["arn:aws:s3:::shared", "arn:aws:s3:::shared/*"],
                "Condition": {"StringNotEquals": {"aws:PrincipalAccount": "111122223333"}},
            }
        ],
    }
    config = write_config(
        tmp_path,
        bucket_policies={"shared": bucket_policy},
        extra={"accounts": {AKID: "111122223333", OTHER_AKID: "arn:aws:iam::444455556666:user/bob"}},
    )
    _, out, _ = explain(capsys, config, capture(get("shared")), "--json")
    assert json.loads(out)["policy"]["outcome"] == "not-denied"
    _, out, _ = explain(
        capsys, config, capture(get("shared"), akid=OTHER_AKID, secret=OTHER_SECRET), "--json"
    )
    assert (json.loads(out)["policy"]["outcome"], json.loads(out)["policy"]["sid"]) == (
        "deny",
        "DenyOtherAccounts",
    )


def test_explain_access_point_against_endpoint_policy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_config(tmp_path, endpoint_policy=RESTRICT_TO_BUCKET)
    sent = capture(
        lambda c: c.get_object(Bucket="arn:aws:s3:us-east-1:111122223333:accesspoint/my-ap", Key="k")
    )
    assert "my-ap-111122223333.s3-accesspoint.us-east-1.amazonaws.com" in sent[1]
    _, out, _ = explain(capsys, config, sent, "--json")
    pol = json.loads(out)["policy"]
    assert pol["outcome"] == "implicit-deny"
    assert pol["resource"] == "arn:aws:s3:us-east-1:111122223333:accesspoint/my-ap/object/k"


def test_no_policy_lines_without_policies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path)
    code, out, _ = explain(capsys, config, capture(get("any-bucket")), "--json")
    assert code == cli.EXIT_OK and "policy" not in json.loads(out)
    _, text, _ = explain(capsys, config, capture(get("any-bucket")))
    assert "policy:" not in text


def test_policy_not_evaluated_when_refused_earlier(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_config(tmp_path, endpoint_policy=RESTRICT_TO_BUCKET, mode="enforce")
    method, url, headers = capture(get("amzn-s3-demo-bucket1"))
    tampered = [
        (k, v[:-1] + ("1" if v.endswith("0") else "0") if k == "Authorization" else v) for k, v in headers
    ]
    code, out, _ = explain(capsys, config, (method, url, tampered), "--json")
    d = json.loads(out)
    assert (code, d["code"], d["policy"]) == (cli.EXIT_REJECT, "SignatureDoesNotMatch", None)
    _, text, _ = explain(capsys, config, (method, url, tampered))
    assert "policy:    not evaluated" in text


def test_har_lines_carry_the_policy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path, endpoint_policy=RESTRICT_TO_BUCKET, mode="enforce")
    entries = []
    for call in (get("amzn-s3-demo-bucket1"), get("other-bucket")):
        method, url, headers = capture(call)
        entries.append(
            {
                "request": {
                    "method": method,
                    "url": url,
                    "headers": [{"name": k, "value": v} for k, v in headers],
                }
            }
        )
    har = tmp_path / "cap.har"
    har.write_text(json.dumps({"log": {"entries": entries}}))
    code = cli.main(["explain", "--config", str(config), "--har", str(har)])
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert code == cli.EXIT_REJECT
    assert [ln["policy"]["outcome"] for ln in lines] == ["allow", "implicit-deny"]
    assert [ln["action"] for ln in lines] == ["forward", "reject"]


# --- policy lint -------------------------------------------------------------------------------------------


def lint(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["policy", "lint", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_policy_lint_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The guide's VPCE-only bucket policy names vpce-1a2b3c4d: fine when that is the proxy's endpoint...
    (tmp_path / "ok").mkdir()
    clean = write_config(
        tmp_path / "ok",
        endpoint_policy=RESTRICT_TO_BUCKET,
        bucket_policies={
            "amzn-s3-demo-bucket2": {
                **RESTRICT_BUCKET_TO_VPCE,
                "Statement": [
                    {
                        **RESTRICT_BUCKET_TO_VPCE["Statement"][0],
                        "Condition": {
                            "StringNotEquals": {"aws:sourceVpce": EP},
                            "ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/Admin"},
                        },
                    }
                ],
            }
        },
    )
    code, out, err = lint(capsys, "--config", str(clean))
    assert (code, out) == (0, "")
    assert "no warnings (1 endpoint policies, 1 bucket policies)" in err

    # ... a lock-out when the proxy uses another endpoint (and nobody can escape the Deny).
    (tmp_path / "trap").mkdir()
    trap = write_config(
        tmp_path / "trap",
        endpoint_name=OTHER_EP_NAME,
        bucket_policies={"amzn-s3-demo-bucket2": RESTRICT_BUCKET_TO_VPCE},
    )
    code, out, err = lint(capsys, "--config", str(trap))
    assert code == 1
    lines = out.splitlines()
    assert lines and all(ln.startswith("bucket policy of amzn-s3-demo-bucket2") for ln in lines)
    assert any("[unknown-endpoint]" in ln and "vpce-1a2b3c4d" in ln for ln in lines)
    assert any("'Access-to-specific-VPCE-only'" in ln for ln in lines)
    assert "warning(s)" in err

    # No policies at all: nothing to warn about.
    (tmp_path / "none").mkdir()
    code, out, _ = lint(capsys, "--config", str(write_config(tmp_path / "none")))
    assert (code, out) == (0, "")


def test_policy_lint_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"endpoints:\n  us-east-1:\n    dns_name: {EP_NAME}\n    policy: nope.json\n")
    code, out, err = lint(capsys, "--config", str(bad))
    assert (code, out) == (2, "")
    assert "endpoints.us-east-1.policy: cannot read policy file" in err
    code, _, err = lint(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in err
    with pytest.raises(SystemExit) as e:  # `policy` alone: argparse usage error
        cli.main(["policy"])
    assert e.value.code == 2


def test_check_reports_lint_warnings_without_failing(tmp_path: Path) -> None:
    trap = write_config(
        tmp_path,
        endpoint_name=OTHER_EP_NAME,
        bucket_policies={"amzn-s3-demo-bucket2": RESTRICT_BUCKET_TO_VPCE},
    )
    out = io.StringIO()
    report_policies(load_config(trap, {}), out)
    text = out.getvalue()
    assert text.startswith("policy: mode off, 0 endpoint policies, 1 bucket policies")
    assert "  warning: bucket policy of amzn-s3-demo-bucket2" in text and "[unknown-endpoint]" in text
    out = io.StringIO()
    report_policies(load_config(write_config(tmp_path, mode="enforce", name="c2.yaml"), {}), out)
    assert "no policy is configured" in out.getvalue()


# --- the Engine per policy_mode --------------------------------------------------------------------------


def engine_for(tmp_path: Path, mode: str, **kw: Any) -> Engine:
    config: Config = load_config(write_config(tmp_path, mode=mode, **kw), {})
    return Engine(config, signer_from_config(config.signing, access_restricted=True))


def request(sent: Sent) -> Request:
    method, url, headers = sent
    host = url.split("/")[2]
    path, query, has_query = split_target("/" + url.split("/", 3)[3])
    return Request(method, "https", host, None, path, query, tuple(headers), has_query)


NOW = datetime(2024, 7, 1, 12, 31, tzinfo=UTC)


def test_engine_off_skips_evaluation(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "off", endpoint_policy=RESTRICT_TO_BUCKET)
    d = engine.decide(request(capture(get("other-bucket"))), NOW)
    assert (d.action, d.policy) == ("forward", None)
    assert engine.policy_warnings == engine.policy_denials == 0


def test_engine_warn_logs_counts_and_forwards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_for(
        tmp_path,
        "warn",
        endpoint_name=OTHER_EP_NAME,
        bucket_policies={"amzn-s3-demo-bucket2": RESTRICT_BUCKET_TO_VPCE},
    )
    with caplog.at_level(logging.WARNING, logger="s3proxy.policy"):
        ok = engine.decide(request(capture(get("other-bucket"))), NOW)
        denied = engine.decide(request(capture(get("amzn-s3-demo-bucket2"))), NOW)
    assert ok.action == denied.action == "forward"
    assert denied.policy is not None and denied.policy.outcome == "deny"
    assert engine.policy_warnings == 1
    (rec,) = caplog.records
    assert rec.name == "s3proxy.policy"
    msg = rec.getMessage()
    assert "S3 would deny GET amzn-s3-demo-bucket2.s3.amazonaws.com/a.txt" in msg
    assert "'Access-to-specific-VPCE-only'" in msg and "bucket policy of amzn-s3-demo-bucket2" in msg
    assert SECRET not in msg and "Signature" not in msg


def test_engine_enforce_rejects_before_upstream(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "enforce", endpoint_policy=RESTRICT_TO_BUCKET)
    d = engine.decide(request(capture(get("other-bucket"))), NOW)
    assert d.action == "reject" and d.error is not None
    assert (d.error.status, d.error.code) == (403, "AccessDenied")
    assert d.headers == () and d.host == ""  # nothing to send
    assert engine.policy_denials == 1
    ok = engine.decide(request(capture(put("amzn-s3-demo-bucket1"))), NOW)
    assert ok.action == "forward" and ok.policy is not None and ok.policy.outcome == "allow"


def test_engine_checks_passthrough_without_endpoint(tmp_path: Path) -> None:
    """A passthrough request reaches S3 through no endpoint: aws:sourceVpce is absent, so the guide's
    VPCE-only bucket policy denies it. Families whose bucket the proxy cannot tell are not checked."""
    engine = engine_for(
        tmp_path,
        "enforce",
        bucket_policies={"amzn-s3-demo-bucket2": RESTRICT_BUCKET_TO_VPCE},
        extra={"unknown_region": "passthrough", "unsupported": "passthrough"},
    )

    def anonymous(host: str, path: str) -> Request:
        return Request("GET", "https", host, None, path, "", (("Host", host),), False)

    d = engine.decide(anonymous("amzn-s3-demo-bucket2.s3.eu-west-3.amazonaws.com", "/a"), NOW)
    assert d.plan.action == "passthrough"
    assert d.policy is not None and (d.policy.outcome, d.policy.sid) == (
        "deny",
        "Access-to-specific-VPCE-only",
    )
    assert d.action == "reject"
    assert engine.decide(anonymous("other.s3.eu-west-3.amazonaws.com", "/a"), NOW).action == "passthrough"
    # Through the configured endpoint the same bucket is not denied by its policy.
    assert engine.decide(anonymous("amzn-s3-demo-bucket2.s3.us-east-1.amazonaws.com", "/a"), NOW).action == (
        "forward"
    )
    web = engine.decide(anonymous("amzn-s3-demo-bucket2.s3-website-us-east-1.amazonaws.com", "/a"), NOW)
    assert web.action == "passthrough"
    assert (
        web.policy is not None and web.policy.outcome == "not-denied" and "not checked" in web.policy.reason
    )
