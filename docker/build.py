"""Get a Docker engine ready and build roadie's image. `make image` runs this; the Docker tests import it
(tests/docker_support.py), so both build the same way.

    python3 docker/build.py [--tag roadie:latest] [--base local | --base IMAGE]

1. The engine: `docker info` answers, or `dockerd --bridge=none --iptables=false` is started (as root, detached,
   log in $ROADIE_DOCKERD_LOG, default /var/log/roadie-dockerd.log) and left running like a system service.
   Every container then uses host networking, so all traffic stays on 127.0.0.1.
2. The base: `--base local` (the default of `make image`) is a Debian bookworm minbase made here with
   debootstrap and `docker import`ed as roadie-base:bookworm, for machines that reach Debian's mirror but no image
   registry. It carries a label with a hash of its recipe and is rebuilt only when that recipe changes.
   `--base python:3.11-slim` (the Dockerfile's own default) or any other image name uses that image instead.
3. The image: `docker build --network host` with BuildKit, docker/Dockerfile, the repository as context. When
   the machine's CA bundle exists ($ROADIE_BUILD_CA, default /etc/ssl/certs/ca-certificates.crt) it is passed as
   the BuildKit secret `ca`, which pip reads during its RUN step only: it is never written to a layer.

Standard library only, and every command is an argument list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "roadie-base:bookworm"
RECIPE_LABEL = "org.roadie.base-recipe"
DEFAULT_CA = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Everything that decides what the local base holds. Change any of it and the next build makes a new base.
BASE_RECIPE = {
    "tool": "debootstrap",
    "variant": "minbase",
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "changes": [f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8"],
}


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none can be started here: the reason is the message."""


