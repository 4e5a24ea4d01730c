"""Workload identity: the platform's signed token as the client assertion, no private key of our own.

A ``BrokerClient`` given one of these sources instead of a key sends, with every token request, the
token the platform issued to the workload (the broker trusts that platform: ``broker_admin.py trust
add``, docs/workload-identity.md). Caching, renewal at 80-90 % and the one retry on 401 are the
same as with a key; only the assertion differs.

- ``projected_token(path)``: a Kubernetes projected service-account token (a ``serviceAccountToken``
  volume whose ``audience`` is the broker's issuer), sent as
  ``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``. The kubelet rewrites the file before
  the token expires (at 80 % of its lifetime).
- ``jwt_svid_file(path)``: a SPIFFE JWT-SVID that spiffe-helper (or a sidecar like it) keeps in a
  file, sent as ``urn:ietf:params:oauth:client-assertion-type:jwt-spiffe``
  (draft-ietf-oauth-spiffe-client-auth).
- ``WorkloadApiSvid(audience)``: a JWT-SVID fetched from the SPIFFE Workload API socket for every
  token request, with the optional ``spiffe`` package (``pip install token-broker-client[spiffe]``).

A file is read again for every token request: it is a few hundred bytes, read once per access-token
renewal (cached access tokens serve the requests in between), so a rotation is always picked up and
nothing outlives the token's own ``exp``. A token that has already expired, an empty or missing file
and a file that does not hold a JWT raise ``WorkloadTokenUnavailable`` (a ``BrokerUnavailable``: the
platform may write a fresh one, so a cached access token still valid keeps being served). The token
itself is never logged, put in an error message or a ``repr``.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from token_broker_client.errors import BrokerUnavailable
from token_broker_jose.constants import CLIENT_ASSERTION_TYPE

#: draft-ietf-oauth-spiffe-client-auth: the ``client_assertion_type`` of a JWT-SVID.
SPIFFE_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
#: Where Kubernetes mounts the default service-account token (its audience is the API server: mount
#: a projected token with the broker as audience instead, docs/workload-identity.md).
KUBERNETES_DEFAULT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: A workload token is a compact JWS; anything longer than this is not read.
TOKEN_MAX = 16384


class WorkloadTokenUnavailable(BrokerUnavailable):
    """The workload token could not be had: missing, empty, not a JWT, or expired."""


class AssertionSource:
    """Supplies the client assertion for each token request instead of a key signing one."""

    #: The ``client_assertion_type`` the assertion is sent with.
    assertion_type: str = CLIENT_ASSERTION_TYPE

    def client_assertion(self, now: float) -> str:
        """A token valid at ``now`` (seconds since the epoch); ``WorkloadTokenUnavailable`` otherwise."""
        raise NotImplementedError


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a compact JWS, read without verifying it (the broker verifies); None when the
    text is not a JWS with a numeric ``exp``."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None
    try:  # json reads Infinity, NaN and ints too large for a float: none is a NumericDate
        value = float(exp)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def checked(token: str, now: float, where: str) -> str:
    """``token`` if it is a JWS whose ``exp`` is after ``now``; ``WorkloadTokenUnavailable`` naming ``where``."""
    if not token:
        raise WorkloadTokenUnavailable("workload_token_unavailable", description=f"{where} is empty: the platform "
                                       "has not written the workload token yet")
    exp = token_expiry(token)
    if exp is None:
        raise WorkloadTokenUnavailable("workload_token_unavailable", description=f"{where} does not hold a JWT "
                                       "with an exp (a compact JWS is expected)")
    if exp <= now:
        raise WorkloadTokenUnavailable("workload_token_unavailable", description=(
            f"the workload token in {where} expired {int(now - exp)} s ago: the platform is not renewing it "
            "(the kubelet's projected volume, spiffe-helper)"))
    return token


class TokenFile(AssertionSource):
    """A token file another process keeps fresh, read again for every token request."""

    def __init__(self, path: str | Path, *, assertion_type: str = CLIENT_ASSERTION_TYPE) -> None:
        self.path = Path(path)
        self.assertion_type = assertion_type

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, assertion_type={self.assertion_type!r})"

    def client_assertion(self, now: float) -> str:
        try:
            with self.path.open("rb") as stream:
                data = stream.read(TOKEN_MAX + 1)
        except OSError as exc:
            raise WorkloadTokenUnavailable("workload_token_unavailable", description=(
                f"cannot read the workload token file {self.path} ({type(exc).__name__}): is the volume "
                "mounted there?")) from None
        if len(data) > TOKEN_MAX:
            raise WorkloadTokenUnavailable("workload_token_unavailable", description=(
                f"{self.path} holds more than {TOKEN_MAX} bytes: not a workload token"))
        return checked(data.decode("ascii", errors="replace").strip(), now, str(self.path))


def projected_token(path: str | Path) -> TokenFile:
    """A Kubernetes projected service-account token file, sent as a jwt-bearer assertion.

    ``path`` is the file of a ``serviceAccountToken`` projection whose ``audience`` is the broker's
    issuer (docs/workload-identity.md). The default service-account token
    (``KUBERNETES_DEFAULT_PATH``) is refused with ``ValueError``: its audience is the API server, so
    the broker refuses it, and sending it would hand the pod's Kubernetes API credential to a third
    party with every renewal."""
    if Path(path) == Path(KUBERNETES_DEFAULT_PATH):
        raise ValueError(f"{KUBERNETES_DEFAULT_PATH} is the pod's token for the Kubernetes API server, not for the "
                         "broker: mount a projected serviceAccountToken volume with the broker's issuer as audience "
                         "and pass its path")
    return TokenFile(path, assertion_type=CLIENT_ASSERTION_TYPE)


def jwt_svid_file(path: str | Path) -> TokenFile:
    """A JWT-SVID file kept by spiffe-helper, sent with the SPIFFE assertion type."""
    return TokenFile(path, assertion_type=SPIFFE_ASSERTION_TYPE)


class WorkloadApiSvid(AssertionSource):
    """A JWT-SVID for ``audience`` (the broker's issuer) from the SPIFFE Workload API, fetched for every
    token request (the SPIRE agent caches it). Needs the ``spiffe`` package (the ``[spiffe]`` extra);
    ``socket_path`` defaults to ``SPIFFE_ENDPOINT_SOCKET``. ``client``: anything with
    ``fetch_jwt_svid(audience=set[str])`` returning an object with ``token`` (``spiffe.WorkloadApiClient``)."""

    assertion_type = SPIFFE_ASSERTION_TYPE

    def __init__(self, audience: str, *, socket_path: str | None = None, client: Any = None) -> None:
        self.audience = audience
        self._socket_path = socket_path
        self._client = client

    def __repr__(self) -> str:
        return f"WorkloadApiSvid(audience={self.audience!r})"

    def _workload_api(self) -> Any:
        if self._client is None:
            try:
                from spiffe import WorkloadApiClient  # the optional [spiffe] extra
            except ImportError:
                raise WorkloadTokenUnavailable("workload_token_unavailable", description=(
                    "the SPIFFE Workload API needs the spiffe package: pip install 'token-broker-client[spiffe]' "
                    "(or let spiffe-helper write the JWT-SVID to a file: jwt_svid_file)")) from None
            self._client = WorkloadApiClient(socket_path=self._socket_path)
        return self._client

    def client_assertion(self, now: float) -> str:
        client = self._workload_api()
        try:
            svid = client.fetch_jwt_svid(audience={self.audience})
        except Exception as exc:  # the spiffe package's own errors (socket missing, agent refusing...)
            raise WorkloadTokenUnavailable("workload_token_unavailable", description=(
                f"the SPIFFE Workload API gave no JWT-SVID ({type(exc).__name__})")) from None
        return checked(str(getattr(svid, "token", "")), now, "the Workload API's JWT-SVID")
