"""What keeps the `roadie` command quick to start, checked for what it does (the timings live in
bench/cli_startup.py): `--help` and `analyze` import no Prefect, database or settings they do not need; the
embedded database is migrated only when it is behind; the global limits are created or corrected when missing or
different, and left alone otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import music_like, write_wav

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI in-process, then prints which of the heavy packages it imported (as a JSON list on the last line).
PROBE = """
import json, sys
from roadie.cli import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
heavy = ("prefect", "sqlalchemy", "alembic", "numpy", "scipy", "pydantic_settings", "httpx", "PIL")
print(json.dumps(sorted(name for name in heavy if name in sys.modules)))
"""


def imported_by(*args: str, cwd: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADIE_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**env, "ROADIE_HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    return json.loads(done.stdout.splitlines()[-1]), done


def test_help_lists_every_command_and_imports_nothing_heavy(tmp_path: Path):
    heavy, done = imported_by("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for command in (
        "ingest",
        "analyze",
        "waveform",
        "sample",
        "rollup",
        "distribute",
        "db",
        "server",
        "serve",
        "setup",
        "register",
        "trigger",
        "failed",
        "health",
    ):
        assert command in done.stdout
    assert heavy == []
    assert not (tmp_path / "home").exists()  # --help touches no database, storage or server


def test_analyze_needs_no_prefect_database_or_storage(tmp_path: Path):
    wav = write_wav(tmp_path / "one.wav", music_like(1.0, 48000, 2, seed=3), 48000)
    heavy, done = imported_by("analyze", str(wav), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    assert result["input"] == str(wav) and result["loudness"]["integrated_lufs"] is not None
    assert not {"prefect", "sqlalchemy", "alembic", "httpx"} & set(heavy)
    assert not (tmp_path / "home").exists()


def test_the_script_ends_with_the_commands_code_and_all_its_output(tmp_path: Path):
    """`python -m roadie` runs roadie.cli.main, as the installed script does: it skips the interpreter's teardown,
    so what must survive it is checked here, through a pipe as a caller reads it: the exit code and every line."""
    wav = write_wav(tmp_path / "one.wav", music_like(1.0, 48000, 2, seed=3), 48000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADIE_")}
    env.update(ROADIE_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))

    def roadie(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "roadie", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    both = roadie("analyze", str(wav), str(tmp_path / "missing.wav"), "--json")
    assert both.returncode == 1, both.stderr
    good, missing = (json.loads(line) for line in both.stdout.splitlines())
    assert good["input"] == str(wav) and good["loudness"]["pyloudnorm"]["integrated_lufs"] is not None
    assert missing == {"input": str(tmp_path / "missing.wav"), "error": "missing.wav is not a file"}
    assert roadie("analyze", str(wav)).returncode == 0
    usage = roadie("no-such-command")
    assert usage.returncode == 2 and "No such command" in usage.stderr


def test_script_heads_are_alembics_heads():
    from alembic.script import ScriptDirectory

    from roadie.db.session import alembic_config, script_heads

    assert script_heads() == frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def _version(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


def test_upgrade_if_behind_migrates_only_when_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from roadie.db import session
    from roadie.db.session import database_heads, script_heads, upgrade, upgrade_if_behind

    url = f"sqlite:///{tmp_path / 'fresh' / 'roadie.db'}"
    assert database_heads(url) is None  # no schema yet
    upgrade_if_behind(url)
    assert _version(url) == set(script_heads())
    assert database_heads(url) == script_heads()

    calls: list[str | None] = []
    monkeypatch.setattr(session, "upgrade", lambda url=None, revision="heads": calls.append(url))
    upgrade_if_behind(url)  # at the heads: not even Alembic is asked
    assert calls == []
    monkeypatch.undo()

    older = f"sqlite:///{tmp_path / 'older.db'}"
    upgrade(older, "0004")
    assert _version(older) == {"0004"}
    upgrade_if_behind(older)
    assert _version(older) == set(script_heads())


def test_the_cli_migrates_a_behind_embedded_database(tmp_path: Path):
    """`roadie rollup` on an embedded database one migration behind brings it to the heads first, as before."""
    from roadie.db.session import script_heads, upgrade

    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'roadie.db'}"
    upgrade(url, "0004")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADIE_")}
    done = subprocess.run(
        [sys.executable, "-m", "roadie", "rollup", "--day", "2026-03-09", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, "ROADIE_HOME": str(home)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert _version(url) == set(script_heads())


def test_ensure_limits_creates_missing_and_corrects_changed_limits(prefect_api: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from roadie.limits import ALL_LIMITS, TRANSCODE_CONCURRENCY, TRANSCODE_RATE, ensure_limits

    def current() -> dict[str, tuple[int, float]]:
        with get_client(sync_client=True) as client:
            return {
                lim.name: (lim.limit, lim.slot_decay_per_second)
                for lim in client.read_global_concurrency_limits(limit=200)
            }

    wanted = {name: (limit, decay or 0.0) for name, limit, decay in ALL_LIMITS}
    try:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(TRANSCODE_CONCURRENCY[0])
            client.update_global_concurrency_limit(
                TRANSCODE_RATE[0], GlobalConcurrencyLimitUpdate(limit=3, slot_decay_per_second=1.0)
            )
        ensure_limits()
        assert {name: current()[name] for name in wanted} == wanted
        ensure_limits()  # nothing to change: still the same
        assert {name: current()[name] for name in wanted} == wanted
    finally:
        ensure_limits()


def test_the_collector_waits_out_the_start_up_and_then_runs_again():
    """`roadie` pauses the cyclic collector while a command imports, and a longer command gets it back (with the
    start-up's objects frozen out of its passes): never a process left without it. In a subprocess: the freeze is
    the process's for good."""
    probe = (
        "import gc, json, time, roadie.cli as cli; cli.GC_PAUSE_S = 0.2; cli._pause_gc_for_start_up(); "
        "paused = gc.isenabled(); time.sleep(2); "
        "print(json.dumps([paused, gc.isenabled(), gc.get_freeze_count()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert done.returncode == 0, done.stderr
    paused, resumed, frozen = json.loads(done.stdout.splitlines()[-1])
    assert (paused, resumed) == (False, True)
    assert frozen > 10_000  # typer, click and roadie.cli at least
