"""docker/ without a Docker engine: what can be checked is checked — the compose file parses and is consistent
(env vars, volumes, networks, dependencies, a scalable worker), and the image installs the same system packages
the tests need, from the same list as the Makefile and CI."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
VAR = re.compile(r"\$\{([A-Z0-9_]+)(:?-[^}]*)?\}")
TEMPLATE_VAR = re.compile(r"\{\{\s*\$([A-Z0-9_]+)\s*\}\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value
    return out


def system_packages() -> list[str]:
    return [line.strip() for line in (ROOT / "deployments" / "system-packages.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_compose_has_the_services(compose):
    assert set(compose["services"]) == {"postgres", "minio", "minio-init", "prefect-server", "setup", "worker",
                                        "health"}


def test_every_variable_is_defined_and_every_definition_used(compose):
    text = (DOCKER / "compose.yaml").read_text()
    used = {m.group(1): bool(m.group(2)) for m in VAR.finditer(text)}
    defined = env_example()
    undefined = [name for name, has_default in used.items() if name not in defined and not has_default]
    assert undefined == []
    assert sorted(set(defined) - set(used)) == []
    # Secrets come from the env file, never from the compose file itself.
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "AUTH_STRING")):
                assert VAR.fullmatch(str(value)), f"{key} is hard-coded"


def test_volumes_networks_and_dependencies_are_declared(compose):
    declared_volumes = set(compose.get("volumes") or {})
    declared_networks = set(compose.get("networks") or {})
    services = compose["services"]
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith(("./", "../")):
                assert (DOCKER / source).exists(), f"{name}: bind source {source} missing"
            elif source.startswith("/"):
                assert source == "/var/run/docker.sock", f"{name}: unexpected host path {source}"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared"
        for network in service.get("networks") or []:
            assert network in declared_networks
        for dependency in service.get("depends_on") or {}:
            assert dependency in services
    used_volumes = {v.split(":", 1)[0] for s in services.values() for v in s.get("volumes") or []}
    assert declared_volumes <= used_volumes


def test_prefect_server_runs_on_postgres_with_auth(compose):
    services = compose["services"]
    server = services["prefect-server"]["environment"]
    assert server["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/prefect" in server["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    auth = server["PREFECT_SERVER_API_AUTH_STRING"]
    for client in ("setup", "worker", "health"):
        env = services[client]["environment"]
        assert env["PREFECT_API_AUTH_STRING"] == auth
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "CREATE DATABASE prefect" in (DOCKER / "postgres-init.sql").read_text()
    app_url = services["health"]["environment"]["ROADIE_DATABASE_URL"]
    assert app_url.startswith("postgresql+psycopg2://") and app_url.endswith("@postgres:5432/roadie")


def test_minio_bucket_is_created_at_start(compose):
    init = compose["services"]["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init["entrypoint"])
    assert "mc mb --ignore-existing" in script and "$$ROADIE_BUCKET" in script
    assert compose["services"]["setup"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert compose["services"]["health"]["environment"]["ROADIE_STORAGE_URL"] == "s3://${ROADIE_BUCKET}"


def test_worker_scales_out(compose):
    worker = compose["services"]["worker"]
    # `--scale worker=4` needs no fixed container name and no fixed host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:3] == ["prefect", "worker", "start"]
    assert worker["command"][worker["command"].index("--pool") + 1] == "roadie-docker"
    assert worker["command"][worker["command"].index("--type") + 1] == "docker"
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker["depends_on"]["setup"]["condition"] == "service_completed_successfully"


def test_setup_deploys_the_docker_variant_with_every_value_it_needs(compose):
    setup = compose["services"]["setup"]
    assert setup["command"][:2] == ["roadie", "setup"]
    prefect_file = setup["command"][setup["command"].index("--prefect-file") + 1]
    variant = ROOT / prefect_file
    assert variant.exists()
    needed = set(TEMPLATE_VAR.findall(json.dumps(yaml.safe_load(variant.read_text()))))
    assert needed and needed <= set(setup["environment"]), needed - set(setup["environment"])
    network = yaml.safe_load(variant.read_text())["definitions"]["job"]["networks"]
    assert network == [compose["networks"]["roadie"]["name"]]
    help_text = subprocess.run([str(ROOT / ".venv" / "bin" / "roadie"), "setup", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert "--prefect-file" in help_text and "--deploy" in help_text


def test_health_service_publishes_the_port(compose):
    health = compose["services"]["health"]
    assert health["command"] == ["roadie", "health", "--serve", "--port", "3001"]
    assert health["ports"] == ["${HEALTH_PORT}:3001"]
    assert health["environment"]["ROADIE_WORK_POOL"] == "roadie-docker"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def test_dockerfile_base_user_healthcheck_and_sources():
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    healthcheck = [arg for op, arg in steps if op == "HEALTHCHECK"]
    assert healthcheck and '"-m", "roadie.ops.probe"' in healthcheck[0]  # exercised in test_e2e
    import roadie.ops.probe  # noqa: F401  (the module the image runs)
    cmd = [arg for op, arg in steps if op == "CMD"][-1]
    assert cmd.startswith("[")  # exec form: no shell between Docker and the worker
    for op, arg in steps:
        if op == "COPY":
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
    run = " ".join(arg for op, arg in steps if op == "RUN")
    assert "pip install . prefect-docker" in run


def test_image_installs_the_system_packages_the_tests_need():
    steps = dockerfile_instructions()
    copies = [arg for op, arg in steps if op == "COPY"]
    assert "deployments/system-packages.txt /tmp/system-packages.txt" in copies
    run = " ".join(arg for op, arg in steps if op == "RUN")
    assert "grep -v '^#' /tmp/system-packages.txt | xargs apt-get install" in run
    packages = system_packages()
    # The list the image installs is the one the Makefile (and so .ci/run) installs.
    assert "deployments/system-packages.txt" in (ROOT / "Makefile").read_text()
    # And it provides every tool the suite runs: ask dpkg which package owns each binary here.
    owners = {}
    for tool in ("ffmpeg", "ffprobe", "fpcalc"):
        path = shutil.which(tool)
        assert path, f"{tool} is not installed on this machine"
        found = subprocess.run(["dpkg-query", "-S", str(Path(path).resolve())], capture_output=True, text=True)
        assert found.returncode == 0, found.stderr
        owners[tool] = found.stdout.split(":", 1)[0]
    assert set(owners.values()) <= set(packages), owners


def test_build_context_sends_what_the_image_copies():
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].split("/", 1)[0] for line in ignore if line.startswith("!")}
    for op, arg in dockerfile_instructions():
        if op == "COPY":
            for source in arg.split()[:-1]:
                assert source.split("/", 1)[0] in allowed, source
