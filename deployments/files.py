"""Where the deployment files and the code they deploy are, in a checkout or in an installed wheel.

prefect.yaml stays at the top of the checkout, where `prefect deploy` is run. deployments/prefect.yaml is a symlink
to it, listed in pyproject's package-data: setuptools copies its content into the wheel, so an installed roadie
reads the same file from its own package. One file, two ways in.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import flows

PROCESS_FILE = "prefect.yaml"  # the process pool (`roadie serve`, one machine)
DOCKER_FILE = "prefect.docker.yaml"  # the Docker pool (production)


def deployment_file(name: str = PROCESS_FILE) -> Path:
    """A deployment file shipped in the `deployments` package (a real file: `prefect deploy` reads it by path)."""
    return Path(str(resources.files("deployments") / name))


def code_root() -> Path:
    """The directory the entrypoints (flows/ingest.py:media_ingest …) are relative to: the one holding the
    imported flows package, i.e. the checkout, or site-packages of an installed wheel. Workers start runs there."""
    return Path(str(flows.__file__)).resolve().parent.parent


def process_file(root: Path) -> Path:
    """prefect.yaml of the project at `root` (a checkout), else the one the installed package ships."""
    local = root / PROCESS_FILE
    return local if local.is_file() else deployment_file(PROCESS_FILE)
