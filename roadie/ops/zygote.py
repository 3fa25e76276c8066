"""A warmed interpreter that forks one child per flow run (run by roadie.ops.warm_worker, one per worker).

    python -m roadie.ops.zygote SOCKET_PATH [MODULE ...]

It imports Prefect's engine and the given flow modules once (the ~3-5 s a fresh `python -m prefect.engine`
pays on every run), starts no thread and no event loop, and then waits on a Unix socket. Each connection asks
for one flow run: one JSON line {"env": {...}, "cwd": "..."}. The zygote forks; the child becomes the flow run
process exactly as `python -m prefect.engine` would be (a session of its own, the run's environment and working
directory, Prefect's engine module run as __main__, its exit code the process's); the zygote answers
{"pid": N} at once and {"exit": CODE} when it reaps the child (CODE as subprocess reports it: -N for signal N).

Forking is safe only because this process has no other thread: it checks that before every fork and refuses
({"error": ...}) otherwise; the worker then starts that run the ordinary way. When a project source file changed
since it imported it (checked every 2 s and before every fork), or when its stdin (a pipe from the worker)
closes, it retires: it removes its socket, so the worker starts a fresh zygote with the new code, takes no more
runs, and exits once its last child has exited and its exit code has been passed on.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import time
import warnings
from pathlib import Path

import psutil

CHECK_EVERY_S = 2.0  # how often the project's source files are checked for changes

# What `python -m prefect.engine` imports before it runs a flow, and what loading a deployment's flow imports.
ENGINE_MODULES = (
    "prefect",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.flows",
    "prefect._internal.metrics",
    "prefect.deployments.steps",
    "prefect.deployments.steps.core",
    "prefect.logging.handlers",
    "prefect.client.orchestration",
    "prefect.filesystems",
)

# What the tasks import only when they first need it (so `roadie --help` and the CLI stay quick), but every ingest
# needs: without them here each run paid ~0.7 s on the way to `ready` (scipy.signal alone ~0.6 s).
LIBRARY_MODULES = ("numpy", "scipy.signal", "pyloudnorm", "PIL.Image", "threadpoolctl", "boto3", "botocore.client")

# BLAS libraries start a pool of native threads when they load, and a fork copies none of them: a child that then
# used a pool would wait on threads that are not there. One thread each: no pool. The analysis runs its BLAS
# single-threaded anyway (tasks.media.loudness), and the other cores go to the encodes.
SINGLE_THREADED_BLAS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def native_threads() -> int:
    """Threads of this process, Python's and native ones alike (threading sees only Python's)."""
    return psutil.Process().num_threads()


def preload(modules: list[str]) -> list[str]:
    """Import Prefect's engine, the flow modules and the libraries their tasks load lazily; return the ones that
    failed (their runs still work: the engine imports them itself, just not in advance)."""
    for name, value in SINGLE_THREADED_BLAS.items():
        os.environ.setdefault(name, value)
    failed = []
    for name in (*ENGINE_MODULES, *modules, *LIBRARY_MODULES):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a flow module that does not import yet must not stop the others
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    try:  # made once here, inherited by every fork: each run's dozen Prefect clients share it (roadie.prefect_tls)
        from roadie import prefect_tls  # noqa: PLC0415

        prefect_tls.share()
        prefect_tls.current_tls_context()
    except Exception as exc:  # each client then makes its own, as Prefect does
        failed.append(f"roadie.prefect_tls: {type(exc).__name__}: {exc}")
    return failed


def project_files(root: Path) -> dict[str, float]:
    """mtime of every imported module under the project root (roadie, flows, tasks, deployments)."""
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.startswith(str(root)) and "/.venv/" not in path and "site-packages" not in path:
            try:
                out[path] = os.stat(path).st_mtime
            except OSError:
                out[path] = -1.0
    return out


def changed_since(files: dict[str, float]) -> str | None:
    for path, mtime in files.items():
        try:
            if os.stat(path).st_mtime != mtime:
                return path
        except OSError:
            return path
    return None


class Zygote:
    def __init__(self, socket_path: str, root: Path):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen(64)
        self.socket_path = socket_path
        self.retired = False
        self.root = root
        self.files = project_files(root)
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[socket.socket, bytes] = {}
        self.children: dict[int, socket.socket] = {}
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> dict | None:
        """Loop until retired with no child left (returns None) or, in a forked child, return its request."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker drains on SIGINT; the zygote just follows it
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "sigchld")
        self.selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
        self.say({"ready": os.getpid()})
        checked = time.monotonic()
        while True:
            for key, _ in self.selector.select(timeout=CHECK_EVERY_S):
                kind = key.data
                if kind == "stdin":
                    if not os.read(sys.stdin.fileno(), 4096):  # the worker stops (or died)
                        self.selector.unregister(sys.stdin.fileno())
                        self.retire("the worker closed its pipe")
                elif kind == "accept":
                    conn, _ = self.listener.accept()
                    self.buffers[conn] = b""
                    self.selector.register(conn, selectors.EVENT_READ, "conn")
                elif kind == "sigchld":
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif kind == "conn":
                    request = self.read_request(key.fileobj)  # type: ignore[arg-type]
                    if request is not None:
                        child = self.fork(key.fileobj, request)  # type: ignore[arg-type]
                        if child is not None:
                            return child
            self.reap()
            if not self.retired and time.monotonic() - checked >= CHECK_EVERY_S:
                checked = time.monotonic()
                stale = changed_since(self.files)
                if stale:
                    self.retire(f"{stale} changed")
            if self.retired and not self.children:
                return None

    def retire(self, why: str) -> None:
        """Take no more runs (the worker sees the socket gone and starts a fresh zygote); exit once every child
        already forked has been reaped and its exit code sent."""
        if self.retired:
            return
        self.retired = True
        self.say({"retiring": why, "children": len(self.children)})
        self.selector.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        for conn in list(self.buffers):
            self.selector.unregister(conn)
            self.answer(conn, {"error": f"retiring: {why}"})
        self.buffers.clear()

    def read_request(self, conn: socket.socket) -> dict | None:
        data = conn.recv(1 << 16)
        if not data:
            self.selector.unregister(conn)
            self.buffers.pop(conn, None)
            conn.close()
            return None
        self.buffers[conn] += data
        if b"\n" not in self.buffers[conn]:
            return None
        line = self.buffers.pop(conn).split(b"\n", 1)[0]
        self.selector.unregister(conn)
        return json.loads(line)

    def fork(self, conn: socket.socket, request: dict) -> dict | None:
        if native_threads() != 1:
            self.answer(conn, {"error": f"the zygote has {native_threads()} threads; not forking"})
            return None
        stale = changed_since(self.files)
        if stale:
            self.answer(conn, {"stale": stale})
            self.retire(f"{stale} changed")
            return None
        gc.freeze()  # what the zygote made since the last fork too (see main)
        pid = os.fork()
        if pid == 0:
            self.become_child()
            return request
        self.children[pid] = conn
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        return None

    def become_child(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        self.selector.close()
        for conn in (*self.children.values(), *self.buffers):
            conn.close()
        if not self.retired:
            self.listener.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        os.setsid()  # a process group of its own, as Prefect's isolated flow-run processes have
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                self.answer(conn, {"exit": os.waitstatus_to_exitcode(status)})

    @staticmethod
    def answer(conn: socket.socket, message: dict) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(message).encode() + b"\n")
        conn.close()

    @staticmethod
    def say(message: dict) -> None:
        sys.stderr.write(f"roadie zygote: {json.dumps(message)}\n")
        sys.stderr.flush()


