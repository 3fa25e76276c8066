"""roadie as a user gets it: a wheel built from this checkout, installed with `pip install --target`, run from a
directory outside the checkout with the target first on PYTHONPATH (so the installed roadie, flows, tasks and
deployments shadow the checkout's; the dependencies come from the venv).

What an installed roadie reads besides its modules must be in the wheel and found through the package: prefect.yaml
(whose source of truth stays at the top of the checkout), the default artwork, the migrations. And `roadie serve`
must deploy flows that its workers import from the installed package, not from a checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from roadie.db.session import script_heads
from roadie.prefect_local import free_port

ROOT = Path(__file__).resolve().parent.parent
# What setuptools reads to build the wheel (pyproject's packages.find and package-data).
SOURCES = ("pyproject.toml", "README.md", "prefect.yaml", "roadie", "flows", "tasks", "deployments")
JOBS = {
    "media-ingest",
    "transcode",
    "waveform",
    "artwork-extract",
    "loudness",
    "fingerprint",
    "analytics-rollup",
    "distribution",
    "dead-letter",
}


NO_EDITABLE_FINDER = """
import sys

def _editable(obj):
    return "__editable__" in (getattr(obj, "__module__", None) or type(obj).__module__ or "")

sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
sys.path_importer_cache.clear()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel from a copy of the checkout (building in place would write build/ and egg-info into it),
    offline, and install it into a target directory."""
    base = tmp_path_factory.mktemp("wheel")
    src, dist, target, cwd = base / "src", base / "dist", base / "target", base / "elsewhere"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            # symlinks=True: deployments/prefect.yaml stays a link, as in a clone, and the build must follow it.
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("roadie-*.whl")
    done = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cwd.mkdir()
    # The venv has roadie in editable mode, and its finder would supply any module missing from the wheel (any
    # child of roadie, flows, tasks, deployments) from the checkout, hiding the gap. A sitecustomize on PYTHONPATH,
    # which every process started here (the server, workers, flow runs) inherits, takes it out.
    guard = base / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_EDITABLE_FINDER)
    return {"target": target, "cwd": cwd, "wheel": wheel, "guard": guard}


def wheel_env(installed: dict[str, Path], **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ROADIE_", "PREFECT_API", "PYTHONPATH")) and k != "PREFECT_HOME"
    }
    path = os.pathsep.join([str(installed["target"]), str(installed["guard"])])
    return {**env, "PYTHONPATH": path, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def run_python(installed: dict[str, Path], args: list[str], timeout: float = 120, **env: str):
    return subprocess.run(
        [sys.executable, *args],
        cwd=installed["cwd"],
        env=wheel_env(installed, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PROBE = """
import importlib, json, sys, roadie, flows, tasks, deployments
from deployments.files import code_root, deployment_file, process_file
from roadie.ops.serve import project_root, split_by_presence
from roadie.ops.warm_worker import flow_modules
from tasks.media import artwork

root = project_root()
present, missing = split_by_presence(process_file(root), root)
art = artwork.default_artwork()
for module in flow_modules(root):  # as the warm worker preloads them: the flows and every task they use
    importlib.import_module(module)
