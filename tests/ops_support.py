"""Helpers of the ops tests: a real HTTP endpoint that records what it is sent, Prefect objects made over REST,
and finding the processes of a flow run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

from roadie.ops.serve import kill_tree
from tests.prefect_rest import PrefectREST


class Recorder:
    """A real HTTP server on a free port: answers with the queued status codes (then 200), keeps the bodies."""

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.requests: list[tuple[str, dict]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.requests.append((self.path, json.loads(raw) if raw else {}))
                outer.headers.append(dict(self.headers))
                code = outer.statuses.pop(0) if outer.statuses else 200
                body = json.dumps({"ok": code == 200}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_deployment(client: PrefectREST, flow_name: str, name: str, tags: list[str]) -> str:
    flow = client.request("POST", "/flows/", json={"name": flow_name}).json()
    body = {"name": name, "flow_id": flow["id"], "tags": tags, "parameters": {}}
    return client.request("POST", "/deployments/", json=body).json()["id"]


def set_state(client: PrefectREST, run_id: str, state_type: str, message: str | None = None) -> None:
    state = {"type": state_type, **({"message": message} if message else {})}
    client.request("POST", f"/flow_runs/{run_id}/set_state", json={"state": state, "force": True})


def flow_run_pids(flow_run_id: str) -> list[int]:
    """Processes started for this flow run (the engine gets PREFECT__FLOW_RUN_ID in its environment)."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


@contextmanager
def roadie_serve(
    cwd: Path, env: Mapping[str, str], *args: str
) -> Iterator[tuple[subprocess.Popen, dict[str, Any], Path]]:
    """A real `python -m roadie serve --json *args`, up: yields the process, the JSON line it prints once everything
    is up, and the file its stderr goes to (a file, not an unread pipe: the workers' logs would fill it and block
    them). Its process tree is killed on the way out if it still runs."""
    stderr_path = Path(cwd) / "serve-stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "roadie", "serve", "--json", *args],
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # one JSON line once everything is up
            assert line, stderr_path.read_text()[-3000:]
            yield proc, json.loads(line), stderr_path
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
