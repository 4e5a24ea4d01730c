"""The machine: its description for the results, core pinning, and /proc figures (RSS, CPU time)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.processes import process_tree


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    """Sum of VmRSS over the process tree (uvicorn's supervisor + workers)."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def core_times() -> dict[str, tuple[int, int]]:
    """Per core, (steal, all) clock ticks so far from ``/proc/stat``: steal is the time the core
    (a virtual CPU) had work but the hypervisor ran something else on the host."""
    out: dict[str, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name != "cpu" and len(fields) >= 8:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            out["core " + name[3:]] = (ticks[7], sum(ticks))
    return out


def steal_shares(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Each core's share of a window the hypervisor took away (steal), from two ``core_times``."""
    shares = {}
    for core, (steal, total) in after.items():
        if core in before and total > before[core][1]:
            shares[core] = round((steal - before[core][0]) / (total - before[core][1]), 3)
    return shares


class BrokerWindow:
    """What the broker used across one timed window: CPU time, read / write system calls and
    the hypervisor's steal per core. ``BrokerWindow(pid)`` opens it, ``close()`` reads the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._io, self._cores = io_calls(pid), core_times()
        self._cpu, self._t0 = cpu_seconds(pid), time.monotonic()

    def close(self) -> None:
        self.wall = time.monotonic() - self._t0
        self.cpu = cpu_seconds(self.pid) - self._cpu
        self.steal = steal_shares(self._cores, core_times()) or None
        io = io_calls(self.pid)
        self.reads, self.writes = io[0] - self._io[0], io[1] - self._io[1]

    def per_request(self, requests: int) -> tuple[float | None, float | None]:
        """(reads, writes) per request; None without requests."""
        if not requests:
            return None, None
        return round(self.reads / requests, 2), round(self.writes / requests, 2)


def io_calls(pid: int) -> tuple[int, int]:
    """(read, write) system calls so far, summed over the process tree (``/proc/<pid>/io``
    ``syscr`` / ``syscw``: read/readv/pread and write/writev/pwrite, which is what uvloop uses
    on sockets; ``epoll_wait`` and ``sendmsg`` are not counted)."""
    reads = writes = 0
    for p in process_tree(pid):
        try:
            fields = dict(line.split(": ", 1) for line in Path(f"/proc/{p}/io").read_text().splitlines())
            reads += int(fields["syscr"])
            writes += int(fields["syscw"])
        except (OSError, KeyError, ValueError):
            pass
    return reads, writes


def loadavg() -> list[str] | None:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name, cmd in (("redis", ["redis-server", "--version"]), ("wrk", ["wrk", "-v"])):
        try:
            versions[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.splitlines()[0][:80]
        except (OSError, IndexError, subprocess.SubprocessError):
            versions[name] = None
    return versions


def idle_states(sys_root: Path = Path("/sys")) -> dict[str, Any] | None:
    """What an idle core does: the cpuidle driver and governor and, under the ``haltpoll`` driver
    of a KVM guest, ``guest_halt_poll_ns``, the longest an idle virtual CPU polls before it halts
    (0: it halts at once, and the next wake-up from another core waits for the host to run it
    again). None when the kernel shows no cpuidle."""
    cpuidle = sys_root / "devices/system/cpu/cpuidle"
    try:
        driver = (cpuidle / "current_driver").read_text().strip()
    except OSError:
        return None
    states: dict[str, Any] = {"driver": driver}
    for name, path in (("governor", cpuidle / "current_governor_ro"),
                       ("guest_halt_poll_ns", sys_root / "module/haltpoll/parameters/guest_halt_poll_ns")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        states[name] = int(text) if text.isdigit() else text
    return states


def machine() -> dict[str, Any]:
    return {
        "loadavg_at_start": loadavg(),
        "nproc": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "idle": idle_states(),
        **_tool_versions(),
    }


class Pinning:
    """Broker on one core; Redis, the load generator (and the ceiling loops' opposite) on the other."""

    def __init__(self, enabled: bool) -> None:
        cores = sorted(os.sched_getaffinity(0))
        self.enabled = enabled and len(cores) >= 2 and shutil.which("taskset") is not None
        self.broker_core = cores[0]
        self.other_core = cores[1] if len(cores) >= 2 else cores[0]

    def broker(self) -> list[str]:
        return ["taskset", "-c", str(self.broker_core)] if self.enabled else []

    def other(self) -> list[str]:
        return ["taskset", "-c", str(self.other_core)] if self.enabled else []

    def describe(self) -> str:
        if not self.enabled:
            return "none (fewer than 2 usable cores, taskset missing, or --no-pin)"
        return (f"broker on core {self.broker_core}; redis-server and load generator on core {self.other_core}; "
                f"ceiling loops on core {self.broker_core} with the broker idle")

    def run_on(self, core: int) -> _Affinity:
        """``with pin.run_on(core):`` this process on ``core`` (when pinning), restored after."""
        return _Affinity(core if self.enabled else None)


class _Affinity:
    def __init__(self, core: int | None) -> None:
        self.core = core
        self.saved = os.sched_getaffinity(0)

    def __enter__(self) -> None:
        if self.core is not None:
            os.sched_setaffinity(0, {self.core})

    def __exit__(self, *exc: Any) -> None:
        os.sched_setaffinity(0, self.saved)


def run_async(coro: Any) -> Any:
    """uvloop when installed (the broker's own loop), asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)
