"""The client's sans-I/O core, without sockets: when to renew, what a broker answer means, and the
token flow's effects answered by hand (the broker's answers scripted, the shared cache on
fakeredis). The shells that perform these effects over real connections are tested in
test_client.py, test_shared_cache.py and test_async_live.py; the last test here checks the asyncio
shell's cancellation path on in-memory transports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

import fakeredis
import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import ISS, RS1, decode_unverified, new_key
from token_broker_client import (
    AsyncSharedTokenCache,
    BrokerClient,
    BrokerError,
    BrokerUnavailable,
    CachedToken,
    ClientKey,
    HttpSettings,
    InvalidClientError,
    InvalidScopeError,
    InvalidTargetError,
    RenewalPolicy,
    SharedTokenCache,
)
from token_broker_client.auth import Fetch, Refused, bearer_flow
from token_broker_client.effects import Done, Effect, HttpCall, RedisCommand, Sleep, advance
from token_broker_client.flow import METADATA_PATH, TokenFlow
from token_broker_client.responses import token_endpoint_from, token_from
from token_broker_client.shared_cache import cache_slot, encode_entry

T0 = 1_000_000.0
TOKEN_URL = ISS + "/token"
METADATA = httpx.Response(200, json={"issuer": ISS, "token_endpoint": TOKEN_URL})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def token_response(access_token: str = "at-1", expires_in: Any = 300, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in,
                                     **extra})


class Broker:
    """Answers a flow's HTTP calls: the metadata, then the scripted token answers in order."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.forms: list[dict[str, str]] = []

    def __call__(self, call: HttpCall) -> httpx.Response:
        if call.method == "GET":
            assert call.url == ISS + METADATA_PATH
            return METADATA
        assert (call.method, call.url) == ("POST", TOKEN_URL) and call.form is not None
        self.forms.append(call.form)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def drive(flow: Generator[Effect, Any, Any], broker: Broker, cache: Any = None,
          fail: Callable[[RedisCommand], bool] = lambda command: False) -> tuple[Any, list[Effect]]:
    """Run a flow to its end as a shell would; ``fail`` picks the cache commands that fail."""
    effects: list[Effect] = []
    step = advance(flow)
    while not isinstance(step, Done):
        effects.append(step)
        try:
            if isinstance(step, HttpCall):
                result, error = broker(step), None
            elif isinstance(step, Sleep):
                result, error = None, None
            elif fail(step):
                result, error = None, RedisConnectionError("down")
            else:
                result, error = cache.execute(step), None
        except Exception as exc:
            result, error = None, exc
        step = advance(flow, result, error)
    return step.value, effects


def kinds(effects: list[Effect]) -> list[str]:
    return [e.method if isinstance(e, (HttpCall, RedisCommand)) else "sleep" for e in effects]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core(clock: Clock) -> TokenFlow:
    key = ClientKey(new_key("ES256"), alg="ES256", kid="c1-1")
    return TokenFlow(ISS, "c1", key, scope="read", resource=RS1, clock=clock, monotonic=clock,
                     renewal=RenewalPolicy(0.85, 0.0))


@pytest.fixture
def cache() -> SharedTokenCache:
    return SharedTokenCache(fakeredis.FakeRedis())


def obtain(core: TokenFlow, broker: Broker, cache: Any = None, **kw: Any) -> tuple[Any, list[Effect]]:
    return drive(core.obtain(core.ticket(None, None), cache), broker, cache, **kw)


# -- when to renew ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("at", "fresh", "usable"), [
    (0, True, True),
    (254.9, True, True),      # just before 85% of 300 s
    (255, False, True),       # the renewal point: ask the broker, the old token still serves
    (297.9, False, True),
    (298, False, False),      # EXPIRY_MARGIN (2 s) before exp: never handed out
    (300, False, False),
], ids=["issued", "before-renewal", "renewal-point", "before-margin", "margin", "expired"])
def test_when_a_cached_token_is_renewed_and_served(at: float, fresh: bool, usable: bool) -> None:
    token = RenewalPolicy(0.85, 0.0).token("at", "read", T0, 300)
    assert (token.fresh(T0 + at), token.usable(T0 + at)) == (fresh, usable)


@pytest.mark.parametrize(("renew_at", "jitter", "draw", "offset"), [
    (0.85, 0.05, 0.0, 240.0),
    (0.85, 0.05, 0.5, 255.0),
    (0.85, 0.05, 0.75, 262.5),
    (0.8, 0.0, 0.9, 240.0),
    (0.9, 0.0, 0.1, 270.0),
], ids=["lowest-draw", "middle-draw", "upper-draw", "fixed-80", "fixed-90"])
def test_renewal_point_is_drawn_inside_the_window(renew_at: float, jitter: float, draw: float, offset: float) -> None:
    token = RenewalPolicy(renew_at, jitter, lambda: draw).token("at", "read", T0, 300)
    assert token == CachedToken("at", "read", T0, T0 + 300, pytest.approx(T0 + offset))


