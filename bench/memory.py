"""bench/memory: peak memory of `roadie analyze` and `roadie ingest` as the upload gets longer.

    .venv/bin/python bench/memory.py [--lengths 1s,4min,60min,3h] [--skip-ingest] [--ingest-lengths 60min,3h]
                                     [--storage local|s3]

Each input is a stereo 48 kHz 16-bit WAV of sine and noise, generated in pieces under bench/out (never held
whole). Each command runs as a new user would run it, in a fresh ROADIE_HOME (the ingest's flow in process, a
local Prefect server started once beforehand, local storage unless --storage s3). While it runs, its process tree
is sampled every 20 ms: the roadie process's own peak (VmHWM, exact) and the peak of the sum of its ffmpeg, ffprobe
and fpcalc children, reported separately. With --storage s3 the ingest writes to a SeaweedFS S3 server and every
published output is checked (playlists list their segments, every segment is in the bucket).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
ROADIE = str(Path(sys.executable).with_name("roadie"))
MEDIA_TOOLS = {"ffmpeg", "ffprobe", "fpcalc"}
LIMITS = {"analyze": 256, "ingest": 384}  # MiB, issue 9's acceptance
SAMPLE_RATE = 48_000


def parse_length(text: str) -> float:
    units = {"s": 1, "min": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise SystemExit(f"length {text!r}: use e.g. 1s, 4min, 3h")


def make_input(seconds: float) -> Path:
    """Sine + noise, written a minute at a time (a 3 h file is 2 GB: it is never in memory)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"memory-{int(seconds)}s.wav"
    if path.exists() and sf.info(str(path)).frames == int(seconds * SAMPLE_RATE):
        return path
    rng = np.random.default_rng(int(seconds))
    part = path.with_suffix(".part.wav")
    with sf.SoundFile(str(part), "w", SAMPLE_RATE, 2, subtype="PCM_16") as out:
        done, total = 0, int(seconds * SAMPLE_RATE)
        while done < total:
            n = min(60 * SAMPLE_RATE, total - done)
            t = (done + np.arange(n)) / SAMPLE_RATE
            level = 0.25 + 0.15 * np.sin(2 * np.pi * t / 37.0)  # slow swells: the loudness range is not zero
            tone = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 554.37 * t)], axis=1)
            out.write((level[:, None] * tone + rng.normal(0, 0.03, (n, 2))).astype(np.float32))
            done += n
    part.rename(path)
    return path


@dataclass
class Peak:
    own_mib: float
    tools_mib: float
    seconds: float
    returncode: int
    stdout: str


