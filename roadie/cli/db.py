"""`roadie db …`: the schema.

Each command imports what it needs in its own body (each such import marked `noqa: PLC0415`, with what it costs):
`roadie --help` imports none of it, not even the settings (pydantic-settings), and starts in ~0.25 s
(tests/test_cli_startup.py)."""

from __future__ import annotations

import typer

from roadie.cli.app import app, say

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("heads", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: all heads) on ROADIE_DATABASE_URL."""
    # deferred: SQLAlchemy (Alembic when it migrates), settings
    from roadie.db.session import upgrade as do_upgrade  # noqa: PLC0415
    from roadie.errors import mask_url  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    do_upgrade(revision=revision)
    say(f"database at {mask_url(get_settings().database_url)} is up to date")


@db_app.command("downgrade")
def downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Revert migrations down to REVISION."""
    from roadie.db.session import downgrade as do_downgrade  # noqa: PLC0415  (deferred: SQLAlchemy, settings)

    do_downgrade(revision=revision)
    say(f"database downgraded to {revision}")
