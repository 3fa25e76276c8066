"""CPU lanes and niced calls: what a thread is given passes on to the processes it starts, and nothing leaks back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from roadie import cpu
from roadie.settings import reload_settings

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="CPU lanes need Linux and at least 2 CPUs",
)

CHILD_MASK = [sys.executable, "-c", "import json, os; print(json.dumps(sorted(os.sched_getaffinity(0))))"]


def child_cpus() -> list[int]:
    return json.loads(subprocess.run(CHILD_MASK, capture_output=True, text=True, check=True).stdout)


@pytest.fixture
def lanes_on(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROADIE_CPU_LANES", "true")
    reload_settings()
    yield
    monkeypatch.undo()
    reload_settings()


@pytest.mark.parametrize("lane", ["playable", "background"])
def test_processes_started_in_a_lane_run_on_its_cpus(lanes_on, lane: str):
    allowed = sorted(os.sched_getaffinity(0))
    expected = allowed[-1:] if lane == "background" else allowed[:-1]
    with cpu.cpu_lane(lane) as pinned:
        assert pinned and child_cpus() == expected
    assert sorted(os.sched_getaffinity(0)) == allowed and child_cpus() == allowed


def test_lanes_are_off_by_default():
    with cpu.cpu_lane("background") as pinned:
        assert not pinned and child_cpus() == sorted(os.sched_getaffinity(0))


def test_run_niced_lowers_the_priority_of_the_call_and_its_processes_only():
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    child_nice = [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"]

    def in_thread() -> tuple[int, int]:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        return own, int(subprocess.run(child_nice, capture_output=True, text=True, check=True).stdout)

    assert cpu.run_niced(3, in_thread) == (min(mine + 3, 19), min(mine + 3, 19))
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the caller's thread is untouched


def test_run_niced_hands_exceptions_back():
    def fails() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        cpu.run_niced(3, fails)


def test_lowered_thread_priority_passes_to_what_the_thread_starts_only():
    import threading

    mine = os.getpriority(os.PRIO_PROCESS, 0)
    child_nice = [sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"]
    seen: list[int] = []

    def pool_thread_start() -> None:
        cpu.lower_thread_priority(2)
        seen.append(int(subprocess.run(child_nice, capture_output=True, text=True, check=True).stdout))

    worker = threading.Thread(target=pool_thread_start)
    worker.start()
    worker.join()
    assert seen == [min(mine + 2, 19)] and os.getpriority(os.PRIO_PROCESS, 0) == mine
