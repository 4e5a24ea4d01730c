from tests.helpers import ISS, RS1, decode_unverified, form


def test_token_then_replay(broker, c1):
    assertion = c1.assertion(broker.clock.now)
    r = broker.token(form(assertion))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["scope"] == "read"
    header, claims = decode_unverified(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == ISS and claims["aud"] == RS1 and claims["sub"] == "c1"
    r2 = broker.token(form(assertion))
    assert r2.status_code == 401
    assert r2.json() == {"error": "invalid_client", "error_description": "Client authentication failed."}
