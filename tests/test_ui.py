"""The Prefect UI that ops open at the address roadie prints, in a real headless Chromium.

Every Prefect server roadie starts (`roadie ingest`, `make demo`, `roadie serve`, `roadie server start`, this
suite) comes from `roadie.prefect_local.start_prefect_server`. Its UI is a single-page app that asks `/ui-settings`
which API to call; if that answer is not the API of the server it was loaded from (Prefect's default is
`http://127.0.0.1:4200/api`), the page stays empty with "Oops. Something went wrong" and Deployments says
"Create a deployment to get started". So these tests look at what renders, not at HTTP status codes:

- `/ui-settings` of a server `roadie server start` starts on a port of its own names that port's API, even when
  the caller's shell holds another PREFECT_UI_API_URL;
- after `roadie setup --deploy` and a real `roadie ingest`, Chromium (Debian's `chromium` and `chromium-driver`,
  driven by Selenium) shows the flow run `ingest-{version_id}` with its task runs, the Deployments page with
  `media-ingest`, and the loudness table artifact with its values.

Set ROADIE_UI_SCREENSHOTS=DIR to keep the screenshots; DIR/ops-ui.png is docs/ops-ui.png."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from roadie.prefect_local import free_port
from tests.support import sine, wait_for, write_wav

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    # The run graph is WebGL: software rendering, which Chromium asks to be opted into.
    "--enable-unsafe-swiftshader",
    # Nothing but the server under test: the UI's own analytics calls fail at once.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
# What the UI shows when it cannot reach its API (both UIs Prefect ships).
BROKEN = ("Something went wrong", "Create a deployment to get started", "Unable to connect to Prefect server")
# Prefect's default API port: a UI pointed there by mistake would find nothing (or another server's data).
PREFECT_DEFAULT_API = "http://127.0.0.1:4200/api"


def roadie(*args: str, env: dict[str, str], cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "roadie", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def printed_ui(stderr: str) -> str:
    found = re.search(r"^Prefect UI: (\S+)$", stderr, re.M)
    assert found, f"no UI address printed:\n{stderr[-3000:]}"
    return found.group(1)


# ---------------------------------------------------------------------- /ui-settings, fast


def test_ui_settings_of_a_roadie_started_server_name_its_own_port(tmp_path):
    """`roadie server start` on a port other than the default: the UI is told to call that port's API, whatever
    the caller's shell says."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "ROADIE_PREFECT_API_URL")}
    env.update(
        {
            "ROADIE_HOME": str(tmp_path / "home"),
            "ROADIE_PREFECT_LOCAL_PORT": str(port),
            "PREFECT_UI_API_URL": PREFECT_DEFAULT_API,
            "PREFECT_SERVER_UI_API_URL": PREFECT_DEFAULT_API,
        }
    )
    env.pop("ROADIE_PREFECT_DATABASE_URL", None)  # SQLite under ROADIE_HOME: the quickest server to start
    started = roadie("server", "start", env=env, cwd=tmp_path, timeout_s=180)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        ui = printed_ui(started.stderr)
        assert ui == f"http://127.0.0.1:{port}"
        settings = httpx.get(f"{ui}/ui-settings", timeout=10).raise_for_status().json()
        assert settings["api_url"] == f"{ui}/api"
        assert httpx.get(f"{settings['api_url']}/health", timeout=10).status_code == 200
        again = roadie("server", "start", env=env, cwd=tmp_path, timeout_s=60)  # reused: same address, no warning
        assert again.returncode == 0 and printed_ui(again.stderr) == ui and "warning" not in again.stderr
    finally:
        stopped = roadie("server", "stop", env=env, cwd=tmp_path, timeout_s=60)
        assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 20
    while httpx_answers(f"http://127.0.0.1:{port}/api/health") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not httpx_answers(f"http://127.0.0.1:{port}/api/health"), "the server outlived `roadie server stop`"


