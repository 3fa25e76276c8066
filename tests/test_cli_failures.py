"""`roadie ingest` fails quietly and clearly: an expected failure (bad input, storage down) is one JSON object and
one stderr line per input, with no traceback unless --verbose; a bug in roadie keeps its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from roadie.prefect_local import free_port
from tests.support import encode, music_like, write_wav

ROOT = Path(__file__).resolve().parents[1]


def roadie(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, prelude: str = ""
) -> subprocess.CompletedProcess:
    """The real CLI in a new process; `prelude` runs first (to plant a bug)."""
    code = textwrap.dedent(prelude) + "\nfrom roadie.cli import app\napp(prog_name='roadie')\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


@pytest.fixture
def bad_inputs(tmp_path: Path) -> list[Path]:
    good = write_wav(tmp_path / "good.wav", music_like(4.0, 44100, 2, seed=3), 44100)
    flac = encode(good, tmp_path / "full.flac").read_bytes()
    cut = tmp_path / "cut off.flac"
    cut.write_bytes(flac[: len(flac) * 2 // 3])
    text = tmp_path / "notes.mp3"
    text.write_text("these are liner notes, not audio\n" * 40)
    return [cut, text]


@pytest.mark.parametrize("roadie_env", ["file"], indirect=True)
def test_bad_uploads_are_one_line_each_without_a_traceback(roadie_env, prefect_api, tmp_path, bad_inputs):
    quiet = roadie(["ingest", "--json", "--formats", "hls_opus", *map(str, bad_inputs)], tmp_path)
    assert quiet.returncode == 1
    results = [json.loads(line) for line in quiet.stdout.splitlines()]
    assert [r["input"] for r in results] == [str(p) for p in bad_inputs]
    assert all(r["status"] == "failed" and r["error"] for r in results)
    assert "truncated or damaged" in results[0]["error"]
    assert "Traceback" not in quiet.stderr, quiet.stderr
    failed_lines = [ln for ln in quiet.stderr.splitlines() if ln.startswith("failed: ")]
    assert len(failed_lines) == 2
    for path, line in zip(bad_inputs, failed_lines, strict=False):
        assert line.startswith(f"failed: {path}: ") and "ingest it again" in line

    loud = roadie(["ingest", "--verbose", "--formats", "hls_opus", str(bad_inputs[0])], tmp_path)
    assert loud.returncode == 1 and "Traceback" in loud.stderr  # Prefect's own logs, on request


@pytest.mark.parametrize("roadie_env", ["file"], indirect=True)
def test_storage_down_at_registration_still_gives_json(roadie_env, prefect_api, tmp_path):
    song = write_wav(tmp_path / "song.wav", music_like(2.0, 44100, 2, seed=1), 44100)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = roadie(
        ["ingest", "--json", "--formats", "hls_opus", str(song)],
        tmp_path,
        env={
            "ROADIE_STORAGE_URL": "s3://roadie/down",
            "ROADIE_S3_ENDPOINT_URL": nobody,
            "ROADIE_S3_ACCESS_KEY": "k",
            "ROADIE_S3_SECRET_KEY": "s",
        },
    )
    assert proc.returncode == 1, proc.stderr
    [result] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert result["status"] == "failed" and result["version_id"] is None
    assert result["error"].startswith("storage unavailable after retries")  # it says which of the two
    assert "Traceback" not in proc.stderr
    assert f"failed: {song}: " in proc.stderr and "once storage and the database answer" in proc.stderr


@pytest.mark.parametrize("roadie_env", ["file"], indirect=True)
@pytest.mark.parametrize("where", ["registration", "inside the flow"])
def test_a_bug_keeps_its_traceback(roadie_env, prefect_api, tmp_path, where):
    song = write_wav(tmp_path / "song.wav", music_like(2.0, 44100, 2, seed=2), 44100)
    target = (
        "roadie.catalog.registration.register_upload"
        if where == "registration"
        else "tasks.media.analysis.analyze_file"
    )
    module, name = target.rsplit(".", 1)
    prelude = f"""
        import importlib
        def planted_bug(*args, **kwargs):
            raise ZeroDivisionError("planted bug")
        setattr(importlib.import_module({module!r}), {name!r}, planted_bug)
    """
    proc = roadie(["ingest", "--json", "--formats", "hls_opus", str(song)], tmp_path, prelude=prelude)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError: planted bug" in proc.stderr
    if where == "inside the flow":  # the version still says what happened, and the JSON still comes
        [result] = [json.loads(line) for line in proc.stdout.splitlines()]
        assert result["status"] == "failed" and "internal error (ZeroDivisionError: planted bug)" in result["error"]


def test_a_quiet_ingest_quiets_the_terminal_not_the_server_it_starts(tmp_path, bad_inputs):
    """Without --verbose the CLI silences Prefect's console handler; the local server that the same command starts
    keeps its own log, where the tracebacks the terminal was spared belong."""
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROADIE_", "PREFECT_"))}
    home = tmp_path / "home"
    env.update(ROADIE_HOME=str(home), ROADIE_PREFECT_LOCAL_PORT=str(free_port()))
    quiet = subprocess.run(
        [sys.executable, "-m", "roadie", "ingest", "--json", "--formats", "hls_opus", str(bad_inputs[1])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    try:
        assert quiet.returncode == 1 and "Traceback" not in quiet.stderr, quiet.stderr[-3000:]
        server = psutil.Process(int((home / "prefect" / "server.pid").read_text()))
        assert "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL" not in server.environ()
    finally:
        subprocess.run([sys.executable, "-m", "roadie", "server", "stop"], cwd=tmp_path, env=env, timeout=120)
