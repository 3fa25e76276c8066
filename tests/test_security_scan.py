"""No subprocess in roadie uses a shell: every Python file of the project is parsed (ast, so a mention in a string or
a comment does not count) and searched for `shell=` anything but False, `os.system`, `os.popen`, the shell helpers
of subprocess and asyncio, and argument lists that start a shell with `-c`. The other files under docker/ are
searched as text. The scan must also find the subprocess calls roadie is known to make, so it cannot pass by
scanning nothing."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("roadie", "flows", "tasks", "deployments", "bench", "tests", "docker")
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/env"}
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output"}
SHELL_FUNCTIONS = {
    ("os", "system"),
    ("os", "popen"),
    ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"),
    ("asyncio", "create_subprocess_shell"),
}
TEXT_PATTERNS = ("shell=True", "os.system", "os.popen", "getstatusoutput", "create_subprocess_shell")


@dataclass(frozen=True)
class Finding:
    where: str
    what: str


class Scanner(ast.NodeVisitor):
    """Shell use and subprocess calls in one module. Names imported from os/subprocess/asyncio are followed
    (`from os import system as s; s(...)`, `import subprocess as sp; sp.run(...)`)."""

    def __init__(self, where: str):
        self.where = where
        self.aliases: dict[str, tuple[str, ...]] = {}  # local name -> dotted origin
        self.violations: list[Finding] = []
        self.spawns: list[Finding] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name.split(".")[0]] = tuple(
                (alias.name if alias.asname else alias.name.split(".")[0]).split(".")
            )
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            origin = (*(node.module or "").split("."), alias.name)
            self.aliases[alias.asname or alias.name] = origin
            if origin[-2:] in SHELL_FUNCTIONS:
                self._flag(node, f"imports {'.'.join(origin)}")
        self.generic_visit(node)

    def _dotted(self, node: ast.AST) -> tuple[str, ...]:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, (node.id,))
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return (*base, node.attr) if base else ()
        return ()

    def _flag(self, node: ast.AST, what: str) -> None:
        self.violations.append(Finding(f"{self.where}:{getattr(node, 'lineno', 0)}", what))

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        if name[-2:] in SHELL_FUNCTIONS:
            self._flag(node, f"calls {'.'.join(name)}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value in (False, None)):
                self._flag(node, f"passes shell={ast.unparse(kw.value)}")
            if kw.arg is None and isinstance(kw.value, ast.Dict):  # **{"shell": True}
                for key, value in zip(kw.value.keys, kw.value.values, strict=False):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "shell"
                        and not (isinstance(value, ast.Constant) and value.value is False)
                    ):
                        self._flag(node, "passes shell through **kwargs")
        if name and (
            (name[0] == "subprocess" and name[-1] in SPAWNERS)
            or (name[0] in ("asyncio", "os") and name[-1] in ("create_subprocess_exec", "spawnv", "execv"))
        ):
            self.spawns.append(Finding(f"{self.where}:{node.lineno}", ".".join(name)))
        if node.args and isinstance(node.args[0], (ast.List, ast.Tuple)):
            self._shell_argv(node, node.args[0])
        self.generic_visit(node)

    def _shell_argv(self, node: ast.Call, argv: ast.List | ast.Tuple) -> None:
        words = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in argv.elts]
        if words and words[0] in SHELLS:
            rest = words[1:]
            if words[0].endswith("env") and rest and rest[0] in SHELLS:
                rest = rest[1:]
            if "-c" in rest or any(w and w.startswith("-") and "c" in w[1:] and not w.startswith("--") for w in rest):
                self._flag(node, f"starts a shell: {ast.unparse(argv)[:80]}")


def scan_source(source: str, where: str) -> Scanner:
    scanner = Scanner(where)
    scanner.visit(ast.parse(source, filename=where))
    return scanner


def project_files() -> tuple[list[Path], list[Path]]:
    python, other = [], []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".png", ".jpg", ".wav"):
                continue
            (python if path.suffix == ".py" else other).append(path)
    return python, other


@pytest.fixture(scope="module")
def scanned() -> tuple[list[Scanner], list[Finding]]:
    python, other = project_files()
    scanners = [scan_source(p.read_text(), str(p.relative_to(ROOT))) for p in python]
    text_findings = []
    for path in other:
        if path.parts[len(ROOT.parts)] != "docker":
            continue  # only docker/ holds non-Python code (Dockerfile, compose, SQL) worth a look
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.lstrip().startswith(("#", "--")):
                continue
            for pattern in TEXT_PATTERNS:
                if pattern in line:
                    text_findings.append(Finding(f"{path.relative_to(ROOT)}:{number}", pattern))
    return scanners, text_findings


def test_no_subprocess_uses_a_shell(scanned):
    scanners, text_findings = scanned
    violations = [v for s in scanners for v in s.violations] + text_findings
    assert violations == [], "\n".join(f"{v.where}: {v.what}" for v in violations)


def test_the_scan_sees_the_subprocesses_roadie_makes(scanned):
    """Not vacuous: every directory was read, and the calls that run ffmpeg, fpcalc, the services, `prefect
    deploy` and the tests' helpers were all found (with argument lists, or the first test would have failed)."""
    scanners, _ = scanned
    files = {s.where.split("/")[0] for s in scanners}
    assert {"roadie", "flows", "tasks", "deployments", "bench", "tests", "docker"} <= files
    assert len(scanners) >= 80
    spawning = {s.where for s in scanners if s.spawns}
    for known in (
        "roadie/prefect_local.py",
        "tests/services.py",
        "roadie/ops/serve.py",
        "tasks/media/ffmpeg.py",
        "tasks/media/fingerprint.py",
        "tests/support.py",
        "docker/build.py",
    ):
        assert known in spawning, f"the scan found no subprocess call in {known}"
    assert sum(len(s.spawns) for s in scanners) >= 30


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run('ls ' + name, shell=True)",
        "import subprocess as sp\nsp.Popen(cmd, shell=flag)",
        "from subprocess import check_output\ncheck_output(cmd, **{'shell': True})",
        "import os\nos.system('ffmpeg -i ' + path)",
        "import os\nos.popen('fpcalc ' + path).read()",
        "from os import system as run_it\nrun_it(cmd)",
        "from os import popen",
        "import subprocess\nsubprocess.getoutput('ls')",
        "import asyncio\nasyncio.create_subprocess_shell(cmd)",
        "import subprocess\nsubprocess.run(['/bin/sh', '-c', cmd])",
        "import subprocess\nsubprocess.run(['bash', '-lc', cmd])",
        "import subprocess\nsubprocess.run(('/usr/bin/env', 'bash', '-c', cmd))",
    ],
)
def test_the_scanner_catches_shell_use(code):
    assert scan_source(code, "example.py").violations


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['ffmpeg', '-i', path], check=True)",
        "import subprocess\nsubprocess.run(cmd, shell=False)",
        "# os.system('rm -rf /') in a comment\nx = 1",
        "doc = 'never call os.system or os.popen, nor shell=True'",
        "import sys, subprocess\nsubprocess.run([sys.executable, '-c', 'print(1)'])",
    ],
)
def test_the_scanner_ignores_argument_lists_and_mentions(code):
    assert scan_source(code, "example.py").violations == []
