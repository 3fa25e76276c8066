"""The `roadie` command. Each domain registers its commands from its own module; imports stay lazy so
`roadie --help` is quick (importing Prefect alone takes seconds)."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

from roadie.cli import (  # noqa: F401  (registers commands)
    analysis,
    batch,
    db,
    media,
    ops,
    server,
)
from roadie.cli.app import app

__all__ = ["app", "main"]

# A command's first seconds are imports (numpy, scipy, pydantic, Prefect): a great many new objects, almost no
# garbage, and the cyclic collector walking them again and again: ~7 % of `roadie analyze`'s whole process. So
# the collector waits: a command over by then never runs it; a longer one (serve, a 3 h upload) gets it back after
# GC_PAUSE_S, with the start-up's objects frozen out of its passes (modules and classes live as long as the
# process). Reference counting frees everything else as usual meanwhile.
GC_PAUSE_S = 3.0


def _pause_gc_for_start_up() -> None:
    def resume() -> None:
        gc.freeze()
        gc.enable()

    gc.disable()
    timer = threading.Timer(GC_PAUSE_S, resume)
    timer.daemon, timer.name = True, "roadie-gc-resume"
    timer.start()


def main() -> NoReturn:
    """The `roadie` script: the command, then an exit that skips the interpreter's teardown.

    Freeing scipy, Prefect and SQLAlchemy module by module takes 0.1-0.3 s after the command is done and changes
    nothing outside the process. Everything that does matter runs first, in the order Python's own exit runs it:
    the threads' exit hooks (Prefect drains its log and event services there, so the server has every line),
    then the atexit handlers (logging's flush among them), then stdout and stderr are flushed. A bug's exception
    is not caught here: it ends the process the ordinary way, traceback and all."""
    _pause_gc_for_start_up()
    try:
        app(prog_name="roadie")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):  # sys.exit("message") semantics
        sys.stderr.write(code + "\n")
        code = 1
    status = code if isinstance(code, int) else 0 if code is None else 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None or threading.current_thread() is not threading.main_thread():
        raise SystemExit(status)  # another interpreter: exit the ordinary way
    shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to tell anyone
            status = status or 1
    os._exit(status)