print(json.dumps({
    "modules": sorted(
        str(m.__file__) for name, m in list(sys.modules.items())
        if name.split(".")[0] in ("roadie", "flows", "tasks", "deployments") and getattr(m, "__file__", None)
    ),
    "finders": [repr(f) for f in sys.meta_path],
    "root": str(root),
    "code_root": str(code_root()),
    "process_file": str(process_file(root)),
    "docker_file": str(deployment_file("prefect.docker.yaml")),
    "present": present,
    "missing": missing,
    "preloaded": flow_modules(root),
    "artwork": str(artwork.DEFAULT_ARTWORK),
    "artwork_size": [art.width, art.height],
    "artwork_embedded": art.embedded,
}))
"""


def test_the_installed_package_runs_and_finds_its_files(installed):
    target = installed["target"]
    help_ = run_python(installed, ["-m", "roadie", "--help"])
    assert help_.returncode == 0, help_.stderr[-3000:]
    assert "serve" in help_.stdout and "db" in help_.stdout

    probe = run_python(installed, ["-c", PROBE])
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout)
    # The installed package, not the checkout, answers every import.
    assert not any("__editable__" in finder for finder in found["finders"]), found["finders"]
    assert str(target / "flows" / "ingest.py") in found["modules"]
    assert str(target / "tasks" / "media" / "artwork.py") in found["modules"]
    assert all(Path(path).is_relative_to(target) for path in found["modules"]), found["modules"]
    assert Path(found["root"]) == Path(found["code_root"]) == target.resolve()

    # prefect.yaml from the package: a real file with the checkout's content (one source of truth), whose
    # entrypoints all resolve against the installed code.
    shipped = Path(found["process_file"])
    assert shipped == target.resolve() / "deployments" / "prefect.yaml" and not shipped.is_symlink()
    assert shipped.read_text() == (ROOT / "prefect.yaml").read_text()
    assert (ROOT / "deployments" / "prefect.yaml").resolve() == (ROOT / "prefect.yaml").resolve()
    assert set(found["present"]) == JOBS and found["missing"] == []
    assert "flows.ingest" in found["preloaded"]
    assert Path(found["docker_file"]).read_text() == (ROOT / "deployments" / "prefect.docker.yaml").read_text()

    # The default artwork: the package resource of the installed roadie, the committed picture.
    assert Path(found["artwork"]) == target / "roadie" / "assets" / "default-artwork.png"
    assert Path(found["artwork"]).read_bytes() == (ROOT / "roadie" / "assets" / "default-artwork.png").read_bytes()
    assert found["artwork_size"] == [600, 600] and found["artwork_embedded"] is False


def test_the_installed_migrations_build_a_fresh_sqlite_database(installed, tmp_path):
    db = tmp_path / "fresh.db"
    done = run_python(installed, ["-m", "roadie", "db", "upgrade"], ROADIE_DATABASE_URL=f"sqlite:///{db}")
    assert done.returncode == 0, done.stderr[-3000:]
    conn = sqlite3.connect(db)
    try:
        revisions = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert revisions == set(script_heads())  # the wheel was built from this checkout's migrations
    assert {"failed_jobs", "alembic_version"} <= tables and len(tables) > 5, tables


def call(client: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    """A REST call that waits out SQLite's refusals: under simultaneous writes Prefect's server answers 503."""
    for _ in range(20):
        response = client.request(method, url, **kwargs)
        if response.status_code != 503:
            return response
        time.sleep(0.5)
    return response


def wait_for_line(path: Path, proc: subprocess.Popen, log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text()
        if "\n" in text:
            return text.splitlines()[0]
        assert proc.poll() is None, f"roadie serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        time.sleep(0.3)
    raise AssertionError(f"roadie serve not ready after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


def processes_of(home: Path) -> list[psutil.Process]:
    """Every live process started for this ROADIE_HOME: serve, its Prefect server, its workers and their runs."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("ROADIE_HOME") == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_roadie_serve_from_the_wheel_deploys_runs_and_stops(installed, tmp_path):
    """`roadie serve` on SQLite with the installed package: up, healthy, every job deployed from the package and
    run by a worker from it, then SIGTERM stops it all."""
    home = tmp_path / "home"
    health_port = free_port()
    env = {
        "ROADIE_HOME": str(home),
        "ROADIE_DATABASE_URL": f"sqlite:///{tmp_path / 'roadie.db'}",
        "ROADIE_STORAGE_URL": (tmp_path / "storage").as_uri(),
        "ROADIE_PREFECT_LOCAL_PORT": str(free_port()),
        "ROADIE_HEALTH_HOST": "127.0.0.1",
    }
    out, log = tmp_path / "serve.out", tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "roadie", "serve", "--workers", "1", "--port", str(health_port), "--json"]
    started = time.monotonic()
    with out.open("w") as stdout, log.open("w") as stderr:
        proc = subprocess.Popen(
            [*cmd, "--grace", "10"],
            cwd=installed["cwd"],
            env=wheel_env(installed, **env),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        info = json.loads(wait_for_line(out, proc, log, 120))
        ready_s = time.monotonic() - started
        api = info["api"]
        with httpx.Client(base_url=api, timeout=30) as client:
            deployments = call(client, "POST", "/deployments/filter", json={}).json()
            assert {d["name"] for d in deployments} == JOBS
            target = str(installed["target"].resolve())
            for deployment in deployments:
                # Runs start in the installed package's directory and load the entrypoint from there.
                assert deployment["pull_steps"] == [
                    {"prefect.deployments.steps.set_working_directory": {"directory": target}}
                ], deployment["pull_steps"]
                assert (Path(target) / deployment["entrypoint"].split(":")[0]).is_file()

            deadline = time.monotonic() + 60
            while True:  # healthy once the worker has polled its pool
                health = httpx.get(info["health"], timeout=30)
                if health.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert health.status_code == 200 and health.json()["status"] == "healthy", health.text

            # A worker runs a job from the installed code: a rollup of an empty day on the fresh SQLite database.
            (rollup,) = [d for d in deployments if d["name"] == "analytics-rollup"]
            created = call(
                client,
                "POST",
                f"/deployments/{rollup['id']}/create_flow_run",
                json={"parameters": {"day": "2026-01-02"}},
            )
            assert created.status_code == 201, created.text
            run = created.json()
            deadline = time.monotonic() + 90
            state = None
            while time.monotonic() < deadline:
                state = call(client, "GET", f"/flow_runs/{run['id']}").json()["state"]
                if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(0.5)
            assert state is not None and state["type"] == "COMPLETED", (state, log.read_text()[-4000:])
        ran_s = time.monotonic() - started

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-4000:]
        deadline = time.monotonic() + 30
        while processes_of(home) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert processes_of(home) == [], [p.cmdline() for p in processes_of(home)]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{api}/health", timeout=2)
        said = log.read_text()
        assert "stopped" in said and "Traceback" not in said, said[-4000:]
        print(f"roadie serve from the wheel: ready (deployed) in {ready_s:.1f} s, a run done at {ran_s:.1f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for leftover in processes_of(home):
            leftover.kill()
