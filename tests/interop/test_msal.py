"""MSAL Python (``msal.ConfidentialClientApplication``) against a live broker behind TLS.

MSAL only talks to an https authority with at least one path segment, finds the token endpoint
through OpenID Connect discovery (``<authority>/.well-known/openid-configuration``, which must
carry an ``authorization_endpoint``: MSAL reads it unconditionally), and hands its token cache
the answer. ``tls_broker`` is that deployment: HAProxy with a test CA's certificate in front,
issuer ``https://localhost:<port>/broker``.

Two recipes (docs/integrate.md, "MSAL"):

- strict: ``client_credential={"client_assertion": <callable>}``; MSAL calls it for every token
  request, and it returns the project's own assertion (aud = issuer, 60 s, kid);
- certificate: ``client_credential={"private_key": <PEM>, "thumbprint": <SHA-1 hex>}``, MSAL's
  own assertion: RS256, ``x5t`` header and no kid, aud = the token endpoint URL, exp = iat + 600,
  and the same assertion re-sent for 540 s (``AutoRefresher``). The client registers its
  certificate (``x5c`` on the JWK) and the compat profile ``token_endpoint_aud``,
  ``assertion_max_lifetime=600``, ``assertion_reuse``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Any
from urllib.parse import parse_qs

import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey, RSAKey

from app.keystore import public_jwk
from tests.helpers import RS1
from tests.interop.conftest import InteropBroker
from token_broker_client import make_client_assertion

pytestmark = pytest.mark.live

MSAL_COMPAT = {"token_endpoint_aud": True, "assertion_max_lifetime": 600, "assertion_reuse": True}


class RecordingSession(requests.Session):
    """The session MSAL sends with (``http_client=``): trusts the test CA and keeps every token
    request's form, to see which assertions MSAL sent.

    ``verify`` goes on every request: requests lets REQUESTS_CA_BUNDLE in the environment win over
    a session's ``verify``."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self.ca_file = ca_file
        self.token_forms: list[dict[str, str]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        data = kwargs.get("data")
        if method == "POST" and url.endswith("/token"):
            form = data if isinstance(data, dict) else {k: v[0] for k, v in parse_qs(data or "").items()}
            self.token_forms.append({k: str(v) for k, v in form.items()})
        return super().request(method, url, *args, verify=self.ca_file, timeout=10,
                               **{k: v for k, v in kwargs.items() if k not in ("verify", "timeout")})


def _app(broker: InteropBroker, client_id: str, credential: dict[str, Any], session: RecordingSession) -> Any:
    return msal.ConfidentialClientApplication(client_id, client_credential=credential, oidc_authority=broker.issuer,
                                              http_client=session)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in ("token_type", "expires_in", "token_source", "error", "error_description")}


OK = {"token_type": "Bearer", "expires_in": 900, "token_source": "identity_provider", "error": None,
      "error_description": None}


def test_msal_with_the_project_assertion(tls_broker: InteropBroker) -> None:
    key = ECKey.generate_key("P-256")
    tls_broker.register("interop-msal", public_jwk(key, alg="ES256", kid="interop-msal-1"))

    def assertion() -> str:  # called by MSAL for every token request it sends
        return make_client_assertion(key, client_id="interop-msal", issuer=tls_broker.issuer, alg="ES256",
                                     kid="interop-msal-1")

    session = RecordingSession(str(tls_broker.ca_file))
    app = _app(tls_broker, "interop-msal", {"client_assertion": assertion}, session)
    first = app.acquire_token_for_client(scopes=["read"])
    again = app.acquire_token_for_client(scopes=["read"])
    other = app.acquire_token_for_client(scopes=["write"])
    assert [_summary(first), _summary(again)["token_source"], _summary(other)] == [OK, "cache", OK]
    assert len(session.token_forms) == 2
    assert session.token_forms[0]["client_assertion"] != session.token_forms[1]["client_assertion"]
    claims = tls_broker.verify(other["access_token"])
    assert (claims["iss"], claims["client_id"], claims["aud"], claims["scope"]) == (
        tls_broker.issuer, "interop-msal", RS1, "write")


def _certificate(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    """A self-signed certificate, as an MSAL user would have for their client."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))


def test_msal_certificate_credential_with_the_compat_profile(tls_broker: InteropBroker) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _certificate(private, "interop-msal-cert")
    der = cert.public_bytes(serialization.Encoding.DER)
    jwk = RSAKey.import_key(private.public_key()).as_dict(private=False)
    jwk.update(alg="RS256", kid="interop-msal-cert-1", x5c=[base64.b64encode(der).decode()])
    tls_broker.register("interop-msal-cert", jwk, compat=MSAL_COMPAT)

    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    session = RecordingSession(str(tls_broker.ca_file))
    app = _app(tls_broker, "interop-msal-cert", {"private_key": pem, "thumbprint": hashlib.sha1(der).hexdigest()},
               session)
    first = app.acquire_token_for_client(scopes=["read"])
    other = app.acquire_token_for_client(scopes=["write"])  # a cache miss: MSAL re-sends its assertion
    assert [_summary(first), _summary(other)] == [OK, OK]
    assert [f["client_assertion"] for f in session.token_forms] == [session.token_forms[0]["client_assertion"]] * 2
    claims = tls_broker.verify(other["access_token"])
    assert (claims["client_id"], claims["scope"]) == ("interop-msal-cert", "write")
