"""Every Redis key name the broker uses, built in one place.

Registry keys share the hash tag ``{tb:registry}`` so that the multi-key transaction of a
registry change stays in one Redis Cluster slot. Replay keys are a SHA-256 of the JSON array
``[client_id, jti]``: a delimiter-free concatenation could collide (client ``ab`` + jti ``c`` vs
client ``a`` + jti ``bc``), and ``json.dumps`` escapes lone surrogates to pure ASCII.
"""

from __future__ import annotations

import hashlib
import json

PREFIX = "tb"
REGISTRY_EPOCH = "{tb:registry}:epoch"
REGISTRY_INDEX = "{tb:registry}:index"


def client(client_id: str) -> str:
    return "{tb:registry}:client:" + hashlib.sha256(client_id.encode()).hexdigest()


def jti_hash(client_id: str, jti: str) -> str:
    return hashlib.sha256(json.dumps([client_id, jti]).encode("ascii")).hexdigest()


def replay(client_id: str, jti: str) -> str:
    return f"{PREFIX}:jti:{jti_hash(client_id, jti)}"
