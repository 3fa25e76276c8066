"""CPU lanes: a thread pinned to a lane passes its CPUs on to the processes it starts, and gets its own back."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from roadie import limits
from roadie.settings import reload_settings

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="CPU lanes need Linux and at least 2 CPUs")

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
    with limits.cpu_lane(lane) as pinned:
        assert pinned and child_cpus() == expected
    assert sorted(os.sched_getaffinity(0)) == allowed and child_cpus() == allowed


def test_lanes_are_off_by_default():
    with limits.cpu_lane("background") as pinned:
        assert not pinned and child_cpus() == sorted(os.sched_getaffinity(0))
