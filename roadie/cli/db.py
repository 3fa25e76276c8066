"""`roadie db …`: the schema."""

from __future__ import annotations

import typer

from roadie.cli.app import app, say

db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def upgrade(revision: str = typer.Argument("heads", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: all heads) on ROADIE_DATABASE_URL."""
    from roadie.db.session import upgrade as do_upgrade
    from roadie.errors import mask_url
    from roadie.settings import get_settings

    do_upgrade(revision=revision)
    say(f"database at {mask_url(get_settings().database_url)} is up to date")


@db_app.command("downgrade")
def downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Revert migrations down to REVISION."""
    from roadie.db.session import downgrade as do_downgrade

    do_downgrade(revision=revision)
    say(f"database downgraded to {revision}")
