import argparse
import csv
import json
import os
import statistics
import subprocess
import sys

import pytest
import yaml

from catapults import runs
from catapults.cli.sweep import add_parsers, cmd_sweep, cmd_sweep_report
from catapults.config import ConfigError
from catapults.sweeps import (
    expand,
    load_sweep,
    read_index,
    run_sweep,
    sweep_report,
    trial_id,
    use_log_x,
)

BASE = {
    "data": {"name": "synthetic", "d": 5, "target": "x1*x2", "n_train": 32, "n_test": 32},
    "model": {"depth": 2, "width": 16},
    "train": {"optimizer": "sgd", "batch_size": 8, "lr": 0.5, "steps": 20, "eval_every": 5,
              "max_loss": 1e4},
    "monitor": {"events": {"enabled": True}},
    "output": {"progress": False, "checkpoint": False, "figures": False},
}
METRICS = ["final_test_loss", "final_train_loss", "monitors.events.count"]


def spec(**extra):
    out = {"base": json.loads(json.dumps(BASE)), "metrics": METRICS}
    out.update(extra)
    return out


def write_spec(tmp_path, s, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(s, sort_keys=False))
    return path


def parse(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    return p.parse_args(argv)


def summaries(sweep_dir):
    return {r["trial_id"]: json.loads((sweep_dir / r["dir"] / "summary.json").read_text())
            for r in read_index(sweep_dir) if (sweep_dir / r["dir"] / "summary.json").is_file()}


def mtimes(sweep_dir):
    return {p.parent.name: p.stat().st_mtime_ns
            for p in (sweep_dir / "trials").glob("*/summary.json")}


class CountingRun:
    """Wraps catapults.runs.run (in-process trials): counts runs per trial, can fail some."""

    def __init__(self, monkeypatch, fail=None):
        self.calls, self.fail, self.real = [], fail, runs.run
        monkeypatch.setattr(runs, "run", self)

    def __call__(self, config, *, out_dir, **kw):
        self.calls.append(os.path.basename(out_dir))
        if self.fail is not None and self.fail(config):
            raise RuntimeError("injected failure")
        return self.real(config, out_dir=out_dir, **kw)


# ---- expansion, ids, validation -----------------------------------------------------------
def test_grid_expansion_order_and_stable_ids():
    s = spec(grid={"train.batch_size": [4, 8], "train.lr": [0.5, 1.0]},
             trials=[{"model.width": 16}, {"model.width": 8}], seeds=[0, 1])
    pts = expand(s)
    assert len(pts) == 2 * 4 * 2
    assert pts[0] == ({"model.width": 16, "train.batch_size": 4, "train.lr": 0.5}, 0)
    assert pts[1] == ({"model.width": 16, "train.batch_size": 4, "train.lr": 0.5}, 1)
    assert pts[-1] == ({"model.width": 8, "train.batch_size": 8, "train.lr": 1.0}, 1)
    sw = load_sweep(s)
    ids = [t.id for t in sw.trials]
    assert len(set(ids)) == len(ids)
    assert sw.swept == ["model.width", "train.batch_size", "train.lr"]
    t = sw.trials[0]
    assert t.config.train.seed == 0 and t.config.train.batch_size == 4
    assert t.config.model.width == 16 and t.config.output.progress is False
    assert t.id.startswith("width=16_batch_size=4_lr=0.5_seed=0-")
    # the id depends on the parameters only: not on the grid order or the rest of the sweep
    reordered = spec(grid={"train.lr": [1.0, 0.5], "train.batch_size": [8, 4]},
                     trials=[{"model.width": 16}], seeds=[0])
    assert t.id in {x.id for x in load_sweep(reordered).trials}
    assert trial_id({"train.lr": 0.5}, 1) == trial_id({"train.lr": 0.5}, 1)
    assert trial_id({"train.lr": 0.5}, 1) != trial_id({"train.lr": 0.5}, 2)
    assert trial_id({"train.lr": 0.5}, None) != trial_id({"train.lr": 0.25}, None)
    # no grid, no seeds: one trial, the base config
    assert len(load_sweep(spec()).trials) == 1


def test_base_config_file_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = write_spec(tmp_path, {"base_config": "base.yaml", "grid": {"train.lr": [0.1, 0.2]}})
    sw = load_sweep(path, ["model.width=12"], threads=1)
    assert [t.config.train.lr for t in sw.trials] == [0.1, 0.2]
    assert all(t.config.model.width == 12 and t.config.train.threads == 1 for t in sw.trials)
    assert sw.metrics == ["final_train_loss", "final_test_loss"]


@pytest.mark.parametrize("bad, message", [
    ({"grid": {"train.lr": [0.5, -1.0]}}, "lr=-1"),
    ({"grid": {"model.widht": [8]}}, "model.widht: unknown field"),
    ({"trials": [{"train.lr": 0.5}, {"train.optimizer": "sgdd"}]}, "train.optimizer"),
    ({"grid": {"train.seed": [0, 1]}}, "seeds"),
    ({"grid": {"train.lr": []}}, "grid.train.lr"),
    ({"gird": {"train.lr": [1]}}, "gird: unknown key"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"base_config": "nope.yaml"}, "base_config"),
])
def test_validation_names_trial_and_field_before_anything_is_written(tmp_path, bad, message):
    s = spec(**bad)
    if "base_config" in bad:
        del s["base"]
    path = write_spec(tmp_path, s)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message) as err:
        run_sweep(path, out, workers=1, progress=False)
    assert str(path) in str(err.value)
    assert not out.exists()
    if message == "lr=-1":  # the trial (its id) and the field are named
        bad_id = trial_id({"train.lr": -1.0}, None)
        assert bad_id in str(err.value) and "train.lr" in str(err.value)


