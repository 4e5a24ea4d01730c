"""One spelling per request: canonical paths and unrepeated framing headers.

The router forgives: ``/token/``, ``//token`` and ``/%74oken`` all reach the token endpoint, and
with two ``Content-Type`` headers the last one wins. A proxy, a WAF rule or an audit log in front
of the broker may read the same request differently, so the broker accepts only:

- the path exactly as its route would produce it, compared on the ASGI ``raw_path`` (the bytes the
  client sent, before percent-decoding): a route template with each path parameter written with
  literal RFC 3986 ``pchar`` characters and everything else percent-encoded; a parameter that
  decodes to ``.``, ``..`` or holds a ``/`` has no canonical form. Anything else: the usual 404;
- at most one ``Content-Type`` and one ``Content-Length``; a repeat is 400 ``invalid_request``.

Runs as the outermost Litestar middleware, after routing has set ``path_template`` and
``path_params``, for every route; and first on ``/token``, which ``app.web.app.token_first``
routes before Litestar's router (setting the same two keys).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec

from app.oauth.errors import InvalidRequest

#: RFC 3986 §3.3 pchar minus the unreserved set (which ``quote`` always keeps) and "%".
_PCHAR_SAFE = "!$&'()*+,;=:@"
_NOT_FOUND = msgspec.json.encode({"error": "not_found"})
_REPEATED = InvalidRequest("repeated_header").body()
#: Raw path of each route without parameters, encoded on first use instead of per request.
_FIXED: dict[str, bytes] = {}


def canonical_path(template: str, params: dict[str, Any]) -> bytes | None:
    """The one raw path a route produces for ``params``; None when a value cannot be a path segment."""
    if not params:
        fixed = _FIXED.get(template)
        if fixed is None:
            fixed = _FIXED[template] = template.encode()
        return fixed
    encoded = {}
    for name, value in params.items():
        text = str(value)
        if text in ("", ".", "..") or "/" in text:
            return None
        encoded[name] = quote(text, safe=_PCHAR_SAFE)
    return template.format_map(encoded).encode()


def _repeated_framing_header(headers: list[tuple[bytes, bytes]]) -> bool:
    content_type = content_length = False
    for name, _ in headers:
        if name == b"content-type":
            if content_type:
                return True
            content_type = True
        elif name == b"content-length":
            if content_length:
                return True
            content_length = True
    return False


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"), (b"pragma", b"no-cache"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _same_path_otherwise(scope: Any, expected: bytes | None) -> bool:
    """The comparison when ``raw_path`` is not simply the route's path: with a query left on it
    (Litestar's test client; uvicorn strips it, and a "?" cannot be part of a path) or behind a
    ``root_path``. Without ``raw_path`` (optional in ASGI) what was sent is unknown: refused."""
    raw = scope.get("raw_path")
    if expected is None or raw is None:
        return False
    return raw.partition(b"?")[0] == (scope.get("root_path") or "").encode() + expected


def strict_request_middleware(app: Any) -> Any:
    """A pure ASGI middleware factory for Litestar's ``middleware=[...]``."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            params = scope["path_params"]
            # Routes without parameters (the token endpoint among them) cost one dict look-up.
            expected = None if params else _FIXED.get(scope["path_template"])
            if expected is None:
                expected = canonical_path(scope["path_template"], params)
            if scope.get("raw_path") != expected and not _same_path_otherwise(scope, expected):
                await _answer(send, 404, _NOT_FOUND)
                return
            if _repeated_framing_header(scope["headers"]):
                await _answer(send, 400, _REPEATED)
                return
        await app(scope, receive, send)

    return middleware
