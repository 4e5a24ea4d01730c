// Run by tests/interop/test_node_clients.py: one client-credentials token request against a live
// broker, the way docs/integrate.md tells a Node service to make it.
//
//   node client.mjs <config.json>
//
// config: {"recipe": "openid-client" | "jose", "issuer", "client_id", "key_file" (a private JWK with
// "alg" and "kid"), "scope", "resource", "insecure_http" (openid-client only: the test broker is plain
// http on loopback), "repeat_assertion" (jose only: send the same assertion a second time)}.
// Prints one JSON object on stdout; the private key is never printed.
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import * as client from 'openid-client';
import { SignJWT, importJWK } from 'jose';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const jwk = JSON.parse(readFileSync(config.key_file, 'utf8'));
const privateKey = await importJWK(jwk, jwk.alg);

async function withOpenidClient() {
  // RFC 8414 metadata; openid-client's default "oidc" reads /.well-known/openid-configuration.
  const options = { algorithm: 'oauth2', timeout: 10 };
  if (config.insecure_http) {
    options.execute = [client.allowInsecureRequests];
  }
  // openid-client 6 signs aud = the issuer, exp = now + 60 s, a fresh jti and the key's kid.
  const auth = client.PrivateKeyJwt({ key: privateKey, kid: jwk.kid });
  const server = await client.discovery(new URL(config.issuer), config.client_id, {}, auth, options);
  try {
    const tokens = await client.clientCredentialsGrant(server, { scope: config.scope, resource: config.resource });
    return { ok: true, tokens: { ...tokens } };
  } catch (err) {
    return { ok: false, name: err.name, status: err.status, error: err.error, error_description: err.error_description };
  }
}

async function assertion(issuer) {
  return new SignJWT({})
    .setProtectedHeader({ alg: jwk.alg, kid: jwk.kid, typ: 'client-authentication+jwt' })
    .setIssuer(config.client_id)
    .setSubject(config.client_id)
    .setAudience(issuer) // the issuer string, not the token endpoint (RFC 10070)
    .setJti(randomUUID())
    .setIssuedAt()
    .setExpirationTime('60s')
    .sign(privateKey);
}

async function post(tokenEndpoint, clientAssertion) {
  const response = await fetch(tokenEndpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: clientAssertion,
      scope: config.scope,
      resource: config.resource,
    }),
    signal: AbortSignal.timeout(10000),
  });
  return { status: response.status, body: await response.json() };
}

async function withJose() {
  const metadata = await (await fetch(new URL('/.well-known/oauth-authorization-server', config.issuer),
    { signal: AbortSignal.timeout(10000) })).json();
  const signed = await assertion(metadata.issuer);
  const responses = [await post(metadata.token_endpoint, signed)];
  if (config.repeat_assertion) {
    responses.push(await post(metadata.token_endpoint, signed));
  }
  return { responses };
}

const result = config.recipe === 'openid-client' ? await withOpenidClient() : await withJose();
process.stdout.write(JSON.stringify(result) + '\n');
