"""What the benchmark started (by PID and session), the machine's CPU use, and progress on stderr."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lockgate.localenv import stop_pid

CLK_TCK = os.sysconf("SC_CLK_TCK")


def progress(line: str) -> None:
    """Progress on stderr so the table on stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the ``finally`` blocks stop what was started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


class Processes:
    """Every process this script starts directly, by PID, so ``finally`` can stop each one."""

    def __init__(self) -> None:
        self.started: dict[int, Path] = {}

    def spawn(self, command: list[str], marker: str, **kwargs: Any) -> subprocess.Popen:
        """Start ``command`` in its own session; ``marker`` names it in progress lines only."""
        process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, **kwargs)
        self.started[process.pid] = Path(command[0])  # stop_pid matches the program by this exact argument
        return process

    def stop(self, process: subprocess.Popen, timeout_s: float = 15.0) -> None:
        """SIGTERM the leader, then its group, SIGKILL as the last resort (``stop_pid``)."""
        stop_pid(process.pid, self.started.get(process.pid, Path(str(process.args[0]))), timeout_s=timeout_s)
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self.started.pop(process.pid, None)

    def sessions(self) -> set[int]:
        return set(self.started)

    def stop_all(self) -> None:
        for pid, program in list(self.started.items()):
            stop_pid(pid, program, timeout_s=15.0)
            self.started.pop(pid, None)


PROCS = Processes()


# -- CPU accounting: how busy the machine was, and how much of that was not ours ------------------------
def cpu_snapshot() -> tuple[float, int, int, dict[int, tuple[int, int, str]]]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    per_pid: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        per_pid[int(entry)] = (int(fields[3]), int(fields[11]) + int(fields[12]), name)
    return time.monotonic(), sum(values), idle, per_pid


def cpu_delta(before: tuple, after: tuple, own_sessions: set[int]) -> dict[str, Any]:
    """Cores busy on the machine, and the share of processes outside our own sessions (with the top ones)."""
    wall = max(after[0] - before[0], 1e-6)
    total, idle = after[1] - before[1], after[2] - before[2]
    busy_cores = (total - idle) / max(total, 1) * (os.cpu_count() or 1)
    foreign: Counter = Counter()
    me = os.getpid()
    for pid, (session, ticks, name) in after[3].items():
        if session in own_sessions or pid == me:
            continue
        previous = before[3].get(pid)
        foreign[name] += ticks - (previous[1] if previous else 0)
    top = [f"{name} {ticks / CLK_TCK / wall:.2f}" for name, ticks in foreign.most_common(3) if ticks > 0]
    return {
        "busy_cores": round(busy_cores, 2),
        "foreign_cores": round(sum(foreign.values()) / CLK_TCK / wall, 2),
        "foreign_top": top,
    }


class Sessions:
    """The session ids of everything this benchmark started (Ray head, MLflow, servers, wrk); each leads its own."""

    def __init__(self) -> None:
        self.extra: set[int] = set()

    def all(self) -> set[int]:
        return {*self.extra, *PROCS.sessions()}


SESSIONS = Sessions()


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (bounded) for foreign CPU use to drop below the threshold; returns the last sample."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_snapshot()
        time.sleep(2.0)
        sample = cpu_delta(before, cpu_snapshot(), SESSIONS.all())
        foreign = sample["foreign_cores"]
        if foreign <= threshold_cores or time.monotonic() >= deadline:
            return foreign
        progress(f"  machine busy with other work ({foreign:.2f} cores: {sample['foreign_top']}), waiting")


def non_loopback_listeners() -> list[str]:
    """Listening TCP sockets of our own processes that are not bound to 127.0.0.1 (RUNTIME_NOTES rule)."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["(ss unavailable)"]
    own = SESSIONS.all()
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")):
            continue
        for pid in re.findall(r"pid=(\d+)", line):
            try:
                if os.getsid(int(pid)) in own:
                    name = re.search(r'\(\("([^"]+)"', line)
                    found.append(f"{parts[3]} {name.group(1) if name else '?'} pid={pid}")
                    break
            except OSError:
                continue
    return sorted(set(found))
