"""The health server binds where it is configured and serves only GET /health and GET /metrics, over a real
socket against a real Prefect server: any other path is 404, any other method 405 (with `Allow: GET`)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from roadie.ops.health_server import OpsServer
from roadie.prefect_api import connect
from roadie.prefect_local import free_port
from roadie.settings import reload_settings

# 127.0.0.2 is loopback too on Linux, but a different address: a server bound there is not on 127.0.0.1.
CONFIGURED_HOST = "127.0.0.2"


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> Iterator[OpsServer]:
    """An OpsServer given nothing but the client: host and port come from ROADIE_HEALTH_HOST/PORT."""
    port = free_port()
    monkeypatch.setenv("ROADIE_HEALTH_HOST", CONFIGURED_HOST)
    monkeypatch.setenv("ROADIE_HEALTH_PORT", str(port))
    monkeypatch.setenv("ROADIE_WORK_POOL", "roadie-security-health")
    reload_settings()
    with connect(prefect_api) as client:
        server = OpsServer(client).start()
        try:
            yield server
        finally:
            server.stop()
    monkeypatch.undo()
    reload_settings()


def request(
    server: OpsServer, method: str, path: str, body: bytes | None = None, host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host or server.host, server.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_binds_to_the_configured_address_and_port(configured):
    assert (configured.host, configured.port) == (CONFIGURED_HOST, int(reload_settings().health_port))
    status, _, body = request(configured, "GET", "/health")
    assert status in (200, 503) and set(json.loads(body)) >= {"status", "queues", "workers_online"}
    # Not on every interface: the same port on 127.0.0.1 has nobody listening.
    with socket.socket() as sock:
        sock.settimeout(5)
        assert sock.connect_ex(("127.0.0.1", configured.port)) != 0


def test_serves_get_health_and_metrics(configured):
    status, headers, body = request(configured, "GET", "/health")
    report = json.loads(body)
    # No worker is online in this pool, so the report is honest about it.
    assert status == 503 and report["status"] == "unhealthy" and report["workers_online"] == 0
    assert headers["content-type"] == "application/json"
    status, headers, body = request(configured, "GET", "/metrics?x=1")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"roadie_workers_online 0.0" in body


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/healthz",
        "/health/",
        "/metrics/x",
        "/api/health",
        "/HEALTH",
        "/health/../metrics",
        "/%68ealth",
        "/admin",
        "/.env",
        "*",
    ],
)
def test_every_other_path_is_404(configured, path):
    status, _, body = request(configured, "GET", path)
    assert status == 404, (path, body)
    assert b"/health" in body  # says what there is


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "FOO"])
@pytest.mark.parametrize("path", ["/health", "/metrics", "/nope"])
def test_every_other_method_is_405(configured, method, path):
    status, headers, _ = request(configured, method, path, body=b'{"status": "healthy"}' if method != "HEAD" else None)
    assert status == 405, (method, path)
    assert headers["allow"] == "GET"
    # The server still answers GET afterwards: a refused request breaks nothing.
    assert request(configured, "GET", "/metrics")[0] == 200


def test_an_explicit_address_still_wins(prefect_api):
    """`roadie health --serve --host …` and the tests pass an address; it is used as given."""
    with connect(prefect_api) as client:
        server = OpsServer(client, "127.0.0.1", 0).start()
        try:
            assert server.host == "127.0.0.1" and server.port > 0
            assert request(server, "GET", "/metrics")[0] == 200
        finally:
            server.stop()
