"""A Prefect process worker whose flow runs start from a warmed interpreter instead of a fresh one.

    python -m roadie.ops.warm_worker --pool roadie-process --name NAME [--limit N] [any `prefect worker start` option]

`roadie serve` starts its workers this way (ROADIE_WORKER_WARM=false: plain `prefect worker start`). It is
Prefect's own process worker (same pool type `process`, same job template, same CLI options, same states,
logs, cancellation and crash handling) with one difference: each worker keeps a zygote (roadie.ops.zygote), a
child interpreter that has already imported Prefect's engine and the flow modules, and a flow run is a fork of
it rather than `python -m prefect.runner._workspace_supervisor` followed by `python -m prefect.engine`, two
fresh interpreters that import Prefect (and then the flows) again on every run.

The forked child is the flow-run process: Prefect's engine runs in it by flow run id, as in a fresh interpreter;
it has a session of its own (cancellation and the worker's kill reach it as they reach Prefect's own isolated
flow-run processes), its exit code reaches the worker through the zygote, and a child that dies (SIGKILL, OOM)
exits non-zero, so the run is proposed Crashed exactly as before. Whenever the zygote is not there (starting,
died, refused because the code on disk changed), the run starts the ordinary way, and the zygote is restarted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import yaml
from prefect.cli import app
from prefect.flows import load_flow_from_flow_run
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.runner._workspace_starter import WorkspaceResolvingEngineCommandStarter
from prefect.settings import get_current_settings
from prefect.utilities.processutils import sanitize_subprocess_env

from deployments.files import process_file

with warnings.catch_warnings():  # same dispatch key as Prefect's class: this one replaces it in this process
    warnings.simplefilter("ignore")
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

    class WarmProcessWorker(ProcessWorker):
        type = "process"
        _description = "Prefect's process worker, starting flow runs by forking a pre-imported interpreter."

        async def setup(self) -> None:
            await super().setup()
            self._zygote = Zygote.from_project()
            self._zygote.start()
            self._zygote_watch = asyncio.get_running_loop().create_task(self._zygote.watch())

        async def teardown(self, *exc_info: Any) -> None:
            try:
                await super().teardown(*exc_info)
            finally:
                watch = getattr(self, "_zygote_watch", None)
                if watch is not None:
                    watch.cancel()
                zygote = getattr(self, "_zygote", None)
                if zygote is not None:
                    zygote.stop()

        async def run(
            self,
            flow_run: FlowRun,
            configuration: ProcessJobConfiguration,
            task_status: anyio.abc.TaskStatus[int] | None = None,
        ) -> ProcessWorkerResult:
            zygote: Zygote | None = getattr(self, "_zygote", None)
            if zygote is None or configuration._command_configured or not zygote.ensure():
                return await super().run(flow_run, configuration, task_status)
            if task_status is None:
                task_status = anyio.TASK_STATUS_IGNORED
            entered = time.monotonic()
            with tempfile.TemporaryDirectory(suffix="prefect") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                working_dir = Path(configuration.working_dir or tmp).resolve()
                async with FlowRunExecutorContext() as ctx:
                    self._logger.debug(
                        "flow run %s: executor context ready in %.3f s", flow_run.id, time.monotonic() - entered
                    )
                    cold = WorkspaceResolvingEngineCommandStarter(
                        workspace_root=working_dir,
                        command=None,
                        stream_output=configuration.stream_output,
                        control_channel=ctx.control_channel,
                        source_cwd=working_dir,
                        environment=configuration.env,
                    )
                    ctx.call_after_exit(cold.close)
                    starter = ZygoteStarter(
                        zygote,
                        cold,
                        cwd=working_dir,
                        env=configuration.env,
                        control_channel=ctx.control_channel,
                        logger=self._logger,
                        stream_output=configuration.stream_output,
                    )
                    executor = ctx.create_executor(
                        flow_run, starter, resolve_flow=load_flow_from_flow_run, propose_submitting=False
                    )
                    execution: FlowRunExecutionResult | None = None

                    async def execute(
                        *, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
                        nonlocal execution
                        execution = await executor.submit(task_status=task_status)

                    async with anyio.create_task_group() as group:
                        handle = await group.start(execute)
                        if handle.pid is None:
                            raise RuntimeError("Flow run process has no PID")
                        task_status.started(handle.pid)
            if execution is None or execution.status_code is None:
                raise RuntimeError("Failed to start flow run process.")
            return ProcessWorkerResult(status_code=execution.status_code, identifier=str(execution.handle.pid))


if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.runner._control_channel import ControlChannel


def flow_modules(root: Path) -> list[str]:
    """`flows.ingest` etc.: the modules of prefect.yaml's entrypoints that exist (what the zygote pre-imports)."""
    try:
        specs = (yaml.safe_load(process_file(root).read_text()) or {}).get("deployments") or []
    except OSError:
        return []
    modules = []
    for spec in specs:
        path = str(spec.get("entrypoint", "")).split(":", 1)[0]
        if path.endswith(".py") and (root / path).exists():
            name = path[:-3].replace("/", ".")
            if name not in modules:
                modules.append(name)
    return modules


