"""`roadie server …`: the local Prefect server that the CLI starts under ROADIE_HOME and reuses.

Each command imports what it needs in its own body (each such import marked `noqa: PLC0415`, with what it costs):
`roadie --help` imports none of it, not even the settings (pydantic-settings), and starts in ~0.25 s
(tests/test_cli_startup.py)."""

from __future__ import annotations

import typer

from roadie.cli.app import app, say

server_app = typer.Typer(
    help="The local Prefect server the CLI reuses (under ROADIE_HOME/prefect).", no_args_is_help=True
)
app.add_typer(server_app, name="server")


@server_app.command("start")
def start() -> None:
    """Start the local server (if it is not running) and print its UI address."""
    from roadie.prefect_local import ensure_api  # noqa: PLC0415  (deferred: settings, httpx)

    say(f"Prefect UI: {ensure_api().removesuffix('/api')}")


@server_app.command("status")
def status() -> None:
    """Say whether the API the CLI would use answers. Exit code 1 if not."""
    # deferred: settings, httpx
    from roadie.prefect_local import local_api_url, prefect_api_healthy  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    url = get_settings().prefect_api_url or local_api_url()
    healthy = prefect_api_healthy(url)
    say(f"{url}: {'healthy' if healthy else 'not answering'}")
    raise typer.Exit(0 if healthy else 1)


@server_app.command("stop")
def stop() -> None:
    """Stop the local server this ROADIE_HOME started."""
    from roadie.prefect_local import stop_local  # noqa: PLC0415  (deferred: settings, httpx)

    say("stopped" if stop_local() else "no local server was started from this ROADIE_HOME")
