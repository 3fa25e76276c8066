"""The Docker engine and roadie's image for the tests, through docker/build.py (the helper `make image` runs), and
a watcher that records every flow-run container the Docker worker starts.

The image is built once per session (tag roadie:test) on the local Debian base roadie-base:bookworm, which is
made once and reused while its recipe is unchanged. When no engine can be started at all, the Docker tests skip
with the reason; a build that fails is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
TAG = "roadie:test"
USER_UID = 10001  # the image's user `roadie` (docker/Dockerfile)
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory/docker")


def _load_build_module():
    spec = importlib.util.spec_from_file_location("roadie_docker_build", ROOT / "docker" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


@lru_cache(maxsize=1)
def _engine_or_reason() -> tuple[Any, str | None]:
    try:
        return build.ensure_engine(), None
    except build.EngineUnavailable as exc:
        return None, str(exc)


def engine():
    """The running engine, or a skip naming why none can be started (the only reason these tests skip)."""
    found, reason = _engine_or_reason()
    if found is None:
        pytest.skip(f"no Docker engine can be started here: {reason}")
    return found


def report(config: pytest.Config, line: str) -> None:
    """A line in the test log whatever the capture mode (the build and run times belong in CI's log)."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capture = config.pluginmanager.getplugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(f"[docker] {line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n[docker] {line}")


@lru_cache(maxsize=1)
def _session_image():
    eng = engine()
    base, base_seconds = build.ensure_local_base(eng.cli)
    return build.build_image(eng.cli, TAG, base, base_seconds)


def image(config: pytest.Config):
    """roadie:test, built once per session (a warm build is a few seconds: every layer cached)."""
    fresh = _session_image.cache_info().currsize == 0
    made = _session_image()
    if fresh:
        report(
            config,
            f"image {made.tag} on {made.base}: build {made.seconds:.1f} s, base "
            f"{made.base_seconds:.1f} s (0: reused), engine {engine().server_version}",
        )
    return made


def docker(
    *args: str, check: bool = True, timeout: float = 300, input: bytes | None = None, text: bool = True
) -> subprocess.CompletedProcess:
    done = subprocess.run([engine().cli, *args], capture_output=True, timeout=timeout, input=input, text=text)
    if check and done.returncode != 0:
        err = done.stderr if text else done.stderr.decode(errors="replace")
        raise AssertionError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {err[-3000:]}")
    return done


def inspect(ref: str) -> dict | None:
    done = docker("inspect", ref, check=False)
    return json.loads(done.stdout)[0] if done.returncode == 0 else None


def socket_gid() -> int:
    return Path("/var/run/docker.sock").stat().st_gid


# ---------------------------------------------------------------------------------------------- flow-run containers


def _uid_of(pid: int) -> int | None:
    """Real uid of a process (the container's main process, seen from the host)."""
    try:
        return psutil.Process(pid).uids().real
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass
class RunContainer:
    """One container the Docker worker started for a flow run, as Docker saw it."""

    flow_run_id: str
    container_id: str
    image: str = ""
    actions: list[str] = field(default_factory=list)  # create, start, die, destroy, in order
    exit_code: int | None = None
    user: str | None = None  # Config.User
    uid: int | None = None  # of its main process, read from /proc while it ran
    memory_limit: int | None = None  # HostConfig.Memory
    memory_swap: int | None = None
    network_mode: str | None = None
    peak_memory: int = 0  # cgroup memory.max_usage_in_bytes (page cache included), last read before it stopped
    peak_rss: int = 0  # the largest total_rss of the cgroup's memory.stat seen (anonymous memory: no cache)

    @property
    def removed(self) -> bool:
        return "destroy" in self.actions


class ContainerWatch:
    """`docker events` for containers labelled with a Prefect flow-run id; inspects each one as it starts and
    samples its memory cgroup while it runs."""

    def __init__(self) -> None:
        self.containers: dict[str, RunContainer] = {}  # by container id
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                engine().cli,
                "events",
                "--filter",
                "type=container",
                "--filter",
                "label=io.prefect.flow-run-id",
                "--format",
                "{{json .}}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.stopped = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            attrs = event.get("Actor", {}).get("Attributes", {})
            cid = event.get("id") or event.get("Actor", {}).get("ID")
            action = event.get("Action") or event.get("status")
            with self.lock:
                rc = self.containers.setdefault(cid, RunContainer(attrs.get("io.prefect.flow-run-id", ""), cid))
                rc.image = attrs.get("image", rc.image)
                rc.actions.append(action)
                if action == "die":
                    rc.exit_code = int(attrs.get("exitCode", -1))
            if action == "start":
                self._snapshot(rc)

    def _snapshot(self, rc: RunContainer) -> None:
        info = inspect(rc.container_id)
        if not info:
            return
        rc.user = info["Config"].get("User")
        rc.memory_limit = info["HostConfig"].get("Memory")
        rc.memory_swap = info["HostConfig"].get("MemorySwap")
        rc.network_mode = info["HostConfig"].get("NetworkMode")
        pid = info["State"].get("Pid")
        if pid:
            rc.uid = _uid_of(pid)

    def _sample(self) -> None:
        while not self.stopped.wait(0.5):
            with self.lock:
                running = [rc for rc in self.containers.values() if "start" in rc.actions and "die" not in rc.actions]
            for rc in running:
                group = CGROUP_MEMORY / rc.container_id
                try:
                    value = int((group / "memory.max_usage_in_bytes").read_text())
                    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
                except (OSError, ValueError):
                    continue
                rc.peak_memory = max(rc.peak_memory, value)
                rc.peak_rss = max(rc.peak_rss, int(stat.get("total_rss", 0)))

    def for_run(self, flow_run_id: str) -> list[RunContainer]:
        with self.lock:
            return [rc for rc in self.containers.values() if rc.flow_run_id == flow_run_id]

    def wait_removed(self, flow_run_id: str, timeout_s: float = 60) -> RunContainer:
        """The run's one container, once Docker has destroyed it (auto_remove)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.for_run(flow_run_id)
            if found and all(rc.removed for rc in found):
                assert len(found) == 1, [rc.actions for rc in found]
                return found[0]
            time.sleep(0.25)
        raise AssertionError(
            f"no removed container for flow run {flow_run_id}: "
            f"{[(rc.container_id[:12], rc.actions) for rc in self.for_run(flow_run_id)]}"
        )

    def close(self) -> None:
        self.stopped.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
