"""docs/integrate.md's Python recipes, run against a live broker: the project's own client,
Authlib and requests-oauth2client, configured as the guide says (aud = issuer, a short lifetime,
the key's kid, a fresh jti per assertion), and each library's default configuration refused with
the one ``invalid_client`` body (aud = the token endpoint URL; Authlib's also lives an hour).

The compat-profile counterparts (the defaults accepted for a client registered with ``compat``)
are in test_authlib_compat.py.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client as AuthlibClient
from authlib.integrations.httpx_client import OAuthError as AuthlibError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from joserfc.jwk import ECKey, RSAKey
from requests_oauth2client import InvalidClient as RocInvalidClient
from requests_oauth2client import OAuth2Client, PrivateKeyJwt

from app.keystore import public_jwk
from tests.helpers import RS1, RS2
from tests.interop.conftest import INVALID_CLIENT, InteropBroker
from token_broker_client import BrokerClient

pytestmark = [
    pytest.mark.live,
    # Authlib 1.9 warns about its own deprecated internals on import and use.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

METADATA_PATH = "/.well-known/oauth-authorization-server"


def _claims(broker: InteropBroker, token: str, audience: str = RS1) -> dict[str, Any]:
    """The claims of an issued access token that say who it is for and what it allows."""
    claims = broker.verify(token, audience)
    return {k: claims[k] for k in ("iss", "sub", "client_id", "aud", "scope")}


def _expected(broker: InteropBroker, client_id: str, scope: str, audience: str = RS1) -> dict[str, Any]:
    return {"iss": broker.issuer, "sub": client_id, "client_id": client_id, "aud": audience, "scope": scope}


def _register_ec(broker: InteropBroker, client_id: str, **metadata: Any) -> tuple[ECKey, str]:
    key = ECKey.generate_key("P-256")
    kid = client_id + "-1"
    broker.register(client_id, public_jwk(key, alg="ES256", kid=kid), **metadata)
    return key, kid


class Recorder:
    """httpx response hook: the status and JSON body of every token-endpoint answer."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, Any]] = []

    def __call__(self, response: httpx.Response) -> None:
        if response.request.url.path.endswith("/token"):
            response.read()
            self.answers.append((response.status_code, response.json()))


# -- the project's own client ----------------------------------------------------------------------


def test_broker_client_recipe(interop_broker: InteropBroker) -> None:
    key, kid = _register_ec(interop_broker, "interop-own")
    client = BrokerClient(interop_broker.issuer, "interop-own", key, alg="ES256", kid=kid, scope="read write",
                          resource=RS2)
    token = client.get_token()
    assert client.get_token() == token  # cached: one token request
    assert _claims(interop_broker, token, RS2) == _expected(
        interop_broker, "interop-own", "read write", RS2)
    assert len(interop_broker.events("token.issued", "interop-own")) == 1


# -- Authlib ---------------------------------------------------------------------------------------


class BrokerPrivateKeyJWT(PrivateKeyJWT):
    """docs/integrate.md's Authlib auth: aud = the issuer, ``lifetime`` seconds, the key's kid,
    and a fresh jti and exp for every assertion.

    Not ``PrivateKeyJWT(issuer, claims={"exp": ...})``: Authlib stores the jti it generates in that
    claims dict, so every later assertion would carry the same jti (a replay) and the same exp.
    """

    def __init__(self, issuer: str, *, kid: str, alg: str = "ES256", lifetime: int = 60) -> None:
        super().__init__(token_endpoint=issuer, alg=alg)
        self.kid = kid
        self.lifetime = lifetime

    def sign(self, auth: Any, token_endpoint: str) -> str:
        now = int(time.time())
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id, token_endpoint=self.token_endpoint,
                                    alg=self.alg, header={"kid": self.kid, "typ": "client-authentication+jwt"},
                                    issued_at=now, expires_at=now + self.lifetime)


def _authlib_token_endpoint(broker: InteropBroker) -> str:
    return httpx.get(broker.issuer + METADATA_PATH, timeout=10).json()["token_endpoint"]


def test_authlib_recipe(interop_broker: InteropBroker) -> None:
    key, kid = _register_ec(interop_broker, "interop-authlib")
    recorder = Recorder()
    auth = BrokerPrivateKeyJWT(interop_broker.issuer, kid=kid)
    with AuthlibClient(client_id="interop-authlib", client_secret=key, token_endpoint_auth_method=auth,
                       event_hooks={"response": [recorder]}, timeout=10) as session:
        endpoint = _authlib_token_endpoint(interop_broker)
        first = session.fetch_token(endpoint, grant_type="client_credentials", scope="read", resource=RS1)
        second = session.fetch_token(endpoint, grant_type="client_credentials", scope="write", resource=RS2)
    assert [status for status, _ in recorder.answers] == [200, 200]  # a fresh jti each time: no replay
    assert (first["token_type"], first["scope"], second["scope"]) == ("Bearer", "read", "write")
    assert _claims(interop_broker, first["access_token"]) == _expected(
        interop_broker, "interop-authlib", "read")
    assert _claims(interop_broker, second["access_token"], RS2) == _expected(
        interop_broker, "interop-authlib", "write", RS2)


