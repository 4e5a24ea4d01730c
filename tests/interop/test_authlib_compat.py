"""The compat profile against real third-party defaults: Authlib's documented private_key_jwt
configuration (aud = the token endpoint URL, exp = iat + 3600, RS256, no kid) and
requests-oauth2client's default aud, accepted for a client registered with
``compat: {"token_endpoint_aud": true, "assertion_max_lifetime": 3600}`` (docs/integrate.md,
"Compat profile"), and each use counted in ``broker_client_compat_used_total``.

The same configurations are refused for a client without the profile:
test_python_clients.py.
"""

from __future__ import annotations

import pytest
from authlib.integrations.httpx_client import OAuthError as AuthlibError
from joserfc.jwk import ECKey
from requests_oauth2client import PrivateKeyJwt

from app.keystore import public_jwk
from tests.helpers import RS1
from tests.interop.conftest import INVALID_CLIENT, InteropBroker
from tests.interop.test_python_clients import (
    Recorder,
    _claims,
    _expected,
    _private_jwk,
    _roc_client,
    authlib_default_fetch,
    register_rsa,
)

pytestmark = [
    pytest.mark.live,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

AUTHLIB_COMPAT = {"token_endpoint_aud": True, "assertion_max_lifetime": 3600}


def _compat_used(broker: InteropBroker, client_id: str, feature: str) -> float:
    return broker.metric(f'broker_client_compat_used_total{{client_id="{client_id}",feature="{feature}"}}')


def test_authlib_default_configuration_works_with_the_compat_profile(interop_broker: InteropBroker) -> None:
    pem = register_rsa(interop_broker, "interop-authlib-compat", compat=AUTHLIB_COMPAT)
    recorder = Recorder()
    token = authlib_default_fetch(interop_broker, "interop-authlib-compat", pem, recorder)
    assert [status for status, _ in recorder.answers] == [200]
    assert (token["token_type"], token["scope"], token["expires_in"]) == ("Bearer", "read", 900)
    assert _claims(interop_broker, token["access_token"]) == _expected(interop_broker, "interop-authlib-compat", "read")
    assert [(f, _compat_used(interop_broker, "interop-authlib-compat", f))
            for f in ("token_endpoint_aud", "assertion_lifetime", "assertion_reuse")] == [
        ("token_endpoint_aud", 1.0), ("assertion_lifetime", 1.0), ("assertion_reuse", 0.0)]
    assert len(interop_broker.events("client_auth.compat_used", "interop-authlib-compat")) >= 1


def test_authlib_default_configuration_is_refused_when_the_lifetime_is_not_in_the_profile(
        interop_broker: InteropBroker) -> None:
    """``token_endpoint_aud`` alone does not let Authlib's hour-long assertions in."""
    pem = register_rsa(interop_broker, "interop-authlib-aud-only", compat={"token_endpoint_aud": True})
    recorder = Recorder()
    with pytest.raises(AuthlibError) as refused:
        authlib_default_fetch(interop_broker, "interop-authlib-aud-only", pem, recorder)
    assert refused.value.error == "invalid_client"
    assert recorder.answers == [(401, INVALID_CLIENT)]
    assert [e["reason"] for e in interop_broker.events("token.rejected", "interop-authlib-aud-only")] == ["exp_too_far"]


def test_requests_oauth2client_default_audience_works_with_the_compat_profile(interop_broker: InteropBroker) -> None:
    key = ECKey.generate_key("P-256")
    kid = "interop-roc-compat-1"
    interop_broker.register("interop-roc-compat", public_jwk(key, alg="ES256", kid=kid),
                            compat={"token_endpoint_aud": True})
    client = _roc_client(interop_broker, PrivateKeyJwt("interop-roc-compat", _private_jwk(key, kid), alg="ES256"))
    token = client.client_credentials(scope="read", resource=RS1)
    assert (token.token_type, token.scope) == ("Bearer", "read")
    assert _claims(interop_broker, token.access_token) == _expected(interop_broker, "interop-roc-compat", "read")
    assert _compat_used(interop_broker, "interop-roc-compat", "token_endpoint_aud") == 1.0
