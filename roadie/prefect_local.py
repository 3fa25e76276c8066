"""The Prefect API the CLI reports to: the configured one, or a local server under ROADIE_HOME.

A flow run in ephemeral mode pays ~12 s of server start on every call; a local server started once and
reused costs ~3 s per call and keeps every run visible in its UI.
"""
from __future__ import annotations

import os
from pathlib import Path

from roadie import services
from roadie.settings import get_settings


def local_home() -> Path:
    return get_settings().home / "prefect"


def local_api_url() -> str:
    return f"http://127.0.0.1:{get_settings().prefect_local_port}/api"


def ensure_api(start: bool = True) -> str:
    """Return the API URL, starting the local server (detached, reused by later calls) when needed.

    Sets PREFECT_API_URL for this process; call before Prefect is imported."""
    settings = get_settings()
    url = settings.prefect_api_url
    if not url:
        url = local_api_url()
        if not services.prefect_api_healthy(url):
            if not start:
                raise RuntimeError(f"no Prefect server at {url}")
            home = local_home()
            services.start_prefect_server(home, port=settings.prefect_local_port, detach=True,
                                          database_url=settings.prefect_database_url)
        else:
            warn_if_ui_elsewhere(url)
        os.environ["PREFECT_HOME"] = str(local_home())
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return url


def warn_if_ui_elsewhere(url: str) -> None:
    """A server reused from before roadie told its UI where the API is (or started by hand) may send the UI to
    another port: the page then stays empty. Say so, with the way out."""
    ui_api = services.prefect_ui_api_url(url)
    if ui_api and ui_api.rstrip("/") != url.rstrip("/"):
        import sys

        sys.stderr.write(f"warning: the Prefect server at {url} sends its UI to {ui_api}, so the UI will show "
                         "nothing; restart it: roadie server stop && roadie server start\n")


def stop_local() -> bool:
    """Stop the local server if this ROADIE_HOME started one."""
    import signal

    pid_file = local_home() / "server.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    return True
