"""bench/load: a burst of uploads triggered at once over REST onto `roadie serve`, against the original recipe.

    .venv/bin/python bench/load.py [--clips 50] [--seconds 20] [--workers 2] [--rate-per-minute 10]
                                   [--env KEY=VALUE ...]

What the platform's API does when an album lands: `roadie register` every clip, then every
`POST /api/deployments/{id}/create_flow_run` at once (idempotency key per version, 503 retried with back-off for
30 s as the README asks), while a monitor asks `/health` every 0.5 s. roadie serve keeps Prefect's state in
PostgreSQL (roadie's database is a scratch PostgreSQL database, so serve puts Prefect's beside it).

Checked, from the runs' own records (not the configuration):
  - every clip ran exactly once (one flow run per version, however many triggers were retried) and is ready;
  - at most ROADIE_TRANSCODE_CONCURRENCY encodes ran at any instant (each transcode task logs a line right before
    and right after its ffmpeg, inside its hold on a `transcode` slot);
  - ingests started no faster than the `transcode-rate` bucket allows: for any two starts, the starts between
    them number at most limit + elapsed x rate (a bucket of `limit` slots, one freed every 60/rate s);
  - /health answered within 1 s every time.
Printed: clips per minute, p50/p95 trigger->ready, and the original recipe (bench/ingest.py's separate commands:
opus HLS, aac HLS, ebur128, fpcalc) on the same clips, 2 at a time, with roadie's throughput as a ratio of it.
The rate limit caps roadie at --rate-per-minute ingests a minute whatever the machine can do; the recipe has no
such cap, so the efficiency ratio is only meaningful with it lifted (e.g. --rate-per-minute 1000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx

from bench.api_latency import ROADIE, Bench, Serve, percentile
from bench.cpu_account import CpuAccount
from bench.ingest import original_recipe


@dataclass
class LoadResult:
    clips: int
    seconds: float
    workers: int
    concurrency: int
    rate_per_minute: float
    wall_s: float  # first trigger -> last clip ready
    ready_s: list[float]  # trigger->ready per clip
    states: dict[str, int]
    runs_per_version: dict[str, int]
    statuses: dict[str, int]
    max_encodes_at_once: int
    encodes_seen: int  # complete started/finished pairs; two renditions per clip expected
    rate_violations: list[str]
    health_max_s: float
    health_failures: list[str]
    refused_triggers: int
    retried_triggers: int
    recipe_wall_s: float | None = None
    notes: list[str] = field(default_factory=list)
    cpu: CpuAccount | None = None  # from the first trigger to the last clip ready
    recipe_cpu: CpuAccount | None = None

    @property
    def clips_per_minute(self) -> float:
        return 60 * self.clips / self.wall_s

    @property
    def recipe_clips_per_minute(self) -> float | None:
        return 60 * self.clips / self.recipe_wall_s if self.recipe_wall_s else None


class HealthMonitor(threading.Thread):
    """GET /health every 0.5 s until stopped; the slowest answer and any that failed or took over 1 s."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stopped, self.max_s, self.failures = url, threading.Event(), 0.0, []

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stopped.wait(0.5):
                started = time.monotonic()
                try:
                    status = http.get(self.url).status_code
                    took = time.monotonic() - started
                    # /health answers 503 when it judges the system unhealthy; that is an answer, not a hang.
                    if status not in (200, 503):
                        self.failures.append(f"HTTP {status}")
                except httpx.HTTPError as exc:
                    took = time.monotonic() - started
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.max_s = max(self.max_s, took)
                if took > 1.0:
                    self.failures.append(f"answered after {took:.2f} s")


