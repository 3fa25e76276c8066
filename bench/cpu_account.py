"""bench/cpu_account: where a benchmark's CPU time goes, by kind of process, measured on the whole machine.

    with CpuAccount() as account:
        ...the work...
    print(account.report())

The machine's busy time comes from /proc/stat (every process, however short-lived). Each process is sampled every
0.2 s (psutil) and its own user+system time, as last seen, is charged to its kind, read from its command line:
ffmpeg, fpcalc, PostgreSQL, the Prefect server, the flow-run processes and so on. A process that lived less than
a sample, and the last 0.2 s of any other, is left unattributed: the report shows how much that is.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import psutil

# First match wins: (kind, words that must all appear in the command line).
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the bench itself (polling, sampling)", ("bench/",)),
    ("ffmpeg", ("ffmpeg",)),
    ("fpcalc", ("fpcalc",)),
    ("ffprobe", ("ffprobe",)),
    ("postgresql", ("postgres",)),
    ("seaweedfs (S3)", ("weed",)),
    ("prefect server", ("prefect", "server")),
    ("prefect server", ("uvicorn",)),
    ("roadie serve / workers / flow runs", ("roadie",)),
    ("roadie serve / workers / flow runs", ("prefect",)),
)


def kind_of(cmdline: list[str]) -> str:
    text = " ".join(cmdline).lower()
    for kind, words in KINDS:
        if all(word in text for word in words):
            return kind
    return "other"


def busy_seconds() -> float:
    """CPU seconds every core spent on anything but idle and iowait, since boot."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuAccount:
    interval_s: float = 0.2
    wall_s: float = 0.0
    busy_s: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    _first: dict[int, tuple[str, float]] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self, baseline: bool) -> None:
        for proc in psutil.process_iter(["cmdline", "cpu_times", "create_time"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            used = times.user + times.system
            key = proc.pid
            if key not in self._first:
                # A process that existed before the account opened is charged only what it uses from now on.
                started_before = baseline or proc.info["create_time"] < self._opened_at
                self._first[key] = (kind_of(proc.info["cmdline"] or [proc.name()]), used if started_before else 0.0)
            self._last[key] = used

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(baseline=False)

    def __enter__(self) -> CpuAccount:
        self._opened_at = time.time()
        self._sample(baseline=True)
        self._busy0, self._wall0 = busy_seconds(), time.monotonic()
        self._thread = threading.Thread(target=self._run, name="cpu-account", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(baseline=False)
        self.busy_s, self.wall_s = busy_seconds() - self._busy0, time.monotonic() - self._wall0
        for pid, (kind, first) in self._first.items():
            self.by_kind[kind] = self.by_kind.get(kind, 0.0) + max(0.0, self._last[pid] - first)

    def report(self, per: int = 1, unit: str = "run") -> str:
        cores = os.cpu_count() or 1
        lines = [
            f"    CPU busy {self.busy_s:.1f} s over {self.wall_s:.1f} s on {cores} cores "
            f"({100 * self.busy_s / (self.wall_s * cores):.0f} % used); per {unit}: {self.busy_s / per:.2f} s"
        ]
        attributed = 0.0
        for kind, seconds in sorted(self.by_kind.items(), key=lambda kv: -kv[1]):
            if seconds >= 0.05 * per:
                lines.append(
                    f"      {kind:<36} {seconds / per:6.2f} s per {unit} ({100 * seconds / self.busy_s:3.0f} %)"
                )
            attributed += seconds
        rest = self.busy_s - attributed
        lines.append(f"      {'unattributed (short-lived, kernel)':<36} {rest / per:6.2f} s per {unit}")
        return "\n".join(lines)