# -- what an answer means --------------------------------------------------------------------------

@pytest.mark.parametrize(("response", "expected"), [
    (token_response(scope="read write"), ("at-1", "read write", T0 + 300)),
    (token_response(), ("at-1", "asked", T0 + 300)),  # no scope in the answer: the requested one
    (token_response(scope=["read"]), ("at-1", "asked", T0 + 300)),
    (httpx.Response(200, json={"access_token": "at-1", "token_type": "bearer", "expires_in": 60}), ("at-1", "asked", T0 + 60)),
    (token_response(expires_in=0), (BrokerUnavailable, "invalid_response", 200, None)),
    (token_response(expires_in=300.0), (BrokerUnavailable, "invalid_response", 200, None)),
    (token_response(expires_in=True), (BrokerUnavailable, "invalid_response", 200, None)),
    (token_response(access_token=""), (BrokerUnavailable, "invalid_response", 200, None)),
    (httpx.Response(200, json={"access_token": "at-1", "token_type": "DPoP", "expires_in": 300}),
     (BrokerUnavailable, "invalid_response", 200, None)),
    (httpx.Response(200, text="not json"), (BrokerUnavailable, "invalid_response", 200, None)),
    (httpx.Response(200, content=b'{"access_token":"' + b"a" * 70000 + b'","token_type":"Bearer","expires_in":300}'),
     (BrokerUnavailable, "invalid_response", 200, None)),
    (httpx.Response(401, json={"error": "invalid_client"}), (InvalidClientError, "invalid_client", 401, None)),
    (httpx.Response(400, json={"error": "invalid_scope"}), (InvalidScopeError, "invalid_scope", 400, None)),
    (httpx.Response(400, json={"error": "invalid_target"}), (InvalidTargetError, "invalid_target", 400, None)),
    (httpx.Response(400, json={"error": "invalid_grant"}), (BrokerError, "invalid_grant", 400, None)),
    (httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "temporarily_unavailable"}),
     (BrokerUnavailable, "temporarily_unavailable", 503, 2.0)),
    (httpx.Response(500, json={"error": "server_error"}), (BrokerUnavailable, "server_error", 500, None)),
    (httpx.Response(502, text="bad gateway"), (BrokerUnavailable, "unavailable", 502, None)),
    (httpx.Response(429, headers={"Retry-After": "soon"}), (BrokerUnavailable, "unavailable", 429, None)),
    (httpx.Response(404, text="no"), (BrokerError, "invalid_response", 404, None)),
], ids=["token", "scope-omitted", "scope-not-a-string", "lowercase-bearer", "zero-lifetime", "float-lifetime",
        "bool-lifetime", "empty-token", "not-bearer", "not-json", "oversized", "invalid-client", "invalid-scope",
        "invalid-target", "other-code", "503", "500", "5xx-without-body", "429-bad-retry-after", "404-without-body"])
def test_what_a_token_response_means(response: httpx.Response, expected: tuple[Any, ...]) -> None:
    def parse() -> CachedToken:
        return token_from(response, client_id="c1", scope="asked", started=T0, policy=RenewalPolicy(0.85, 0.0))

    if isinstance(expected[0], str):
        token = parse()
        assert (token.access_token, token.scope, token.expires_at) == expected
        return
    with pytest.raises(BrokerError) as err:
        parse()
    kind, code, status, retry_after = expected
    assert type(err.value) is kind
    assert (err.value.error, err.value.status_code, getattr(err.value, "retry_after", None)) == (code, status, retry_after)


@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, {"issuer": ISS, "token_endpoint": TOKEN_URL}, TOKEN_URL),
    (200, {"issuer": "http://127.0.0.1:8000", "token_endpoint": "http://127.0.0.1:8000/token"}, "issuer"),
    (200, {"issuer": ISS, "token_endpoint": "http://broker.test/token"}, "metadata_invalid"),
    (200, {"issuer": ISS + "/", "token_endpoint": TOKEN_URL}, "metadata_invalid"),
    (200, {"issuer": ISS, "token_endpoint": 7}, "metadata_invalid"),
    (200, ["not", "an", "object"], "metadata_unavailable"),
    (503, {"error": "temporarily_unavailable"}, "metadata_unavailable"),
], ids=["https", "loopback-http", "plain-http", "other-issuer", "endpoint-not-a-string", "not-an-object", "503"])
def test_what_a_metadata_response_means(status: int, body: Any, expected: str) -> None:
    issuer = body["issuer"] if expected == "issuer" else ISS
    response = httpx.Response(status, json=body)
    if expected in ("metadata_invalid", "metadata_unavailable"):
        with pytest.raises(BrokerError) as err:
            token_endpoint_from(response, issuer)
        assert err.value.error == expected
    else:
        assert token_endpoint_from(response, issuer) == body["token_endpoint"]


