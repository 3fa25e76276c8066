"""The image's HEALTHCHECK: the worker's own health endpoint when this container runs a worker, else (a flow-run
container) whether the Prefect API answers. Exit 0 healthy, 1 not.

    python -m roadie.ops.probe [--worker-url http://127.0.0.1:$PREFECT_WORKER_WEBSERVER_PORT/health]
"""

from __future__ import annotations

import argparse
import base64
import os

import httpx


def worker_answers(url: str) -> bool | None:
    """True/False when a worker endpoint is there; None when nothing listens (not a worker container)."""
    try:
        return httpx.get(url, timeout=4).status_code == 200
    except httpx.ConnectError:
        return None
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="container healthcheck")
    # The worker's health server listens on PREFECT_WORKER_WEBSERVER_PORT (8080 in the image).
    port = os.environ.get("PREFECT_WORKER_WEBSERVER_PORT") or "8080"
    parser.add_argument("--worker-url", default=f"http://127.0.0.1:{port}/health")
    args = parser.parse_args(argv)
    worker = worker_answers(args.worker_url)
    if worker is not None:
        return 0 if worker else 1
    # deferred: a worker container (answered above) never needs the settings, whose pydantic-settings costs ~0.1 s
    # on every probe (every few seconds); plain httpx, not Prefect's client, which costs a second to import.
    from roadie.prefect_api import api_url  # noqa: PLC0415
    from roadie.settings import get_settings  # noqa: PLC0415

    auth = get_settings().prefect_api_auth_string
    try:
        headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
        answer = httpx.get(api_url().rstrip("/") + "/health", headers=headers, timeout=4)
    except httpx.HTTPError:
        return 1
    return 0 if answer.status_code == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
