"""The `s3proxy` command: run | check | explain | ca.

Every failure the user can cause (bad config, bad URL, malformed HAR, a request the proxy would refuse)
ends in a one-paragraph message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from s3proxy import __version__
from s3proxy.config import Config, ConfigError, load_config
from s3proxy.engine import Decision, Engine
from s3proxy.model import Request, split_target

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
        raise UsageError(f"{path}: {e}") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read configuration: {e.strerror or e}") from None


# -- explain --------------------------------------------------------------------------------------------


def request_from_url(method: str, url: str, headers: Sequence[tuple[str, str]]) -> Request:
    """A core Request from an absolute URL, keeping path and query exactly as written."""
    if len(url) > 16384:
        raise UsageError("URL longer than 16 KiB")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UsageError(f"not a valid URL: {url!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL with a host: {url!r}")
    # urlsplit lower-cases nothing in the path; take the raw target from the original text.
    after_host = url.split("//", 1)[1]
    slash = after_host.find("/")
    qmark = after_host.find("?")
    cut = min(i for i in (slash, qmark, len(after_host)) if i >= 0)
    target = after_host[cut:].split("#", 1)[0]
    if not target.startswith("/"):
        target = "/" + target
    path, query, has_query = split_target(target)
    if not method or not method.isalpha() or not method.isupper():
        raise UsageError(f"not an HTTP method: {method!r}")
    host_header = parts.netloc.rsplit("@", 1)[-1]
    hdrs = list(headers)
    if not any(k.lower() == "host" for k, _ in hdrs):
        hdrs.insert(0, ("Host", host_header))
    return Request(
        method=method,
        scheme=parts.scheme,
        host=parts.hostname.lower().rstrip("."),
        port=port,
        path=path,
        query=query,
        headers=tuple(hdrs),
        has_query=has_query,
    )


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in text for c in "\r\n\0"):
        raise UsageError(f"not a header 'Name: value': {text!r}")
    return name.strip(), value.strip()


def decision_json(req: Request, d: Decision) -> dict[str, Any]:
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
    return out


def decision_text(req: Request, d: Decision) -> str:
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
    if d.signing:
        lines.append(f"signing:   {d.signing}" + (f" ({d.signing_note})" if d.signing_note else ""))
    if d.headers:
        lines.append("headers:")
        lines.extend(f"  {k}: {v}" for k, v in d.headers)
    return "\n".join(lines)


def har_requests(path: Path) -> Iterator[tuple[int, str, str, list[tuple[str, str]]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot read HAR file: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a HAR file (invalid JSON: {e})") from None
    entries = data.get("log", {}).get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UsageError(f"{path}: not a HAR file (no log.entries list)")
    for i, entry in enumerate(entries):
        req = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(req, dict) or not isinstance(req.get("url"), str):
            raise UsageError(f"{path}: log.entries[{i}].request has no url")
        method = req.get("method", "GET")
        raw_headers = req.get("headers", [])
        if not isinstance(method, str) or not isinstance(raw_headers, list):
            raise UsageError(f"{path}: log.entries[{i}].request is malformed")
        headers: list[tuple[str, str]] = []
        for h in raw_headers:
            if not (
                isinstance(h, dict) and isinstance(h.get("name"), str) and isinstance(h.get("value"), str)
            ):
                raise UsageError(f"{path}: log.entries[{i}].request.headers has a malformed entry")
            # HTTP/2 captures carry pseudo-headers; ':authority' is the Host.
            if h["name"].startswith(":"):
                if h["name"] == ":authority":
                    headers.append(("Host", h["value"]))
                continue
            headers.append((h["name"], h["value"]))
        yield i, method, req["url"], headers


def cmd_explain(args: argparse.Namespace) -> int:
    config, _ = load(args.config)
    from s3proxy.signing import signer_from_config

    engine = Engine(config, signer_from_config(config.signing, access_restricted=config.access.restricted))
    now = datetime.now(UTC)
    if args.har:
        if args.url:
            raise UsageError("give either a URL or --har FILE, not both")
        worst = EXIT_OK
        for i, method, url, headers in har_requests(Path(args.har)):
            try:
                req = request_from_url(method, url, headers)
            except UsageError as e:
                print(
                    json.dumps(
                        {
                            "entry": i,
                            "action": "reject",
                            "status": 400,
                            "code": "InvalidRequest",
                            "message": str(e),
                        }
                    )
                )
                worst = EXIT_REJECT
                continue
            d = engine.decide(req, now)
            print(json.dumps({"entry": i, **decision_json(req, d)}, ensure_ascii=False))
            if d.action == "reject":
                worst = EXIT_REJECT
        return worst
    if not args.url:
        raise UsageError("explain needs a URL (or --har FILE)")
    req = request_from_url(args.method, args.url, [parse_header(h) for h in args.header])
    d = engine.decide(req, now)
    if args.json:
        print(json.dumps(decision_json(req, d), ensure_ascii=False))
    else:
        print(decision_text(req, d))
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
    ex = with_config(sub.add_parser("explain", help="show what the proxy would do with a request (no I/O)"))
    ex.add_argument(
        "url", nargs="?", help="the URL the application requests, e.g. https://b.s3.amazonaws.com/k"
    )
    ex.add_argument("-X", "--request", dest="method", default="GET", help="HTTP method (default GET)")
    ex.add_argument("-H", "--header", action="append", default=[], help="request header 'Name: value'")
    ex.add_argument("--json", action="store_true", help="print one JSON object")
    ex.add_argument("--har", metavar="FILE", help="explain every request in a HAR 1.2 capture (JSON lines)")
    ex.set_defaults(func=cmd_explain)
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
