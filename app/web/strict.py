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
``path_params``, for every route including the plain-ASGI token handler.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec

from app.oauth.errors import InvalidRequest

#: RFC 3986 §3.3 pchar minus the unreserved set (which ``quote`` always keeps) and "%".
_PCHAR_SAFE = "!$&'()*+,;=:@"
_FRAMING = (b"content-type", b"content-length")
_NOT_FOUND = msgspec.json.encode({"error": "not_found"})
_REPEATED = InvalidRequest("repeated_header").body()


def canonical_path(template: str, params: dict[str, Any]) -> str | None:
    """The one path a route produces for ``params``; None when a value cannot be a path segment."""
    if not params:
        return template
    encoded = {}
    for name, value in params.items():
        text = str(value)
        if text in ("", ".", "..") or "/" in text:
            return None
        encoded[name] = quote(text, safe=_PCHAR_SAFE)
    return template.format_map(encoded)


def _repeated_framing_header(headers: list[tuple[bytes, bytes]]) -> bool:
    seen = []
    for name, _ in headers:
        if name in _FRAMING:
            if name in seen:
                return True
            seen.append(name)
    return False


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"), (b"pragma", b"no-cache"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def strict_request_middleware(app: Any) -> Any:
    """A pure ASGI middleware factory for Litestar's ``middleware=[...]``."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path")
            expected = canonical_path(scope["path_template"], scope["path_params"])
            # raw_path has no query from uvicorn; Litestar's test client leaves it on (a "?" cannot be in a path).
            sent = raw.partition(b"?")[0].decode("latin-1") if raw is not None else scope["path"]
            if expected is None or sent != scope.get("root_path", "") + expected:
                await _answer(send, 404, _NOT_FOUND)
                return
            if _repeated_framing_header(scope["headers"]):
                await _answer(send, 400, _REPEATED)
                return
        await app(scope, receive, send)

    return middleware
