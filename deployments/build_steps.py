"""Custom `prefect deploy` build steps, referenced from prefect.yaml by their dotted path."""

from __future__ import annotations

from pathlib import Path


def project_dir() -> dict[str, str]:
    """The directory `prefect deploy` runs in (a checkout, or site-packages of an installed wheel: roadie.ops.serve
    deploys from where the flows are); process workers start flow runs there (the pull step)."""
    return {"directory": str(Path.cwd().resolve())}