def measure(cmd: list[str], env: dict[str, str]) -> Peak:
    """Run `cmd`, sampling its process tree; the roadie process's VmHWM is its exact peak RSS."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    me = psutil.Process(proc.pid)
    own = tools = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal own, tools
        while not stop.is_set():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                own = max(own, next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")))
                total = 0
                for child in me.children(recursive=True):
                    try:
                        if child.name() in MEDIA_TOOLS:
                            total += child.memory_info().rss // 1024
                    except psutil.NoSuchProcess:
                        pass
                tools = max(tools, total)
            except (OSError, StopIteration, psutil.NoSuchProcess):
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    stop.set()
    sampler.join()
    return Peak(own / 1024, tools / 1024, time.monotonic() - started, proc.returncode, stdout)


def check_s3_outputs(result: dict, env: dict[str, str]) -> str:
    """Every published rendition is complete in the bucket: its playlist, init segment and every segment."""
    sys.path.insert(0, str(ROOT))
    os.environ.update(env)
    from roadie.settings import reload_settings
    from roadie.storage import get_storage

    reload_settings()
    storage = get_storage()
    problems = []
    for fmt, entry in result["transcodes"].items():
        if entry["status"] != "ready":
            problems.append(f"{fmt} {entry['status']}")
            continue
        playlist = storage.get_bytes(entry["playlist_key"]).decode()
        listed = [ln for ln in playlist.splitlines() if ln.endswith(".m4s")]
        stored = {Path(k).name for k in entry["segment_keys"]}
        if set(listed) != stored or not storage.exists(entry["init_key"]):
            problems.append(f"{fmt}: playlist lists {len(listed)} segments, bucket has {len(stored)}")
        covered = sum(float(ln[8:].rstrip(",")) for ln in playlist.splitlines() if ln.startswith("#EXTINF:"))
        if abs(covered - result["duration_s"]) > 0.5:
            problems.append(f"{fmt}: playlist covers {covered:.1f} s of {result['duration_s']:.1f} s")
    for key in (result["waveform"] or {}).values():
        if key and not storage.exists(key):
            problems.append(f"missing {key}")
    return "; ".join(problems) or "all outputs complete"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1s,4min,60min")
    parser.add_argument("--ingest-lengths", default="1s,4min,60min,3h")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-analyze", action="store_true")
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="roadie-bench-memory-"))
    env = {
        **os.environ,
        "ROADIE_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "ROADIE_MAX_DURATION_S": str(4 * 3600),
    }
    seaweed = None
    if args.storage == "s3":
        sys.path.insert(0, str(ROOT))
        from tests.services import start_seaweedfs

        seaweed = start_seaweedfs(bucket="roadie-bench", workdir=home / "s3")
        env.update(
            ROADIE_STORAGE_URL="s3://roadie-bench/media",
            ROADIE_S3_ENDPOINT_URL=seaweed.url,
            ROADIE_S3_ACCESS_KEY="bench",
            ROADIE_S3_SECRET_KEY="bench",
        )
    rows = []
    try:
        if not args.skip_analyze:
            for text in args.lengths.split(","):
                path = make_input(parse_length(text))
                peak = measure([ROADIE, "analyze", "--json", str(path)], env)
                rows.append(("analyze", text, peak, ""))
                print(f"analyze {text}: {peak.own_mib:.0f} MiB in {peak.seconds:.1f} s", flush=True)
        if not args.skip_ingest:
            subprocess.run([ROADIE, "server", "start"], env=env, check=True, stdout=subprocess.DEVNULL)
            for text in args.ingest_lengths.split(","):
                path = make_input(parse_length(text))
                peak = measure([ROADIE, "ingest", "--json", "--formats", "hls_opus,hls_aac", str(path)], env)
                result = json.loads(peak.stdout.strip().splitlines()[-1]) if peak.stdout.strip() else {}
                note = result.get("status", "no result")
                if args.storage == "s3" and result.get("status") == "ready":
                    note += ", " + check_s3_outputs(result, env)
                rows.append(("ingest", text, peak, note))
                print(f"ingest {text}: {peak.own_mib:.0f} MiB in {peak.seconds:.1f} s ({note})", flush=True)
    finally:
        subprocess.run([ROADIE, "server", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if seaweed is not None:
            seaweed.stop()

    print()
    print(
        f"{'command':<8} {'input':>6} {'roadie peak RSS':>16} {'ffmpeg/fpcalc peak':>19} {'wall':>8} "
        f"{'limit':>9}  result"
    )
    for command, text, peak, note in rows:
        verdict = "ok" if peak.own_mib <= LIMITS[command] else "OVER"
        print(
            f"{command:<8} {text:>6} {peak.own_mib:>12.0f} MiB {peak.tools_mib:>15.0f} MiB {peak.seconds:>7.1f}s "
            f"{LIMITS[command]:>5} MiB  {verdict}; exit {peak.returncode}{', ' + note if note else ''}"
        )
    analyze = {text: peak.own_mib for command, text, peak, _ in rows if command == "analyze"}
    if len(analyze) > 1:
        spread = max(analyze.values()) - min(analyze.values())
        print(
            f"analyze: longest minus shortest input {spread:.0f} MiB (acceptance: the 4-minute and 60-minute "
            f"files within 32 MiB)"
        )


if __name__ == "__main__":
    main()
