"""Profiles: py-spy on the broker during an extra timed window, and a summary of where its CPU
went (``--profile``; ``--summarize`` re-reads a saved raw profile)."""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.bench.load import post_token, run_wrk
from scripts.bench.scenarios import BY_NAME
from scripts.bench.system import Pinning, log
from scripts.bench.workload import Workload
from scripts.processes import BrokerProcess

PROFILABLE = ("miss", "hit", "bad_signature", "replay")


def profile_runs(args: argparse.Namespace, broker: BrokerProcess, work: Workload, pin: Pinning,
                 workdir: Path) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [n.strip() for n in args.profile_scenarios.split(",") if n.strip()]:
        if name not in PROFILABLE:
            raise SystemExit(f"bench: cannot profile {name!r} ({', '.join(PROFILABLE)})")
        out[name] = _profile_one(args, broker, work, pin, workdir, name, pyspy, out_dir)
    return out


def _profile_one(args: argparse.Namespace, broker: BrokerProcess, work: Workload, pin: Pinning, workdir: Path,
                 name: str, pyspy: str, out_dir: Path) -> dict[str, Any]:
    scenario = BY_NAME[name]
    n = scenario.fixed_pool or max(args.min_bodies, int(args.profile * args.expect_rps * 1.6) + 500)
    bodies = getattr(work, scenario.bodies)(n)
    if scenario.spend_first:  # replay: every body used once before the window
        for body in bodies:
            post_token(broker, body)
    raw = out_dir / f"profile-{name}.txt"
    raw.unlink(missing_ok=True)
    log(f"profiling {name} with py-spy for {args.profile} s")
    spy = subprocess.Popen(pin.other() + [pyspy, "record", "--pid", str(broker.proc.pid), "--rate", "250", "--format", "raw",
                                          "--duration", str(int(args.profile) + 1), "--full-filenames", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # py-spy gives no "attached" signal to wait for: a head start, then a window shorter than its
    # --duration + 1 s of sampling.
    time.sleep(0.5)
    res = run_wrk(broker, bodies, scenario.send, duration=args.profile, connections=args.connections, threads=1,
                  pin_cmd=pin.other(), workdir=workdir, name="profile")
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    summary = summarize_profile(raw) if raw.exists() else {"error": spy.stderr.read().decode()[-500:] if spy.stderr else ""}
    summary["rps_while_profiled"] = res.rps
    summary["raw"] = str(raw)
    (out_dir / f"profile-{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


#: The signature itself: ``EcdsaAlgorithm`` (token_broker_jose/jose.py, cryptography called
#: directly) for ES256/384/512, joserfc's algorithms (jws_algs.py) for the others.
_ECDSA_VERIFY = (("verify", "/token_broker_jose/jose.py"), ("verify", "/joserfc/_rfc7518/jws_algs.py"))
_ECDSA_SIGN = (("sign", "/token_broker_jose/jose.py"), ("sign", "/joserfc/_rfc7518/jws_algs.py"))

#: Inclusive buckets: a sample counts in a bucket when a frame on its stack matches
#: (function name ends with the first string, file path contains the second).
PROFILE_BUCKETS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("route handler (app/web/direct.py, or routes.py token through ASGI)",
     (("answer", "/app/web/direct.py"), ("token", "/app/web/routes.py"))),
    ("TokenService.token (its ClientAuthenticator.run)", (("token", "/app/service/token.py"),
                                                          ("run", "/app/service/client_auth.py"))),
    ("  form parse (parse_token_request)", (("parse_token_request", ""),)),
    ("  assertion parse (parse_assertion)", (("parse_assertion", ""),)),
    ("  assertion verify (verify_assertion)", (("verify_assertion", ""),)),
    ("    ECDSA verify (cryptography)", _ECDSA_VERIFY),
    ("  client directory lookup", (("get", "/app/service/directory.py"),)),
    ("  grant decision (decide_grant)", (("decide_grant", ""),)),
    ("  rate limiter", (("", "/app/service/ratelimit.py"),)),
    ("  Redis calls from app/store (replay, cache, counters)", (("", "/app/store/"),)),
    ("  token cache (app/service/token_cache.py)", (("", "/app/service/token_cache.py"),)),
    ("  access-token sign (TokenSigner.sign)", (("sign", "/app/oauth/access_token.py"),)),
    ("    ECDSA sign (cryptography)", _ECDSA_SIGN),
    ("  logging (structlog, app/log.py)", (("", "/structlog/"), ("", "/app/log.py"))),
    ("redis-py client code (anywhere)", (("", "site-packages/redis/"),)),
    ("Litestar code (anywhere)", (("", "site-packages/litestar/"),)),
    ("uvicorn's HTTP protocol (anywhere)", (("", "site-packages/uvicorn/protocols/"),)),
]
#: Exclusive: the leaf frame's file decides where a sample's CPU went (sums to 100%).
LEAF_GROUPS = [
    ("JWS signatures (cryptography via joserfc)", "/joserfc/_rfc7518/jws_algs.py"),
    ("token_broker_jose (ECDSA via cryptography, strict parsing)", "/token_broker_jose/"),
    ("redis-py", "site-packages/redis/"),
    ("Litestar", "site-packages/litestar/"),
    ("uvicorn (+httptools, uvloop transport calls)", "site-packages/uvicorn/"),
    ("structlog", "site-packages/structlog/"),
    ("asyncio (stdlib)", "/asyncio/"),
    ("joserfc (other)", "site-packages/joserfc/"),
    ("msgspec/cryptography (other)", "site-packages/"),
    ("app code", "/app/"),
]
#: Leaf frames that mean "waiting": uvloop's epoll (C) shows as its Python caller; helper threads
#: (thread pools, background fetchers) sleep in Condition.wait. py-spy cannot tell these are idle.
IDLE_LEAVES = ("Runner.run", "run_until_complete", "run_forever", "Server.serve", "", "Condition.wait", "Event.wait",
               "Thread._wait_for_tstate_lock", "Thread.join", "EpollSelector.select", "Queue.get", "SimpleQueue.get")


#: Exclusive attribution: walk each sample's stack from the leaf up; the first frame that matches
#: decides (so json.loads called from app/oauth/jose.py counts as assertion parsing, and the
#: asyncio.timeout redis-py opens per read counts as redis-py). Sums to 100% of busy samples.
EXCLUSIVE_AREAS: list[tuple[str, tuple[tuple[str, str], ...]]] = [
    ("ECDSA verify (cryptography)", _ECDSA_VERIFY),
    ("ECDSA sign (cryptography)", _ECDSA_SIGN),
    ("redis-py client (incl. its per-read asyncio timeout)", (("", "site-packages/redis/"),)),
    ("logging (structlog, jti fingerprint)", (("", "/structlog/"), ("", "/app/log.py"))),
    ("token cache (app/service + app/store token_cache.py)", (("", "/app/service/token_cache.py"), ("", "/app/store/token_cache.py"))),
    ("failure rate limiter (app/*/ratelimit.py)", (("", "/app/service/ratelimit.py"), ("", "/app/store/ratelimit.py"))),
    ("Redis auto-pipeline (app/store/autopipeline.py)", (("", "/app/store/autopipeline.py"),)),
    ("Redis store glue (app/store: key names and hashing, the call deadline)", (("", "/app/store/"),)),
    ("assertion parse + claim checks (app/oauth/assertion.py, jose.py)", (("", "/app/oauth/assertion.py"), ("", "/app/oauth/jose.py"))),
    ("form parse (app/oauth/request.py)", (("", "/app/oauth/request.py"),)),
    ("access-token claims/encode (app/oauth/access_token.py)", (("", "/app/oauth/access_token.py"),)),
    ("HTTP protocol and answer writes (app/web/server.py)", (("", "/app/web/server.py"),)),
    ("other app code (route, TokenService, grant, directory, metrics)", (("", "/app/"),)),
    ("Litestar (routing, Request/Response, middleware)", (("", "site-packages/litestar/"),)),
    ("uvicorn + httptools + event loop (HTTP parse, writes, task steps)", (("", "site-packages/uvicorn/"),)),
]


def _stdlib(path: str) -> bool:
    return "/lib/python3" in path and "site-packages" not in path or path.startswith("<frozen")


def _exclusive_area(frames: list[tuple[str, str]]) -> str:
    """Leaf up, skipping the standard library (json, asyncio, typing...): its time goes to the caller."""
    for frame in reversed(frames):
        if _stdlib(frame[1]):
            continue
        area = next((label for label, rules in EXCLUSIVE_AREAS if _matches([frame], rules)), None)
        if area is not None:
            return area
    if any("/asyncio/streams.py" in path for _, path in frames):
        return "redis-py client (incl. its per-read asyncio timeout)"  # only redis-py uses asyncio streams here
    return "asyncio event loop (task steps, callbacks, timers)"


def _frame(frame: str) -> tuple[str, str]:
    name, _, rest = frame.strip().partition(" (")
    return name, rest.rstrip(")")


def _matches(frames: list[tuple[str, str]], rules: tuple[tuple[str, str], ...]) -> bool:
    return any(name.split(".")[-1].endswith(n) and f in path for name, path in frames for n, f in rules if n or f)


def summarize_profile(raw: Path) -> dict[str, Any]:
    """py-spy ``--format raw`` = collapsed stacks, root first: ``frame;frame;... count``."""
    total = idle = 0
    inclusive: collections.Counter[str] = collections.Counter()
    leaf_group: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1][0] in IDLE_LEAVES:  # uvloop waiting in epoll (C) shows as its Python caller
            idle += count
            continue
        total += count
        for label, rules in PROFILE_BUCKETS:
            if _matches(frames, rules):
                inclusive[label] += count
        exclusive[_exclusive_area(frames)] += count
        name, path = frames[-1]
        group = next((g for g, marker in LEAF_GROUPS if marker in path), "other (stdlib, C, unknown)")
        if group == "app code":
            group = "app code (" + path.split(":")[0].rsplit("/app/", 1)[-1] + ")"
        elif group == "other (stdlib, C, unknown)" and "/python3" in path:
            group = "Python stdlib (json, contextlib, abc, ...)"
        leaf_group[group] += count
        leaf[f"{name} ({path.split('site-packages/')[-1].split('/main/')[-1]})"] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "idle_samples_excluded": idle,
        "exclusive_pct": {k: round(v * 100 / total, 1) for k, v in exclusive.most_common()},
        "inclusive_pct": {label: round(inclusive[label] * 100 / total, 1) for label, _ in PROFILE_BUCKETS},
        "self_pct_by_area": {k: round(v * 100 / total, 1) for k, v in leaf_group.most_common()},
        "top_self_pct": {k: round(v * 100 / total, 1) for k, v in leaf.most_common(25)},
    }