def authlib_default_fetch(broker: InteropBroker, client_id: str, private_pem: bytes,
                          recorder: Recorder) -> dict[str, Any]:
    """Authlib exactly as its documentation shows private_key_jwt: ``PrivateKeyJWT(token_endpoint)``
    with an RSA key (RS256), no kid, aud = the token endpoint URL, exp = iat + 3600."""
    endpoint = _authlib_token_endpoint(broker)
    with AuthlibClient(client_id=client_id, client_secret=private_pem.decode(), token_endpoint_auth_method="private_key_jwt",
                       event_hooks={"response": [recorder]}, timeout=10) as session:
        session.register_client_auth_method(PrivateKeyJWT(endpoint))
        return session.fetch_token(endpoint, grant_type="client_credentials")


def register_rsa(broker: InteropBroker, client_id: str, **metadata: Any) -> bytes:
    """An RS256 client without a kid of its own choosing (the broker names the key by its thumbprint);
    returns the private key as PKCS#8 PEM, the form Authlib's documentation uses."""
    key = RSAKey.generate_key(2048)
    jwk = key.as_dict(private=False)
    jwk["alg"] = "RS256"
    broker.register(client_id, jwk, **metadata)
    return key.as_pem(private=True)


def test_authlib_default_configuration_is_refused_by_the_strict_profile(interop_broker: InteropBroker) -> None:
    pem = register_rsa(interop_broker, "interop-authlib-default")
    recorder = Recorder()
    with pytest.raises(AuthlibError) as refused:
        authlib_default_fetch(interop_broker, "interop-authlib-default", pem, recorder)
    assert (refused.value.error, refused.value.description) == (INVALID_CLIENT["error"], INVALID_CLIENT["error_description"])
    assert recorder.answers == [(401, INVALID_CLIENT)]
    assert [e["reason"] for e in interop_broker.events("token.rejected", "interop-authlib-default")] == ["aud_not_issuer"]


# -- requests-oauth2client -------------------------------------------------------------------------


def _roc_client(broker: InteropBroker, auth: PrivateKeyJwt) -> OAuth2Client:
    # testing=True only because this broker is plain http on loopback: the library refuses a
    # non-https endpoint otherwise (in production leave it out).
    return OAuth2Client.from_discovery_endpoint(broker.issuer + METADATA_PATH, issuer=broker.issuer, auth=auth,
                                                testing=True)


def _private_jwk(key: ECKey, kid: str) -> dict[str, Any]:
    return {**key.as_dict(private=True), "alg": "ES256", "kid": kid}


def test_requests_oauth2client_recipe(interop_broker: InteropBroker) -> None:
    key, kid = _register_ec(interop_broker, "interop-roc")
    auth = PrivateKeyJwt("interop-roc", _private_jwk(key, kid), alg="ES256", lifetime=60, aud=interop_broker.issuer)
    client = _roc_client(interop_broker, auth)
    first = client.client_credentials(scope="read", resource=RS1)
    second = client.client_credentials(scope="read write", resource=RS2)
    assert (first.token_type, first.scope, second.scope) == ("Bearer", "read", "read write")
    assert _claims(interop_broker, first.access_token) == _expected(
        interop_broker, "interop-roc", "read")
    assert _claims(interop_broker, second.access_token, RS2) == _expected(
        interop_broker, "interop-roc", "read write", RS2)


def test_requests_oauth2client_default_audience_is_refused_by_the_strict_profile(interop_broker: InteropBroker) -> None:
    """Without ``aud=``, requests-oauth2client puts the token endpoint URL in ``aud``."""
    key, kid = _register_ec(interop_broker, "interop-roc-default")
    client = _roc_client(interop_broker, PrivateKeyJwt("interop-roc-default", _private_jwk(key, kid), alg="ES256"))
    with pytest.raises(RocInvalidClient) as refused:
        client.client_credentials(scope="read", resource=RS1)
    assert (refused.value.response.status_code, refused.value.response.json()) == (401, INVALID_CLIENT)
    assert [e["reason"] for e in interop_broker.events("token.rejected", "interop-roc-default")] == ["aud_not_issuer"]
