"""bench/ingest: the original design's sequential recipe against `roadie ingest`, on the same input, in one run.

    .venv/bin/python bench/ingest.py [--seconds 240]

Prints wall times and ratios. The original recipe is its own separate commands run one after another:
opus HLS, aac HLS, ebur128, fpcalc. roadie runs the real CLI (flow on a warm local Prefect server, SQLite,
local folder), reports time to playable and time to all outputs, beside the floor: the slowest single encode.
roadie runs with the local Prefect server on its default SQLite, and, when PostgreSQL answers on 127.0.0.1:5432
(or ROADIE_BENCH_PG_URL), with that server on PostgreSQL as in production, there with both CPU schedules:
the default (everything shares the CPUs, secondary renditions at nice 10) and ROADIE_CPU_LANES=true.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roadie.sample_audio import write_sample
from tasks.media.ffmpeg import ffmpeg_binary


def timed(cmd: list[str], ok_codes: tuple[int, ...] = (0,)) -> float:
    started = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if proc.returncode not in ok_codes:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return time.monotonic() - started


def hls(src: Path, out: Path, codec: list[str]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        ffmpeg_binary(),
        "-y",
        "-i",
        str(src),
        *codec,
        "-vn",
        "-f",
        "hls",
        "-hls_time",
        "6",
        "-hls_list_size",
        "0",
        "-hls_segment_type",
        "fmp4",
        "-hls_fmp4_init_filename",
        "init.mp4",
        "-hls_segment_filename",
        str(out / "segment_%03d.m4s"),
        str(out / "playlist.m3u8"),
    ]


def original_recipe(src: Path, work: Path) -> dict[str, float]:
    steps = {
        "opus_hls": hls(src, work / "opus", ["-c:a", "libopus", "-b:a", "160k"]),
        "aac_hls": hls(src, work / "aac", ["-c:a", "aac", "-b:a", "256k"]),
        "ebur128": [ffmpeg_binary(), "-i", str(src), "-filter:a", "ebur128=peak=true", "-f", "null", "-"],
        "fpcalc": [shutil.which("fpcalc") or "fpcalc", "-json", str(src)],
    }
    # fpcalc 1.5 exits 3 after "Error decoding audio frame (End of file)" at the end of some WAVs, with its
    # fingerprint printed all the same.
    return {name: timed(cmd, (0, 3) if name == "fpcalc" else (0,)) for name, cmd in steps.items()}


def roadie_ingest(src: Path, env: dict[str, str]) -> tuple[float, dict]:
    started = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("roadie")), "ingest", "--json", "--formats", "hls_opus,hls_aac", str(src)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"roadie ingest failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="roadie-bench-") as tmp:
        work = Path(tmp)
        src = write_sample(work / "track.wav", args.seconds, 48000, 2)
        tiny = write_sample(work / "tiny.wav", 1.0, 48000, 2)
        steps = original_recipe(src, work / "recipe")
        recipe = sum(steps.values())
        floor = max(steps["opus_hls"], steps["aac_hls"])
        runs = {"Prefect on SQLite (default)": roadie_runs(src, tiny, work / "sqlite", None)}
        pg = os.environ.get("ROADIE_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
        from tests.services import postgres_reachable, scratch_database

        if postgres_reachable(pg):
            with scratch_database(pg, "roadie_bench_prefect", driver="postgresql+asyncpg") as url:
                runs["Prefect on PostgreSQL"] = roadie_runs(src, tiny, work / "pg", url)
                runs["Prefect on PostgreSQL, ROADIE_CPU_LANES=true"] = roadie_runs(
                    src, tiny, work / "pg-lanes", url, {"ROADIE_CPU_LANES": "true"}
                )

    print(f"input: {args.seconds:g} s music-like, 48 kHz stereo WAV; {os.cpu_count()} cores")
    print(
        "original recipe (sequential): " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()) + f" = {recipe:.2f} s"
    )
    print(f"floor (slowest single encode, aac_hls alone): {floor:.2f} s = {floor / recipe:.2f}x recipe")
    for label, (cold, warm, wall, playable, total) in runs.items():
        print(f"roadie ingest, {label}:")
        print(f"  time to playable (in flow): {playable:.2f} s = {playable / recipe:.2f}x recipe")
        print(f"  time to all outputs (in flow): {total:.2f} s = {total / recipe:.2f}x recipe")
        print(f"  whole CLI process: {wall:.2f} s = {wall / recipe:.2f}x recipe")
        print(
            f"  CLI overhead on a 1 s file: first use {cold:.2f} s (starts the local Prefect server), "
            f"then {warm:.2f} s per call"
        )


def roadie_runs(
    src: Path, tiny: Path, home: Path, prefect_db: str | None, settings: dict[str, str] | None = None
) -> tuple[float, ...]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROADIE_", "PREFECT_API"))}
    env.update(ROADIE_HOME=str(home), ROADIE_PREFECT_LOCAL_PORT=str(_free_port()), **(settings or {}))
    if prefect_db:
        env["ROADIE_PREFECT_DATABASE_URL"] = prefect_db
    try:
        cold, _ = roadie_ingest(tiny, env)  # first use: migrates SQLite, starts the local Prefect server
        warm, _ = roadie_ingest(tiny, env)  # per call: process start, imports, one flow run
        wall, result = roadie_ingest(src, env)
        assert result["status"] == "ready", result
    finally:
        _stop_server(env)
    return cold, warm, wall, result["timings"]["playable_s"], result["timings"]["total_s"]


def _free_port() -> int:
    from roadie.prefect_local import free_port

    return free_port()


def _stop_server(env: dict[str, str]) -> None:
    subprocess.run([str(Path(sys.executable).with_name("roadie")), "server", "stop"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
