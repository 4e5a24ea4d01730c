// Run by tests/interop/test_dpop_interop.py: panva's libraries on the two DPoP roles (RFC 9449).
//
//   node dpop.mjs <config.json>
//
// config.recipe:
// - "openid-client": {"issuer", "client_id", "key_file" (a private JWK with "alg" and "kid"), "scope",
//   "resource", "resource_url" (optional: a URL protected by the project's verifier)}. openid-client
//   makes a DPoP key pair, gets a token with clientCredentialsGrant({DPoP}) (retrying use_dpop_nonce
//   itself) and, with resource_url, calls it twice with fetchProtectedResource({DPoP}).
// - "validate": {"issuer", "jwks_uri", "audience", "url", "method", "access_token", "proof"}.
//   oauth4webapi's validateJwtAccessToken with requireDPoP checks the token and its proof.
// Prints one JSON object on stdout; private keys are never printed.
import { readFileSync } from 'node:fs';
import * as client from 'openid-client';
import * as oauth from 'oauth4webapi';
import { importJWK, exportJWK } from 'jose';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

async function withOpenidClient() {
  const jwk = JSON.parse(readFileSync(config.key_file, 'utf8'));
  const privateKey = await importJWK(jwk, jwk.alg);
  const options = { algorithm: 'oauth2', timeout: 10, execute: [client.allowInsecureRequests] };
  const auth = client.PrivateKeyJwt({ key: privateKey, kid: jwk.kid });
  const server = await client.discovery(new URL(config.issuer), config.client_id, {}, auth, options);
  const keyPair = await client.randomDPoPKeyPair('ES256');
  const dpop = client.getDPoPHandle(server, keyPair);
  const publicJwk = await exportJWK(keyPair.publicKey);
  let tokens;
  try {
    tokens = await client.clientCredentialsGrant(server, { scope: config.scope, resource: config.resource }, { DPoP: dpop });
  } catch (err) {
    return { ok: false, name: err.name, status: err.status, error: err.error, error_description: err.error_description };
  }
  const calls = [];
  if (config.resource_url) {
    for (const method of ['GET', 'GET']) {
      const response = await client.fetchProtectedResource(server, tokens.access_token, new URL(config.resource_url),
        method, null, undefined, { DPoP: dpop });
      calls.push({ status: response.status, body: await response.json() });
    }
  }
  return { ok: true, tokens: { ...tokens }, jwk: publicJwk, calls };
}

async function validate() {
  const as = { issuer: config.issuer, jwks_uri: config.jwks_uri };
  const request = new Request(config.url, {
    method: config.method,
    headers: { authorization: `DPoP ${config.access_token}`, dpop: config.proof },
  });
  try {
    const claims = await oauth.validateJwtAccessToken(as, request, config.audience,
      { requireDPoP: true, [oauth.allowInsecureRequests]: true });
    return { ok: true, claims };
  } catch (err) {
    return { ok: false, name: err.name, code: err.code, message: err.message };
  }
}

const result = config.recipe === 'openid-client' ? await withOpenidClient() : await validate();
process.stdout.write(JSON.stringify(result) + '\n');
