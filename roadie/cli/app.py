from __future__ import annotations

import json
import sys
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
