"""What each reason code in the broker's log means, and what fixes it (``broker_admin.py why``).

The broker logs a stable ``reason`` code with every refusal (``token.rejected``,
``revocation.rejected``, ``introspection.rejected``, ``replay.rejected``), with every access token
introspection finds inactive or revocation ignores, and with the refusals of its HTTP layer. The
callers only ever see the RFC 6749 error (and ``invalid_client`` says nothing more, on purpose);
an operator with the log and the answer's ``X-Request-Id`` gets the cause and the fix from here.

Three vocabularies, because a few codes mean different things in each: ``REQUEST`` (a request to
/token, /revoke or /introspect and the client assertion in it), ``ACCESS_TOKEN`` (an access token
presented for introspection, revocation or to the admin API) and ``JWKS_FETCH`` (the broker
fetching a client's ``jwks_uri``). Texts may name ``{issuer}``, ``{token_endpoint}`` and
``{client_id}``; ``why`` fills them from the log, or with a description when the log does not say.
A test fails when the broker's code raises or logs a reason no table explains.
"""

from __future__ import annotations

from typing import NamedTuple


class Explanation(NamedTuple):
    found: str
    fix: str


_X = Explanation
_SEND_JWT_BEARER = ("send client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer and "
                    "client_assertion, a JWT signed with the client's private key (private_key_jwt)")
_NEW_ASSERTION = "the client must sign a new assertion for every request (a fresh jti)"
_CHECK_CLIENT = "check with `broker_admin.py show {client_id}`"
_ALG_AND_KEY = ("sign with the registered key and its alg (`broker_admin.py show {client_id}` lists kid and "
                "alg), or register the key the client uses (`broker_admin.py add-key {client_id} --public-key FILE`)")
_CLOCK = "the client's clock is off, or it builds assertions ahead of time: sync the clock (NTP)"
_RETRY = "retry after the Retry-After the answer carried"