# ---- running, resuming, failures -----------------------------------------------------------
def test_sweep_report_and_diverged_trial(tmp_path):
    """In-process sweep: index, diverged trial recorded, aggregation against hand computation."""
    s = spec(grid={"train.lr": [0.5, 500.0], "train.batch_size": [8, 32]}, seeds=[0, 1, 2])
    out = tmp_path / "sw"
    res = run_sweep(write_spec(tmp_path, s), out, workers=1, progress=False)
    rows = read_index(out)
    assert len(rows) == 12 and res.ran == 12 and res.skipped == 0
    by_lr = {}
    for r in rows:
        by_lr.setdefault(r["params"]["train.lr"], set()).add(r["status"])
    assert by_lr == {0.5: {"completed"}, 500.0: {"diverged"}}
    assert (out / "index.csv").is_file() and (out / "sweep.yaml").is_file()
    assert not list(out.rglob("*.tmp-*")) and not (out / ".sweep.lock").exists()
    for r in rows:  # every trial is an ordinary run directory
        assert (out / "trials" / r["trial_id"] / "metrics.jsonl").is_file()
        assert r["attempts"] == 1

    sums = summaries(out)
    rep = sweep_report(out)
    table = {(g["params"]["train.lr"], g["params"]["train.batch_size"]): g for g in rep.groups}
    assert len(table) == 4
    with open(rep.csv) as fh:
        csv_rows = {(float(r["train.lr"]), int(r["train.batch_size"])): r
                    for r in csv.DictReader(fh)}
    for bs in (8, 32):
        ids = [r["trial_id"] for r in rows if r["params"] == {"train.lr": 0.5,
                                                              "train.batch_size": bs}]
        assert len(ids) == 3
        for m in METRICS:
            vals = [float(runs_get(sums[i], m)) for i in ids]
            st = table[(0.5, bs)]["stats"][m]
            assert st["n"] == 3
            assert st["mean"] == pytest.approx(statistics.fmean(vals), rel=1e-12)
            assert st["std"] == pytest.approx(statistics.stdev(vals), rel=1e-12, abs=1e-15)
            row = csv_rows[(0.5, bs)]
            assert float(row[f"{m}.mean"]) == pytest.approx(statistics.fmean(vals), rel=1e-12)
            assert int(row[f"{m}.n"]) == 3
        diverged = table[(500.0, bs)]
        assert diverged["diverged"] == 3 and diverged["stats"]["final_test_loss"]["n"] == 0
    assert len(rep.figures) == len(METRICS) * 2
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in rep.figures)
    # including diverged trials: their (finite) final losses enter the aggregate
    rep2 = sweep_report(out, metrics=["monitors.events.count"], include=("completed", "diverged"),
                        figures=False)
    assert all(g["stats"]["monitors.events.count"]["n"] == 3 for g in rep2.groups)
    assert use_log_x("train.batch_size", [1, 32]) and not use_log_x("model.depth", [2, 3])