def log(message: str) -> None:
    print(f"[docker/build] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the engine


def _candidates(name: str) -> list[str]:
    seen, out = set(), []
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/sbin", "/sbin"]:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK) and path.resolve() not in seen:
            seen.add(path.resolve())
            out.append(str(path))
    return out


def _client_can_buildkit(cli: str) -> bool:
    """A BuildKit build (secrets, RUN --mount) needs the buildx plugin from client 23 on; older clients (Debian's
    docker.io 20.10) carry BuildKit themselves."""
    try:
        if subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=30).returncode == 0:
            return True
        version = subprocess.run(
            [cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        return bool(version) and int(version.split(".")[0]) < 23
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return False


def docker_cli() -> str:
    """The docker client to use: $ROADIE_DOCKER, else the first one on PATH that can make a BuildKit build (a
    machine may have a newer client without buildx ahead of Debian's /usr/bin/docker)."""
    given = os.environ.get("ROADIE_DOCKER")
    if given:
        return given
    clients = _candidates("docker")
    if not clients:
        raise EngineUnavailable("no docker client: install Debian's docker.io (apt-get install docker.io)")
    for cli in clients:
        if _client_can_buildkit(cli):
            return cli
    raise EngineUnavailable(
        f"no docker client here can build with BuildKit ({', '.join(clients)}): install "
        "Debian's docker.io, or the buildx plugin"
    )


def engine_answers(cli: str) -> bool:
    try:
        return (
            subprocess.run([cli, "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=30).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass(frozen=True)
class Engine:
    cli: str
    started_pid: int | None  # dockerd started by this call (left running), else None
    server_version: str


def ensure_engine(timeout_s: float = 90) -> Engine:
    """An engine that answers: the running one, or `dockerd --bridge=none --iptables=false` started now."""
    cli = docker_cli()
    pid = None
    if not engine_answers(cli):
        dockerd = next(iter(_candidates("dockerd")), None)
        if dockerd is None:
            raise EngineUnavailable(
                "no Docker daemon answers and there is no dockerd to start (apt-get install docker.io)"
            )
        if os.geteuid() != 0:
            raise EngineUnavailable("no Docker daemon answers, and starting dockerd needs root")
        log_path = Path(os.environ.get("ROADIE_DOCKERD_LOG", "/var/log/roadie-dockerd.log"))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            # Its own session: it outlives this process, as the machine's engine.
            proc = subprocess.Popen(
                [dockerd, "--bridge=none", "--iptables=false"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid = proc.pid
        log(f"started {dockerd} --bridge=none --iptables=false (pid {pid}, log {log_path})")
        deadline = time.monotonic() + timeout_s
        while not engine_answers(cli):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-1500:]
                if proc.poll() is None:
                    proc.kill()
                raise EngineUnavailable(f"dockerd did not come up (exit code {proc.poll()}):\n{tail}")
            time.sleep(0.5)
    version = subprocess.run(
        [cli, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    return Engine(cli, pid, version)


# ---------------------------------------------------------------------------------------------- the base image


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:16]


def image_label(cli: str, image: str, label: str) -> str | None:
    """The label's value on a local image; None when the image is not there."""
    done = subprocess.run(
        [cli, "image", "inspect", "--format", "{{json .Config.Labels}}", image],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        return None
    return (json.loads(done.stdout or "null") or {}).get(label, "")


def ensure_local_base(cli: str, name: str = LOCAL_BASE) -> tuple[str, float]:
    """roadie-base:bookworm from Debian's mirror, made only when missing or when its recipe changed.
    Returns (name, seconds spent making it: 0 when reused)."""
    wanted = recipe_hash()
    if image_label(cli, name, RECIPE_LABEL) == wanted:
        return name, 0.0
    debootstrap = next(iter(_candidates("debootstrap")), None)
    if debootstrap is None:
        raise RuntimeError("the local base needs debootstrap (apt-get install debootstrap)")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="roadie-base-"))
    try:
        target = work / "rootfs"
        log(f"making {name} with debootstrap (recipe {wanted})")
        done = subprocess.run(
            [
                debootstrap,
                f"--variant={BASE_RECIPE['variant']}",
                BASE_RECIPE["suite"],
                str(target),
                BASE_RECIPE["mirror"],
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        changes = [
            arg
            for change in BASE_RECIPE["changes"] + [f"LABEL {RECIPE_LABEL}={wanted}"]
            for arg in ("--change", change)
        ]
        tar = subprocess.Popen(["tar", "-C", str(target), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [cli, "import", *changes, "-", name], stdin=tar.stdout, capture_output=True, text=True
        )
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return name, time.monotonic() - started


# ---------------------------------------------------------------------------------------------- the image


@dataclass(frozen=True)
class Build:
    tag: str
    base: str
    seconds: float
    base_seconds: float
    output: str


def build_image(
    cli: str,
    tag: str,
    base: str | None = None,
    base_seconds: float = 0.0,
    ca_bundle: str | None = None,
    extra_args: list[str] | None = None,
    context: Path = ROOT,
) -> Build:
    """`docker build` of docker/Dockerfile on `base` (None: the Dockerfile's default), the CA bundle as a secret.
    `context`: a checkout laid out like this one (default: this one)."""
    ca = ca_bundle if ca_bundle is not None else os.environ.get("ROADIE_BUILD_CA", DEFAULT_CA)
    dockerfile = Path(context) / "docker" / "Dockerfile"
    cmd = [cli, "build", "--network", "host", "--progress", "plain", "-f", str(dockerfile), "-t", tag]
    if base:
        cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    if ca and Path(ca).is_file():
        cmd += ["--secret", f"id=ca,src={ca}"]
    cmd += [*(extra_args or []), str(context)]
    before = image_id(cli, tag)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=context, env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"docker build failed ({done.returncode}):\n{output[-5000:]}")
    seconds = time.monotonic() - started
    if before and before != image_id(cli, tag):
        # The tag moved: drop the image it left behind unless a container or another tag still uses it.
        subprocess.run([cli, "image", "rm", before], capture_output=True, timeout=120)
    return Build(tag, base or "python:3.11-slim", seconds, base_seconds, output)


def image_id(cli: str, image: str) -> str | None:
    done = subprocess.run(
        [cli, "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip() if done.returncode == 0 else None


def prepare(tag: str, base: str = "local") -> tuple[Engine, Build]:
    """Engine up, base present, image built: what `make image` and the Docker tests both need."""
    engine = ensure_engine()
    base_seconds = 0.0
    if base == "local":
        base, base_seconds = ensure_local_base(engine.cli)
    build = build_image(engine.cli, tag, base or None, base_seconds)
    return engine, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="roadie:latest")
    parser.add_argument(
        "--base",
        default="local",
        help="`local` (Debian minbase made here, no registry needed) or an image name, e.g. "
        "python:3.11-slim (the Dockerfile's default, from a registry)",
    )
    args = parser.parse_args(argv)
    try:
        engine, build = prepare(args.tag, args.base)
    except EngineUnavailable as exc:
        log(f"no Docker engine: {exc}")
        return 2
    log(
        f"built {build.tag} on {build.base} in {build.seconds:.1f} s (base {build.base_seconds:.1f} s, "
        f"engine {engine.server_version} via {engine.cli})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
