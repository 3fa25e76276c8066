"""roadie.ops.serve's process-tree helpers on a real tree: a worker-like parent whose children start sessions of
their own (as Prefect's flow-run processes do), each with a child of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil

from roadie.ops.serve import descendants, kill_tree
from roadie.ops.zygote import native_threads

# The parent starts two "runs" in new sessions; each run starts a sleeper; the parent prints every pid and waits.
TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    runs = []
    for _ in range(2):
        runs.append(subprocess.Popen(
            [sys.executable, "-c",
             "import subprocess, sys, time; "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
             "print(p.pid, flush=True); time.sleep(600)"],
            start_new_session=True, stdout=subprocess.PIPE, text=True))
    pids = [r.pid for r in runs] + [int(r.stdout.readline()) for r in runs]
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(600)
    """
)


def _start_tree() -> tuple[subprocess.Popen, list[int]]:
    # A session of its own, as serve starts workers: kill_tree SIGKILLs the root's whole group.
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 4
    return parent, pids


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_descendants_cross_sessions_and_kill_tree_reaches_them() -> None:
    parent, pids = _start_tree()
    try:
        assert sorted(descendants(parent.pid)) == sorted(pids)
        assert all(os.getsid(pid) != os.getsid(parent.pid) for pid in pids)  # other sessions, other groups
        started = time.monotonic()
        assert kill_tree(parent.pid) == []  # none left after the wait
        assert time.monotonic() - started < 5
        assert parent.wait(timeout=10) == -9
        assert all(_gone(pid) for pid in pids)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_kill_tree_of_a_process_that_is_gone_is_a_no_op() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert descendants(proc.pid) == []
    assert kill_tree(proc.pid) == []


def test_native_threads_counts_threads_python_does_not_see() -> None:
    # numpy's BLAS pool is native: in a fresh interpreter with several BLAS threads allowed, the count exceeds 1.
    code = (
        "import threading; from roadie.ops.zygote import native_threads; n0 = native_threads(); "
        "import numpy; numpy.dot(numpy.ones((300, 300)), numpy.ones((300, 300))); "
        "print(n0, native_threads(), threading.active_count())"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    before, after, python_threads = map(int, out.split())
    assert before == 1 and python_threads == 1
    assert after > 1
    assert native_threads() >= 1
