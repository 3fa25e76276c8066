"""The `roadie` command. Each domain registers its commands from its own module; imports stay lazy so
`roadie --help` is quick (importing Prefect alone takes seconds)."""

from roadie.cli import (  # noqa: F401  (registers commands)
    analysis,
    batch,
    db,
    media,
    ops,
    server,
)
from roadie.cli.app import app

__all__ = ["app"]
