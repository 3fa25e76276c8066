"""docker/: the compose file, parsed by a real Compose implementation (Debian's docker-compose) and consistent
(env vars, volumes, networks, dependencies, a scalable worker); the Dockerfile; and the image itself, built on
this machine's engine (tests/docker_support.py): non-root, one copy of the code, the same system packages as CI,
no CA bundle or build secret in any layer, and a code change that rebuilds only the code layers.

The compose services are not brought up (their postgres and minio images come from a registry):
tests/test_docker_pool.py runs the roadie ones, with this file's image, command and environment."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from tests import docker_support as ds

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
    return [
        line.strip()
        for line in (ROOT / "deployments" / "system-packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_compose_has_the_services(compose):
    assert set(compose["services"]) == {
        "postgres",
        "minio",
        "minio-init",
        "prefect-server",
        "setup",
        "worker",
        "health",
    }


def test_every_variable_is_defined_and_every_definition_used(compose):
    text = (DOCKER / "compose.yaml").read_text()
    used = {m.group(1): bool(m.group(2)) for m in VAR.finditer(text)}
    defined = env_example()
    undefined = [name for name, has_default in used.items() if name not in defined and not has_default]
    assert undefined == []
    # COMPOSE_PROJECT_NAME is read by Compose itself (the project name), not by the file.
    assert sorted(set(defined) - set(used) - {"COMPOSE_PROJECT_NAME"}) == []
    assert defined["COMPOSE_PROJECT_NAME"] == "roadie"
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
    # Flow-run containers join the services' network by name.
    assert yaml.safe_load(variant.read_text())["definitions"]["job"]["network_mode"] == "{{ $ROADIE_DOCKER_NETWORK }}"
    assert setup["environment"]["ROADIE_DOCKER_NETWORK"] == compose["networks"]["roadie"]["name"]
    help_text = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "roadie"), "setup", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--prefect-file" in help_text and "--deploy" in help_text


def test_health_service_publishes_the_port(compose):
    health = compose["services"]["health"]
    assert health["command"] == ["roadie", "health", "--serve", "--port", "3001"]
    assert health["ports"] == ["${HEALTH_PORT}:3001"]
    assert health["environment"]["ROADIE_WORK_POOL"] == "roadie-docker"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_dockerfile_base_user_healthcheck_and_sources():
    steps = dockerfile_instructions()
    # The base is an argument: python:3.11-slim from a registry by default, a local Debian base in the tests.
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim") and steps[1] == ("FROM", "${BASE_IMAGE}")
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
    assert (
        "prefect-docker==${PREFECT_DOCKER_VERSION}" in run and "pip install --no-deps --no-build-isolation -e ." in run
    )
    # Dependencies before code: the first COPY of the code comes after the last dependency install.
    ops = [(op, arg) for op, arg in steps]
    first_code = next(i for i, (op, arg) in enumerate(ops) if op == "COPY" and arg.startswith("roadie "))
    deps = max(i for i, (op, arg) in enumerate(ops) if op == "RUN" and "pip install -r" in arg)
    assert deps < first_code
    # The CA bundle only ever as a BuildKit secret mount, never COPY'd or ADD'ed.
    assert "--mount=type=secret,id=ca" in run
    assert not any(op in ("COPY", "ADD") and "cert" in arg for op, arg in steps)


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


# ---------------------------------------------------------------------------------------------- a real Compose parser


ROADIE_SERVICES = ("prefect-server", "setup", "worker", "health")


@pytest.fixture(scope="module")
def compose_config() -> dict:
    """`docker-compose config`: Compose's own validation and interpolation of the file with .env.example."""
    cli = shutil.which("docker-compose")
    assert cli, "Debian's docker-compose is not installed (the Makefile's TEST_SYSTEM_PACKAGES has it)"
    done = subprocess.run(
        [cli, "--env-file", str(DOCKER / ".env.example"), "-f", str(DOCKER / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_config_is_valid_and_every_roadie_service_runs_the_image(compose_config, compose):
    env = env_example()
    services = compose_config["services"]
    assert set(services) == set(compose["services"])
    for name in ROADIE_SERVICES:
        assert services[name]["image"] == env["ROADIE_IMAGE"], name
    build = services["prefect-server"]["build"]
    assert Path(build["context"]) == ROOT and build["dockerfile"] == "docker/Dockerfile"
    # The worker's command is the image's own default command (tests/test_docker_pool.py runs it).
    cmd = [arg for op, arg in dockerfile_instructions() if op == "CMD"][-1]
    assert services["worker"]["command"] == json.loads(cmd)
    assert services["worker"]["group_add"] == [env["DOCKER_GID"]]


def test_compose_environment_is_what_the_docker_pool_tests_give(compose_config):
    """tests/test_docker_pool.py runs `setup` and `worker` with these keys (each given a value for this machine),
    and the flow-run containers get the ROADIE_* values through the deployments' job variables."""
    from tests.test_docker_pool import NOT_EXERCISED

    services = compose_config["services"]
    setup, worker, health = (set(services[name]["environment"]) for name in ("setup", "worker", "health"))
    app = {
        "ROADIE_DATABASE_URL",
        "ROADIE_STORAGE_URL",
        "ROADIE_S3_ENDPOINT_URL",
        "ROADIE_S3_ACCESS_KEY",
        "ROADIE_S3_SECRET_KEY",
        "ROADIE_WORK_POOL",
        "ROADIE_DEAD_LETTER_WEBHOOK_URL",
    }
    client = {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_ANALYTICS_ENABLED"}
    assert setup == app | client | {"ROADIE_IMAGE", "ROADIE_DOCKER_NETWORK"}
    assert worker == client | {"PREFECT_WORKER_QUERY_SECONDS"}
    assert health == app | client
    assert {"PREFECT_API_AUTH_STRING"} == NOT_EXERCISED
    job_env = yaml.safe_load((ROOT / "deployments" / "prefect.docker.yaml").read_text())["definitions"]["job"]["env"]
    assert app <= set(job_env)


# ---------------------------------------------------------------------------------------------- the image, built


@pytest.fixture(scope="module")
def image(pytestconfig):
    return ds.image(pytestconfig)


def run_in_image(image, *args: str, user: str | None = None) -> str:
    as_user = ["--user", user] if user else []
    return ds.docker("run", "--rm", "--network", "none", *as_user, "--entrypoint", args[0], image.tag, *args[1:]).stdout


def test_image_runs_as_non_root_with_one_copy_of_the_code_and_the_tested_versions(image):
    import prefect

    probe = (
        "import json, os, sysconfig, pathlib, prefect, prefect_docker, roadie, flows, tasks; "
        "site = pathlib.Path(sysconfig.get_paths()['purelib']); "
        "print(json.dumps({'uid': os.getuid(), 'roadie': roadie.__file__, 'flows': flows.__file__, "
        "'tasks': tasks.__file__, 'prefect': prefect.__version__, 'prefect_docker': prefect_docker.__version__, "
        "'site': sorted(p.name for p in site.iterdir() if p.name.split('-')[0].split('.')[0] in "
        "('roadie', 'flows', 'tasks', 'deployments'))}))"
    )
    info = json.loads(run_in_image(image, "python", "-c", probe))
    assert info["uid"] == ds.USER_UID
    assert (info["roadie"], info["flows"], info["tasks"]) == (
        "/opt/roadie/roadie/__init__.py",
        "/opt/roadie/flows/__init__.py",
        "/opt/roadie/tasks/__init__.py",
    )
    # Installed editable: site-packages holds only the metadata, no second copy of any package.
    assert info["site"] and all(name.endswith((".dist-info", ".pth")) for name in info["site"]), info["site"]
    found = run_in_image(image, "find", "/", "-xdev", "-name", "ingest.py", "-path", "*/flows/*", user="0").split()
    assert found == ["/opt/roadie/flows/ingest.py"]
    # The Prefect the tests run, the one deployments/prefect.docker.yaml names.
    variant = yaml.safe_load((ROOT / "deployments" / "prefect.docker.yaml").read_text())
    assert info["prefect"] == prefect.__version__ == variant["prefect-version"]
    packages = run_in_image(image, "dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *system_packages())
    assert sorted(packages.split("\n")[:-1]) == sorted(f"{p} installed" for p in system_packages())
    # The code is root's: the user the flows run as cannot change it.
    assert (
        run_in_image(image, "sh", "-c", "test -w /opt/roadie/roadie/__init__.py && echo writable || echo no") == "no\n"
    )


def _host_only_certificates(bundle: Path) -> list[bytes]:
    """A line of each certificate in `bundle` that no public set has (neither certifi's nor Debian's
    ca-certificates): this machine's own CAs, e.g. from /usr/local/share/ca-certificates. Public roots may well be
    in the image (Debian's ca-certificates comes with its packages); these must not."""
    import certifi

    public = Path(certifi.where()).read_text()
    public += "".join(p.read_text(errors="replace") for p in Path("/usr/share/ca-certificates").rglob("*.crt"))
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", bundle.read_text(), re.S)
    return [block.splitlines()[2].encode() for block in blocks if block not in public and len(block.splitlines()) > 3]


def test_image_keeps_no_ca_bundle_and_no_build_secret(image):
    bundle = Path(ds.build.DEFAULT_CA)
    if not bundle.is_file():
        pytest.fail(f"{bundle} missing: the build had no CA secret to leak, and pip could not have worked here")
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    size = bundle.stat().st_size
    needles = _host_only_certificates(bundle)
    assert needles, "this machine's bundle should carry its own CA (the reason the build needs the secret)"
    # Every file of every layer, deleted-later ones included: `docker save` is the image as shipped.
    leaks, layers, files = [], 0, 0
    save = subprocess.Popen([ds.engine().cli, "save", image.tag], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
        for member in archive:
            if not member.name.endswith("layer.tar"):
                continue
            layers += 1
            with tarfile.open(fileobj=archive.extractfile(member), mode="r|") as layer:
                for entry in layer:
                    # BuildKit leaves the empty mount point run/secrets/ in the layer; nothing may be in it.
                    if entry.name.lstrip("./").startswith("run/secrets/") and not entry.isdir():
                        leaks.append(entry.name)
                    if not entry.isfile() or entry.size > (8 << 20):
                        continue
                    files += 1
                    data = layer.extractfile(entry).read()
                    if (entry.size == size and hashlib.sha256(data).hexdigest() == digest) or any(
                        needle in data for needle in needles
                    ):
                        leaks.append(entry.name)
    assert save.wait() == 0
    assert layers >= 5 and files > 10_000
    assert leaks == []
    history = ds.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.tag).stdout
    assert "BEGIN CERTIFICATE" not in history and not any(n.decode() in history for n in needles)
    config = ds.inspect(image.tag)["Config"]
    assert not [e for e in config["Env"] if e.startswith(("PIP_CERT", "SSL_CERT", "REQUESTS_CA"))]


def test_a_code_change_rebuilds_only_the_code_layers(image, tmp_path, pytestconfig):
    """The context of a checkout whose code differs by one line: every layer up to the dependencies is reused."""
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for name in [line[1:].split("/", 1)[0] for line in ignore if line.startswith("!")] + ["docker"]:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, tmp_path / name)
    with (tmp_path / "roadie" / "__init__.py").open("a") as f:
        f.write(f"# a code change {time.time()}\n")
    tag = "roadie:test-code-change"
    try:
        made = ds.build.build_image(ds.engine().cli, tag, image.base, context=tmp_path)
        before = ds.inspect(image.tag)["RootFS"]["Layers"]
        after = ds.inspect(tag)["RootFS"]["Layers"]
        # Reused: the base, the system packages, the Python dependencies (and the small layers between).
        assert len(after) == len(before)
        shared = next(i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b)
        history = ds.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout.splitlines()[::-1]
        layered = [
            h
            for h in history
            if not h.startswith(("ARG", "ENV", "WORKDIR", "USER", "CMD", "HEALTHCHECK")) and "#(nop)" not in h
        ]
        assert any("pip install -r" in h for h in layered[:shared]), layered[:shared]
        assert made.seconds < 90, f"a code-only rebuild took {made.seconds:.0f} s"
        ds.report(pytestconfig, f"code-only rebuild: {made.seconds:.1f} s, {shared} of {len(after)} layers reused")
    finally:
        ds.docker("image", "rm", "-f", tag, check=False)
