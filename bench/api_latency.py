"""bench/api_latency: how long after the platform's REST trigger does `media-ingest` start, and when is the track ready?

    .venv/bin/python bench/api_latency.py [--runs 20] [--burst 20] [--seconds 60] [--workers 2]
                                          [--env KEY=VALUE ...] [--label TEXT]

What a user does: `roadie serve --workers N` as a subprocess (its local Prefect server on a scratch PostgreSQL
database through ROADIE_PREFECT_DATABASE_URL, roadie's own tables in another scratch database), `roadie register`
for every upload, then `POST /api/deployments/{id}/create_flow_run` with httpx, as the platform's API does.

Measured from the moment the POST returns (wall clock, same machine as the server):
  trigger->pending    a worker claimed the run (its PENDING state): the poll wait
  trigger->running    the flow run's RUNNING state (its start_time)
  trigger->1st task   the first task run's start_time
  trigger->ready      the version's status turns `ready` in roadie's database (polled every 20 ms)
  trigger->completed  the flow run's end_time
First one at a time (--runs triggers, each after the previous completed and, by default, 1.1 x 60 /
ROADIE_TRANSCODE_RATE_PER_MINUTE s after the previous trigger: inside the `transcode-rate` limit, so the figures
are one upload's own wait, not a queue behind the limit. The margin: at each take Prefect's bucket drops the part
of a slot that has not decayed yet, so takes exactly 60/rate s apart fill it slowly; --spacing 0 triggers back to
back; two warm-up runs first), then --burst triggers at once (the limit then holds the ones past its bucket).
`--env` passes settings to `roadie serve` (e.g. ROADIE_WORKER_WARM=false for the cold path).
Needs PostgreSQL on 127.0.0.1:5432 (trust auth) or ROADIE_BENCH_PG_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx
import sqlalchemy as sa

TARGETS = {"trigger->1st task": 2.0, "trigger->ready": 5.0}
ROADIE = str(Path(sys.executable).with_name("roadie"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Serve:
    """`roadie serve` as a subprocess; its stdout is read on a thread until it prints its JSON line."""

    def __init__(self, env: dict[str, str], workers: int, home: Path, extra_args: tuple[str, ...] = ()):
        self.log = (home / "serve.log").open("w")
        self.proc = subprocess.Popen(
            [ROADIE, "serve", "--workers", str(workers), "--json", "--grace", "5", *extra_args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 240
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise SystemExit(f"roadie serve did not get ready; see {home / 'serve.log'}") from None
            if line.startswith("{"):
                self.info = json.loads(line)
                return

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def register(env: dict[str, str], track: Path, n: int) -> list[str]:
    def one(i: int) -> str:
        out = subprocess.run(
            [ROADIE, "register", str(track), "--owner", "bench", "--title", f"bench {i}", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise SystemExit(f"roadie register failed: {out.stdout}{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["version_id"]

    first = one(0)  # creates the owner; then in parallel
    with ThreadPoolExecutor(4) as pool:
        return [first, *pool.map(one, range(1, n))]


class Bench:
    def __init__(self, api: str, app_db: str):
        self.http = httpx.Client(base_url=api.rstrip("/") + "/", timeout=30)
        self.dep = self.http.get("deployments/name/media-ingest/media-ingest").json()["id"]
        self.engine = sa.create_engine(app_db)

    def trigger(self, version_id: str) -> tuple[str, float]:
        response = self.http.post(
            f"deployments/{self.dep}/create_flow_run",
            json={
                "parameters": {"version_id": version_id, "formats": ["hls_opus", "hls_aac"]},
                "idempotency_key": f"media-ingest:{version_id}",
            },
        )
        at = time.time()
        response.raise_for_status()
        return response.json()["id"], at

    def wait(self, runs: dict[str, tuple[str, float]], timeout_s: float = 900) -> list[dict]:
        """runs: version_id -> (flow_run_id, trigger time). Polls the DB for `ready` and the API for final states."""
        ready: dict[str, float] = {}
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        last_api = 0.0
        ids = list(runs)
        while len(done) < len(runs) and time.monotonic() < deadline:
            with self.engine.connect() as conn:
                rows = (
                    conn.execute(
                        sa.text("SELECT id, status FROM track_versions WHERE id::text = ANY(:ids)"), {"ids": ids}
                    ).all()
                    if self.engine.dialect.name == "postgresql"
                    else []
                )
            now = time.time()
            for vid, status in rows:
                if status in ("ready", "failed") and str(vid) not in ready:
                    ready[str(vid)] = now if status == "ready" else float("nan")
            if time.monotonic() - last_api > 0.25:
                last_api = time.monotonic()
                body = {"flow_runs": {"id": {"any_": [r for r, _ in runs.values()]}}}
                for fr in self.http.post("flow_runs/filter", json=body).json():
                    if fr["state_type"] in FINAL:
                        done[fr["id"]] = fr
            time.sleep(0.02)
        if len(done) < len(runs):
            raise SystemExit(f"{len(runs) - len(done)} runs did not finish in {timeout_s:.0f} s")
        tasks = self.http.post(
            "task_runs/filter", json={"flow_runs": {"id": {"any_": list(done)}}, "sort": "EXPECTED_START_TIME_ASC"}
        ).json()
        first_task: dict[str, float] = {}
        for t in tasks:
            start = ts(t.get("start_time"))
            if start is not None and t["flow_run_id"] in done:
                first_task[t["flow_run_id"]] = min(first_task.get(t["flow_run_id"], start), start)
        out = []
        for vid, (run_id, at) in runs.items():
            fr = done[run_id]
            states = self.http.get("flow_run_states/", params={"flow_run_id": run_id}).json()
            pending = min((ts(s["timestamp"]) for s in states if s["type"] == "PENDING"), default=float("nan"))
            out.append(
                {
                    "state": fr["state_type"],
                    "trigger->pending": pending - at,
                    "trigger->running": (ts(fr["start_time"]) or float("nan")) - at,
                    "trigger->1st task": first_task.get(run_id, float("nan")) - at,
                    "trigger->ready": ready.get(vid, float("nan")) - at,
                    "trigger->completed": (ts(fr["end_time"]) or float("nan")) - at,
                }
            )
        return out


def table(title: str, rows: list[dict]) -> str:
    lines = [
        f"{title}: {len(rows)} runs, states { {s: sum(r['state'] == s for r in rows) for s in {r['state'] for r in rows}} }",
        f"  {'':<20}{'p50 s':>8}{'p95 s':>8}{'max s':>8}   target",
    ]
    for key in ("trigger->pending", "trigger->running", "trigger->1st task", "trigger->ready", "trigger->completed"):
        values = [r[key] for r in rows if r[key] == r[key]]
        target = f"p95 <= {TARGETS[key]:.1f} s" if key in TARGETS else ""
        if key in TARGETS and values:
            target += "  ok" if percentile(values, 0.95) <= TARGETS[key] else "  MISSED"
        lines.append(
            f"  {key:<20}{percentile(values, 0.5):>8.2f}{percentile(values, 0.95):>8.2f}"
            f"{max(values) if values else float('nan'):>8.2f}   {target}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for roadie serve")
    parser.add_argument("--label", default="")
    parser.add_argument("--spacing", type=float, help="least seconds between one-at-a-time triggers")
    parser.add_argument("--keep", help="copy the serve and worker logs to this folder")
    args = parser.parse_args()

    from roadie.prefect_local import free_port
    from roadie.settings import Settings
    from tests.services import postgres_reachable, scratch_database

    pg = os.environ.get("ROADIE_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    if not postgres_reachable(pg):
        raise SystemExit(f"PostgreSQL does not answer at {pg}")
    with (
        tempfile.TemporaryDirectory(prefix="roadie-api-latency-") as tmp,
        scratch_database(pg, "roadie_bench_latency_prefect", driver="postgresql+asyncpg") as prefect_db,
        scratch_database(pg, "roadie_bench_latency_app", migrate=True) as app_db,
    ):
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROADIE_", "PREFECT_"))}
        env.update(
            ROADIE_HOME=str(home / "home"),
            ROADIE_PREFECT_LOCAL_PORT=str(free_port()),
            ROADIE_HEALTH_PORT=str(free_port()),
            ROADIE_PREFECT_DATABASE_URL=prefect_db,
            ROADIE_DATABASE_URL=app_db,
            ROADIE_STORAGE_URL=f"file://{home / 'storage'}",
            ROADIE_TMP_DIR=str(home / "tmp"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        (home / "tmp").mkdir()
        env.update(kv.split("=", 1) for kv in args.env)
        rate = float(
            env.get("ROADIE_TRANSCODE_RATE_PER_MINUTE", Settings.model_fields["transcode_rate_per_minute"].default)
        )
        spacing = 1.1 * 60 / rate if args.spacing is None else args.spacing
        track = home / "track.wav"
        subprocess.run(
            [ROADIE, "sample", str(track), "--seconds", str(args.seconds)], env=env, check=True, capture_output=True
        )
        serve = Serve(env, args.workers, home)
        try:
            bench = Bench(serve.info["api"], app_db)
            versions = register(env, track, 2 + args.runs + args.burst)
            warm, single, burst = versions[:2], versions[2 : 2 + args.runs], versions[2 + args.runs :]
            for vid in warm:  # first runs after start: server caches, worker imports, disk caches
                bench.wait({vid: bench.trigger(vid)})
            one_by_one, last = [], 0.0
            for vid in single:
                time.sleep(max(0.0, last + spacing - time.monotonic()))
                last = time.monotonic()
                one_by_one += bench.wait({vid: bench.trigger(vid)})
            burst_rows = bench.wait({vid: bench.trigger(vid) for vid in burst}) if burst else []
        finally:
            serve.stop()
            if args.keep:
                import shutil

                shutil.copytree(home / "home" / "logs", Path(args.keep), dirs_exist_ok=True)
                shutil.copy(home / "serve.log", Path(args.keep) / "serve.log")
    print(
        f"api_latency {args.label}: {args.seconds:g} s track, roadie serve --workers {args.workers}, "
        f"{os.cpu_count()} cores, env {args.env or '-'}"
    )
    print(table(f"one at a time, triggers at least {spacing:.1f} s apart", one_by_one))
    if burst_rows:
        print(table(f"burst of {args.burst}", burst_rows))


if __name__ == "__main__":
    main()
