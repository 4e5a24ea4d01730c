"""Response helpers: every token-endpoint answer carries no-store headers (RFC 6749 §5.1)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response

from app.oauth.errors import OAuthError

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
JSON = "application/json"


def oauth_error(exc: OAuthError) -> Response[bytes]:
    headers = {**NO_STORE, **exc.headers}
    return Response(exc.body(), status_code=exc.status_code, media_type=JSON, headers=headers)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    body = content if isinstance(content, bytes) else msgspec.json.encode(content)
    return Response(body, status_code=status_code, media_type=JSON, headers={**NO_STORE, **(headers or {})})


def bearer_error(status_code: int, error: str | None, description: str, scope: str | None = None) -> Response[bytes]:
    """RFC 6750 §3: the WWW-Authenticate challenge, and the same error as JSON."""
    params = ['realm="token-broker"']
    if error:
        params.append(f'error="{error}"')
        params.append(f'error_description="{description}"')
    if scope:
        params.append(f'scope="{scope}"')
    body: dict[str, str] = {"error": error, "error_description": description} if error else {}
    return json_response(body, status_code, {"WWW-Authenticate": "Bearer " + ", ".join(params)})