def test_a_reused_server_whose_ui_calls_another_port_is_reported(capsys):
    """A server left running from before the fix (or started by hand) answers /ui-settings with Prefect's default."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from roadie.prefect_local import warn_if_ui_elsewhere

    class OldServer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"api_url": PREFECT_DEFAULT_API}).encode()
            self.send_response(200 if self.path == "/ui-settings" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OldServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/api"
        warn_if_ui_elsewhere(url)
        assert f"sends its UI to {PREFECT_DEFAULT_API}" in capsys.readouterr().err
    finally:
        httpd.shutdown()
        httpd.server_close()


def httpx_answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------- the UI in Chromium, after an ingest


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver (`make test-system-packages`)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield Browser(driver, tmp_path / "screenshots")
    finally:
        driver.quit()


class Browser:
    def __init__(self, driver, shots: Path) -> None:
        self.driver = driver
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # the SPA replaced the body mid-read
            return ""

    def open(self, url: str) -> None:
        self.driver.get(url)

    def wait_for(
        self, texts: list[str], what: str, timeout_s: float = 90, also: Callable[[str], bool] = lambda _: True
    ) -> str:
        """Until every text is rendered (visible in the DOM) and nothing says the UI is broken."""
        deadline = time.monotonic() + timeout_s
        body = ""
        while time.monotonic() < deadline:
            body = self.text()
            if any(b in body for b in BROKEN):
                break
            if all(t in body for t in texts) and also(body):
                return body
            time.sleep(0.5)
        shot = self.shot(f"failed-{re.sub(r'[^a-z0-9]+', '-', what.lower())}")
        console = "\n".join(
            f"{e['level']} {e['message']}" for e in self._console() if "ERR_NAME_NOT_RESOLVED" not in e["message"]
        )  # the UI's analytics, blocked
        missing = [t for t in texts if t not in body]
        pytest.fail(
            f"{what}: {missing or 'a condition'} not rendered at {self.driver.current_url} "
            f"(screenshot {shot});\npage text:\n{body[:3000]}\nconsole:\n{console[-3000:]}"
        )

    def wait_for_element(self, css: str, what: str, timeout_s: float = 60) -> None:
        from selenium.webdriver.common.by import By

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(e.is_displayed() for e in self.driver.find_elements(By.CSS_SELECTOR, css)):
                return
            time.sleep(0.5)
        pytest.fail(f"{what}: no {css} at {self.driver.current_url} (screenshot {self.shot('failed-' + css)})")

    def type_into(self, css: str, text: str, what: str, timeout_s: float = 30) -> None:
        from selenium.webdriver.common.by import By

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for element in self.driver.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed():
                    element.send_keys(text)
                    return
            time.sleep(0.5)
        pytest.fail(f"{what}: no {css} to type into at {self.driver.current_url};\n{self.text()[:3000]}")

    def click_text(self, label: str, what: str, timeout_s: float = 30) -> None:
        """Click the element (a tab, a button) whose own text is `label`."""
        from selenium.webdriver.common.by import By

        xpath = f"//*[self::button or self::a or @role='tab'][normalize-space(.)='{label}']"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for element in self.driver.find_elements(By.XPATH, xpath):
                if element.is_displayed():
                    element.click()
                    return
            time.sleep(0.5)
        pytest.fail(f"{what}: nothing to click labelled {label!r} at {self.driver.current_url};\n{self.text()[:3000]}")

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        keep = os.environ.get("ROADIE_UI_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return path

    def _console(self) -> list[dict]:
        try:
            return self.driver.get_log("browser")
        except Exception:
            return []


def deployment_count(body: str) -> int:
    found = re.search(r"^(\d+) Deployments?$", body, re.M)
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("roadie_env", ["file"], indirect=True)
def test_ops_see_the_ingest_in_the_ui(roadie_env, prefect_api, browser, tmp_path):
    """Deploy, ingest a file with the CLI, then open the address it printed as ops would."""
    env = dict(os.environ)  # roadie_env's settings and the suite's Prefect server (PREFECT_API_URL)
    setup = roadie("setup", "--no-docker", "--deploy", "--json", env=env, cwd=ROOT)
    assert setup.returncode == 0, setup.stderr[-3000:]
    deployed = json.loads(setup.stdout.splitlines()[-1])["deployed"]
    assert "media-ingest" in deployed

    wav = write_wav(tmp_path / "ui-take.wav", sine(330, 8.0, 44100, channels=2), 44100)
    ingest = roadie("ingest", str(wav), "--title", "UI take", "--formats", "hls_opus", env=env, cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    ui = printed_ui(ingest.stderr)
    assert f"{ui}/api" == prefect_api
    version_id = re.search(r"as version (\S+)$", ingest.stderr, re.M).group(1)

    with httpx.Client(base_url=prefect_api, timeout=30) as api:
        runs = api.post("/flow_runs/filter", json={"flow_runs": {"name": {"any_": [f"ingest-{version_id}"]}}})
        (run,) = runs.raise_for_status().json()
        (artifact,) = (
            api.post("/artifacts/filter", json={"artifacts": {"key": {"any_": [f"loudness-{version_id}"]}}})
            .raise_for_status()
            .json()
        )

        # The CLI ends without Python's teardown (roadie.cli.main); Prefect's log and event services are drained
        # before that, so every task run's final state (sent as events) and every log line reach the server.
        def all_completed() -> list[dict] | None:
            found = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}})
            runs_ = found.raise_for_status().json()
            return runs_ if {t["state_type"] for t in runs_} == {"COMPLETED"} else None

        task_runs = wait_for(all_completed, 30, "every task run of the CLI's ingest Completed on the server")
        states = {t["name"]: t["state_type"] for t in task_runs}
        logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
        flow_lines = [line["message"] for line in logs.raise_for_status().json() if line["task_run_id"] is None]

        # An in-process CLI run beats no heartbeat (the crash automation watches deployed runs only); its final
        # state's event, emitted after any heartbeat would have been, says the server has persisted its events.
        def flow_run_events() -> list[str] | None:
            found = api.post(
                "/events/filter",
                json={"filter": {"resource": {"id": [f"prefect.flow-run.{run['id']}"]}}, "limit": 50},
            )
            names = [event["event"] for event in found.raise_for_status().json()["events"]]
            return names if "prefect.flow-run.Completed" in names else None

        events = wait_for(flow_run_events, 30, "the ingest's Completed event on the server")
    assert run["state_type"] == "COMPLETED"
    assert set(states.values()) == {"COMPLETED"}, states
    assert any("is playable" in m for m in flow_lines), flow_lines
    assert flow_lines[-1].startswith("Finished in state Completed"), flow_lines  # the run's very last line
    assert "prefect.flow-run.Completed" in events and "prefect.flow-run.heartbeat" not in events, events
    table = artifact["data"] if isinstance(artifact["data"], list) else json.loads(artifact["data"])
    lufs = next(row for row in table if row["meter"] == "ffmpeg ebur128")["integrated (LUFS)"]

    # The printed address: the SPA loads, asks /ui-settings, and lands on the UI Prefect serves by default.
    browser.open(ui)
    settings = httpx.get(f"{ui}/ui-settings", timeout=10).json()
    assert settings["api_url"] == prefect_api
    base = ui + (settings["v2_base_url"] if settings["default_ui"] == "v2" else settings["v1_base_url"]).rstrip("/")
    browser.wait_for([], "the home page", also=lambda _: browser.driver.current_url.startswith(base))

    # The ingest run with its task runs.
    browser.open(f"{base}/runs/flow-run/{run['id']}")
    browser.wait_for([f"ingest-{version_id}", "Completed"], "the flow-run page")
    browser.shot("flow-run")
    names = sorted(t["name"] for t in task_runs)
    shown = [n for n in names if n.startswith(("analyze_audio", "transcode-hls_opus"))]
    assert len(shown) == 2, names
    browser.click_text("Task Runs", "the flow-run page")
    browser.wait_for([f"{len(names)} Task runs", *shown], "the flow run's task runs")
    browser.wait_for_element("canvas", "the run graph")
    time.sleep(2)  # the graph draws its bars after the canvas appears
    browser.shot("ops-ui")

    # Deployments: all of prefect.yaml counted (other tests of the session may have added their own), and
    # media-ingest found by the page's search, as ops look for it.
    browser.open(f"{base}/deployments")
    browser.wait_for([], "the Deployments page", also=lambda body: deployment_count(body) >= len(deployed))
    browser.shot("deployments")
    browser.type_into("input[placeholder='Search deployments']", "media-ingest", "the Deployments page")
    browser.wait_for(
        ["media-ingest"],
        "the Deployments page's search",
        also=lambda body: deployment_count(body) >= 1 and "analytics-rollup" not in body,
    )

    # The loudness artifact: its key's history, then the table with the values the run measured.
    browser.open(f"{base}/artifacts/key/loudness-{version_id}")
    browser.wait_for(
        [f"loudness-{version_id}", artifact["description"], f"ingest-{version_id}"], "the loudness artifact's key"
    )
    browser.open(f"{base}/artifacts/artifact/{artifact['id']}")
    browser.wait_for(["ffmpeg ebur128", "pyloudnorm + numpy", "integrated (LUFS)", str(lufs)], "the loudness table")
    browser.shot("loudness-artifact")