def trigger_all(bench: Bench, versions: list[str]) -> tuple[dict[str, tuple[str, float]], int, int]:
    """Every trigger at once, each retried on 503/connection errors with back-off for up to 30 s (what the README
    asks of the platform's API). Returns {version: (flow run id, trigger time)}, refused count, retried count."""
    retried = [0]

    def one(version_id: str) -> tuple[str, float] | None:
        deadline, delay = time.monotonic() + 30, 0.25
        with httpx.Client(base_url=str(bench.http.base_url), timeout=30) as http:
            while True:
                try:
                    response = http.post(
                        f"deployments/{bench.dep}/create_flow_run",
                        json={
                            "parameters": {"version_id": version_id, "formats": ["hls_opus", "hls_aac"]},
                            "idempotency_key": f"media-ingest:{version_id}",
                        },
                    )
                    if response.status_code not in (502, 503, 504):
                        response.raise_for_status()
                        return response.json()["id"], time.time()
                except httpx.TransportError:
                    pass
                if time.monotonic() + delay > deadline:
                    return None
                retried[0] += 1
                time.sleep(delay)
                delay = min(delay * 2, 4)

    with ThreadPoolExecutor(len(versions)) as pool:
        outcomes = dict(zip(versions, pool.map(one, versions), strict=False))
    runs = {v: o for v, o in outcomes.items() if o is not None}
    return runs, len(versions) - len(runs), retried[0]


def slot_events(api: str, name: str, since: datetime) -> list[tuple[str, datetime, str]]:
    """(acquired|released, occurred, holder) for the global limit `name`, oldest first, as the runs emitted them."""
    with httpx.Client(base_url=api.rstrip("/") + "/", timeout=30) as http:
        limit_id = http.get(f"v2/concurrency_limits/{name}").raise_for_status().json()["id"]
        body = {
            "filter": {
                "occurred": {
                    "since": since.isoformat(),
                    "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
                },
                "event": {"name": ["prefect.concurrency-limit.acquired", "prefect.concurrency-limit.released"]},
                "resource": {"id": [f"prefect.concurrency-limit.{limit_id}"]},
                "order": "ASC",
            },
            "limit": 50,
        }
        data = http.post("events/filter", json=body).raise_for_status().json()
        events = list(data.get("events", []))
        while data.get("next_page"):
            data = http.get(data["next_page"]).raise_for_status().json()
            events.extend(data.get("events", []))
    out = []
    for e in events:
        holder = next(
            (
                r["prefect.resource.id"]
                for r in e.get("related", [])
                if r.get("prefect.resource.role") in ("task-run", "flow-run")
            ),
            e["id"],
        )
        out.append((e["event"].rsplit(".", 1)[1], datetime.fromisoformat(e["occurred"].replace("Z", "+00:00")), holder))
    return sorted(out, key=lambda x: x[1])


def encode_intervals(api: str, run_ids: list[str]) -> list[tuple[str, datetime, str]]:
    """(acquired|released, time, holder) from the transcode task's own log lines, which it writes inside its hold
    on the encode slot, right before and right after ffmpeg: each interval lies within a real hold, so more than the
    limit of them overlapping would be a real breach. (Prefect's slot events cannot show that: the release event is
    emitted after the release returns, by which time another run may have taken the slot and said so.)"""
    from tasks.media.tasks import ENCODE_MARK

    out = []
    with httpx.Client(base_url=api.rstrip("/") + "/", timeout=30) as http:
        offset = 0
        while True:
            page = (
                http.post(
                    "logs/filter",
                    json={
                        "logs": {"flow_run_id": {"any_": run_ids}},
                        "offset": offset,
                        "limit": 200,
                        "sort": "TIMESTAMP_ASC",
                    },
                )
                .raise_for_status()
                .json()
            )
            for log in page:
                if log["message"].startswith(ENCODE_MARK + ":"):
                    kind = "acquired" if log["message"].endswith("started") else "released"
                    holder = f"{log['task_run_id']}"
                    out.append((kind, datetime.fromisoformat(log["timestamp"].replace("Z", "+00:00")), holder))
            if len(page) < 200:
                return sorted(out, key=lambda x: x[1])
            offset += len(page)


def max_overlap(events: list[tuple[str, datetime, str]]) -> int:
    """Most slots held at one instant (a release at the same instant as an acquire counts first)."""
    held = peak = 0
    for kind, _, _ in sorted(events, key=lambda e: (e[1], e[0] != "released")):
        held += 1 if kind == "acquired" else -1
        peak = max(peak, held)
    return peak


def bucket_violations(starts: list[datetime], limit: int, per_second: float, slack_s: float = 0.5) -> list[str]:
    """Starts that a bucket of `limit` slots, refilled at `per_second`, could not have allowed: between any two
    starts i < j there may be at most limit + (t_j - t_i) x per_second of them (slack_s for clock jitter)."""
    bad = []
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            allowed = limit + ((starts[j] - starts[i]).total_seconds() + slack_s) * per_second
            if j - i + 1 > allowed + 1e-9:
                bad.append(
                    f"{j - i + 1} starts in {(starts[j] - starts[i]).total_seconds():.1f} s (allowed {allowed:.1f})"
                )
    return bad


