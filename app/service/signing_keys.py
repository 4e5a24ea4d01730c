"""Signing-key rotation for RFC 9068 access tokens, and live reload of the keys folder.

A resource server finds the verification key by ``kid`` in the broker's JWKS (RFC 7517 §5,
RFC 9068 §4) and may cache that JWKS for its ``Cache-Control`` lifetime. So a rotation is three
steps, each safe for every replica and every cache:

1. ``stage``: create a ``next`` key. Replicas publish it in /jwks.json (within a reload interval)
   but do not sign with it.
2. ``promote`` (only once the next key has been published for at least the JWKS cache lifetime,
   unless forced): next → active, old active → retired with ``retired_at``. Replicas sign with
   the new key; the old one stays published.
3. ``retire-expired``: delete retired keys once ``retired_at + max token lifetime + skew`` has
   passed, i.e. once every token they signed has expired.

Every replica polls the folder (stat of a few files, about once a second) and swaps in a new
``SigningKeySet`` when anything changed. A folder that cannot be loaded (half-written file, no
active key) keeps the previous set and is retried on the next poll: never a gap in signing.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from app.keystore import (
    KeyFileError,
    SigningKey,
    SigningKeySet,
    create_signing_key,
    load_signing_keys,
    set_signing_key_state,
    signing_dir,
)
from app.metrics import SIGNING_KEY_INFO, SIGNING_KEY_RELOAD_ERRORS, SIGNING_KEYS, Metrics
from app.oauth.access_token import TokenSigner, VerificationKey

#: /jwks.json answers with ``Cache-Control: max-age`` of this many seconds (app/web/routes.py).
JWKS_CACHE_SECONDS = 300
#: How often each replica looks at the keys folder.
RELOAD_INTERVAL = 1.0
#: No access token lives longer than this (BROKER_TOKEN_LIFETIME and client token_lifetime cap).
MAX_TOKEN_LIFETIME = 86400


class RotationError(Exception):
    """A rotation step is refused; the message says why and what to do."""


# -- rotation steps (used by scripts/rotate_signing_key.py) ---------------------------------------


def stage(keys_dir: Path, alg: str, *, now: int | None = None) -> SigningKey:
    keys = load_signing_keys(keys_dir)
    if any(k.state == "next" for k in keys):
        raise RotationError("a next key is already staged: promote it first")
    if not any(k.state == "active" for k in keys):
        raise RotationError("no active key: run `python -m app keys init` first")
    return create_signing_key(keys_dir, alg, state="next", now=now)


def promote(keys_dir: Path, *, now: int | None = None, force: bool = False,
            min_published: int = JWKS_CACHE_SECONDS + int(RELOAD_INTERVAL) + 1) -> tuple[SigningKey, list[str]]:
    """next → active, then every older active → retired. Returns (new active key, retired kids)."""
    now = int(time.time() if now is None else now)
    keys = load_signing_keys(keys_dir)
    staged = [k for k in keys if k.state == "next"]
    if len(staged) != 1:
        raise RotationError(f"expected exactly one next key, found {len(staged)}: run `stage` first")
    nxt = staged[0]
    published_for = now - nxt.created_at
    if published_for < min_published and not force:
        raise RotationError(
            f"next key {nxt.kid} has been published for {published_for} s; resource servers may cache "
            f"the JWKS for {JWKS_CACHE_SECONDS} s: wait {min_published - published_for} s more (or --force)"
        )
    # Order matters: the new key becomes active first (the newest active key signs), and only then
    # is the old one retired, so a replica reading between the two writes still has a signer.
    set_signing_key_state(keys_dir, nxt.kid, "active")
    retired = []
    for k in keys:
        if k.state == "active":
            set_signing_key_state(keys_dir, k.kid, "retired", retired_at=now)
            retired.append(k.kid)
    return msgspec.structs.replace(nxt, state="active"), retired


def retire_expired(keys_dir: Path, *, max_token_lifetime: int, skew: int, now: int | None = None) -> list[str]:
    """Delete retired keys whose last possible token has expired. Returns the deleted kids."""
    now = int(time.time() if now is None else now)
    deleted = []
    for k in load_signing_keys(keys_dir):
        if k.state != "retired":
            continue
        if k.retired_at is None:
            raise RotationError(f"retired key {k.kid} has no retired_at: cannot tell when its tokens expire")
        if k.retired_at + max_token_lifetime + skew < now:
            (signing_dir(keys_dir) / f"{k.kid}.json").unlink()
            deleted.append(k.kid)
    return deleted


def status(keys_dir: Path, *, now: int | None = None) -> list[dict[str, Any]]:
    now = int(time.time() if now is None else now)
    return [
        {"kid": k.kid, "alg": k.alg, "state": k.state, "age_s": now - k.created_at,
         **({"retired_for_s": now - k.retired_at} if k.retired_at is not None else {})}
        for k in sorted(load_signing_keys(keys_dir), key=lambda k: (k.created_at, k.kid))
    ]


# -- the keys in use, and their live reload in every replica ---------------------------------------


class SigningKeys:
    """The key set this replica signs with and publishes now, shared by every part that signs or
    verifies; the reloader swaps in a new set as a whole. The JWKS document and the algorithm list
    are worked out once per set, not per request."""

    def __init__(self, key_set: SigningKeySet) -> None:
        self.replace(key_set)

    def replace(self, key_set: SigningKeySet) -> None:
        self._set = key_set
        self._jwks = msgspec.json.encode(key_set.jwks)
        #: The published keys' algorithms, sorted (RFC 8414 metadata follows them across rotations).
        self.algs = tuple(sorted({k.alg for k in key_set.verification_keys.values()}))

    def signer(self) -> TokenSigner:
        return self._set.signer

    def verification_keys(self) -> dict[str, VerificationKey]:
        return self._set.verification_keys

    def jwks(self) -> bytes:
        return self._jwks


class SigningKeyReloader:
    """Keeps ``keys`` equal to the keys folder, polling file stats every interval."""

    def __init__(self, keys_dir: Path, keys: SigningKeys, *, log: Any, metrics: Metrics,
                 interval: float = RELOAD_INTERVAL) -> None:
        self._dir = signing_dir(keys_dir)
        self._keys_dir = keys_dir
        self._keys = keys
        self._log = log
        self._metrics = metrics
        self._interval = interval
        self._seen = self._fingerprint()
        self._publish_metrics(load_signing_keys(keys_dir))

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        try:
            entries = list(os.scandir(self._dir))
        except OSError:
            return ()
        out = []
        for entry in entries:
            if entry.name.endswith(".json"):
                try:
                    st = entry.stat()
                except OSError:  # deleted between scandir and stat: the next poll sees it
                    continue
                out.append((entry.name, st.st_mtime_ns, st.st_size))
        return tuple(sorted(out))

    def reload_if_changed(self) -> bool:
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        try:
            loaded = load_signing_keys(self._keys_dir)
            key_set = SigningKeySet.from_keys(loaded)
        except (KeyFileError, KeyError, ValueError) as exc:
            # Keep signing with the previous set; the next poll tries again (fingerprint not kept).
            self._log.error("signing_keys.reload_failed", error=str(exc))
            self._metrics.inc(SIGNING_KEY_RELOAD_ERRORS)
            return False
        old_kid = self._keys.signer().kid
        self._keys.replace(key_set)
        self._seen = seen
        self._publish_metrics(loaded)
        self._log.info("signing_keys.reloaded", signing_kid=key_set.signer.kid, previous_signing_kid=old_kid,
                       published_kids=sorted(key_set.verification_keys))
        return True

    def _publish_metrics(self, loaded: list[SigningKey]) -> None:
        self._metrics.clear_gauge(SIGNING_KEYS)
        self._metrics.clear_gauge(SIGNING_KEY_INFO)
        for state in ("next", "active", "retired"):
            self._metrics.set(SIGNING_KEYS, sum(1 for k in loaded if k.state == state), state=state)
        for k in loaded:
            self._metrics.set(SIGNING_KEY_INFO, 1, kid=k.kid, state=k.state)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.reload_if_changed()
            except Exception as exc:  # never let the poller die: a dead poller means stale keys
                self._log.error("signing_keys.reload_failed", error=type(exc).__name__)
