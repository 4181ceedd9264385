"""The one exception type the proxy answers with, and the one place S3-style XML errors are built.

Every refusal the proxy makes itself looks like an error from S3: `<Error><Code/><Message/><Resource/>
<RequestId/></Error>` with the matching HTTP status, so SDKs parse it, retry only what is transient
(500/502/503/504), and show the message to the user.
"""

from __future__ import annotations

import secrets
from xml.sax.saxutils import escape


class S3Error(Exception):
    """An error the proxy answers itself: S3 error code, HTTP status and a message that says what to fix.

    Messages must never contain a secret or a signature.
    """

    def __init__(
        self, status: int, code: str, message: str, resource: str = "", region: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.resource = resource
        self.region = region  # S3's <Region> element: the region to sign for (SDKs re-sign with it)

    def with_resource(self, resource: str) -> S3Error:
        return S3Error(self.status, self.code, self.message, resource, self.region)


def new_request_id() -> str:
    """A request id in the shape S3 uses (16 upper-case hex characters)."""
    return secrets.token_hex(8).upper()


def error_xml(error: S3Error, request_id: str) -> bytes:
    """The body S3 would send for `error`."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message>"
        + (f"<Region>{escape(error.region)}</Region>" if error.region else "")
        + f"<Resource>{escape(error.resource)}</Resource><RequestId>{escape(request_id)}</RequestId>"
        "</Error>"
    ).encode()


def error_headers(request_id: str, body_length: int, region: str | None = None) -> list[tuple[str, str]]:
    """Response headers to send with an `error_xml` body; `region`: the error's <Region>, which S3 also
    sends as `x-amz-bucket-region` (a HEAD's answer has no body)."""
    headers = [
        ("Content-Type", "application/xml"),
        ("Content-Length", str(body_length)),
        ("x-amz-request-id", request_id),
        ("Server", "s3proxy"),
    ]
    if region:
        headers.append(("x-amz-bucket-region", region))
    return headers
