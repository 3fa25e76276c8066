"""The layers hold: entry points > deployments > flows > tasks > core, nothing importing upward (pyproject.toml's
import-linter contracts), and no core module escapes the contract by being left off its list."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import roadie

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("roadie.cli", "roadie.ops", "roadie.__main__")


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def core_contract() -> dict:
    (contract,) = [c for c in contracts() if c["type"] == "forbidden"]
    return contract


def covered(module: str, listed: list[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in listed)


def test_every_core_module_is_under_the_core_contract():
    listed = core_contract()["source_modules"]
    modules = [info.name for info in pkgutil.walk_packages(roadie.__path__, "roadie.")]
    core = [m for m in modules if not covered(m, list(ENTRY_POINTS)) and ".migrations" not in m]
    assert core, "no core module found: the walk is broken"
    assert [m for m in core if not covered(m, listed)] == []
    # And the list names only modules that exist (a renamed module would leave a hole).
    assert [name for name in listed if not any(covered(m, [name]) for m in modules)] == []


def test_the_core_may_import_nothing_above_it():
    forbidden = set(core_contract()["forbidden_modules"])
    (layers,) = [c for c in contracts() if c["type"] == "layers"]
    assert forbidden == set(layers["layers"])  # every upper layer, and only those


def test_the_layer_contracts_are_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
