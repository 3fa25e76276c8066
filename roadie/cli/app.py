from __future__ import annotations

import importlib
import json
import sys
import threading
from typing import Any

import typer

app = typer.Typer(
    name="roadie",
    help="roadie: the media and batch pipelines of the platform, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def emit_json(obj: Any) -> None:
    """One JSON object per line on stdout; everything else goes to stderr."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    typer.echo(message, err=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def import_in_background(module: str) -> None:
    """Start importing `module` on a daemon thread. A command's longest import (pyloudnorm pulls in scipy.signal,
    ~0.6 s) then overlaps its other imports and its waits on subprocesses and servers instead of following them.
    Whoever imports the module later gets it loaded, or waits for this import to finish: it is never run twice."""
    threading.Thread(target=importlib.import_module, args=(module,), name=f"import-{module}", daemon=True).start()
