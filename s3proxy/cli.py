"""The `s3proxy` command: run | check | explain | ca | policy lint.

Every failure the user can cause (bad config, bad URL, malformed HAR, a request the proxy would refuse)
ends in a one-paragraph message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from s3proxy import __version__
from s3proxy.config import Config, ConfigError, load_config
from s3proxy.engine import Decision, Engine
from s3proxy.model import Request, split_target
from s3proxy.policy import PolicyDecision

EXIT_OK = 0
EXIT_REJECT = 1  # explain: the proxy would refuse the request
EXIT_USAGE = 2  # bad arguments, bad config, unreadable input


class UsageError(Exception):
    """A problem with what the user gave us; the message says what to fix."""


def config_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("S3PROXY_CONFIG")
    if env:
        return Path(env)
    raise UsageError("no configuration file: pass --config FILE or set S3PROXY_CONFIG")


def load(arg: str | None) -> tuple[Config, Path]:
    path = config_path(arg)
    try:
        return load_config(path, os.environ), path
    except ConfigError as e:
        # Read errors already name the file; validation errors name only the key path.
        raise UsageError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read configuration: {e.strerror or e}") from None


# -- explain --------------------------------------------------------------------------------------------


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_MAX_URL = 16384


def _quote_non_ascii(text: str) -> str:
    """Non-ASCII characters percent-encoded as UTF-8, the way browsers and SDKs put them on the wire;
    everything else (including existing escapes) byte for byte."""
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)


def request_from_url(method: str, url: str, headers: Sequence[tuple[str, str]]) -> Request:
    """A core Request from an absolute URL, keeping path and query exactly as written."""
    if len(url) > _MAX_URL:
        raise UsageError(f"URL longer than {_MAX_URL // 1024} KiB")
    if not method or not method.isascii() or not method.isalpha() or not method.isupper():
        raise UsageError(f"not an HTTP method: {method!r} (give it in upper case, e.g. -X PUT)")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UsageError(f"URL contains whitespace or control characters (percent-encode them): {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
        hostname = parts.hostname
    except (ValueError, UnicodeError) as e:
        raise UsageError(f"not a valid URL: {url!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise UsageError(f"not an http(s) URL with a host: {url!r}")
    # urlsplit decodes nothing in the path; still, take the raw target from the original text so that
    # nothing (`//`, `/./`, `%2F`, a bare `?`) is touched. The fragment never goes on the wire. A URL
    # pasted from a browser may carry raw UTF-8 in the key; clients send that percent-encoded.
    after_host = url.split("//", 1)[1]
    cut = min((i for i in map(after_host.find, "/?#") if i >= 0), default=len(after_host))
    target = _quote_non_ascii(after_host[cut:].split("#", 1)[0])
    if not target.startswith("/"):
        target = "/" + target
    path, query, has_query = split_target(target)
    # What an HTTP client puts in Host for this URL: the authority without userinfo or a default port.
    host_header = parts.netloc.rsplit("@", 1)[-1]
    if port is not None and port == {"https": 443, "http": 80}[parts.scheme]:
        host_header = host_header.rsplit(":", 1)[0]
    hdrs = list(headers)
    if not any(k.lower() == "host" for k, _ in hdrs):
        hdrs.insert(0, ("Host", host_header))
    return Request(
        method=method,
        scheme=parts.scheme,
        host=hostname.lower().rstrip("."),
        port=port,
        path=path,
        query=query,
        headers=tuple(hdrs),
        has_query=has_query,
    )


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` as curl takes it (`Name;` is an empty value). The value loses the surrounding
    whitespace HTTP drops on the wire (RFC 9110 5.5) and keeps its inner spacing, which SigV4 collapses
    itself when it signs."""
    line = text.rstrip("\r\n")
    name, sep, value = line.partition(":")
    if not sep and line.endswith(";") and ";" not in line[:-1]:
        name, sep, value = line[:-1], ":", ""
    name = name.strip()
    if not sep or not name or any(c not in _TCHAR for c in name):
        raise UsageError(f"not a header 'Name: value': {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise UsageError(f"header {name} has a line break or NUL in its value")
    return name, value.strip(" \t")


def _policy_document(pd: PolicyDecision) -> str:
    return pd.basis[0].document if pd.basis else pd.document


def policy_json(pd: PolicyDecision | None) -> dict[str, Any] | None:
    """The policy verdict for `explain --json`; None when the request was refused before the check."""
    if pd is None:
        return None
    return {
        "outcome": pd.outcome,
        "sid": pd.sid or None,
        "document": _policy_document(pd) or None,
        "reason": pd.reason,
        "unknown": list(pd.unknown),
        "action": pd.access.action if pd.access else None,
        "resource": pd.access.resource if pd.access else None,
    }


def decision_json(req: Request, d: Decision, *, policy_configured: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": d.action,
        "family": d.plan.family,
        "region": d.plan.region,
        "region_source": d.plan.region_source,
        "endpoint": d.endpoint.domain() if d.endpoint else None,
        "method": d.method or req.method,
        "url": d.url if d.action != "reject" else None,
        "headers": [[k, v] for k, v in d.headers],
        "signing": d.signing or None,
        "signing_note": d.signing_note or None,
    }
    if d.plan.bucket is not None:
        out["bucket"] = d.plan.bucket
    if d.error is not None:
        out.update(status=d.error.status, code=d.error.code, message=d.error.message)
    if policy_configured or d.policy is not None:
        out["policy"] = policy_json(d.policy)
    return out


def policy_text(pd: PolicyDecision | None, mode: str) -> list[str]:
    if pd is None:
        return ["policy:    not evaluated (the request is refused before the policy check)"]
    effect = {
        "off": "the proxy does not act on it",
        "warn": "the proxy logs it and forwards",
        "enforce": "the proxy answers AccessDenied" if pd.denied else "forwarded",
    }[mode]
    lines = [f"policy:    {pd.outcome} (policy_mode: {mode}: {effect})"]
    if pd.basis:
        lines.extend(f"  statement: {b.sid!r} ({b.effect}) in the {b.document}" for b in pd.basis)
    elif pd.document:
        lines.append(f"  document:  {pd.document}")
    lines.append(f"  reason:    {pd.reason}")
    if pd.unknown:
        lines.append(f"  unknown:   {', '.join(pd.unknown)} (not known to the proxy)")
    return lines


def decision_text(req: Request, d: Decision, *, policy_mode: str | None = None) -> str:
    """`policy_mode` None: no policy is configured, so no policy lines."""
    p = d.plan
    port = "" if req.port is None else f":{req.port}"
    lines = [f"request:   {req.method} {req.scheme}://{req.host}{port}{req.target}"]
    lines.append(f"family:    {p.family}" + (f" (bucket {p.bucket})" if p.bucket else ""))
    if p.region:
        lines.append(f"region:    {p.region} (from {p.region_source})")
    if d.endpoint is not None:
        lines.append(f"endpoint:  {d.endpoint.domain()} ({d.endpoint.endpoint_id})")
    lines.append(f"action:    {d.action}")
    if d.error is not None:
        lines.append(f"error:     {d.error.status} {d.error.code}: {d.error.message}")
    else:
        lines.append(f"upstream:  {d.method} {d.url}")
    if d.signing == "refused":
        lines.append("signing:   refused (authentication failed the check above; nothing is sent)")
    elif d.signing:
        lines.append(f"signing:   {d.signing}" + (f" ({d.signing_note})" if d.signing_note else ""))
    if policy_mode is not None:
        lines.extend(policy_text(d.policy, policy_mode))
    if d.headers:
        lines.append("headers:")
        lines.extend(f"  {k}: {v}" for k, v in d.headers)
    return "\n".join(lines)


HarRequest = tuple[int, str, str, list[tuple[str, str]]]


def har_requests(path: Path) -> list[HarRequest]:
    """(index, method, url, headers) for every entry of a HAR 1.2 file, in order.

    The whole file is checked before anything is explained, so a malformed capture never yields half an
    answer. Raises UsageError naming the first problem (its JSON path)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot read HAR file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a HAR file (not UTF-8 text)") from None
    if not text.strip():
        raise UsageError(f"{path}: not a HAR file (the file is empty)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not a HAR file (invalid JSON: {e})") from None
    except RecursionError:
        raise UsageError(f"{path}: not a HAR file (JSON nested too deeply)") from None
    log_ = data.get("log") if isinstance(data, dict) else None
    entries = log_.get("entries") if isinstance(log_, dict) else None
    if not isinstance(entries, list):
        raise UsageError(f"{path}: not a HAR file (no log.entries list)")
    out: list[HarRequest] = []
    for i, entry in enumerate(entries):
        where = f"{path}: log.entries[{i}].request"
        req = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(req, dict):
            raise UsageError(f"{where} is missing or not an object")
        url = req.get("url")
        if not isinstance(url, str):
            raise UsageError(f"{where}.url is missing or not a string")
        method = req.get("method", "GET")
        if not isinstance(method, str):
            raise UsageError(f"{where}.method is not a string")
        raw_headers = req.get("headers", [])
        if not isinstance(raw_headers, list):
            raise UsageError(f"{where}.headers is not a list")
        headers: list[tuple[str, str]] = []
        for j, h in enumerate(raw_headers):
            if not (
                isinstance(h, dict) and isinstance(h.get("name"), str) and isinstance(h.get("value"), str)
            ):
                raise UsageError(f"{where}.headers[{j}] is not an object with string name and value")
            # HTTP/2 captures carry pseudo-headers; ':authority' is the Host.
            if h["name"].startswith(":"):
                if h["name"] == ":authority":
                    headers.append(("Host", h["value"]))
                continue
            headers.append((h["name"], h["value"]))
        out.append((i, method, url, headers))
    return out


def _invalid(message: str) -> dict[str, Any]:
    """The JSON object for a HAR entry that is not a request the proxy could even receive."""
    return {
        "action": "reject",
        "family": None,
        "region": None,
        "region_source": None,
        "endpoint": None,
        "method": None,
        "url": None,
        "headers": [],
        "signing": None,
        "signing_note": None,
        "status": 400,
        "code": "InvalidRequest",
        "message": message,
    }


def cmd_explain(args: argparse.Namespace) -> int:
    if args.har is not None and args.url is not None:
        raise UsageError("give either a URL or --har FILE, not both")
    if args.har is None and args.url is None:
        raise UsageError("explain needs a URL (or --har FILE)")
    config, path = load(args.config)
    from s3proxy.signing import signer_from_config

    try:
        signer = signer_from_config(config.signing, access_restricted=config.access.restricted)
    except ValueError as e:  # an unusable AWS profile or identity; the message names it, never a secret
        raise UsageError(f"{path}: signing: {e}") from None
    engine = Engine(config, signer, explain=True)
    configured = config.policy.configured
    now = datetime.now(UTC)
    if args.har is not None:
        worst = EXIT_OK
        for i, method, url, headers in har_requests(Path(args.har)):
            try:
                req = request_from_url(method, url, [parse_header(f"{k}: {v}") for k, v in headers])
            except UsageError as e:
                print(json.dumps({"entry": i, **_invalid(str(e))}, ensure_ascii=False))
                worst = EXIT_REJECT
                continue
            d = engine.decide(req, now)
            out = decision_json(req, d, policy_configured=configured)
            print(json.dumps({"entry": i, **out}, ensure_ascii=False))
            if d.action == "reject":
                worst = EXIT_REJECT
        return worst
    req = request_from_url(args.method, args.url, [parse_header(h) for h in args.header])
    d = engine.decide(req, now)
    if args.json:
        print(json.dumps(decision_json(req, d, policy_configured=configured), ensure_ascii=False))
    else:
        print(decision_text(req, d, policy_mode=config.policy.mode if configured else None))
    return EXIT_REJECT if d.action == "reject" else EXIT_OK


# -- run / check / ca -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config, path = load(args.config)
    from s3proxy.runner import run

    return run(config, str(path.resolve()))


def cmd_check(args: argparse.Namespace) -> int:
    config, path = load(args.config)
    from s3proxy.check import check

    return check(config, path, out=sys.stdout)


def cmd_ca(args: argparse.Namespace) -> int:
    config, _ = load(args.config)
    from s3proxy.ca import ca_command

    return ca_command(config, export=args.export, out=sys.stdout)


def cmd_policy_lint(args: argparse.Namespace) -> int:
    """Warnings (one per line, on stdout) about the lock-out traps in the configured policies."""
    config, path = load(args.config)
    from s3proxy.policy_lint import lint

    p = config.policy
    warnings = lint(config, p.bucket_policies, endpoint_policies=p.endpoint_policies, vpc_ids=p.vpc_ids)
    for w in warnings:
        print(w)
    checked = f"{len(p.endpoint_policies)} endpoint policies, {len(p.bucket_policies)} bucket policies"
    if warnings:
        print(f"{path}: {len(warnings)} warning(s) ({checked})", file=sys.stderr)
        return EXIT_REJECT
    print(f"{path}: no warnings ({checked})", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from s3proxy.demo import run_demo

    return run_demo(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3proxy",
        description="Keep default S3 hostnames; reach S3 through an AWS PrivateLink interface endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"s3proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", help="YAML configuration (default: $S3PROXY_CONFIG)")
        return p

    with_config(sub.add_parser("run", help="run the proxy")).set_defaults(func=cmd_run)
    with_config(
        sub.add_parser("check", help="validate the config, resolve and connect to every endpoint")
    ).set_defaults(func=cmd_check)
    ca = with_config(sub.add_parser("ca", help="show where the proxy CA certificate is, or export it"))
    ca.add_argument("--export", metavar="FILE", help="write the CA certificate (PEM) to FILE ('-' = stdout)")
    ca.set_defaults(func=cmd_ca)
    ex = with_config(
        sub.add_parser(
            "explain",
            help="show what the proxy would do with a request (no I/O)",
            description="Show what the proxy would send upstream for a request (or every request of a HAR "
            "capture): family, region, endpoint, the rewritten URL and headers, and what signing did. "
            "No DNS lookup, no connection.",
            epilog="exit status: 0 forwarded (or passed through), 1 the proxy would refuse the request "
            "(with --har: at least one), 2 bad arguments, configuration or input",
        )
    )
    ex.add_argument(
        "url", nargs="?", help="the URL the application requests, e.g. https://b.s3.amazonaws.com/k"
    )
    ex.add_argument("-X", "--request", dest="method", default="GET", help="HTTP method (default GET)")
    ex.add_argument("-H", "--header", action="append", default=[], help="request header 'Name: value'")
    ex.add_argument("--json", action="store_true", help="print one JSON object")
    ex.add_argument("--har", metavar="FILE", help="explain every request in a HAR 1.2 capture (JSON lines)")
    ex.set_defaults(func=cmd_explain)
    pol = sub.add_parser("policy", help="endpoint and bucket policies: lint")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    with_config(
        pol_sub.add_parser(
            "lint",
            help="warn about the lock-out traps of AWS's PrivateLink guide in the configured policies",
            description="Check the configured VPC endpoint and bucket policies for the traps AWS's "
            "PrivateLink for S3 guide warns about: aws:sourceVpce naming an endpoint the proxy does not "
            "use, deny-all statements without an escape, console access blocked.",
            epilog="exit status: 0 no warnings, 1 warnings, 2 bad arguments or configuration",
        )
    ).set_defaults(func=cmd_policy_lint)
    demo = sub.add_parser(
        "demo",
        help="see it work: a local stand-in endpoint, DNS and s3proxy, driven by the AWS CLI and boto3",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave it running and print the client settings, until Ctrl-C"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as e:
        print(f"s3proxy {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
