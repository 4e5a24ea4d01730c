"""``--compare-rev REV``: this checkout's broker against another revision's, in the same run.

The other revision is checked out with ``git worktree add --detach`` in the run's temporary
folder and started from there (``python -m app serve``, its own ``app`` and ``packages/*`` first
on ``PYTHONPATH``, this checkout's virtualenv: the dependency pins of this checkout), with the
headline settings, pinned like the headline broker, on the same ``redis-server`` in a Redis
database of its own (``/2``, ``/3``...: the registries never meet) with the same clients. This
checkout's side is a fresh broker too (database ``/1``), started, registered and warmed the same
way: not the headline broker, which has served for minutes by then.

Rounds alternate the brokers (round 1: the other revision first, round 2: this one first...), each
round running miss then hit on each, so a neighbour's burst falls on both sides. The figures are
the medians over the rounds of requests per broker CPU-second (and req/s), and their ratio,
this / other. The worktree is removed at the end of the run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path
from typing import Any

from scripts.bench.results import Ceiling, ScenarioResult
from scripts.bench.runner import broker_settings, http_scenarios, warm_up
from scripts.bench.system import Pinning, log
from scripts.bench.workload import Workload
from scripts.processes import ROOT, BrokerProcess, RedisServer, register_clients, start_broker

NAMES = ("miss", "hit")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def checkout(rev: str, workdir: Path) -> tuple[str, Path]:
    """The full commit id of ``rev`` and a worktree of it that runs on this checkout's virtualenv."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = workdir / f"rev-{commit[:12]}"
    _git("worktree", "add", "--detach", str(tree), commit)
    (tree / ".venv").symlink_to(ROOT / ".venv")
    return commit, tree


def remove(tree: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


def _medians(runs: list[ScenarioResult]) -> dict[str, float]:
    return {
        "rps": round(statistics.median(r.run.rate for r in runs), 1),
        "rps_per_broker_cpu_s": round(statistics.median(r.run.rps_per_broker_cpu_s or 0.0 for r in runs), 1),
        "p50_ms": round(statistics.median(r.run.p50_ms for r in runs), 2),
        "p99_ms": round(statistics.median(r.run.p99_ms for r in runs), 2),
        "unexpected": sum(r.verdict.unexpected for r in runs),
    }


def _start(args: argparse.Namespace, redis: RedisServer, work: Workload, pin: Pinning, workdir: Path, name: str,
           db: int, tree: Path = ROOT) -> tuple[BrokerProcess, Workload]:
    """A fresh broker of the checkout ``tree`` on Redis database ``db``, its clients registered."""
    keys = workdir / f"keys-{name}"
    broker = start_broker(keys, workdir / f"broker-{name}.log", redis_url=redis.url.rsplit("/", 1)[0] + f"/{db}",
                          prefix=pin.broker(), env=broker_settings(args), root=tree)
    there = work.for_issuer(broker.url)
    register_clients(broker.url, keys / "admin.jwk", [c.metadata() for c in there.clients])
    warm_up(broker, there)
    return broker, there


def compare_revisions(args: argparse.Namespace, redis: RedisServer, work: Workload, pin: Pinning, ceiling: Ceiling,
                      workdir: Path, revs: list[str]) -> dict[str, Any]:
    """Miss and hit, alternated for ``args.compare_rounds`` rounds, on a fresh broker of this
    checkout and one of each revision, both started, registered and exercised the same way (one
    unrecorded round of miss and hit each first: a broker that has served for minutes is not
    compared with one just started)."""
    out: dict[str, Any] = {}
    warm = argparse.Namespace(**{**vars(args), "duration": min(2.0, args.duration)})
    this: BrokerProcess | None = None
    try:
        this, here = _start(args, redis, work, pin, workdir, "this", 1)
        for index, rev in enumerate(revs, start=2):
            commit, tree = checkout(rev, workdir)
            other: BrokerProcess | None = None
            try:
                log(f"compare-rev: the broker of {rev} ({commit[:12]}) against this checkout's, "
                    f"{args.compare_rounds} alternated rounds")
                other, there = _start(args, redis, work, pin, workdir, commit[:12], index, tree)
                sides = {"this": (this, here), "other": (other, there)}
                for b, w in sides.values():
                    http_scenarios(args=warm, broker=b, work=w, pin=pin, ceiling=ceiling, workdir=workdir,
                                   names=list(NAMES), gen_pin=pin.other(), label="[compare-rev warm-up] ")
                runs: dict[str, dict[str, list[ScenarioResult]]] = {side: {n: [] for n in NAMES} for side in sides}
                for round_no in range(args.compare_rounds):
                    for side in ("other", "this") if round_no % 2 == 0 else ("this", "other"):
                        b, w = sides[side]
                        label = f"[{rev if side == 'other' else 'this'} round {round_no + 1}] "
                        for name, result in http_scenarios(args, b, w, pin, ceiling, workdir, list(NAMES), pin.other(),
                                                           label=label).items():
                            runs[side][name].append(result)
            finally:
                if other is not None:
                    other.stop()
                remove(tree)
            out[rev] = _entry(commit, args.compare_rounds, runs)
    finally:
        if this is not None:
            this.stop()
    return out


def _entry(commit: str, rounds: int, runs: dict[str, dict[str, list[ScenarioResult]]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"commit": commit, "rounds": rounds, "scenarios": {}}
    for name in NAMES:
        this, that = _medians(runs["this"][name]), _medians(runs["other"][name])
        entry["scenarios"][name] = {
            "this": this, "other": that,
            "ratio_per_cpu_s": round(this["rps_per_broker_cpu_s"] / that["rps_per_broker_cpu_s"], 2)
            if that["rps_per_broker_cpu_s"] else None,
            "ratio_rps": round(this["rps"] / that["rps"], 2) if that["rps"] else None,
            "each_round_per_cpu_s": {side: [r.run.rps_per_broker_cpu_s for r in runs[side][name]] for side in runs},
        }
    return entry


def rows(revisions: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    for rev, entry in (revisions or {}).items():
        lines.append(f"this checkout / {rev} ({entry['commit'][:12]}), medians of {entry['rounds']} alternated rounds:")
        for name, s in entry["scenarios"].items():
            this, other = s["this"], s["other"]
            lines.append(f"  {name}: {this['rps_per_broker_cpu_s']:.0f} / {other['rps_per_broker_cpu_s']:.0f} requests per "
                         f"broker CPU-second = x{s['ratio_per_cpu_s']}; req/s {this['rps']:.0f} / {other['rps']:.0f} = "
                         f"x{s['ratio_rps']}; p99 {this['p99_ms']} / {other['p99_ms']} ms")
    return lines
