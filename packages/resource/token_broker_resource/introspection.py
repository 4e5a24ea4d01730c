"""Optional revocation check through the broker's introspection endpoint: RFC 7662 §2.

The resource server authenticates as a broker client with private_key_jwt (a fresh assertion per
call, since the broker refuses replayed jti). Anything but ``{"active": true}`` means the token is
not accepted; an unreachable endpoint makes the verifier unavailable (fail closed, 503).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from token_broker_jose.assertion import make_client_assertion
from token_broker_jose.constants import CLIENT_ASSERTION_TYPE
from token_broker_jose.credentials import ClientKey
from token_broker_resource.keys import VerifierUnavailable


class Introspection:
    def __init__(self, issuer: str, client_id: str, key: Any, *, alg: str | None = None, kid: str | None = None,
                 endpoint: str | None = None,
                 http: httpx.AsyncClient | None = None, clock: Callable[[], float] = time.time, timeout: float = 3.0) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._key = key if isinstance(key, ClientKey) else ClientKey(key, alg=alg, kid=kid)
        self.endpoint = endpoint or issuer + "/introspect"
        self._http = http
        self._clock = clock
        self._timeout = timeout

    async def active(self, token: str) -> bool:
        assertion = make_client_assertion(self._key.key, client_id=self.client_id, issuer=self.issuer, alg=self._key.alg,
                                          kid=self._key.kid, now=self._clock())
        form = {"token": token, "token_type_hint": "access_token",
                "client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": assertion}
        try:
            if self._http is not None:
                response = await self._http.post(self.endpoint, data=form, timeout=self._timeout)
            else:
                async with httpx.AsyncClient(timeout=self._timeout) as http:
                    response = await http.post(self.endpoint, data=form)
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            raise VerifierUnavailable("introspection unreachable") from None
        if not isinstance(body, dict):
            raise VerifierUnavailable(f"introspection answered HTTP {response.status_code}")
        return body.get("active") is True
