"""The command-line package itself: a light import, `python -m catapults.cli`, the layering
(nothing but the CLI imports the CLI), and `reproduce --strict`."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import catapults
from catapults import cli, experiments
from catapults.experiments import THRESHOLDS, ExperimentResult, make_claim

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


def _claim(key: str, passed: bool | None):
    """A claim decided on three equal per-seed values: on its threshold (pass), on the wrong
    side of it (fail), or none at all (None: not run)."""
    op, threshold = THRESHOLDS[key]
    if passed is None:
        return make_claim(key, "claim", "statistic", [None, None, None])
    wrong = threshold - 1 if op.startswith(">") else threshold + 1
    right = threshold + (0.5 if op == ">" else -0.5 if op == "<" else 0.0)
    return make_claim(key, "claim", "statistic", [right if passed else wrong] * 3)


@pytest.mark.parametrize("fails", [0, 1])
def test_reproduce_strict_exit_code(tmp_path, monkeypatch, capsys, fails):
    calls = []

    def fake_reproduce(experiment, *, out, size, threads, resume):
        calls.append((experiment, size, resume))
        keys = list(THRESHOLDS)
        claims = [_claim(keys[0], True), _claim(keys[1], not fails), _claim(keys[2], True),
                  _claim(keys[3], None)]  # not run: neither passed nor failed
        assert [c.status for c in claims] == ["pass", "fail" if fails else "pass", "pass",
                                              "not run"]
        return [ExperimentResult("fake", claims, [], [])]

    monkeypatch.setattr(experiments, "reproduce", fake_reproduce)
    argv = ["reproduce", "all", "--size", "tiny", "--out", str(tmp_path / "rep")]
    assert cli.main(argv) == 0  # a completed reproduce is a success, whatever the claims say
    assert capsys.readouterr().err == ""
    assert cli.main([*argv, "--strict"]) == fails
    err = capsys.readouterr().err
    if fails:
        assert err == (f"catapults: 1 of 4 claims failed (--strict): {list(THRESHOLDS)[1]}\n")
    else:
        assert err == ""
    assert calls == [("all", "tiny", False)] * 2
    assert cli.main([*argv, "--resume"]) == 0
    assert calls[-1] == ("all", "tiny", True)


def test_help_builds_every_parser_without_torch():
    code = ("import sys, catapults.cli as c; c.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=_env()).stdout.strip()
    assert out == "False"


def test_the_cli_knows_every_experiment():
    from catapults.cli.reproduce import EXPERIMENT_NAMES
    from catapults.experiments import EXPERIMENTS

    assert tuple(EXPERIMENTS) == EXPERIMENT_NAMES
