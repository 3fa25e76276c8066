"""Custom `prefect deploy` steps (referenced from prefect.yaml by their dotted path)."""

from __future__ import annotations

from pathlib import Path


def project_dir() -> dict[str, str]:
    """The checkout `prefect deploy` runs in; process workers start flow runs there (the pull step)."""
    return {"directory": str(Path.cwd().resolve())}
