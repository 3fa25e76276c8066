"""prefect.yaml and its Docker variant: every entrypoint imports (as `prefect deploy` and the workers load it),
its parameters match the flow's signature, and the two files describe the same deployments.

No skips: a deployment whose flow module has not landed fails here, by name."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FILES = {"process": ROOT / "prefect.yaml", "docker": ROOT / "deployments" / "prefect.docker.yaml"}

# The contract the flows are written against: deployment -> (entrypoint, parameters in order).
CONTRACT = {
    "media-ingest": ("flows/ingest.py:media_ingest", ["version_id", "formats"]),
    "transcode": ("flows/transcode.py:transcode", ["version_id", "formats"]),
    "waveform": ("flows/waveform.py:waveform", ["version_id"]),
    "artwork-extract": ("flows/artwork.py:artwork_extract", ["version_id"]),
    "loudness": ("flows/loudness.py:loudness", ["version_id"]),
    "fingerprint": ("flows/fingerprint.py:fingerprint", ["version_id"]),
    "analytics-rollup": ("flows/rollup.py:analytics_rollup", ["day", "start", "end"]),
    "distribution": ("flows/distribution.py:distribution", ["month"]),
    "dead-letter": ("flows/dead_letter.py:record_dead_letter", ["flow_run_id"]),
}
SCHEDULES = {"analytics-rollup": "0 1 * * *", "distribution": "0 2 1 * *"}


def load(kind: str) -> dict[str, dict]:
    specs = yaml.safe_load(FILES[kind].read_text())["deployments"]
    names = [spec["name"] for spec in specs]
    assert len(names) == len(set(names)), f"duplicate deployment names in {FILES[kind].name}"
    return {spec["name"]: spec for spec in specs}


def load_flow(entrypoint: str, monkeypatch: pytest.MonkeyPatch):
    """The way `prefect deploy` and a worker's flow-run process load it: by path, from the project root."""
    from prefect.flows import Flow, load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)
    path = entrypoint.split(":", 1)[0]
    assert (ROOT / path).exists(), f"{path} does not exist (yet): the deployment cannot be deployed"
    flow = load_flow_from_entrypoint(entrypoint)
    assert isinstance(flow, Flow)
    return flow


def template_parameters(spec: dict) -> set[str]:
    """Every parameter name the file itself passes: defaults, schedule parameters, trigger parameters."""
    names = set(spec.get("parameters") or {})
    for schedule in spec.get("schedules") or []:
        names |= set(schedule.get("parameters") or {})
    for trigger in spec.get("triggers") or []:
        names |= set(trigger.get("parameters") or {})
    return names


def test_both_files_deploy_exactly_the_contracted_jobs():
    for kind in FILES:
        assert set(load(kind)) == set(CONTRACT), kind


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_entrypoint_imports_and_matches_its_signature(name, monkeypatch):
    entrypoint, expected = CONTRACT[name]
    for kind in FILES:
        assert load(kind)[name]["entrypoint"] == entrypoint, kind
    flow = load_flow(entrypoint, monkeypatch)
    signature = inspect.signature(flow.fn)
    assert list(signature.parameters) == expected
    # The REST contract looks deployments up as {flow}/{deployment}: one name for both.
    assert flow.name == name
    required = {p for p, param in signature.parameters.items() if param.default is inspect.Parameter.empty}
    for kind in FILES:
        spec = load(kind)[name]
        passed = template_parameters(spec)
        assert passed <= set(signature.parameters), f"{kind}: {passed - set(signature.parameters)} not accepted"
        if spec.get("schedules") or spec.get("triggers"):
            # Runs the server starts on its own must be complete without a caller.
            assert required <= passed, f"{kind}: scheduled/triggered runs would miss {required - passed}"


def test_every_flow_in_flows_is_deployed(monkeypatch):
    """Every flow that exists is deployed (a new module under flows/ fails this until it is in prefect.yaml)."""
    from prefect.flows import Flow
    from prefect.utilities.importtools import load_script_as_module

    monkeypatch.chdir(ROOT)
    deployed = {spec["entrypoint"] for spec in load("process").values()}
    found = set()
    for path in sorted((ROOT / "flows").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = load_script_as_module(str(path))
        for attr, value in vars(module).items():
            if isinstance(value, Flow) and getattr(value.fn, "__module__", None) == module.__name__:
                found.add(f"flows/{path.name}:{attr}")
    assert found, "no flows found"
    assert found <= deployed, f"flows without a deployment: {sorted(found - deployed)}"


def test_schedules_are_cron_in_utc():
    for kind in FILES:
        specs = load(kind)
        for name, spec in specs.items():
            schedules = spec.get("schedules") or []
            if name in SCHEDULES:
                assert [(s["cron"], s["timezone"], s.get("active", True)) for s in schedules] == [
                    (SCHEDULES[name], "UTC", True)
                ], f"{kind}: {name}"
            else:
                assert schedules == [], f"{kind}: {name} should only run when triggered"


def test_queues_put_ingest_first_then_analysis_then_batch():
    from deployments.topology import QUEUES

    priority = {q.name: q.priority for q in QUEUES}
    for kind, pool in (("process", "roadie-process"), ("docker", "roadie-docker")):
        specs = load(kind)
        queue = {name: spec["work_pool"]["work_queue_name"] for name, spec in specs.items()}
        assert {spec["work_pool"]["name"] for spec in specs.values()} == {pool}
        assert set(queue.values()) <= set(priority)
        ingest = max(priority[queue[n]] for n in ("media-ingest", "transcode"))
        analysis = [priority[queue[n]] for n in ("waveform", "artwork-extract", "loudness", "fingerprint")]
        batch = min(priority[queue[n]] for n in ("analytics-rollup", "distribution"))
        assert ingest < min(analysis) and max(analysis) < batch


def test_tags_limits_and_the_dead_letter_trigger_agree():
    process, docker = load("process"), load("docker")
    for name in CONTRACT:
        assert process[name]["tags"] == docker[name]["tags"]
        assert process[name].get("concurrency_limit") == docker[name].get("concurrency_limit")
        tags = process[name]["tags"]
        assert "roadie" in tags
        # Runs of jobs are dead-lettered; the dead-letter flow's own runs are not (no loop).
        assert ("roadie-job" in tags) == (name != "dead-letter")
    for name in ("analytics-rollup", "distribution"):
        assert process[name]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    trigger = process["dead-letter"]["triggers"][0]
    assert trigger == docker["dead-letter"]["triggers"][0]
    assert set(trigger["expect"]) >= {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert trigger["match_related"] == {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.roadie-job"}
    for kind in FILES:
        for spec in load(kind).values():
            env = spec["work_pool"]["job_variables"]["env"]
            assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"  # what crash detection relies on


def test_workers_start_runs_in_the_project_and_the_image():
    process = yaml.safe_load(FILES["process"].read_text())
    docker = yaml.safe_load(FILES["docker"].read_text())
    step = process["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert step["directory"] == "{{ project.directory }}"
    assert process["build"][0] == {"deployments.build_steps.project_dir": {"id": "project"}}
    from deployments.build_steps import project_dir

    assert Path(project_dir()["directory"]) == Path.cwd().resolve()
    workdir = docker["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert f"WORKDIR {workdir}" in (ROOT / "docker" / "Dockerfile").read_text()
    job = docker["definitions"]["job"]
    assert job["image"] == "{{ $ROADIE_IMAGE }}"