# -- the token flow ----------------------------------------------------------------------------------

def test_a_cold_flow_discovers_asks_once_and_caches(core: TokenFlow, clock: Clock) -> None:
    broker = Broker(token_response(scope="read"))
    token, effects = obtain(core, broker)
    assert kinds(effects) == ["GET", "POST"]
    assert token.access_token == "at-1" and core.ticket(None, None).hit == token
    form = broker.forms[0]
    assert {k: v for k, v in form.items() if k != "client_assertion"} == {
        "grant_type": "client_credentials", "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "scope": "read", "resource": RS1}
    header, claims = decode_unverified(form["client_assertion"])
    assert header == {"alg": "ES256", "kid": "c1-1", "typ": "client-authentication+jwt"}
    assert (claims["iss"], claims["sub"], claims["aud"], claims["iat"], claims["exp"]) == ("c1", "c1", ISS, T0, T0 + 60)


def test_after_a_503_the_next_request_carries_a_fresh_assertion(core: TokenFlow) -> None:
    broker = Broker(httpx.Response(503, headers={"Retry-After": "1"}, json={"error": "temporarily_unavailable"}),
                    token_response())
    with pytest.raises(BrokerUnavailable):
        obtain(core, broker)
    token, effects = obtain(core, broker)
    assert kinds(effects) == ["POST"] and token.access_token == "at-1"
    first, second = (decode_unverified(f["client_assertion"])[1]["jti"] for f in broker.forms)
    assert first != second


@pytest.mark.parametrize(("failure", "served"), [
    (httpx.ConnectError("refused"), "old"),
    (httpx.Response(503, json={"error": "temporarily_unavailable"}), "old"),
    (httpx.Response(401, json={"error": "invalid_client"}), InvalidClientError),
], ids=["unreachable", "503", "invalid-client"])
def test_a_failed_renewal_serves_the_old_token_only_when_the_broker_is_unavailable(
        core: TokenFlow, clock: Clock, failure: Any, served: Any) -> None:
    broker = Broker(token_response("old"), failure)
    obtain(core, broker)
    clock.now = T0 + 255  # the renewal point
    if served == "old":
        assert obtain(core, broker)[0].access_token == "old"
        clock.now = T0 + 298  # past the margin: the error is raised
        broker.answers.append(failure)
        with pytest.raises(BrokerUnavailable):
            obtain(core, broker)
    else:
        with pytest.raises(served):
            obtain(core, broker)


def test_callers_that_waited_through_a_failure_share_it(core: TokenFlow) -> None:
    broker = Broker(httpx.Response(401, json={"error": "invalid_client"}))
    first, waiting = core.ticket(None, None), core.ticket(None, None)
    with pytest.raises(InvalidClientError):
        drive(core.obtain(first, None), broker)
    with pytest.raises(InvalidClientError):  # before any effect: the attempt it waited on failed
        advance(core.obtain(waiting, None))
    assert len(broker.forms) == 1


def test_a_caller_that_waited_through_a_success_takes_the_token(core: TokenFlow) -> None:
    broker = Broker(token_response())
    first, waiting = core.ticket(None, None), core.ticket(None, None)
    token, _ = drive(core.obtain(first, None), broker)
    assert drive(core.obtain(waiting, None), broker) == (token, [])


@pytest.mark.parametrize(("refused", "dropped"), [("at-1", True), ("older", False)], ids=["current", "stale"])
def test_invalidate_drops_only_the_refused_token(core: TokenFlow, cache: SharedTokenCache, refused: str,
                                                 dropped: bool) -> None:
    obtain(core, Broker(token_response()), cache)
    _, effects = drive(core.invalidate(refused, core.key_for(None, None), cache), Broker(), cache)
    assert (core.ticket(None, None).hit is None, kinds(effects)) == (dropped, ["eval"] if dropped else [])
    assert cache.redis.exists(cache_slot("c1", "read", RS1) + ":token") == (0 if dropped else 1)


# -- the shared-cache protocol (on fakeredis) ----------------------------------------------------------

def test_the_lock_holder_asks_stores_and_unlocks(core: TokenFlow, cache: SharedTokenCache) -> None:
    token, effects = obtain(core, Broker(token_response()), cache)
    assert kinds(effects) == ["get", "set", "get", "GET", "POST", "set", "eval"]
    slot = cache_slot("c1", "read", RS1)
    assert cache.redis.get(slot + ":token") == encode_entry(token).encode()
    assert cache.redis.exists(slot + ":lock") == 0


def test_a_stored_fresh_token_is_adopted_without_asking(core: TokenFlow, cache: SharedTokenCache, clock: Clock) -> None:
    theirs = RenewalPolicy(0.85, 0.0).token("theirs", "read", T0, 300)
    cache.redis.set(cache_slot("c1", "read", RS1) + ":token", encode_entry(theirs))
    assert obtain(core, Broker(), cache) == (theirs, [cache.read(cache_slot("c1", "read", RS1))])
    clock.now = T0 + 255  # their renewal point is ours too
    token, effects = obtain(core, Broker(token_response("ours")), cache)
    assert token.access_token == "ours" and "POST" in kinds(effects)


def test_a_held_lock_is_waited_for_then_the_broker_asked_directly(core: TokenFlow, cache: SharedTokenCache,
                                                                   clock: Clock) -> None:
    cache.redis.set(cache_slot("c1", "read", RS1) + ":lock", "another-replica")

    def slow(command: RedisCommand) -> bool:
        clock.now += 0.5  # each command takes half a second of the 3 s wait
        return False

    token, effects = obtain(core, Broker(token_response()), cache, fail=slow)
    assert kinds(effects) == ["get", "set", "sleep"] * 2 + ["get", "set", "GET", "POST"]
    assert token.access_token == "at-1"


@pytest.mark.parametrize(("failing", "expected"), [
    ("get", ["get", "GET", "POST"]),                                   # Redis down: a direct request
    ("set", ["get", "set", "GET", "POST"]),
    ("eval", ["get", "set", "get", "GET", "POST", "set", "eval"]),      # unlock fails: the token still returned
], ids=["read-fails", "lock-fails", "unlock-fails"])
def test_a_redis_error_falls_back_to_a_direct_request(core: TokenFlow, cache: SharedTokenCache, failing: str,
                                                      expected: list[str]) -> None:
    token, effects = obtain(core, Broker(token_response()), cache, fail=lambda command: command.method == failing)
    assert (token.access_token, kinds(effects)) == ("at-1", expected)


def test_the_lock_holder_unlocks_when_the_broker_refuses(core: TokenFlow, cache: SharedTokenCache) -> None:
    with pytest.raises(InvalidClientError):
        obtain(core, Broker(httpx.Response(401, json={"error": "invalid_client"})), cache)
    assert cache.redis.exists(cache_slot("c1", "read", RS1) + ":lock") == 0


# -- the bearer flow of BrokerAuth --------------------------------------------------------------------

@pytest.mark.parametrize(("answers", "steps"), [
    ([200], ["fetch", "send", "end"]),
    ([403], ["fetch", "send", "end"]),
    ([401, 200], ["fetch", "send", "refused", "fetch", "send", "end"]),
    ([401, 401], ["fetch", "send", "refused", "fetch", "send", "end"]),  # the second 401 is returned: no loop
], ids=["ok", "forbidden-is-not-retried", "reauth-once", "no-loop"])
def test_bearer_flow_reauthenticates_once_on_401(answers: list[int], steps: list[str]) -> None:
    request = httpx.Request("POST", RS1 + "/data", content=b"body")
    flow, seen, sent, tokens = bearer_flow(request), [], [], iter(["t1", "t2"])
    step = advance(flow)
    while not isinstance(step, Done):
        if isinstance(step, Fetch):
            seen.append("fetch")
            step = advance(flow, next(tokens))
        elif isinstance(step, Refused):
            seen.append("refused")
            assert (step.token, step.response.status_code) == ("t1", 401)
            step = advance(flow)
        else:
            seen.append("send")
            sent.append(step.headers["Authorization"])
            step = advance(flow, httpx.Response(answers[len(sent) - 1]))
    assert seen + ["end"] == steps
    assert sent == ["Bearer t1", "Bearer t2"][:len(sent)]


# -- the asyncio shell -----------------------------------------------------------------------------------

def test_a_cancelled_lock_holder_still_releases_the_shared_lock() -> None:
    lock = cache_slot("c1", "read", RS1) + ":lock"

    async def run() -> tuple[int, int]:
        asked = asyncio.Event()

        async def broker(request: httpx.Request) -> httpx.Response:
            if request.method == "GET":
                return METADATA
            asked.set()
            await asyncio.Event().wait()  # the broker never answers
            raise AssertionError("unreachable")

        redis = fakeredis.FakeAsyncRedis()
        async with httpx.AsyncClient(transport=httpx.MockTransport(broker)) as http:
            client = BrokerClient(ISS, "c1", new_key("ES256"), alg="ES256", kid="c1-1", scope="read", resource=RS1,
                                  http=HttpSettings(async_client=http), shared_cache=AsyncSharedTokenCache(redis))
            task = asyncio.create_task(client.aget_token())
            await asked.wait()
            held = await redis.exists(lock)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        try:
            return held, await redis.exists(lock)
        finally:
            await redis.aclose()

    assert asyncio.run(run()) == (1, 0)
