"""What this machine's CPUs did, from /proc/stat (Linux): shared by the benchmarks.

Steal is time the hypervisor gave this virtual machine's CPUs to someone else. On the
machines these benchmarks run on it moves every figure from minute to minute, so the
benchmarks print it beside what they measured.
"""

from __future__ import annotations

import os
from pathlib import Path

Jiffies = tuple[int, int, int]


def jiffies() -> Jiffies:
    """(all, idle + iowait, stolen) jiffies since boot, over every core."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    stolen = values[7] if len(values) > 7 else 0
    return sum(values[:8]), values[3] + values[4], stolen


def between(before: Jiffies, after: Jiffies) -> Jiffies:
    """The jiffies from ``before`` to ``after``; all of them at least 1, to divide by."""
    return max(after[0] - before[0], 1), after[1] - before[1], after[2] - before[2]


def stolen_share(before: Jiffies, after: Jiffies) -> float:
    """The share of the CPU time from ``before`` to ``after`` that the hypervisor took."""
    total, _, stolen = between(before, after)
    return stolen / total


HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def halt_poll_ns() -> int | None:
    """How long an idle virtual CPU polls before it halts (Linux's haltpoll cpuidle
    driver, see bench/haltpoll.py); None where that driver is not loaded."""
    try:
        return int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return None


def tree_cpu_s(pid: int) -> float:
    """CPU time (user + system, seconds) that ``pid`` and its live descendants have used
    (Linux /proc): a node agent's tree holds its secure world and module workers."""
    total = 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
        tasks = os.listdir(f"/proc/{pid}/task")
    except (OSError, IndexError, ValueError):
        return 0.0
    seconds = total / os.sysconf("SC_CLK_TCK")
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        seconds += sum(tree_cpu_s(int(child)) for child in children)
    return seconds
