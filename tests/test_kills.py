"""Kills at any moment (issue 16).

1. A run killed during its very first writes (while its directory is swapped in, or before
   ``config.yaml`` exists) leaves nothing that blocks a re-run: the toolkit's own temporary
   directories are removed, a run directory that never started is reused without
   ``--overwrite``, and ``catapults resume`` says it cannot be resumed and what to do.
2. SIGKILL of ``catapults run`` (with checkpoints) and of ``catapults sweep`` after seeded random
   delays leaves no file half-written under its final name, and ``catapults resume`` / running
   the sweep again ends as the uninterrupted run or sweep. A few delays in the fast tier, more
   under ``slow``.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from catapults.cli import main
from catapults.storage.rundir import RUN_MARKER, is_run_dir, never_started, run_lock
from helpers import small_config

CLI = [sys.executable, "-m", "catapults.cli"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def tiny(tmp_path, **output):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(small_config(
        train={"steps": 6, "threads": 1}, output={"figures": False, **output})))
    return path


def assert_whole(root: Path):
    """Every file under its final name reads back whole; no temporary file under a final name."""
    for p in root.rglob("*"):
        if not p.is_file() or ".tmp-" in p.name or p.name in (RUN_MARKER, ".sweep.lock"):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        elif p.suffix == ".pt":
            torch.load(p, weights_only=True)
        elif p.suffix == ".png":
            assert p.read_bytes().startswith(b"\x89PNG"), p


# ---- 1. a kill during the very first writes -------------------------------------------------
def test_run_that_never_started_is_reused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text('{"kind": "run"}')
    (out / f".config.yaml.tmp-{dead_pid()}").write_text("data: {d: 1")  # torn, never renamed
    assert never_started(out)
    assert main(["resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "never started" in err and f"catapults run CONFIG --out {out}" in err
    assert err.count("\n") == 1
    assert main(["run", str(tiny(tmp_path)), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not list(out.glob("*.tmp-*")) and is_run_dir(out)


def test_run_dir_in_use_is_not_taken_for_one_that_never_started(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text('{"kind": "run"}')
    with run_lock(out):  # a run that is starting right now
        assert not never_started(out)
        assert main(["run", str(tiny(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    (out / RUN_MARKER).write_text(json.dumps({"kind": "run", "pid": os.getppid()}))
    assert not never_started(out)  # made by a live process, about to take the lock
    (out / RUN_MARKER).write_text(json.dumps({"kind": "run", "pid": dead_pid()}))
    assert never_started(out)
    (out / "notes.txt").write_text("mine")  # not only the marker: a run, kept unless overwrite
    assert not never_started(out)


def test_stale_staging_directories_are_removed(tmp_path):
    out = tmp_path / "run"
    pid = dead_pid()
    new = tmp_path / f".run.new-{pid}-abc123"
    old = tmp_path / f".run.old-{pid}-def456"
    live = tmp_path / f".run.new-{os.getpid()}-ghi789"  # a swap going on in a live process
    other = tmp_path / f".other.new-{pid}-jkl000"  # another run's
    for d in (new, old / "run", live, other):
        d.mkdir(parents=True)
        (d / RUN_MARKER).write_text("{}")
    assert main(["run", str(tiny(tmp_path)), "--out", str(out), "--no-progress"]) == 0
    assert not new.exists() and not old.exists()
    assert live.exists() and other.exists()


KILL_AT = textwrap.dedent("""
    import os, signal, sys
    import catapults.runs as runs
    import catapults.storage.rundir as rundir
    point = sys.argv[1]
    if point == "config.yaml":  # half the config written to its temporary name, then killed
        def write(path, text):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(text[: len(text) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        runs.write_text_atomic = write
    else:  # killed between moving the old run aside and moving the new one in
        real, calls = os.replace, []
        class OS:
            def __getattr__(self, name):
                return getattr(os, name)
            def replace(self, a, b):
                calls.append(1)
                if len(calls) == 2:  # old run aside, [kill] new run in
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(a, b)
        rundir.os = OS()
    from catapults.cli import main
    main(sys.argv[2:])
""")


@pytest.mark.parametrize("point", ["config.yaml", "swap"])
def test_kill_during_the_first_write_does_not_block_a_rerun(tmp_path, point, capsys):
    cfg = tiny(tmp_path)
    out = tmp_path / "run"
    if point == "swap":  # an earlier run, being replaced with --overwrite
        assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    argv = ["run", str(cfg), "--out", str(out), "--no-progress", "--overwrite"]
    proc = subprocess.run([sys.executable, "-c", KILL_AT, point, *argv], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert_whole(tmp_path)
    if point == "config.yaml":
        assert never_started(out) and not (out / "config.yaml").exists()
        assert main(["resume", str(out)]) == 2
        assert "never started" in capsys.readouterr().err
    else:
        assert not out.exists() and list(tmp_path.glob(".run.*-*"))
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0  # no --overwrite
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not list(tmp_path.glob(".run.*-*")) and not list(out.glob("*.tmp-*"))
    assert main(["run", str(cfg), "--out", str(out), "--no-progress", "--overwrite"]) == 0


# ---- 2. SIGKILL at seeded random moments ----------------------------------------------------
RNG_SEED = 16


def kill_cases(n_fast, n_slow, seed):
    """Seeded kill moments ``(anchor, fraction)``: ``start`` kills land ``fraction`` of the way
    through the command's start-up (imports, checks, the run directory being made), ``work``
    kills ``fraction`` of the way from the first metrics row to the last summary. One case
    in four is a ``start`` kill; the fractions of each tier are stratified over [0, 1.1)."""
    rng = random.Random(seed)

    def tier(n):
        anchors = [("start" if i % 4 == 0 else "work") for i in range(n)]
        cases = []
        for anchor in ("start", "work"):
            m = anchors.count(anchor)
            cases += [(anchor, round(1.1 * (k + rng.random()) / m, 3)) for k in range(m)]
        return cases

    return [pytest.param(c, id=f"{c[0]}-{c[1]:.3f}") for c in tier(n_fast)] + [
        pytest.param(c, id=f"slow-{c[0]}-{c[1]:.3f}", marks=pytest.mark.slow)
        for c in tier(n_slow)]


def kill_at(argv, cwd, anchor, seconds, started):
    """Start ``catapults ARGV`` in its own process group; SIGKILL the group ``seconds`` after
    its start (``anchor='start'``) or after ``started()`` first holds (``'work'``), unless it
    ended first. Whether it was killed."""
    proc = subprocess.Popen([*CLI, *argv], cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if anchor == "work":
            deadline = time.monotonic() + 300
            while not started() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        proc.wait(timeout=seconds)
        assert proc.returncode == 0, proc.stderr.read()
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        return True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stderr.close()


def timed(argv, cwd, started, finished):
    """Run ``catapults ARGV``: (seconds until ``started()`` first holds, seconds from then until
    ``finished()`` first holds; process exit is left out)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*CLI, *argv], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = last = None
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if first is None and started():
            first = now
        if first is not None and last is None and finished():
            last = now
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read()
    proc.stderr.close()
    total = time.perf_counter() - t0
    first = total if first is None else first
    last = total if last is None else last
    return first, max(last - first, 0.05)


def same_rows(a: Path, b: Path):
    """Two metrics files hold the same steps, each once, with the same values (tolerance)."""
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    ref = [json.loads(line) for line in b.read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref]
    for x, y in zip(rows, ref):
        assert x.keys() == y.keys(), x["step"]
        for key, value in y.items():
            if isinstance(value, float):
                assert x[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (x["step"], key)


def same_summary(a: Path, b: Path):
    s, r = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert s["status"] == r["status"] == "completed" and s["steps"] == r["steps"]
    for key in ("final_train_loss", "final_test_loss"):
        assert s[key] == pytest.approx(r[key], rel=1e-6, abs=1e-9)


def has_rows(path: Path):
    def started():
        try:
            return path.stat().st_size > 0
        except OSError:
            return False
    return started


def trial_rows(sweep_dir: Path):
    def started():
        try:
            return any(p.stat().st_size for p in sweep_dir.glob("trials/*/metrics.jsonl"))
        except OSError:  # a trial directory being swapped in
            return False
    return started


RUN_CFG = small_config(
    data={"n_train": 64, "n_test": 32}, model={"width": 64},
    train={"optimizer": "sgd", "batch_size": 16, "lr": 0.5, "steps": 200, "eval_every": 5,
           "threads": 1},
    output={"checkpoint_every": 10, "figures": False})


@pytest.fixture(scope="module")
def run_reference(tmp_path_factory):
    """The uninterrupted run, and the wall times of `catapults run` for it: (start-up, work)."""
    root = tmp_path_factory.mktemp("run-ref")
    (root / "cfg.yaml").write_text(yaml.safe_dump(RUN_CFG))
    times = timed(["run", "cfg.yaml", "--out", "ref", "--no-progress"], root,
                  has_rows(root / "ref" / "metrics.jsonl"),
                  (root / "ref" / "summary.json").is_file)
    return root / "cfg.yaml", root / "ref", times


@pytest.mark.parametrize("case", kill_cases(4, 16, RNG_SEED))
def test_sigkill_of_a_run_at_a_random_moment_then_recovery(tmp_path, run_reference, case):
    from catapults.runs import resume_problem

    cfg, ref, (startup, work) = run_reference
    anchor, fraction = case
    out = tmp_path / "run"
    kill_at(["run", str(cfg), "--out", str(out), "--no-progress"], tmp_path, anchor,
            fraction * (startup if anchor == "start" else work), has_rows(out / "metrics.jsonl"))
    assert_whole(tmp_path)
    if (out / "summary.json").is_file():
        pass  # it finished before the kill
    elif out.is_dir() and resume_problem(out) is None:
        assert main(["resume", str(out), "--no-progress"]) == 0
    else:  # killed before its first checkpoint: run again (the directory, if any, is reusable)
        argv = ["run", str(cfg), "--out", str(out), "--no-progress"]
        assert main(argv + (["--overwrite"] if out.exists() and not never_started(out)
                            else [])) == 0
    assert_whole(tmp_path)
    same_rows(out / "metrics.jsonl", ref / "metrics.jsonl")
    same_summary(out, ref)
    assert not list(tmp_path.rglob("*.tmp-*")) and not list(tmp_path.glob(".run.*-*"))


SWEEP = {"base": {**RUN_CFG, "train": {**RUN_CFG["train"], "steps": 100}},
         "grid": {"train.lr": [0.3, 0.5]}, "metrics": ["final_train_loss"]}


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-ref")
    (root / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    times = timed(["sweep", "sweep.yaml", "--out", "ref", "--workers", "1", "--no-progress",
                   "--no-report"], root, trial_rows(root / "ref"),
                  lambda: len(list((root / "ref").glob("trials/*/summary.json"))) == 2)
    return root / "sweep.yaml", root / "ref", times


@pytest.mark.parametrize("case", kill_cases(2, 8, RNG_SEED + 1))
def test_sigkill_of_a_sweep_at_a_random_moment_then_rerun(tmp_path, sweep_reference, case):
    from catapults.sweeps import read_index

    spec, ref, (startup, work) = sweep_reference
    anchor, fraction = case
    out = tmp_path / "sw"
    argv = ["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress",
            "--no-report"]

    kill_at(argv, tmp_path, anchor, fraction * (startup if anchor == "start" else work),
            trial_rows(out))
    assert_whole(tmp_path)
    assert main(argv) == 0
    assert_whole(tmp_path)
    rows = read_index(out)
    want = {r["trial_id"]: r for r in read_index(ref)}
    assert sorted(r["trial_id"] for r in rows) == sorted(want) and len(want) == 2
    for r in rows:  # every trial once, completed, as in the sweep never killed
        assert r["status"] == "completed"
        same_rows(out / r["dir"] / "metrics.jsonl", ref / want[r["trial_id"]]["dir"]
                  / "metrics.jsonl")
        same_summary(out / r["dir"], ref / want[r["trial_id"]]["dir"])
    assert not list(out.rglob("*.tmp-*")) and not (out / ".sweep.lock").exists()
