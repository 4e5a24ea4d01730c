"""Workload identity federation at the client-authenticated endpoints: a workload token routed here
by ``app.oauth.assertion.parse_assertion`` (``app.oauth.federation.route``) is checked against its
trusted issuer and mapped to a registered client, which then goes through the same replay record,
scope, audience, cache and token path as a client that signed its own assertion.

Trusted issuers are read from the ``TrustStore`` (one ``HGET`` on a miss) and kept per process
until the registry epoch moves (``ClientDirectory.generation``: the same poll that drops cached
clients), so an issuer added, changed or removed through any replica is in force everywhere within
the poll interval. Issuers the store does not hold are remembered too (bounded), so a flood of
made-up ``iss`` values costs no Redis call per request. While the registry is lost, every lookup
raises ``RegistryLost`` (503), as for clients.

Replay (per issuer, ``TrustedIssuer.single_use``):

- ``single_use``: the token must carry a ``jti``; it is recorded exactly like an assertion's, in
  the token endpoint's one Lua script call, under the mapped client and qualified by the issuer
  (``app.oauth.federation.replay_jti``); the same token again is ``jti_replayed``;
- otherwise the workload may present the same token until its ``exp`` (the kubelet and SPIRE cache
  them; many carry no ``jti``), bounded by the issuer's ``max_lifetime`` (default 1 h): the replay
  record is keyed and filled by the token's SHA-256, the compat ``assertion_reuse`` variant of the
  same script, so each reuse costs nothing more and counts toward the client's request quota.

Every accepted token is counted in ``broker_federated_assertions_total{issuer,client_id,use}``
(``use``: ``single_use``, ``first`` or ``reuse``). ``docs/security.md`` weighs reuse against
private_key_jwt's single use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from app.config import Settings
from app.metrics import FEDERATED_ASSERTIONS
from app.oauth.assertion import ParsedAssertion
from app.oauth.clients import Client
from app.oauth.errors import InvalidClient
from app.oauth.federation import (
    SPIFFE_ASSERTION_TYPE,
    FederationPolicy,
    VerifiedFederation,
    log_sub,
    verify_federated,
)
from app.oauth.trust import TrustedIssuer, spiffe_trust_domain
from app.service.directory import ClientDirectory, jwks_uri_policy
from app.service.federation_keys import IssuerKeys
from app.service.registry_state import RegistryWatch
from app.store.base import RecordUnreadable, RegistryLost, TrustStore

#: Issuers the store does not hold, remembered per process (oldest evicted first).
MAX_UNKNOWN = 10_000
#: The longest issuer a record can have (``app.oauth.trust``: a URL of at most 2048 characters).
MAX_ISSUER_LENGTH = 2048
_MISS = object()


class Federated(msgspec.Struct, frozen=True):
    """A verified workload token and the enabled client it maps to."""

    client: Client
    verified: VerifiedFederation
    issuer: TrustedIssuer


class FederationService:
    def __init__(self, settings: Settings, *, trust: TrustStore, directory: ClientDirectory, keys: IssuerKeys,
                 log: Any, metrics: Any = None, watch: RegistryWatch | None = None) -> None:
        self._policy = FederationPolicy(issuer=settings.issuer, leeway=settings.leeway,
                                        jti_max_length=settings.jti_max_length)
        self._trust = trust
        self._directory = directory
        self._keys = keys
        self._log = log
        self._metrics = metrics
        self._watch = watch
        self._issuers: dict[str, TrustedIssuer | None] = {}
        self._generation = -1

    async def issuer(self, name: str) -> TrustedIssuer | None:
        """The trusted issuer record, or None. Raises ``RegistryLost`` while the registry is lost."""
        if self._watch is not None and self._watch.lost:
            raise RegistryLost("registry_lost")
        if self._generation != self._directory.generation:
            self._generation = self._directory.generation
            self._issuers.clear()
        record = self._issuers.get(name, _MISS)
        if record is not _MISS:
            return record  # type: ignore[return-value]
        # No record can have it (records are ASCII, ``app.oauth.trust``): no Redis call, nothing
        # remembered. A lone surrogate could not even be encoded for Redis.
        if len(name) > MAX_ISSUER_LENGTH or not name.isascii():
            return None
        generation = self._generation
        try:
            record = await self._trust.get_issuer(name)
        except RecordUnreadable:
            self._log.error("federation.issuer_unreadable", issuer=log_sub(name))
            record = None
        if generation == self._directory.generation:  # not across an epoch change
            if len(self._issuers) >= MAX_UNKNOWN:
                del self._issuers[next(iter(self._issuers))]
            self._issuers[name] = record
        return record  # type: ignore[return-value]

    async def authenticate(self, parsed: ParsedAssertion, client_id_param: str | None, assertion_type: str,
                           now: float) -> Federated | None:
        """Verify a routed token and find its client; None: not a trusted issuer's, and ``iss`` ==
        ``sub``, so the private_key_jwt rules decide. Raises ``InvalidClient`` with the reason."""
        assert parsed.route is not None
        record = await self.issuer(parsed.route)
        if record is None:
            iss = parsed.claims.get("iss")
            if iss is not None and iss == parsed.claims.get("sub") and assertion_type != SPIFFE_ASSERTION_TYPE:
                return None
            raise InvalidClient("federation_issuer_unknown")
        keys, failure = await self._keys.keys(record, parsed.header.get("kid"))
        if not keys and failure is not None:
            raise InvalidClient("federation_keys_unavailable", log_detail=failure[:100])
        verified = verify_federated(parsed, record, keys, self._policy, now)
        if assertion_type == SPIFFE_ASSERTION_TYPE and spiffe_trust_domain(verified.identity.sub) is None:
            raise InvalidClient("federation_type_mismatch")
        # draft-ietf-oauth-spiffe-client-auth clients send their SPIFFE ID as client_id.
        if client_id_param is not None and client_id_param not in (verified.client_id, verified.identity.sub):
            raise InvalidClient("client_id_mismatch")
        client = await self._directory.get(verified.client_id)
        if client is None:
            raise InvalidClient("federation_client_unknown", log_detail=verified.client_id)
        if not client.record.enabled:
            raise InvalidClient("federation_client_disabled", log_detail=verified.client_id)
        if client.record.admin:  # admin rights never come from a platform token (the clients file may
            # mark a client admin after a rule was written for it)
            raise InvalidClient("federation_client_admin", log_detail=verified.client_id)
        return Federated(client, verified, record)

    def counted(self, issuer: str, client_id: str, use: str) -> None:
        if self._metrics is not None:
            self._metrics.inc(FEDERATED_ASSERTIONS, issuer=issuer, client_id=client_id, use=use)


def federation_log_fields(parsed: ParsedAssertion) -> dict[str, str]:
    """``federated_iss`` and ``federated_sub`` for the log lines of a routed token (sanitised,
    truncated: they come from the token, verified or not)."""
    assert parsed.route is not None
    return {"federated_iss": log_sub(parsed.route), "federated_sub": log_sub(parsed.claims.get("sub"))}


def federation_service(settings: Settings, *, trust: TrustStore, directory: ClientDirectory, jwks_cache: Any,
                       log: Any, metrics: Any, watch: RegistryWatch | None,
                       clock: Callable[[], float]) -> FederationService:
    """The composition root's one call: the issuer key fetcher over the shared ``jwks_uri`` cache,
    under the ``BROKER_JWKS_URI_*`` settings."""
    keys = IssuerKeys(cache=jwks_cache, policy=jwks_uri_policy(settings), log=log, clock=clock)
    return FederationService(settings, trust=trust, directory=directory, keys=keys, log=log, metrics=metrics,
                             watch=watch)