def runs_get(summary, key):
    for part in key.split("."):
        summary = summary[part]
    return summary


def test_resume_after_killed_sweep_runs_nothing_twice(tmp_path, monkeypatch):
    s = spec(grid={"train.batch_size": [4, 16]}, seeds=[0, 1, 2])
    path = write_spec(tmp_path, s)
    out = tmp_path / "sw"
    counter = CountingRun(monkeypatch)
    run_sweep(path, out, workers=1, progress=False, report=False)
    assert len(counter.calls) == 6 and len(set(counter.calls)) == 6
    before = mtimes(out)
    ids = sorted(before)

    # simulate a sweep killed mid-way: one trial unfinished (no summary), one never started
    # (its directory gone), a half-written temporary file, the index stale, a stale lock
    (out / "trials" / ids[0] / "summary.json").unlink()
    (out / "trials" / ids[0] / ".summary.json.tmp-99999").write_text("{half")
    import shutil
    shutil.rmtree(out / "trials" / ids[1])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".sweep.lock").write_text(str(dead.pid))

    counter.calls.clear()
    res = run_sweep(path, out, workers=1, progress=False, report=False)
    assert sorted(counter.calls) == sorted(ids[:2])  # only the two unfinished trials ran
    assert res.ran == 2 and res.skipped == 4
    after = mtimes(out)
    for tid in ids[2:]:
        assert after[tid] == before[tid]  # finished trials untouched
    rows = read_index(out)
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert all(r["status"] == "completed" for r in rows)
    attempts = {r["trial_id"]: r["attempts"] for r in rows}
    assert attempts[ids[0]] == attempts[ids[1]] == 2
    assert all(attempts[t] == 1 for t in ids[2:])
    assert not list(out.rglob("*.tmp-*"))
    with open(out / "index.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6

    counter.calls.clear()  # a third run does nothing
    assert run_sweep(path, out, workers=1, progress=False, report=False).ran == 0
    assert counter.calls == []


def test_locked_sweep_directory_is_refused(tmp_path):
    path = write_spec(tmp_path, spec())
    out = tmp_path / "sw"
    out.mkdir()
    (out / "index.jsonl").write_text("")
    import fcntl

    with open(out / ".sweep.lock", "w") as held:  # another sweep holds the lock
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match=r"in use by another sweep \(process 4242\)"):
            run_sweep(path, out, workers=1, progress=False)
    assert (out / ".sweep.lock").read_text() == "4242"  # the holder's file is untouched


def _contend(d, barrier, q):  # pragma: no cover - runs in a child process
    import time

    from catapults.sweeps import _Lock

    barrier.wait()
    try:
        with _Lock(d):
            t0 = time.monotonic()
            time.sleep(0.02)
            q.put((t0, time.monotonic()))
    except ConfigError:
        q.put(None)


def test_lock_is_exclusive_under_contention(tmp_path):
    """Sweeps started at the same moment on one directory (with a stale lock file, or none):
    never two holders at once. (An earlier pid-file lock failed this about 6% of the time.)"""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for i in range(40):
        d = tmp_path / f"d{i}"
        d.mkdir()
        if i % 2:
            (d / ".sweep.lock").write_text("999999")  # left by a killed sweep
        barrier, q = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(d, barrier, q)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=30)
        held = [r for r in (q.get(timeout=5) for _ in procs) if r is not None]
        assert held, "nobody took the lock"
        for a in range(len(held)):
            for b in range(a + 1, len(held)):
                (s1, e1), (s2, e2) = held[a], held[b]
                assert e1 <= s2 or e2 <= s1, f"two holders at once (round {i})"
        assert not (d / ".sweep.lock").exists()


def test_edited_sweep_is_not_silently_reused(tmp_path):
    path = write_spec(tmp_path, spec(seeds=[0]))
    out = tmp_path / "sw"
    run_sweep(path, out, workers=1, progress=False, report=False)
    with pytest.raises(ConfigError, match="train.steps"):
        run_sweep(path, out, workers=1, progress=False, overrides=["train.steps=21"])


