"""The ops HTTP server: GET /health (from roadie.ops.health's snapshots) and GET /metrics (roadie.ops.metrics)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from roadie.ops.health import HealthSnapshots, api_failure
from roadie.ops.metrics import metrics_registry
from roadie.settings import Settings, get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient


class OpsServer:
    """GET /health (200 healthy, 503 unhealthy) and GET /metrics, on a background thread; nothing else.

    It binds where configured (ROADIE_HEALTH_HOST, ROADIE_HEALTH_PORT) unless told otherwise. Any other path is
    404 and any other method (HEAD, POST, PUT, DELETE, OPTIONS, TRACE, …) 405 with `Allow: GET`; /health answers
    from the latest HealthSnapshots check, /metrics asks the API per scrape; no answer carries a secret."""

    def __init__(
        self,
        client: SyncPrefectClient,
        host: str | None = None,
        port: int | None = None,
        settings: Settings | None = None,
    ):
        self.client, self.settings = client, settings or get_settings()
        host = self.settings.health_host if host is None else host
        port = self.settings.health_port if port is None else port
        registry = metrics_registry(client, self.settings)
        self.snapshots = HealthSnapshots(client, self.settings)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/health":
                        status, body = outer.snapshots.answer()
                        self._send(status, "application/json", json.dumps(body).encode())
                    elif path == "/metrics":
                        self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                    else:
                        self._send(404, "text/plain", b"try /health or /metrics\n")
                except Exception as exc:  # the API is down: say so, with the cause (no URL password, no secret)
                    body = {"status": "unhealthy", "queues": {}, "reasons": [api_failure(exc, outer.settings)]}
                    self._send(503, "application/json", json.dumps(body).encode())

            def _not_allowed(self) -> None:
                self.close_connection = True  # a body it sent is not read: do not reuse the connection
                self._send(405, "text/plain", b"only GET /health and GET /metrics\n", {"Allow": "GET"})

            def __getattr__(self, name: str) -> Any:
                # http.server looks up do_<METHOD>; every method but GET gets 405 (instead of its 501).
                if name.startswith("do_"):
                    return self._not_allowed
                raise AttributeError(name)

            def _send(self, code: int, content_type: str, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: scrapes every few seconds
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> OpsServer:
        self.snapshots.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="roadie-ops-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.snapshots.start()
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.snapshots.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
