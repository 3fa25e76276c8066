"""bench/cli_startup: how long the `roadie` command takes, whole process, as a user runs it.

    .venv/bin/python bench/cli_startup.py [--runs 10] [--before /tmp/roadie-before] [--only help,analyze,ingest]

  help     `roadie --help`                                        target 0.5 s
  analyze  `roadie analyze one.wav --json` on a 1 s WAV            target 0.8 s (no Prefect, no database, no storage)
  ingest   `roadie ingest one.wav --json` on a 1 s WAV, warm       target 3.0 s (the local Prefect server under a
           temporary ROADIE_HOME already started by a first call that is not counted)

Each command runs as `python -m roadie` (roadie/__main__.py makes the same call as the venv's `roadie` script) with
PYTHONPATH set to the tree under test, so each tree starts through its own entry point, and `--before` compares
another checkout of the project (e.g. `git worktree add /tmp/roadie-before HEAD`) with the same interpreter and
packages. Before and after runs alternate, so a machine busy with other work slows both alike; the table shows the
median and the 90th percentile of --runs runs of each. Both trees share one ROADIE_HOME (one SQLite database, one
local Prefect server on a free port), stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROADIE = [sys.executable, "-m", "roadie"]
TARGETS = {"help": 0.5, "analyze": 0.8, "ingest": 3.0}
# What no version of the command can avoid: the interpreter and the libraries the design names for it, imported
# and nothing else. analyze's cross-check is pyloudnorm, which imports scipy.signal (~0.6 s here); ingest runs a
# Prefect flow in-process, with the same analysis.
FLOORS = {
    "analyze": "import numpy, pyloudnorm",
    "ingest": "import prefect.flow_engine, prefect.task_engine, sqlalchemy, numpy, pyloudnorm",
}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def commands(wav: Path) -> dict[str, list[str]]:
    return {
        "help": ["--help"],
        "analyze": ["analyze", str(wav), "--json"],
        "ingest": ["ingest", str(wav), "--json", "--formats", "hls_opus,hls_aac"],
    }


def run(tree: Path, args: list[str], env: dict[str, str], check: bool = True) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [*ROADIE, *args], env={**env, "PYTHONPATH": str(tree)}, cwd=env["HOME_CWD"], capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if check and proc.returncode != 0:
        raise SystemExit(
            f"{tree}: roadie {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    if check and args[0] == "ingest":
        status = json.loads(proc.stdout.splitlines()[-1])["status"]
        if status != "ready":
            raise SystemExit(f"{tree}: ingest ended {status}:\n{proc.stdout[-2000:]}")
    return wall


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--before", type=Path, default=None, help="another checkout to compare with")
    parser.add_argument("--only", default="help,analyze,ingest")
    args = parser.parse_args()
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    trees = {"after": ROOT}
    if args.before is not None:
        trees = {"before": args.before.resolve(), "after": ROOT}

    tmp = Path(tempfile.mkdtemp(prefix="roadie-bench-startup-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROADIE_", "PREFECT_"))}
    env.update(ROADIE_HOME=str(tmp / "home"), ROADIE_PREFECT_LOCAL_PORT=str(free_port()), HOME_CWD=str(tmp))
    # Start-up is measured, not throttling: the runs follow each other faster than the 10-a-minute transcode rate.
    env.update(ROADIE_TRANSCODE_RATE_PER_MINUTE="100000")
    wav = tmp / "one.wav"
    times: dict[tuple[str, str], list[float]] = {}
    try:
        run(ROOT, ["sample", str(wav), "--seconds", "1"], env)
        cmds = commands(wav)
        if "ingest" in wanted:  # first use: migrates SQLite and starts the local Prefect server (not counted)
            for tree in trees.values():
                run(tree, cmds["ingest"], env)
        for name in wanted:
            for tree in trees.values():  # warm-up: file caches, __pycache__
                run(tree, cmds[name], env)
            for _ in range(args.runs):
                for label, tree in trees.items():
                    times.setdefault((name, label), []).append(run(tree, cmds[name], env))
                if name in FLOORS:
                    started = time.perf_counter()
                    subprocess.run([sys.executable, "-c", FLOORS[name]], check=True, env=env)
                    times.setdefault((name, "floor"), []).append(time.perf_counter() - started)
    finally:
        subprocess.run([*ROADIE, "server", "stop"], env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"roadie CLI start-up, whole process, {args.runs} runs each (alternating); {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'command':<10} {'target':>7}"
    for label in trees:
        header += f" {label + ' median':>14} {label + ' p90':>11}"
    print(header + f" {'import floor':>13}")
    for name in wanted:
        line = f"{name:<10} {TARGETS[name]:>6.1f}s"
        for label in trees:
            values = times[(name, label)]
            line += f" {statistics.median(values):>13.2f}s {p90(values):>10.2f}s"
        floor = times.get((name, "floor"))
        line += f" {statistics.median(floor):>12.2f}s" if floor else f" {'-':>13}"
        if "before" in trees:
            ratio = statistics.median(times[(name, "before")]) / statistics.median(times[(name, "after")])
            line += f"  {ratio:.1f}x"
        print(line)


if __name__ == "__main__":
    main()