def test_failing_trial_is_recorded_and_retried(tmp_path, monkeypatch):
    path = write_spec(tmp_path, spec(grid={"train.lr": [0.25, 0.5]}, seeds=[0, 1]))
    out = tmp_path / "sw"
    counter = CountingRun(monkeypatch, fail=lambda c: c.train.seed == 1 and c.train.lr == 0.5)
    res = run_sweep(path, out, workers=1, progress=False)
    status = {(r["params"]["train.lr"], r["seed"]): r for r in read_index(out)}
    assert status[(0.5, 1)]["status"] == "failed"
    assert "injected failure" in status[(0.5, 1)]["error"]
    assert sum(r["status"] == "completed" for r in status.values()) == 3
    assert res.counts == {"completed": 3, "failed": 1}
    failed_dir = out / status[(0.5, 1)]["dir"]
    assert json.loads((failed_dir / "summary.json").read_text())["status"] == "failed"
    assert "injected failure" in (failed_dir / "traceback.txt").read_text()
    rep = sweep_report(out, figures=False)
    g = next(g for g in rep.groups if g["params"] == {"train.lr": 0.5})
    assert g["failed"] == 1 and g["stats"]["final_test_loss"]["n"] == 1

    counter.fail = None
    counter.calls.clear()
    run_sweep(path, out, workers=1, progress=False, report=False)
    assert counter.calls == [status[(0.5, 1)]["trial_id"]]  # only the failed one is retried
    rows = read_index(out)
    assert all(r["status"] == "completed" for r in rows) and len(rows) == 4
    assert {r["trial_id"]: r["attempts"] for r in rows}[status[(0.5, 1)]["trial_id"]] == 2


def test_ctrl_c_leaves_a_consistent_index(tmp_path, monkeypatch):
    path = write_spec(tmp_path, spec(seeds=[0, 1, 2, 3]))
    out = tmp_path / "sw"

    def interrupt(config):
        if config.train.seed == 1:
            raise KeyboardInterrupt
        return False

    counter = CountingRun(monkeypatch, fail=interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, out, workers=1, progress=False)
    rows = read_index(out)
    assert [r["status"] for r in rows] == ["completed", "pending", "pending", "pending"] or \
        [r["status"] for r in rows] == ["completed", "failed", "pending", "pending"]
    assert not list(out.rglob("*.tmp-*")) and not (out / ".sweep.lock").exists()
    counter.fail = None
    counter.calls.clear()
    run_sweep(path, out, workers=1, progress=False, report=False)
    assert len(counter.calls) == 3 and rows[0]["trial_id"] not in counter.calls
    assert all(r["status"] == "completed" for r in read_index(out))


def test_cli_pool_failure_divergence_and_retry(tmp_path, capsys, monkeypatch):
    """Worker processes (spawn): a crashing trial and a diverging one do not stop the others;
    the CLI exits 1; a re-run retries only the failed trial. (A trial whose data is missing is
    refused before anything is written; to make it crash in its worker, that check is
    switched off here.)"""
    s = spec(trials=[{"train.lr": 0.5}, {"train.lr": 500.0},
                     {"data.name": "mnist", "data.root": str(tmp_path / "no-data"),
                      "data.classes": [0, 1]}],
             seeds=[0])
    path = write_spec(tmp_path, s)
    out = tmp_path / "sw"
    args = parse(["sweep", str(path), "--out", str(out), "--workers", "2", "--no-progress"])
    with pytest.raises(ConfigError, match=r"trial .*data.name=mnist.*no-data does not exist"):
        cmd_sweep(args)
    assert not out.exists()
    from catapults.sweeps import launchers

    monkeypatch.setattr(launchers, "check_trials", lambda *a, **k: None)  # run_sweep's check
    assert cmd_sweep(args) == 1
    text = capsys.readouterr().out
    assert "3 trials: 1 completed, 1 diverged, 1 failed" in text
    rows = read_index(out)
    st = {r["trial_id"]: r["status"] for r in rows}
    assert sorted(st.values()) == ["completed", "diverged", "failed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert all(r["params"]["data.name"] == "mnist" and r["error"] for r in failed)
    before = mtimes(out)
    assert cmd_sweep(args) == 1  # retried (and fails again: the data is still missing)
    after = mtimes(out)
    rows2 = {r["trial_id"]: r for r in read_index(out)}
    assert len(rows2) == 3
    for tid, status in st.items():
        changed = after[tid] != before[tid]
        assert changed == (status == "failed"), tid
        assert rows2[tid]["attempts"] == (2 if status == "failed" else 1)
    assert (out / "report" / "report.csv").is_file()
    assert cmd_sweep_report(parse(["sweep-report", str(out), "--no-figures"])) == 0
    assert "final_test_loss" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="not a sweep directory"):
        cmd_sweep_report(parse(["sweep-report", str(tmp_path)]))


