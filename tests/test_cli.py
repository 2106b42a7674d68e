"""The command-line package itself: a light import, `python -m catapults.cli`, the layering
(nothing but the CLI imports the CLI)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import catapults
from catapults import cli

SRC = Path(catapults.__file__).resolve().parent.parent


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]))


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, catapults.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


def test_python_m_catapults_cli():
    proc = subprocess.run([sys.executable, "-m", "catapults.cli", "--help"], env=_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in cli.COMMANDS:
        assert command in proc.stdout


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):  # also the imports inside functions
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_only_the_cli_imports_the_cli():
    package = SRC / "catapults"
    for path in package.rglob("*.py"):
        if package / "cli" in path.parents:
            continue
        bad = [n for n in _imports(path) if n == "catapults.cli" or n.startswith("catapults.cli.")]
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"