_FORM = {
    "content_type_missing": _X("the request had no Content-Type.",
                               "send the parameters as a form body with Content-Type: application/x-www-form-urlencoded"),
    "content_type_json": _X("the request body was JSON.",
                            "send the parameters as an application/x-www-form-urlencoded form body, not JSON (check "
                            "the client library's token request settings)"),
    "content_type_invalid": _X("the Content-Type was neither a form nor JSON.",
                               "send Content-Type: application/x-www-form-urlencoded"),
    "form_charset": _X("the form body held bytes outside visible ASCII (a raw space, CR/LF, non-ASCII).",
                       "percent-encode the parameter values"),
    "form_encoding": _X("a percent-escape in the form decoded to something that is not UTF-8.",
                        "percent-encode UTF-8 text only"),
    "parameter_repeated": _X("a parameter appeared twice in the form (the answer names it when it is a known one).",
                             "send each parameter once (only resource may repeat)"),
    "repeated_header": _X("Content-Type or Content-Length appeared twice in the request.",
                          "send each header once; check proxies that add their own"),
    "multiple_auth_methods": _X("the request carried client_assertion and also client_secret or an Authorization "
                                "header.", "send the assertion alone; remove the secret or the Basic/other header"),
    "authorization_unsupported": _X("the client authenticated with an Authorization header (HTTP Basic, "
                                    "client_secret_basic) instead of an assertion.",
                                    "configure the client for private_key_jwt: " + _SEND_JWT_BEARER),
    "client_secret_unsupported": _X("the client sent client_secret (client_secret_post) instead of an assertion.",
                                    "configure the client for private_key_jwt: " + _SEND_JWT_BEARER),
    "client_auth_missing": _X("the request carried no client authentication.", _SEND_JWT_BEARER),
    "assertion_type_missing": _X("client_assertion came without client_assertion_type.",
                                 "add client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
    "assertion_type_unsupported": _X("client_assertion_type was not the jwt-bearer URN (compared byte for byte).",
                                     "send client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
    "assertion_missing": _X("client_assertion_type came without client_assertion (or it was empty).",
                            "send the signed JWT as client_assertion"),
    "grant_type_missing": _X("grant_type was missing.", "send grant_type=client_credentials"),
    "grant_type_charset": _X("grant_type held characters outside %x20-7E.", "send grant_type=client_credentials"),
    "grant_type_unsupported": _X("grant_type was not client_credentials (the only grant this broker issues).",
                                 "send grant_type=client_credentials"),
    "client_id_charset": _X("the client_id parameter held characters outside %x20-7E.",
                            "send the registered client_id, or leave the parameter out (the assertion names the client)"),
    "authorization_endpoint": _X("a request reached /authorize, which exists only because OpenID discovery parsers "
                                 "insist on it: this broker has no authorization code or implicit flow.",
                                 "use the client_credentials grant at the token endpoint"),
    "token_missing": _X("the token parameter was missing (/revoke, /introspect).", "send token=<the access token>"),
    "resource_multiple": _X("several resource parameters: each token is for one audience.",
                            "ask for one resource per token request"),
}

_ASSERTION = {
    "assertion_too_large": _X("client_assertion was longer than BROKER_ASSERTION_MAX characters.",
                              "send a compact signed JWT (no embedded certificates or large claims)"),
    "assertion_malformed": _X("client_assertion was not one compact JWS (three base64url parts, header at most 512 "
                              "and signature at most 1024 characters).",
                              "send the compact serialization of a signed JWT, not JSON serialization or a JWE"),
    "header_invalid": _X("the assertion's header was not a JSON object of string members.",
                         "have the client library build the assertion"),
    "header_param_forbidden": _X("the assertion's header had members beyond alg, kid and typ (crit, jku, x5u, "
                                 "jwk, b64, ...).", "sign with a header of alg, kid and optionally typ only"),
    "typ_invalid": _X("the assertion's typ was neither JWT nor client-authentication+jwt.",
                      "set typ to client-authentication+jwt or JWT, or leave it out"),
    "alg_not_allowed": _X("the assertion's alg is not allowed: outside BROKER_ASSERTION_ALGS, or not the alg of the "
                          "client's key that kid selects.", _ALG_AND_KEY),
    "claims_invalid": _X("the assertion's payload was not a JSON object (duplicate members, NaN, Infinity are "
                         "refused).", "have the client library build the assertion"),
    "iss_sub_invalid": _X("iss or sub was missing or not a string.", "set iss and sub to the client_id {client_id}"),
    "iss_sub_mismatch": _X("iss and sub differed.", "set both iss and sub to the client_id {client_id}"),
    "client_id_mismatch": _X("the client_id parameter named another client than the assertion's iss.",
                             "send the same client_id in both, or leave the parameter out"),
    "client_unknown": _X("no client {client_id} is registered.",
                         "register it (`broker_admin.py register {client_id} ...`) or fix the client_id the client "
                         "uses (iss and sub of the assertion)"),
    "client_disabled": _X("client {client_id} is disabled.", "`broker_admin.py enable {client_id}` if that is intended"),
    "kid_unknown": _X("the assertion's kid names no key of client {client_id}.", _ALG_AND_KEY),
    "x5t_unknown": _X("the assertion's x5t / x5t#S256 matches no certificate or key thumbprint of client "
                      "{client_id}.", "send the thumbprint of the registered certificate (or set kid); " + _ALG_AND_KEY),
    "signature_invalid": _X("the signature does not verify with the client's key that kid, x5t or the alg selects "
                            "(without kid, every key of that alg is tried).",
                            "the client signs with another private key than the one registered: " + _ALG_AND_KEY),
    "aud_not_issuer": _X("the assertion's aud is not this broker's issuer {issuer} (RFC 7523 as updated by RFC "
                         "10070: aud is the issuer, as a plain string). A client that puts the token endpoint URL "
                         "{token_endpoint} there is the usual case.",
                         "set aud to {issuer} in the client; or, for a client that cannot change it, give it the "
                         "compat setting token_endpoint_aud (`broker_admin.py update {client_id} --compat "
                         "token_endpoint_aud`)"),
    "aud_not_issuer:token_endpoint": _X(
        "aud is the token endpoint URL {token_endpoint}: this broker wants the issuer {issuer} (RFC 7523 as updated by "
        "RFC 10070).",
        "set aud to {issuer} in the client (docs/integrate.md has the setting per library); or, for a client that "
        "cannot change it (Authlib's and Spring's defaults, MSAL), give it the compat setting token_endpoint_aud "
        "(`broker_admin.py update {client_id} --compat token_endpoint_aud`)"),
    "aud_not_issuer:issuer_with_trailing_slash": _X(
        "aud is the issuer with a trailing slash; the broker compares aud with {issuer} byte for byte.",
        "set aud to {issuer} exactly, without the trailing slash"),
    "exp_missing": _X("the assertion had no exp.", "set exp (a short lifetime: at most BROKER_ASSERTION_MAX_LIFETIME)"),
    "exp_invalid": _X("exp was not a NumericDate (a non-negative JSON number).", "set exp to seconds since the epoch"),
    "exp_expired": _X("the assertion had expired when it arrived.", "sign assertions just before sending them; " + _CLOCK),
    "exp_too_far": _X("the assertion's lifetime (exp - now, or exp - iat) is longer than the broker allows "
                      "(BROKER_ASSERTION_MAX_LIFETIME, 300 s by default).",
                      "make the client sign assertions with a short lifetime; or, for a client that cannot, give it "
                      "the compat setting assertion_max_lifetime (`broker_admin.py update {client_id} --compat "
                      "assertion_max_lifetime=3600`)"),
    "iat_invalid": _X("iat was not a NumericDate.", "set iat to seconds since the epoch"),
    "iat_in_future": _X("iat is in the future (beyond the leeway).", _CLOCK),
    "iat_too_old": _X("iat is older than BROKER_ASSERTION_MAX_AGE allows.",
                      "sign a new assertion per request instead of reusing an old one; " + _CLOCK),
    "nbf_invalid": _X("nbf was not a NumericDate.", "set nbf to seconds since the epoch, or leave it out"),
    "nbf_in_future": _X("nbf is in the future (beyond the leeway).", _CLOCK),
    "nbf_after_exp": _X("nbf is after exp.", "fix the client's assertion times"),
    "jti_invalid": _X("jti was missing, empty, not a string or longer than BROKER_JTI_MAX_LENGTH.",
                      "set jti to a fresh random string per assertion"),
    "jti_replayed": _X("this assertion (its jti) was used before: every assertion is good for one request.",
                       _NEW_ASSERTION + "; for a client library that caches one assertion and re-sends it, give the "
                       "client the compat setting assertion_reuse (`broker_admin.py update {client_id} --compat "
                       "assertion_reuse`)"),
}

_POLICY = {
    "grant_not_allowed": _X("client {client_id} is not registered for the client_credentials grant.",
                            "register the grant for it, or use another client"),
    "scope_syntax": _X("the scope parameter is not a space-separated list of RFC 6749 scope tokens.",
                       "send registered scope names separated by single spaces"),
    "scope_too_large": _X("the scope parameter is longer than the broker accepts.", "ask for fewer scopes"),
    "scope_none_default": _X("no scope was asked for and client {client_id} has no default scopes.",
                             "send scope=..., or register default scopes for the client"),
    "scope_not_allowed": _X("a scope asked for is not registered for client {client_id}.",
                            "ask only for registered scopes (" + _CHECK_CLIENT + "), or add the scope to the client"),
    "resource_invalid": _X("resource is not an absolute URI without a fragment (RFC 8707).",
                           "send the resource server's URI as registered"),
    "resource_required": _X("the request named no resource and client {client_id} has no default audience.",
                            "send resource=<the API's URI>, or register a default audience for the client"),
    "resource_not_allowed": _X("the resource asked for is not registered for client {client_id}.",
                               "ask for a registered audience (" + _CHECK_CLIENT + "), or add it to the client"),
    "introspect_not_allowed": _X("client {client_id} called /introspect without the broker:introspect scope.",
                                 "register broker:introspect for the resource server's client"),
    "rate_limited_address": _X("the source address is blocked after too many failed client authentications.",
                               "fix the failing client (the earlier refusals from this address say why); " + _RETRY),
    "rate_limited_client": _X("client {client_id} is blocked after too many refused assertions signed with its key.",
                              "fix the client (its earlier refusals say why); " + _RETRY),
    "quota_exceeded": _X("client {client_id} made more requests than BROKER_CLIENT_QUOTA allows per window.",
                         "cache tokens until they near expiry instead of asking per call; " + _RETRY),
    "store_unavailable": _X("Redis did not answer, so the broker could not record the assertion (it fails closed).",
                            "check Redis (the request's <endpoint>.store_unavailable line names the error; /readyz "
                            "on the management port); the client may retry"),
    "unexpected": _X("an unexpected error inside the broker (its type is in the <endpoint>.unexpected_error line).",
                     "report it with this log line; the client may retry"),
}

_HTTP = {
    "body_too_large": _X("the request body was larger than BROKER_BODY_MAX.", "send a form body of normal size"),
    "method_not_allowed": _X("the endpoint was called with another method than POST.", "use POST"),
    "client_disconnected": _X("the client went away before the request body arrived.",
                              "nothing to fix at the broker: check the client's timeouts"),
    "http_error": _X("the HTTP layer refused the request.", "check the request line and headers"),
    "http_parse_error": _X("the request was not valid HTTP/1.1 (e.g. Content-Length twice, a bad header line).",
                           "check what sits between client and broker"),
    "header_timeout": _X("the request headers did not arrive in time.", "check the network path and client"),
    "body_timeout": _X("the request body did not arrive in time.", "check the network path and client"),
    "headers_too_large": _X("the request headers were larger than the broker accepts.", "send smaller headers"),
    # The token cache refusing a stored entry (token_cache.entry_rejected): the broker minted a new token.
    "corrupt": _X("a cached token entry in Redis could not be read; a new token was issued.",
                  "nothing for the client; repeated lines mean something else writes the broker's keys"),
    "mismatch": _X("a cached token entry did not match the request; a new token was issued.",
                   "nothing for the client; repeated lines mean something else writes the broker's keys"),
}

_NEW_PROOF = "the client must make a new DPoP proof for every request (docs/dpop.md)"
_PROOF_LIB = "use a DPoP client library (the project's token-broker-client does it: docs/dpop.md)"
# DPoP proofs at /token (RFC 9449 §4.3; token.rejected with error invalid_dpop_proof or use_dpop_nonce).
_DPOP = {
    "dpop_multiple": _X("the token request carried more than one DPoP header (or one folded into a list).",
                        "send exactly one DPoP header; check proxies that add or merge headers"),
    "dpop_malformed": _X("the DPoP header is not a compact JWS, or its header segment is not JSON.", _PROOF_LIB),
    "dpop_crit": _X("the DPoP proof header has a crit member (no JWS extension is understood here).", _PROOF_LIB),
    "dpop_typ_invalid": _X("the DPoP proof's typ is not dpop+jwt.", "set typ: dpop+jwt in the proof header"),
    "dpop_alg_not_allowed": _X("the DPoP proof's alg is not an asymmetric algorithm in BROKER_DPOP_ALGS.",
                               "sign proofs with an algorithm the metadata lists in dpop_signing_alg_values_supported"),
    "dpop_jwk_missing": _X("the DPoP proof header has no jwk.", "put the proof key's public JWK in the header"),
    "dpop_jwk_private": _X("the DPoP proof's jwk holds private (or symmetric) key material.",
                           "put only the public key in the proof header; replace the exposed key"),
    "dpop_jwk_invalid": _X("the DPoP proof's jwk does not fit its alg or is not a usable public key.",
                           "send the public key of the proof's signing key, of the type its alg names"),
    "dpop_signature_invalid": _X("the DPoP proof's signature does not verify with the jwk in its header.",
                                 "sign the proof with the private key of the jwk it carries"),
    "dpop_claims_invalid": _X("the DPoP proof's payload is not a JSON object.", _PROOF_LIB),
    "dpop_header_invalid": _X("the DPoP proof's header is not a JSON object.", _PROOF_LIB),
    "dpop_iat_invalid": _X("the DPoP proof has no numeric iat.", "set iat to the time the proof is made"),
    # f"dpop_{name}_invalid" for jti, htm, htu: the names below are the ones it produces.
    "dpop_": _X("a DPoP proof claim (jti, htm or htu) is missing or invalid.", _PROOF_LIB),
    "dpop_jti_invalid": _X("the DPoP proof's jti is missing, empty or too long.", _NEW_PROOF + " with a random jti"),
    "dpop_htm_invalid": _X("the DPoP proof's htm is missing or invalid.", "set htm to POST for the token endpoint"),
    "dpop_htu_invalid": _X("the DPoP proof's htu is missing or invalid.", "set htu to {token_endpoint}"),
    "dpop_htm_mismatch": _X("the DPoP proof's htm is not POST.", "set htm to POST for the token endpoint"),
    "dpop_htu_mismatch": _X("the DPoP proof's htu is not the token endpoint's URL.",
                            "set htu to {token_endpoint} (the issuer's URL, also behind a proxy)"),
    "dpop_nonce_invalid": _X("the DPoP proof's nonce claim is not a non-empty string.",
                             "send the value of the last DPoP-Nonce header as nonce"),
    "dpop_iat_too_old": _X("the DPoP proof is older than BROKER_DPOP_PROOF_MAX_AGE (plus the leeway).",
                           _NEW_PROOF + " right before sending it; " + _CLOCK),
    "dpop_iat_in_future": _X("the DPoP proof's iat is ahead of the broker's clock by more than the leeway.", _CLOCK),
    "dpop_ath_mismatch": _X("the DPoP proof's ath does not match the access token (resource servers only).",
                            "set ath to the hash of the token the request carries"),
    "dpop_replayed": _X("this DPoP proof (its jti, for this key) was used before; nothing was recorded.",
                        _NEW_PROOF + "; the same assertion may be sent again with a new proof"),
    "dpop_required": _X("client {client_id} is registered with dpop_bound_access_tokens and sent no DPoP proof.",
                        "configure the client for DPoP (docs/dpop.md), or lift the requirement "
                        "(`broker_admin.py update {client_id} --no-dpop-bound-access-tokens`)"),
    "dpop_nonce_required": _X("BROKER_DPOP_NONCE is on and the DPoP proof had no nonce (use_dpop_nonce).",
                              "retry with the DPoP-Nonce header's value as the proof's nonce (DPoP client "
                              "libraries do it once on their own)"),
    "dpop_nonce_stale": _X("the DPoP proof's nonce is not the current or the previous one (use_dpop_nonce).",
                           "retry with the DPoP-Nonce header's value; keep the latest nonce per server"),
}

#: A request to /token, /revoke or /introspect, and the client assertion in it.
REQUEST: dict[str, Explanation] = {**_FORM, **_ASSERTION, **_POLICY, **_HTTP, **_DPOP}

# -- workload identity federation: a platform's workload token as the client assertion -----------
_TRUST = "check the trusted issuer (`broker_admin.py trust show ISSUER`)"
_WORKLOAD = "the workload's platform token"
REQUEST.update({
    "federation_issuer_unknown": _X("the assertion is a workload token (its iss is a URL, or it has no iss and a "
                                    "SPIFFE ID as sub) whose issuer or SPIFFE trust domain is not trusted.",
                                    "trust the issuer (`broker_admin.py trust add`), or fix the issuer the "
                                    "platform writes (the federated_iss field of the log line)"),
    "federation_keys_unavailable": _X("the trusted issuer's keys could not be fetched (the detail names why: "
                                      "discovery, the jwks_uri, the key server).",
                                      "see the federation.keys_fetch_failed line; the broker retries after "
                                      "BROKER_JWKS_URI_REFETCH_COOLDOWN"),
    "federation_alg_not_allowed": _X(_WORKLOAD + " is signed with an alg the trusted issuer does not allow (none "
                                     "and HS* never are), or not its key's alg.", _TRUST),
    "federation_typ_invalid": _X(_WORKLOAD + "'s typ header is neither absent nor JWT.",
                                 "present the platform's token unchanged"),
    "federation_key_unknown": _X(_WORKLOAD + " names a key (kid) the issuer does not publish, even after a refetch.",
                                 "check the issuer's JWKS; a static jwks in the trust record must be updated "
                                 "when the platform rotates its keys"),
    "federation_signature_invalid": _X(_WORKLOAD + "'s signature does not verify with the issuer's keys.",
                                       "present the platform's token unchanged; check the issuer's JWKS"),
    "federation_aud_invalid": _X(_WORKLOAD + " is not for this broker: its aud is not {issuer} (or the trust "
                                 "record's audience), or an array with other members too (the detail says which).",
                                 "request the platform token with this broker as its audience (projected volume "
                                 "audience, SPIRE -audience, GitHub getIDToken(audience)), or set "
                                 "allow_other_audiences on the trusted issuer"),
    "federation_exp_missing": _X(_WORKLOAD + " has no exp.", "platform tokens always carry exp: check the issuer"),
    "federation_iat_missing": _X(_WORKLOAD + " has no iat.", "platform tokens always carry iat: check the issuer"),
    "federation_exp_invalid": _X(_WORKLOAD + "'s exp is not a NumericDate.", "check the issuer"),
    "federation_iat_invalid": _X(_WORKLOAD + "'s iat is not a NumericDate.", "check the issuer"),
    "federation_nbf_invalid": _X(_WORKLOAD + "'s nbf is not a NumericDate.", "check the issuer"),
    "federation_expired": _X(_WORKLOAD + " has expired.",
                             "the workload must read its current token (the kubelet and SPIRE rotate them)"),
    "federation_iat_in_future": _X(_WORKLOAD + " was issued in the future.", "sync the platform's clock (NTP)"),
    "federation_not_yet_valid": _X(_WORKLOAD + "'s nbf is in the future.", "sync the platform's clock (NTP)"),
    "federation_too_old": _X(_WORKLOAD + " was issued longer ago than the trusted issuer's max_token_age.",
                             "shorten the platform token's lifetime, or raise max_token_age: " + _TRUST),
    "federation_lifetime_too_long": _X(_WORKLOAD + " lives longer (exp - iat) than the trusted issuer's max_lifetime.",
                                       "request shorter-lived tokens (projected volume expirationSeconds), or "
                                       "raise max_lifetime: " + _TRUST),
    "federation_sub_invalid": _X(_WORKLOAD + "'s sub is missing, too long or holds control characters, or a "
                                 "JWT-SVID's SPIFFE ID is outside its trust domain.", "check the issuer"),
    "federation_jti_invalid": _X(_WORKLOAD + "'s jti is not a string of 1 to BROKER_JTI_MAX_LENGTH characters.",
                                 "check the issuer"),
    "federation_jti_missing": _X("the trusted issuer is single_use but the token carries no jti.",
                                 "turn single_use off for this issuer (reuse until exp, counted): " + _TRUST),
    "federation_unmapped": _X("no mapping rule of the trusted issuer matches the workload (federated_sub).",
                              "add a rule mapping it to a client: " + _TRUST),
    "federation_ambiguous": _X("mapping rules naming different clients all match the workload: refused, never "
                               "guessed (the detail names the clients).", "make the rules disjoint: " + _TRUST),
    "federation_client_unknown": _X("the mapping rule names a client that is not registered.",
                                    "register the client or fix the rule: " + _TRUST),
    "federation_client_disabled": _X("the workload maps to a disabled client.", _CHECK_CLIENT),
    "federation_client_admin": _X("the workload maps to an admin client: admin clients authenticate with their "
                                  "own key only, never with a platform token.", "map the workload to another client"),
    "federation_type_mismatch": _X("client_assertion_type was the SPIFFE one (jwt-spiffe) but the assertion is not "
                                   "a JWT-SVID (its sub is not a SPIFFE ID, e.g. a private_key_jwt assertion).",
                                   "send client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
})
JWKS_FETCH_FEDERATION = {
    "discovery_issuer_mismatch": _X("the trusted issuer's discovery document names another issuer.",
                                    "fix the trust record's issuer (it must be the platform's iss exactly)"),
    "discovery_": _X("the jwks_uri in the trusted issuer's discovery document was refused (private address, not "
                     "https...: the rest of the code says which).", "set jwks_uri or jwks on the trusted issuer"),
    "no_usable_keys": _X("the issuer's JWK set held no signing key for its algs.", "check the trusted issuer's algs"),
}

_TOKEN_BAD = "the access token was not issued by this broker as presented (damaged or forged)"
#: An access token presented for introspection or revocation, or to the admin API.
ACCESS_TOKEN: dict[str, Explanation] = {
    "token_missing": _X("no access token was presented.", "send it (Authorization: Bearer ... for the admin API)"),
    "token_malformed": _X("the access token was not a compact JWS.", "present the access_token value unchanged"),
    "header_invalid": _X("the access token's header was not a JSON object.", "present the access_token unchanged"),
    "claims_invalid": _X("the access token's payload was not a JSON object.", "present the access_token unchanged"),
    "typ_invalid": _X("the token's typ was not at+jwt: not an access token of this broker.",
                      "present an access token the broker issued"),
    "header_param_forbidden": _X("the token's header had members beyond alg, kid and typ.", _TOKEN_BAD),
    "kid_unknown": _X("the token was signed by a key this broker does not publish (another broker, or a key "
                      "rotated out).", "get a new token"),
    "alg_not_allowed": _X("the token's alg is not its key's.", _TOKEN_BAD),
    "signature_invalid": _X("the token's signature does not verify.", _TOKEN_BAD),
    "iss_invalid": _X("the token's iss is not {issuer}.", "present a token this broker issued"),
    "aud_invalid": _X("the token is for another audience.", "ask the broker for a token for this audience"),
    "sub_invalid": _X("the token's sub is missing.", _TOKEN_BAD),
    "client_id_invalid": _X("the token's client_id is missing.", _TOKEN_BAD),
    "jti_invalid": _X("the token's jti is missing.", _TOKEN_BAD),
    "scope_invalid": _X("the token's scope is missing.", _TOKEN_BAD),
    "exp_invalid": _X("the token's exp is not a NumericDate.", _TOKEN_BAD),
    "nbf_invalid": _X("the token's nbf is not a NumericDate.", _TOKEN_BAD),
    "iat_invalid": _X("the token's iat is not a NumericDate.", _TOKEN_BAD),
    "token_expired": _X("the access token has expired.", "get a new token (clients renew before exp)"),
    "nbf_in_future": _X("the token's nbf is in the future.", "check the clocks of broker replicas (NTP)"),
    "iat_in_future": _X("the token's iat is in the future.", "check the clocks of broker replicas (NTP)"),
    "token_revoked": _X("the access token was revoked.", "get a new token"),
    "client_gone": _X("the token's client has been deleted or disabled since it was issued.",
                      "nothing, unless the client should exist: " + _CHECK_CLIENT),
    "registration_gone": _X("the token's client was deleted and registered again since it was issued.",
                            "get a new token"),
    "token_sender_constrained": _X("the access token is DPoP-bound (cnf); the admin API takes Bearer tokens only.",
                                   "get the admin token without a DPoP header"),
}

_FETCH_HINT = "check the URL and the key server ({client_id}'s jwks_uri)"
#: The broker fetching a client's jwks_uri (``jwks_uri.fetch_failed``, ``jwks_uri.key_refused``).
JWKS_FETCH: dict[str, Explanation] = {
    "dns_failed": _X("the jwks_uri host name did not resolve.", _FETCH_HINT),
    "address_forbidden": _X("the jwks_uri host resolves to a private, loopback or link-local address.",
                            "serve the keys from a public address"),
    "http_not_loopback": _X("an http:// jwks_uri that is not on loopback.", "use https://"),
    "content_encoding": _X("the key server sent a compressed body.", "serve the JWKS uncompressed"),
    "too_large": _X("the JWKS was larger than the broker fetches.", "publish fewer or smaller keys"),
    "timeout": _X("the key server did not answer in time.", _FETCH_HINT),
    "not_json": _X("the jwks_uri answer was not JSON.", _FETCH_HINT),
    "not_jwks": _X("the jwks_uri answer was not a JWK set ({\"keys\": [...]}).", _FETCH_HINT),
    "key_index_unavailable": _X("Redis did not answer when the fetched keys were compared with other clients' "
                                "keys: the fetch counts as failed (closed).", "check Redis; the next fetch retries"),
    "no_signing_keys": _X("the JWK set held no usable signing key.", "publish the client's public signing key"),
    "jwks_uri_invalid": _X("the stored jwks_uri is not an absolute https URL.", "update the client's jwks_uri"),
    "jwks_uri_private": _X("the stored jwks_uri points at a private address.", "update the client's jwks_uri"),
    "jwk_shared": _X("a key the jwks_uri publishes is registered to another client too: refused.",
                     "give each client its own key"),
    "unexpected": _X("an unexpected error while fetching the keys (its type is on the same line).",
                     "report it with this log line"),
    # Codes with a variable tail: http_<status>, http_error:<exception>, key_invalid:<reason>.
    "http_": _X("the key server answered with an HTTP error status (in the code).", _FETCH_HINT),
    "http_error:": _X("the connection to the key server failed (the exception type is in the code).", _FETCH_HINT),
    "key_invalid:": _X("a key in the JWK set was refused (the reason is in the code).",
                       "publish keys the broker accepts (see the admin API's key rules)"),
}
#: Events whose reason is about an access token, and those about a jwks_uri fetch.
ACCESS_TOKEN_EVENTS = ("introspection.inactive", "revocation.ignored", "admin.")
JWKS_FETCH_EVENTS = ("jwks_uri.", "federation.keys_")
JWKS_FETCH.update(JWKS_FETCH_FEDERATION)


def explanation(event: str, reason: str) -> Explanation | None:
    """The explanation of ``reason`` as logged with ``event``; None when no table has it."""
    if event.startswith(JWKS_FETCH_EVENTS):
        table = JWKS_FETCH
    elif event.startswith(ACCESS_TOKEN_EVENTS) and reason in ACCESS_TOKEN:
        table = ACCESS_TOKEN
    else:
        table = REQUEST
    if reason in table:
        return table[reason]
    prefix = next((p for p in ("http_error:", "key_invalid:", "http_", "discovery_") if reason.startswith(p)), None)
    return JWKS_FETCH.get(prefix) if prefix is not None and table is JWKS_FETCH else None
