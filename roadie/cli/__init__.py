"""The `roadie` command. Each domain registers its commands from its own module; imports stay lazy so
`roadie --help` is quick (importing Prefect alone takes seconds)."""
from roadie.cli.app import app
from roadie.cli import db, media, server  # noqa: F401  (registers commands)
from roadie.cli import batch  # noqa: F401
from roadie.cli import ops  # noqa: F401
from roadie.cli import analysis  # noqa: F401

__all__ = ["app"]
