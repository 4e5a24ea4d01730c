"""A workload-token issuer on loopback for the workload identity federation tests.

``FederationIssuer`` is an HTTP server on 127.0.0.1 that serves OIDC discovery
(``/.well-known/openid-configuration``) and a JWKS (``/jwks``; a SPIFFE trust bundle when it
stands for a SPIRE server), can rotate its signing key, and signs tokens shaped as the platforms
produce them (claims, headers and lifetimes):

- ``kubernetes_token``: a projected service-account token (kube-apiserver ``TokenRequest``):
  header ``alg`` RS256 + ``kid`` (no ``typ``), ``iss``, ``sub`` ``system:serviceaccount:<ns>:<name>``,
  ``aud`` an array, ``kubernetes.io`` {namespace, node, pod, serviceaccount} with names and uids,
  ``jti``, ``nbf`` = ``iat``, ``exp`` = ``iat`` + 1 h (a projected volume's ``expirationSeconds``);
- ``spire_svid``: a SPIRE JWT-SVID: header ``alg`` (ES256 by default) + ``kid`` + ``typ: JWT``,
  claims ``sub`` (a SPIFFE ID), ``aud`` an array, ``iat``, ``exp`` = ``iat`` + 5 min, no ``iss``
  (SPIRE's default), no ``nbf``, no ``jti``;
- ``github_token``: a GitHub Actions OIDC token: header ``typ: JWT``, ``alg`` RS256, ``x5t`` and
  ``kid`` (GitHub uses the same value for both), ``iss`` https://token.actions.githubusercontent.com
  (here: this server), ``sub`` ``repo:<org>/<repo>:ref:<ref>``, ``aud`` a string, the repository,
  workflow and run claims, ``nbf`` = ``iat`` - 10 min, ``exp`` = ``iat`` + 5 min.

Keys are generated at test time. ``discovery`` may be replaced to test what a broker does with a
document that points elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from tests.helpers import raw

KUBERNETES_ISSUER = "https://kubernetes.default.svc.cluster.local"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SigningKey:
    def __init__(self, alg: str) -> None:
        self.alg = alg
        self.key = RSAKey.generate_key(2048) if alg.startswith(("RS", "PS")) else ECKey.generate_key("P-256")
        # GitHub-style: the kid is a base64url SHA-1, and the x5t header carries the same value.
        self.kid = _b64(hashlib.sha1(json.dumps(self.key.as_dict(private=False), sort_keys=True).encode()).digest())

    def public(self, use: str = "sig") -> dict[str, Any]:
        jwk = {k: v for k, v in self.key.as_dict(private=False).items() if k in ("kty", "n", "e", "crv", "x", "y")}
        return {**jwk, "kid": self.kid, "use": use, **({"alg": self.alg} if use == "sig" else {})}


class FederationIssuer:
    """``spiffe``: publish the JWKS as a SPIFFE trust bundle (``use: jwt-svid`` keys without ``alg``,
    an ``x509-svid`` key, ``spiffe_sequence``), as a SPIRE server's bundle endpoint does."""

    def __init__(self, alg: str = "RS256", *, spiffe: bool = False) -> None:
        self.alg = alg
        self.spiffe = spiffe
        self.keys = [SigningKey(alg)]
        self.discovery: dict[str, Any] | None = None  # None: the document naming this server
        self.hits: list[str] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps(owner.discovery_document()).encode()
                elif self.path == "/jwks":
                    body = json.dumps(owner.jwks()).encode()
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.jwks_uri = self.url + "/jwks"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FederationIssuer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- what it serves --------------------------------------------------------------------------

    def discovery_document(self) -> dict[str, Any]:
        if self.discovery is not None:
            return self.discovery
        return {"issuer": self.url, "jwks_uri": self.jwks_uri, "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": [self.alg]}

    def jwks(self) -> dict[str, Any]:
        if not self.spiffe:
            return {"keys": [k.public() for k in self.keys]}
        x509 = SigningKey("ES256").public(use="x509-svid")
        return {"keys": [x509, *(k.public(use="jwt-svid") for k in self.keys)], "spiffe_sequence": 1,
                "spiffe_refresh_hint": 300}

    def rotate(self) -> SigningKey:
        """A new signing key replaces the old one in the published set (the old one is gone)."""
        self.keys = [SigningKey(self.alg)]
        return self.keys[0]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.hits)

    # -- tokens ----------------------------------------------------------------------------------

    def sign(self, claims: dict[str, Any], header: dict[str, Any], key: SigningKey | None = None) -> str:
        key = key or self.keys[0]
        return raw(json.dumps({"alg": key.alg, "kid": key.kid, **header}), json.dumps(claims), key.key, key.alg)

    def kubernetes_token(self, now: float, *, audience: str, namespace: str = "payments", name: str = "api",
                         issuer: str | None = None, lifetime: int = 3600, key: SigningKey | None = None,
                         **claims: Any) -> str:
        iat = int(now)
        body = {
            "aud": [audience], "exp": iat + lifetime, "iat": iat, "iss": issuer or self.url,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": str(uuid.uuid4())},
                "pod": {"name": f"{name}-7d9f8b6c5d-x2x4q", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": name, "uid": str(uuid.uuid4())},
            },
            "nbf": iat, "sub": f"system:serviceaccount:{namespace}:{name}", **claims,
        }
        return self.sign(body, {}, key)

    def spire_svid(self, now: float, *, audience: str, spiffe_id: str = "spiffe://example.org/ns/payments/sa/api",
                   lifetime: int = 300, key: SigningKey | None = None, **claims: Any) -> str:
        iat = int(now)
        body = {"aud": [audience], "exp": iat + lifetime, "iat": iat, "sub": spiffe_id, **claims}
        return self.sign(body, {"typ": "JWT"}, key)

    def github_token(self, now: float, *, audience: str, repository: str = "octo-org/payments",
                     ref: str = "refs/heads/main", key: SigningKey | None = None, **claims: Any) -> str:
        iat = int(now)
        owner = repository.split("/")[0]
        body = {
            "jti": str(uuid.uuid4()), "sub": f"repo:{repository}:ref:{ref}", "aud": audience,
            "ref": ref, "sha": "d6e9f7c3a1b2c4d5e6f708192a3b4c5d6e7f8091", "repository": repository,
            "repository_owner": owner, "repository_owner_id": "65432", "run_id": "9876543210", "run_number": "42",
            "run_attempt": "1", "repository_visibility": "private", "repository_id": "123456", "actor_id": "7654",
            "actor": "octocat", "workflow": "deploy", "head_ref": "", "base_ref": "", "event_name": "push",
            "ref_type": "branch", "ref_protected": "true",
            "workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
            "workflow_sha": "d6e9f7c3a1b2c4d5e6f708192a3b4c5d6e7f8091",
            "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@{ref}",
            "job_workflow_sha": "d6e9f7c3a1b2c4d5e6f708192a3b4c5d6e7f8091", "runner_environment": "github-hosted",
            "iss": self.url, "nbf": iat - 600, "exp": iat + 300, "iat": iat, **claims,
        }
        signer = key or self.keys[0]
        return self.sign(body, {"typ": "JWT", "x5t": signer.kid}, signer)