# ---- Ray -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install -r requirements-ray.txt)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_backend(tmp_path, local_ray):
    s = spec(grid={"train.batch_size": [4, 16]}, seeds=[0, 1])
    path = write_spec(tmp_path, s)
    out = tmp_path / "sw"
    res = run_sweep(path, out, backend="ray", progress=False)
    rows = read_index(out)
    assert res.ran == 4 and [r["status"] for r in rows] == ["completed"] * 4
    assert local_ray.is_initialized()  # a cluster we did not start is left running
    for r in rows:
        tdir = out / r["dir"]
        assert {"config.yaml", "metrics.jsonl", "summary.json"} <= {p.name for p in
                                                                    tdir.iterdir()}
        cfg = yaml.safe_load((tdir / "config.yaml").read_text())
        assert cfg["output"]["dir"] == str(tdir) and cfg["train"]["threads"] == 1
        assert r["metrics"]["final_test_loss"] == pytest.approx(
            json.loads((tdir / "summary.json").read_text())["final_test_loss"])
    assert not list(out.rglob(".incoming-*"))
    # the same trials in-process give the same numbers (the backend does not change results)
    local = run_sweep(path, tmp_path / "local", workers=1, progress=False, report=False)
    assert [r["metrics"] for r in local.rows] == [r["metrics"] for r in rows]
    before = mtimes(out)
    assert run_sweep(path, out, backend="ray", progress=False).ran == 0
    assert mtimes(out) == before