class Zygote:
    """The worker's side of roadie.ops.zygote: start it, know when it can fork, replace it when it retires."""

    def __init__(self, root: Path, modules: list[str]):
        self.root = root
        self.modules = modules
        self.proc: subprocess.Popen | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.path = ""
        self.seen_ready = False
        self.failures = 0
        self.not_before = 0.0
        # Zygotes that retired (code changed) but still have children to report on; they exit by themselves.
        self.retired: list[tuple[subprocess.Popen, tempfile.TemporaryDirectory]] = []

    @classmethod
    def from_project(cls) -> Zygote:
        root = Path(__file__).resolve().parents[2]
        return cls(root, flow_modules(root))

    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="roadie-zygote-")
        self.path = os.path.join(self.tmp.name, "zygote.sock")
        self.seen_ready = False
        # Its stdout/stderr are the worker's, so flow-run output lands in the worker's log as before.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roadie.ops.zygote", self.path, *self.modules],
            stdin=subprocess.PIPE,
            cwd=self.root,
            env=os.environ.copy(),
        )

    @property
    def ready(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and os.path.exists(self.path)

    def ensure(self) -> bool:
        """True when a run can fork now. A zygote that exited or retired is replaced (for the next runs)."""
        for proc, tmp in list(self.retired):
            if proc.poll() is not None:
                self.retired.remove((proc, tmp))
                tmp.cleanup()
        if self.ready:
            self.seen_ready, self.failures = True, 0
            return True
        if self.proc is None:
            return False
        if self.proc.poll() is not None:  # died: start another, backing off when it never got ready
            if self.tmp is not None:  # first time this death is seen
                self.tmp.cleanup()
                self.tmp = None
                if not self.seen_ready:
                    self.failures += 1
                    self.not_before = time.monotonic() + min(60.0, 2.0**self.failures)
            if time.monotonic() >= self.not_before:
                self.start()
        elif self.seen_ready:  # alive, socket gone: retired, draining its children
            assert self.tmp is not None
            self.retired.append((self.proc, self.tmp))
            self.start()
        return False

    async def watch(self, every_s: float = 1.0) -> None:
        """Replace a retired zygote promptly, not only when the next run finds it gone."""
        while True:
            await asyncio.sleep(every_s)
            self.ensure()

    def stop(self) -> None:
        procs = [(self.proc, self.tmp)] if self.proc is not None else []
        for proc, tmp in [*procs, *self.retired]:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.close()  # the zygote retires, and exits once its children are gone
                    proc.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()
            if tmp is not None:
                tmp.cleanup()
        self.proc, self.tmp, self.retired = None, None, []


class ForkedProcess:
    """What ProcessHandle needs of a process: its pid and, once it exited, its return code."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None


class ZygoteStarter:
    """A ProcessStarter (see prefect.runner._flow_run_executor) that forks the flow-run process from the zygote,
    with the environment EngineCommandStarter would give `python -m prefect.engine`; `cold` when it cannot."""

    def __init__(
        self,
        zygote: Zygote,
        cold: Any,
        *,
        cwd: Path,
        env: dict[str, str | None],
        control_channel: ControlChannel | None,
        logger: Any,
        stream_output: bool = True,
    ):
        self.stream_output = stream_output
        self.zygote = zygote
        self.cold = cold
        self.cwd = cwd
        self.env = env
        self.control_channel = control_channel
        self.logger = logger

    def environment(self, flow_run: FlowRun, control_env: dict[str, str]) -> dict[str, str]:
        # As Prefect's process worker builds it for `python -m prefect.engine` (EngineCommandStarter with
        # env_overrides_settings=True, then the workspace supervisor's runner-owned keys): the worker's settings,
        # the job's env over them, the worker's API settings and the run's identity over everything.
        settings = get_current_settings().to_environment_variables(exclude_unset=True)
        env: dict[str, str | None] = {**os.environ, **settings, **self.env}
        env.update({k: v for k, v in settings.items() if k.startswith("PREFECT_API_")})
        env.update(
            {
                "PREFECT__FLOW_RUN_ID": str(flow_run.id),
                "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
                **control_env,
                "PREFECT__DEPLOYMENT_NAME": self.env.get("PREFECT__DEPLOYMENT_NAME"),
            }
        )
        return sanitize_subprocess_env(env)

    async def start(
        self, flow_run: FlowRun, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        control_env: dict[str, str] = {}
        registered = False
        if self.control_channel is not None:
            try:
                port, token = self.control_channel.register(flow_run.id)
                control_env = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                registered = True
            except RuntimeError:
                pass
        handed_off = False
        asked = time.monotonic()
        try:
            stream = await anyio.connect_unix(self.zygote.path)
        except OSError as exc:
            stream, refusal = None, f"cannot reach the zygote: {exc}"
        try:
            if stream is not None:
                async with stream:
                    request = {
                        "env": self.environment(flow_run, control_env),
                        "cwd": str(self.cwd),
                        "quiet": not self.stream_output,
                    }
                    await stream.send(json.dumps(request).encode() + b"\n")
                    lines = _Lines(stream)
                    first = await lines.next()
                    if first and "pid" in first:
                        process = ForkedProcess(int(first["pid"]))
                        handle = ProcessHandle(
                            # ForkedProcess has all ProcessHandle uses of a process (pid, returncode): its
                            # annotation names only the classes Prefect starts itself.
                            process,  # type: ignore[arg-type]
                            termination_scope=create_isolated_termination_scope(process.pid),
                        )
                        handed_off = True
                        self.logger.info(
                            "Flow run %s forked from the warm interpreter as process %s (%.3f s)",
                            flow_run.id,
                            process.pid,
                            time.monotonic() - asked,
                        )
                        task_status.started(handle)
                        last = await lines.next()
                        process.returncode = await _exit_code(process.pid, last, self.logger)
                        return
                    refusal = f"the zygote refused: {first}"
            self.zygote.ensure()
            self.logger.info("Flow run %s starts the ordinary way (%s)", flow_run.id, refusal)
        except BaseException:
            if registered and not handed_off and self.control_channel is not None:
                self.control_channel.unregister(flow_run.id)
            raise
        if registered and self.control_channel is not None:
            self.control_channel.unregister(flow_run.id)
        await self.cold.start(flow_run, task_status=task_status)


class _Lines:
    def __init__(self, stream: anyio.abc.ByteStream):
        self.stream = stream
        self.buffer = b""

    async def next(self) -> dict | None:
        while b"\n" not in self.buffer:
            try:
                chunk = await self.stream.receive(1 << 16)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


async def _exit_code(pid: int, message: dict | None, logger: Any) -> int:
    if message is not None and "exit" in message:
        return int(message["exit"])
    # The zygote died before its child: wait for the child, whose status only its (new) parent can read.
    logger.warning("lost the zygote while flow-run process %s ran; its exit code is unknown", pid)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 1
        await asyncio.sleep(0.5)


def main() -> None:
    """`prefect worker start ARGS` with this worker class in place of Prefect's process worker."""
    from roadie import prefect_tls  # noqa: PLC0415

    prefect_tls.share()  # the clients the worker opens for every run it starts share one TLS context
    sys.argv = ["prefect", "worker", "start", *sys.argv[1:]]
    if "--type" not in sys.argv:
        sys.argv += ["--type", "process"]
    gc.freeze()  # Prefect, imported: it lives as long as the worker, so its collections need not walk it
    app()  # exits by itself (Typer's standalone mode); returning is a success, as sys.exit(None) was
    sys.exit(0)


if __name__ == "__main__":
    main()