def run_child(request: dict) -> None:
    """Become `python -m prefect.engine` for the requested flow run (never returns: the engine exits)."""
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if request.get("quiet"):  # the job's stream_output=false: the run's output goes nowhere, as Prefect does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
    # Settings were read from the zygote's environment at import; read them again from the run's. Prefect and roadie
    # are imported by preload() (after the BLAS settings, each import timed and allowed to fail), never at the top:
    # by now they are loaded, as a rule, and these imports look them up.
    from prefect.context import refresh_global_settings_context  # noqa: PLC0415

    refresh_global_settings_context()
    try:
        from roadie.settings import reload_settings  # noqa: PLC0415  (loaded by preload(), see above)

        reload_settings()
    except Exception:  # noqa: S110 - a bad environment fails the run itself, with its own message
        pass
    sys.argv = [sys.argv[0]]
    # runpy warns that prefect.engine is already imported (by the preload): expected, it runs as __main__ anyway.
    warnings.filterwarnings("ignore", message=".*'prefect.engine' found in sys.modules.*", category=RuntimeWarning)
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    socket_path, modules = args[0], args[1:]
    started = time.monotonic()
    # As Python's gc docs advise for fork without exec: no collections during the imports (pure growth, no
    # garbage), then everything imported moves to the permanent generation, so no flow run's collections walk
    # the interpreter it inherited (nor touch, and so copy, its pages).
    gc.disable()
    failed = preload(modules)
    gc.freeze()
    gc.enable()
    root = Path(__file__).resolve().parents[2]
    zygote = Zygote(socket_path, root)
    Zygote.say(
        {
            "preloaded": len(modules) - len([f for f in failed if f.split(":")[0] in modules]),
            "failed": failed,
            "seconds": round(time.monotonic() - started, 2),
        }
    )
    request = zygote.serve()
    if request is not None:  # in the forked child, outside every frame of the zygote's loop
        run_child(request)


if __name__ == "__main__":
    main()