def children(pid):
    """Child pids of ``pid`` (Linux /proc)."""
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.update(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def gone(pids, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigint", "ctrl-c-group", "sigterm-cli", "sigkill"])
def test_ctrl_c_stops_worker_processes_cleanly(tmp_path, how):
    """A real signal to a sweep running in worker processes: SIGINT to the sweep process, a
    terminal's Ctrl-C (SIGINT to the whole process group, workers included), or SIGTERM to
    `catapults sweep`. The running trials stop and are recorded as failed (interrupted), the
    index is complete, no worker process, temporary file or lock is left behind. After SIGKILL
    (nothing can be cleaned up) the workers still exit, and do not finish their trials."""
    import signal
    import time

    s = spec(seeds=[0, 1, 2, 3])
    s["base"]["train"]["steps"] = 200_000
    path = write_spec(tmp_path, s)
    out = tmp_path / "sw"
    # As under a terminal, the child gets Python's default SIGINT handler explicitly: a shell
    # starts background jobs with SIGINT ignored, and that disposition would be inherited.
    preamble = "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    if how == "sigterm-cli":
        code = preamble + ("from catapults.cli import main\n"
                           f"sys.exit(main(['sweep', {str(path)!r}, '--out', {str(out)!r}, "
                           "'--workers', '2', '--threads', '1', '--no-progress']))\n")
    else:
        code = preamble + ("from catapults.sweeps import run_sweep\ntry:\n"
                           f"    run_sweep({str(path)!r}, {str(out)!r}, workers=2, threads=1, "
                           "progress=False)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n")
    cmd = [sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.glob("trials/*/metrics.jsonl"))) < 2:
            time.sleep(0.2)
        assert len(list(out.glob("trials/*/metrics.jsonl"))) == 2, "trials did not start"
        time.sleep(0.5)
        workers = children(proc.pid)
        assert len(workers) >= 2
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
        elif how == "ctrl-c-group":
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "sigkill":
            proc.kill()
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == (-signal.SIGKILL if how == "sigkill" else 130)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = proc.stderr.read()
    assert gone(workers), "worker processes outlived the sweep"
    assert "Traceback" not in stderr, stderr
    if how == "sigkill":
        for trial in out.glob("trials/*"):
            assert not (trial / "summary.json").exists()  # interrupted mid-trial, not finished
        rows = read_index(out)  # what the killed sweep last wrote: the two attempts it made
        assert sorted((r["status"], r["attempts"]) for r in rows) == [
            ("pending", 0), ("pending", 0), ("running", 1), ("running", 1)]
        return
    if how == "sigterm-cli":
        assert "Run the same command again to resume" in stderr
    rows = read_index(out)
    assert len(rows) == 4
    statuses = sorted(r["status"] for r in rows)
    assert statuses == ["failed", "failed", "pending", "pending"], statuses
    for r in rows:
        if r["status"] == "failed":
            summary = json.loads((out / r["dir"] / "summary.json").read_text())
            assert summary["reason"] == "interrupted"
            assert r["attempts"] == 1
    assert not list(out.rglob("*.tmp-*")) and not (out / ".sweep.lock").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_event_stops_a_sweep_in_a_thread(tmp_path, workers):
    """run_sweep in a thread (where Ctrl-C never arrives): setting `stop` stops it like Ctrl-C,
    in this process (workers=1) or in worker processes."""
    import threading
    import time

    s = spec(seeds=[0, 1, 2])
    s["base"]["train"]["steps"] = 200_000
    path = write_spec(tmp_path, s)
    out = tmp_path / "sw"
    stop, raised = threading.Event(), []

    def target():
        try:
            run_sweep(path, out, workers=workers, threads=1, progress=False, stop=stop)
        except KeyboardInterrupt:
            raised.append(True)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and \
            len(list(out.glob("trials/*/metrics.jsonl"))) < workers:
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive() and raised == [True]
    statuses = sorted(r["status"] for r in read_index(out))
    assert statuses == sorted(["failed"] * workers + ["pending"] * (3 - workers)), statuses
    assert not (out / ".sweep.lock").exists()


@pytest.mark.parametrize("grid, message", [
    ({"data.target": ["x1*x2", "x99"]}, r"trial .*target=x99.*data.target"),
    ({"train.batch_size": [8, 1000]}, r"trial .*batch_size=1000.*larger than the training set"),
])
def test_trials_run_would_refuse_are_refused_before_anything_is_written(tmp_path, grid,
                                                                        message):
    path = write_spec(tmp_path, spec(grid=grid, seeds=[0]))
    out = tmp_path / "sw"
    with pytest.raises(ConfigError, match=message):
        run_sweep(path, out, workers=1, progress=False)
    assert not out.exists()


# ---- a killed or interrupted trial resumes from its checkpoint -----------------------------
def resumable_spec(steps=60):
    s = spec(grid={"train.lr": [0.3, 0.5]})
    s["base"]["train"].update(steps=steps, threads=1, device="cpu")
    s["base"]["monitor"]["ntk"] = {"enabled": True, "every": 7}
    s["base"]["output"]["checkpoint_every"] = 10
    return s


def test_an_interrupted_trial_resumes_and_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    """The sweep is interrupted in a trial right after its checkpoint at step 30; the next
    `sweep` resumes that trial from step 30 (not from 0) and it ends bit for bit as in a sweep
    that was never interrupted. A trial whose checkpoint was written with another config
    (the sweep edited under it) is started again instead."""
    path = write_spec(tmp_path, resumable_spec())
    ref = tmp_path / "ref"
    run_sweep(path, ref, workers=1, progress=False, report=False)

    out = tmp_path / "sw"
    real = runs.save_checkpoint
    with monkeypatch.context() as m:
        def save(p, ckpt):
            real(p, ckpt)
            if ckpt.get("resumable") and ckpt["step"] == 30:
                raise KeyboardInterrupt
        m.setattr(runs, "save_checkpoint", save)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(path, out, workers=1, progress=False, report=False)
    rows = {r["trial_id"]: r for r in read_index(out)}
    stopped = [t for t, r in rows.items() if r["status"] == "failed"]
    assert len(stopped) == 1
    calls = []
    real_resume = runs.resume
    monkeypatch.setattr(runs, "resume", lambda d, **kw: calls.append(d) or real_resume(d, **kw))
    res = run_sweep(path, out, workers=1, progress=False, report=False)
    assert res.ran == 2 and [os.path.basename(c) for c in calls] == stopped
    got, want = summaries(out), summaries(ref)
    assert got[stopped[0]]["resumed_from"] == [30]
    for tid, r in rows.items():
        a = (out / r["dir"] / "metrics.jsonl").read_bytes()
        assert a == (ref / r["dir"] / "metrics.jsonl").read_bytes(), tid
        assert got[tid]["status"] == "completed"
        assert got[tid]["final_train_loss"] == want[tid]["final_train_loss"]


def test_a_trial_checkpointed_with_another_config_starts_again(tmp_path, monkeypatch):
    """The first trial of a sweep run with ``train.steps=120`` is interrupted after its
    checkpoint at step 20; the sweep run again without the override (the trial unfinished, so
    not refused as edited) starts that trial afresh rather than resuming a checkpoint of
    another config."""
    path = write_spec(tmp_path, resumable_spec())
    out = tmp_path / "sw"
    real = runs.save_checkpoint
    with monkeypatch.context() as m:
        def save(p, ckpt):
            real(p, ckpt)
            if ckpt.get("resumable") and ckpt["step"] == 20:
                raise KeyboardInterrupt
        m.setattr(runs, "save_checkpoint", save)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(path, out, workers=1, progress=False, report=False,
                      overrides=["train.steps=120"])
    trial = load_sweep(path).trials[0]
    d = out / "trials" / trial.id
    edited = load_sweep(path, ["train.steps=120"], threads=7).trials[0].config
    assert runs.resume_problem(d, edited, ignore=("train.threads",)) is None
    assert "train.threads" in runs.resume_problem(d, edited)
    problem = runs.resume_problem(d, trial.config, ignore=("train.threads",))
    assert problem is not None and "train.steps" in problem
    run_sweep(path, out, workers=1, progress=False, report=False)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "completed" and "resumed_from" not in summary
    assert summary["steps"] == 60
    assert runs.resume_problem(tmp_path / "nothing", trial.config) is not None


@pytest.mark.parametrize("delay", [0.0, 0.37])
def test_sigkill_of_a_sweep_then_resume_matches_the_uninterrupted_sweep(tmp_path, delay):
    """SIGKILL to the whole process group of a sweep running its trials in worker processes
    (a node lost), once both trials have checkpointed (plus a delay, so the kill lands at
    another moment of the step and checkpoint cycle): running the sweep again resumes both
    trials from their checkpoints and every trial's metrics are byte for byte those of a sweep
    that was never killed."""
    import signal
    import time

    s = resumable_spec(steps=1200)
    s["base"]["model"]["width"] = 256
    s["base"]["data"]["n_train"] = 256
    s["base"]["monitor"]["ntk"]["every"] = 10
    s["base"]["output"]["checkpoint_every"] = 25
    path = write_spec(tmp_path, s)
    ref, out = tmp_path / "ref", tmp_path / "sw"
    code = ("from catapults.sweeps import run_sweep\n"
            f"run_sweep({str(path)!r}, {str(out)!r}, workers=2, threads=1, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            steps = [runs_checkpoint_step(p) for p in out.glob("trials/*/checkpoint.pt")]
            if len(steps) == 2 and all(st is not None and st >= 50 for st in steps):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        else:
            pytest.fail("the trials did not checkpoint")
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not any((t / "summary.json").exists() for t in out.glob("trials/*")), \
        "a trial finished before the kill: the test did not interrupt it"
    run_sweep(path, out, workers=2, threads=1, progress=False, report=False)
    run_sweep(path, ref, workers=2, threads=1, progress=False, report=False)
    got, want = summaries(out), summaries(ref)
    assert sorted(got) == sorted(want) and len(got) == 2
    for tid, r in {r["trial_id"]: r for r in read_index(out)}.items():
        assert got[tid]["status"] == "completed" and len(got[tid]["resumed_from"]) == 1
        assert ((out / r["dir"] / "metrics.jsonl").read_bytes()
                == (ref / r["dir"] / "metrics.jsonl").read_bytes()), tid
        assert r["attempts"] == 2
    assert not list(out.rglob("*.tmp-*")) and not (out / ".sweep.lock").exists()


def runs_checkpoint_step(path):
    import torch

    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:  # not there yet, or being replaced
        return None
