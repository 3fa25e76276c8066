"""The transcode rate slot (roadie.limits.transcode_started) and the leased slots (encode_slot): taken and given back
on a real Prefect server, refused clearly when the limit is missing, and asked again quickly when a server answers
503 (a SQLite Prefect server does when the increment's transaction collides with its own event writes, which
Prefect's client would wait out for 2 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def rate_slots() -> int:
    from roadie.limits import TRANSCODE_RATE

    return active_slots(TRANSCODE_RATE[0])


def test_a_rate_slot_is_taken_on_the_real_server(prefect_api: str):
    from roadie.limits import transcode_started

    transcode_started()
    assert rate_slots() >= 1


def test_a_missing_rate_limit_is_an_error_that_says_what_to_run(prefect_api: str):
    from prefect.client.orchestration import get_client

    from roadie.errors import RoadieError
    from roadie.limits import TRANSCODE_RATE, ensure_limits, transcode_started

    try:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(TRANSCODE_RATE[0])
        with pytest.raises(RoadieError, match=r"'transcode-rate' does not exist: run `roadie setup`"):
            transcode_started()
    finally:
        ensure_limits()


def test_an_encode_slot_is_held_and_given_back_on_the_real_server(prefect_api: str):
    from roadie.limits import TRANSCODE_CONCURRENCY, encode_slot

    name = TRANSCODE_CONCURRENCY[0]
    before = active_slots(name)
    with encode_slot():
        assert active_slots(name) == before + 1
    assert active_slots(name) == before
    with pytest.raises(RuntimeError, match="boom"), encode_slot():  # given back when the encode fails, too
        raise RuntimeError("boom")
    assert active_slots(name) == before


def test_a_missing_encode_limit_is_an_error_that_says_what_to_run(prefect_api: str):
    from prefect.client.orchestration import get_client

    from roadie.errors import RoadieError
    from roadie.limits import TRANSCODE_CONCURRENCY, encode_slot, ensure_limits

    try:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(TRANSCODE_CONCURRENCY[0])
        with pytest.raises(RoadieError, match=r"'transcode' does not exist: run `roadie setup`"), encode_slot():
            pass
    finally:
        ensure_limits()


# A stand-in API in a child process (Prefect's event worker there may complain that it has no websocket to send
# the "acquired" event to; the suite's own event worker is left alone): the increment is refused as scripted,
# then granted; the child prints every request it answered.
STAND_IN = """
import json, os, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

script = json.loads(sys.argv[1])  # status codes for the first increments (0: no answer at all); then 200
call = sys.argv[2]  # "rate": transcode_started(); "encode": hold encode_slot()
release = int(sys.argv[3])  # the status every give-back is answered with
LIMIT = {"id": "7b2a3c1e-0000-4000-8000-000000000001", "name": "transcode-rate", "limit": 10}
seen = []

class API(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        increments = [path for _, path in seen if "/increment" in path]
        status = 200
        if "/increment" in self.path and len(increments) < len(script):
            status = script[len(increments)]
        if self.path.endswith("/decrement-with-lease"):
            status = release
        seen.append((time.monotonic(), self.path))
        if status == 0:  # the connection dropped without an answer, as a closed kept-alive one reads
            self.close_connection = True
            self.connection.shutdown(2)
            return
        granted = {"limits": [LIMIT], "lease_id": "7b2a3c1e-0000-4000-8000-000000000002"}
        body = json.dumps(
            {"detail": "busy"} if status != 200 else granted if self.path.endswith("-with-lease") else [LIMIT]
        ).encode()
        if status == 204:
            body = b""
        self.send_response(status)
        if status == 423:
            self.send_header("Retry-After", "0.2")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), API)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{server.server_address[1]}/api"
os.environ["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] = "false"
from roadie.limits import encode_slot, transcode_started

try:
    if call == "rate":
        transcode_started()
    else:
        with encode_slot():
            pass
    outcome = "taken"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
at = [t for t, path in seen if "/increment" in path]
print(json.dumps({
    "outcome": outcome,
    "increments": [round(t - at[0], 3) for t in at],
    "paths": sorted({path.split("/api", 1)[1] for _, path in seen}),
}))
"""


def stand_in(script: list[int], call: str = "rate", release: int = 204) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(STAND_IN), json.dumps(script), call, str(release)],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("call", ["rate", "encode"])
def test_a_busy_server_is_asked_again_within_a_fraction_of_a_second(call: str):
    result = stand_in([503, 503], call)
    assert result["outcome"] == "taken"
    first, second, third = result["increments"]
    # Prefect's client would have waited 2 s (with jitter, at least 1.6 s) before each of the repeats.
    assert second - first < 1.0 and third - second < 1.0


def test_an_encode_slot_is_leased_and_given_back_by_its_lease():
    result = stand_in([503], "encode")
    assert result["outcome"] == "taken"
    assert result["paths"] == [
        "/v2/concurrency_limits/decrement-with-lease",
        "/v2/concurrency_limits/increment-with-lease",
    ]


def test_a_slot_that_cannot_be_given_back_is_left_to_its_lease_and_the_work_stands():
    result = stand_in([], "encode", release=500)
    assert result["outcome"] == "taken"  # the encode in the slot is not failed by the release
    assert "/v2/concurrency_limits/decrement-with-lease" in result["paths"]


def test_a_dropped_connection_is_tried_again_like_a_busy_server():
    result = stand_in([0, 503])
    assert result["outcome"] == "taken"
    assert len(result["increments"]) == 3


def test_an_empty_bucket_is_waited_out_as_the_server_says():
    result = stand_in([423, 423])
    assert result["outcome"] == "taken"
    first, second, third = result["increments"]
    assert second - first >= 0.2 and third - second >= 0.2  # the Retry-After of each refusal


def test_a_server_that_stays_busy_gets_its_503_back():
    from roadie.limits import BUSY_RETRIES

    result = stand_in([503] * (BUSY_RETRIES + 1))
    assert result["outcome"].startswith("HTTPStatusError") and "503" in result["outcome"]
    assert len(result["increments"]) == BUSY_RETRIES + 1