def write_clips(folder: Path, clips: int, seconds: float) -> list[Path]:
    from roadie.sample_audio import write_sample

    folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(2) as pool:  # distinct seeds: distinct audio, so no clip is another's duplicate
        return list(
            pool.map(lambda i: write_sample(folder / f"clip-{i:03d}.wav", seconds, 48000, 2, seed=i + 1), range(clips))
        )


def register_all(env: dict[str, str], paths: list[Path]) -> list[str]:
    def one(path: Path) -> str:
        out = subprocess.run(
            [ROADIE, "register", str(path), "--owner", "load", "--json"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise SystemExit(f"roadie register failed: {out.stdout}{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["version_id"]

    first = one(paths[0])  # creates the owner
    with ThreadPoolExecutor(4) as pool:
        return [first, *pool.map(one, paths[1:])]


def run_load(
    clips: int,
    seconds: float,
    workers: int,
    pg_server: str,
    *,
    rate_per_minute: float = 10,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
    recipe: bool = True,
    keep: Path | None = None,
    limit: int | None = None,
) -> LoadResult:
    from roadie.prefect_local import free_port
    from tests.services import scratch_database

    with (
        tempfile.TemporaryDirectory(prefix="roadie-load-") as tmp,
        scratch_database(pg_server, "roadie_load", migrate=True) as app_db,
    ):
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROADIE_", "PREFECT_"))}
        env.update(
            ROADIE_HOME=str(home / "home"),
            ROADIE_PREFECT_LOCAL_PORT=str(free_port()),
            ROADIE_HEALTH_PORT=str(free_port()),
            ROADIE_DATABASE_URL=app_db,
            ROADIE_STORAGE_URL=f"file://{home / 'storage'}",
            ROADIE_TMP_DIR=str(home / "tmp"),
            ROADIE_TRANSCODE_RATE_PER_MINUTE=str(rate_per_minute),
            ROADIE_TRANSCODE_CONCURRENCY=str(concurrency),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        env.update(extra_env or {})
        (home / "tmp").mkdir()
        paths = write_clips(home / "clips", clips, seconds)
        serve = Serve(env, workers, home, ("--limit", str(limit)) if limit else ())
        try:
            api = serve.info["api"]
            bench = Bench(api, app_db)
            versions = register_all(env, paths)
            monitor = HealthMonitor(serve.info["health"])
            monitor.start()
            since = datetime.now(UTC) - timedelta(seconds=1)
            with CpuAccount() as cpu:
                runs, refused, retried = trigger_all(bench, versions)
                rows = bench.wait(runs, timeout_s=max(900, clips * 60 / rate_per_minute * 2))
            monitor.stopped.set()
            monitor.join()
            ready_at = [at + row["trigger->ready"] for (_, at), row in zip(runs.values(), rows, strict=False)]
            first_trigger = min(at for _, at in runs.values())
            with bench.engine.connect() as conn:
                import sqlalchemy as sa

                statuses = dict(
                    conn.execute(
                        sa.text(
                            "SELECT status, count(*) FROM track_versions WHERE id::text = ANY(:ids) GROUP BY status"
                        ),
                        {"ids": versions},
                    ).all()
                )
            per_version: dict[str, int] = {}
            for fr in bench.http.post("flow_runs/filter", json={"deployments": {"id": {"any_": [bench.dep]}}}).json():
                vid = fr["parameters"].get("version_id")
                per_version[vid] = per_version.get(vid, 0) + 1
            time.sleep(3)  # the server persists events in batches
            encodes = encode_intervals(api, [run_id for run_id, _ in runs.values()])
            starts = [at for kind, at, _ in slot_events(api, "transcode-rate", since) if kind == "acquired"]
            limit = max(1, round(rate_per_minute))
            result = LoadResult(
                clips=clips,
                seconds=seconds,
                workers=workers,
                concurrency=concurrency,
                rate_per_minute=rate_per_minute,
                wall_s=max(ready_at) - first_trigger,
                ready_s=[row["trigger->ready"] for row in rows],
                states={s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
                runs_per_version={v: per_version.get(v, 0) for v in versions},
                statuses=statuses,
                max_encodes_at_once=max_overlap(encodes),
                encodes_seen=min(
                    sum(k == "acquired" for k, _, _ in encodes), sum(k == "released" for k, _, _ in encodes)
                ),
                rate_violations=bucket_violations(starts, limit, rate_per_minute / 60),
                health_max_s=monitor.max_s,
                health_failures=monitor.failures,
                refused_triggers=refused,
                retried_triggers=retried,
            )
            result.notes.append(f"{len(starts)} rate slots taken")
            result.cpu = cpu
        finally:
            serve.stop()
            if keep:
                import shutil

                shutil.copytree(home / "home" / "logs", keep, dirs_exist_ok=True)
                shutil.copy(home / "serve.log", keep / "serve.log")
        if recipe:
            started = time.monotonic()
            with CpuAccount() as recipe_cpu, ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda p: original_recipe(p, home / "recipe" / p.stem), paths))
            result.recipe_wall_s = time.monotonic() - started
            result.recipe_cpu = recipe_cpu
    return result


def report(result: LoadResult) -> str:
    ok = lambda good: "ok" if good else "FAILED"  # noqa: E731
    once = all(n == 1 for n in result.runs_per_version.values())
    lines = [
        f"load: {result.clips} clips of {result.seconds:g} s triggered at once onto roadie serve --workers "
        f"{result.workers}; limits: transcode {result.concurrency}, transcode-rate {result.rate_per_minute:g}/min; "
        f"{os.cpu_count()} cores",
        f"  runs: {result.states}; versions: {result.statuses}; "
        f"exactly once: {ok(once)}; refused triggers: {result.refused_triggers} (retries {result.retried_triggers})",
        f"  encodes at once (from the runs' own log lines around each of the {result.encodes_seen} encodes): "
        f"max {result.max_encodes_at_once} "
        f"<= {result.concurrency}: {ok(result.max_encodes_at_once <= result.concurrency)}",
        f"  ingest starts within the rate bucket: {ok(not result.rate_violations)}"
        + (f" ({result.rate_violations[:3]})" if result.rate_violations else ""),
        f"  /health: slowest {result.health_max_s:.3f} s, {len(result.health_failures)} over 1 s or failed: "
        f"{ok(not result.health_failures)}",
        f"  throughput: {result.clips_per_minute:.1f} clips/min ({result.wall_s:.1f} s from first trigger to last "
        f"ready); trigger->ready p50 {percentile(result.ready_s, 0.5):.2f} s, p95 {percentile(result.ready_s, 0.95):.2f} s",
    ]
    if result.recipe_wall_s:
        ratio = result.clips_per_minute / result.recipe_clips_per_minute
        lines.append(
            f"  original recipe, 2 at a time: {result.recipe_wall_s:.1f} s = "
            f"{result.recipe_clips_per_minute:.1f} clips/min; roadie / recipe throughput {ratio:.2f}x "
            f"(target >= 1.0: {ok(ratio >= 1.0)})"
        )
    if result.cpu:
        lines += [
            "  where the CPU went, roadie (first trigger to last ready):",
            result.cpu.report(result.clips, "clip"),
        ]
    if result.recipe_cpu:
        lines += ["  where the CPU went, original recipe:", result.recipe_cpu.report(result.clips, "clip")]
    lines.extend(f"  note: {n}" for n in result.notes)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate-per-minute", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for roadie serve")
    parser.add_argument("--limit", type=int, default=None, help="roadie serve --limit: flow runs per worker")
    parser.add_argument("--no-recipe", action="store_true")
    parser.add_argument("--keep", type=Path, help="copy the serve and worker logs to this folder")
    args = parser.parse_args()
    from tests.services import postgres_reachable

    pg = os.environ.get("ROADIE_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    if not postgres_reachable(pg):
        raise SystemExit(f"PostgreSQL does not answer at {pg}")
    result = run_load(
        args.clips,
        args.seconds,
        args.workers,
        pg,
        rate_per_minute=args.rate_per_minute,
        concurrency=args.concurrency,
        extra_env=dict(kv.split("=", 1) for kv in args.env),
        recipe=not args.no_recipe,
        keep=args.keep,
        limit=args.limit,
    )
    print(report(result))


if __name__ == "__main__":
    main()
