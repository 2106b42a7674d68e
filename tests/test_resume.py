"""Checkpoints and resume: a run killed (SIGKILL), preempted (SIGTERM) or interrupted ends, after
`catapults resume`, exactly as the uninterrupted run: the same metrics rows once each, the same
losses bit for bit (CPU, same threads), summary and events. Bad input changes nothing."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from catapults import __version__, cli
from catapults.config import config_from_dict
from catapults.errors import CheckpointError, RunDirError
from catapults.runs import load_run_model, resume, run
from catapults.storage.rundir import read_metrics
from catapults.training import Callback
from helpers import small_config

CLI = [sys.executable, "-m", "catapults.cli"]
TIMES = {"train_time_s", "wall_time_s", "resumed_from"}  # summary keys that may differ
STEPS = 400  # the killed runs: ~1 s of training after the checkpoint at step 50 is seen


def sgd_config(**output):
    return small_config(
        data={"n_train": 256}, model={"width": 256},
        train={"optimizer": "sgd", "lr": 0.5, "batch_size": 16, "steps": STEPS, "eval_every": 5,
               "threads": 1, "device": "cpu"},
        monitor={"ntk": {"enabled": True, "every": 10}, "events": {"enabled": True}},
        output={"checkpoint_every": 25, "progress": False, **output})


def gd_critical_config(**output):
    """Full-batch GD raised twice to 1.5x the measured critical rate (catapults), rows written
    only every 3rd step (the events monitor reads the full in-memory history)."""
    return small_config(
        data={"n_train": 128}, model={"width": 256},
        train={"optimizer": "gd", "lr": 0.5, "steps": STEPS, "eval_every": 5, "log_every": 3,
               "threads": 1, "device": "cpu",
               "schedule": {"kind": "critical", "milestones": [40, 150], "values": [1.5, 1.5]}},
        monitor={"ntk": {"enabled": True, "every": 5}, "events": {"enabled": True}},
        output={"checkpoint_every": 25, "progress": False, **output})


CONFIGS = {"sgd": sgd_config, "gd-critical": gd_critical_config}


def write_cfg(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def checkpoint_step(path):
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:  # not there yet
        return None


def start_run(cfg_path, out):
    return subprocess.Popen([*CLI, "run", str(cfg_path), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, out, at_least=50, timeout=180):
    """Poll RUN/checkpoint.pt until it holds a step >= at_least; the step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = checkpoint_step(out / "checkpoint.pt")
        if step is not None and step >= at_least:
            return step
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before a checkpoint at step >= "
                        f"{at_least}: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("no checkpoint appeared")


def cli_resume(out):
    return subprocess.run([*CLI, "resume", str(out), "--no-progress"], capture_output=True,
                          text=True, timeout=300)


def assert_same_run(ref, out, steps):
    """``out`` ended as the uninterrupted run ``ref``: rows, summary, events, files."""
    rows, ref_rows = read_metrics(out), read_metrics(ref)
    got = [r["step"] for r in rows]
    assert len(got) == len(set(got)), "a step's row was written twice"
    assert got == [r["step"] for r in ref_rows]
    for a, b in zip(rows, ref_rows):
        assert a == b, f"step {a['step']} differs"  # exact: losses, lr, eigenvalues
    assert (out / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == steps
    assert ({k: v for k, v in summary.items() if k not in TIMES}
            == {k: v for k, v in ref_summary.items() if k not in TIMES})
    assert json.loads((out / "events.json").read_text()) == json.loads(
        (ref / "events.json").read_text())
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        p.name for p in (ref / "figures").iterdir())
    a, _ = load_run_model(out)
    b, _ = load_run_model(ref)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not list(out.rglob("*.tmp-*"))
    return summary


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_sigkill_then_resume_ends_as_the_uninterrupted_run(tmp_path, kind):
    cfg = CONFIGS[kind]()
    ref = run(config_from_dict(cfg), out_dir=tmp_path / "ref").dir
    out = tmp_path / "killed"
    proc = start_run(write_cfg(tmp_path, cfg), out)
    try:
        step = wait_for_checkpoint(proc, out)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "summary.json").exists(), "killed too late: the run had finished"
    step = checkpoint_step(out / "checkpoint.pt")
    assert 50 <= step < STEPS and step % 25 == 0
    done = cli_resume(out)
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {step}" in done.stdout
    summary = assert_same_run(ref, out, STEPS)
    assert summary["resumed_from"] == [step]
    if kind == "gd-critical":  # the raises gave catapults, and rows were thinned by log_every
        assert summary["monitors"]["events"]["count"] >= 2
        assert len(read_metrics(out)) < STEPS


def test_sigterm_records_an_interrupted_run_that_resumes(tmp_path):
    cfg = sgd_config()
    ref = run(config_from_dict(cfg), out_dir=tmp_path / "ref").dir
    out = tmp_path / "preempted"
    proc = start_run(write_cfg(tmp_path, cfg), out)
    try:
        wait_for_checkpoint(proc, out)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "interrupted" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == "interrupted"
    assert "SIGTERM" in summary["error"]
    previous = signal.getsignal(signal.SIGTERM)
    assert cli.main(["resume", str(out), "--no-progress"]) == 0  # in this process
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert_same_run(ref, out, STEPS)


# ---- in-process interruptions -----------------------------------------------------------------
def small_resumable(**train):
    return small_config(train={"optimizer": "sgd", "batch_size": 16, "steps": 60, "lr": 0.3,
                               **train},
                        monitor={"ntk": {"enabled": True, "every": 7}, "events": {"enabled": True}},
                        output={"checkpoint_every": 10, "figures": False})


def interrupt_after_checkpoint(monkeypatch, at_step):
    """Make the next run raise KeyboardInterrupt right after writing its checkpoint at
    ``at_step``, as a Ctrl-C or SIGTERM there would."""
    import catapults.runs as runs

    real = runs.save_checkpoint

    def save(path, ckpt):
        real(path, ckpt)
        if ckpt.get("resumable") and ckpt["step"] == at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_checkpoint", save)


def interrupted_run(tmp_path, monkeypatch, cfg, at_step=30, name="run"):
    out = tmp_path / name
    with monkeypatch.context() as m:
        interrupt_after_checkpoint(m, at_step)
        with pytest.raises(KeyboardInterrupt):
            run(config_from_dict(cfg), out_dir=out)
    return out


def test_checkpoint_holds_everything_and_loads_weights_only(tmp_path, monkeypatch):
    out = interrupted_run(tmp_path, monkeypatch, small_resumable(optimizer="momentum", lr=0.05))
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(ckpt) == {
        "format", "version", "catapults_version", "torch_version", "resumable", "step", "model",
        "model_spec", "optimizer", "schedule", "rng", "batch_order", "lr", "history",
        "callbacks", "elapsed_s", "config", "resumed_from"}
    assert ckpt["format"] == "catapults-checkpoint" and ckpt["version"] == 1
    assert ckpt["catapults_version"] == __version__ and ckpt["resumable"] is True
    assert ckpt["step"] == 30 and [r["step"] for r in ckpt["history"]] == list(range(30))
    assert ckpt["optimizer"]["state"]  # momentum buffers
    order = ckpt["batch_order"]  # 64 samples, batches of 16: step 30 is batch 2 of epoch 7
    assert (order["epoch"], order["position"]) == (7, 2)
    assert sorted(order["permutation"].tolist()) == list(range(64))
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and ckpt["rng"]["cuda"] is None
    assert [c["name"] for c in ckpt["callbacks"]] == ["ntk", "events"]
    ntk = ckpt["callbacks"][0]["state"]
    assert ntk["vecs"].shape == (64, 5) and [r["step"] for r in ntk["rows"]] == [0, 7, 14, 21, 28]
    assert len(ntk["batch_rows"]) == 30
    assert ckpt["config"] == yaml.safe_load((out / "config.yaml").read_text())
    model, cfg = load_run_model(out)  # the model of the latest checkpoint
    assert cfg.output.checkpoint_every == 10 and model.out_dim == 1

    def leaves(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert isinstance(k, (str, int)), k
                yield from leaves(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from leaves(v)
        else:
            yield obj

    plain = (torch.Tensor, str, int, float, bool, type(None))
    assert all(type(v) in plain or isinstance(v, torch.Tensor) for v in leaves(ckpt))

    assert resume(out).status == "completed"  # the final checkpoint keeps today's keys
    final = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model", "config", "step", "model_spec"} <= set(final) and final["step"] == 60
    assert final["resumable"] is False


def test_interrupted_twice_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """Interrupted at 30, resumed, interrupted at 50, resumed: rows written after the
    checkpoint and a torn last line are dropped; every step's row appears once."""
    cfg = small_resumable(log_every=4)
    ref = run(config_from_dict(cfg), out_dir=tmp_path / "ref")
    out = interrupted_run(tmp_path, monkeypatch, cfg, at_step=30)
    with open(out / "metrics.jsonl", "a") as fh:  # what a kill mid-step can leave behind
        fh.write(json.dumps({"step": 30, "epoch": 7, "lr": 0.3}) + "\n")
        fh.write(json.dumps({"step": 31, "loss": 1.0}) + "\n")
        fh.write('{"step": 32, "lo')
    with monkeypatch.context() as m:
        interrupt_after_checkpoint(m, 50)
        with pytest.raises(KeyboardInterrupt):
            resume(out)
    assert json.loads((out / "summary.json").read_text())["reason"] == "interrupted"
    res = resume(out)
    assert res.status == "completed" and res.summary["resumed_from"] == [30, 50]
    assert [r["step"] for r in res.history] == list(range(60))
    assert res.history == ref.history  # the in-memory rows too (log_every thins the file)
    assert (out / "metrics.jsonl").read_bytes() == (ref.dir / "metrics.jsonl").read_bytes()
    assert res.summary["monitors"] == ref.summary["monitors"]


def test_trainer_state_dict_round_trip_is_exact():
    """Trainer level: a state saved after step 23 (saved and loaded as a checkpoint is) and
    loaded into a fresh trainer continues exactly: Adam's moments, a partial last batch."""
    from catapults.data import make_dataset
    from catapults.models import MLP
    from catapults.training import Trainer

    cfg = config_from_dict(small_config(
        data={"n_train": 50}, train={"optimizer": "adam", "lr": 1e-3, "batch_size": 16,
                                     "drop_last": False, "steps": 50}))

    def trainer(**kw):
        data = make_dataset(cfg.data)
        model = MLP(data.in_dim, data.out_dim, width=32, depth=2, seed=0)
        return Trainer(model, data, cfg.train, device="cpu", **kw)

    saved = []

    def keep(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())

    full = trainer(checkpoint_every=23, on_checkpoint=keep).fit()
    assert len(saved) == 2  # steps 23 and 46
    again = trainer()
    again.load_state_dict(torch.load(io.BytesIO(saved[0]), weights_only=True))
    assert again.step == 23
    rest = again.fit()
    assert rest.history == full.history
    for p, q in zip(rest.model.parameters(), full.model.parameters()):
        assert torch.equal(p, q)
    bad = trainer()
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    state["batch_order"]["position"] = 0
    with pytest.raises(CheckpointError, match="batch order"):
        bad.load_state_dict(state)


def test_interrupted_after_the_final_checkpoint_the_run_is_complete(tmp_path, monkeypatch):
    """A SIGTERM between the final checkpoint and summary.json: only the summary was left to
    write, so it is written as it would have been (completed), not 'interrupted'."""
    import catapults.runs as runs

    real = runs.write_json_atomic
    calls = []

    def write(path, obj):
        calls.append(obj.get("status"))
        if len(calls) == 1:
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(runs, "write_json_atomic", write)
    with pytest.raises(KeyboardInterrupt):
        run(config_from_dict(small_resumable()), out_dir=tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert calls == ["completed", "completed"] and summary["status"] == "completed"
    assert summary["steps"] == 60 and "final_train_loss" in summary


def test_checkpoint_false_keeps_no_checkpoint_at_the_end(tmp_path):
    cfg = small_resumable()
    cfg["output"]["checkpoint"] = False
    res = run(config_from_dict(cfg), out_dir=tmp_path / "r")
    assert res.status == "completed" and not (res.dir / "checkpoint.pt").exists()


def test_run_command_restores_the_sigterm_handler(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    cfg = write_cfg(tmp_path, small_config(output={"figures": False}))
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert signal.getsignal(signal.SIGTERM) is previous


# ---- bad input: exit 2, one line naming the file, nothing changed -----------------------------
def snapshot(root: Path):
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None,
                                       p.stat().st_mtime_ns) for p in root.rglob("*")}


class Evil:
    """Unpickling this runs code: it would create the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class InterruptAt(Callback):
    """Ctrl-C at the start of update ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, state, X, y, record):
        if state.step == self.step:
            raise KeyboardInterrupt


def _rewrite_checkpoint(out, **changes):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, out / "checkpoint.pt")


def _bad_case(case, tmp_path, monkeypatch):
    """The run directory of one bad case and the file its message must name."""
    resumable = small_resumable()
    if case == "not-a-run":
        out = tmp_path / "plain"
        out.mkdir()
        (out / "notes.txt").write_text("precious")
        (out / "config.yaml").write_text("{}")
        return out, out
    if case == "missing-dir":
        return tmp_path / "nowhere", tmp_path / "nowhere"
    if case in ("completed", "final-checkpoint-only"):
        out = run(config_from_dict(resumable), out_dir=tmp_path / "done").dir
        if case == "completed":
            return out, out / "summary.json"
        (out / "summary.json").unlink()  # killed after the final checkpoint
        return out, out / "checkpoint.pt"
    if case == "diverged":
        cfg = small_config(train={"lr": 1e4}, output={"checkpoint_every": 10})
        out = run(config_from_dict(cfg), out_dir=tmp_path / "div").dir
        assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
        return out, out / "summary.json"
    if case == "no-checkpoint-every":
        out = tmp_path / "plain-run"
        with pytest.raises(KeyboardInterrupt):
            run(config_from_dict(small_config(train={"steps": 60})), out_dir=out,
                callbacks=[InterruptAt(30)])
        assert json.loads((out / "summary.json").read_text())["reason"] == "interrupted"
        return out, out / "checkpoint.pt"
    out = interrupted_run(tmp_path, monkeypatch, resumable)
    ckpt = out / "checkpoint.pt"
    if case == "other-version":
        _rewrite_checkpoint(out, catapults_version="0.1.0")
    elif case == "other-format-version":
        _rewrite_checkpoint(out, version=99)
    elif case == "legacy-checkpoint":
        ckpt_data = torch.load(ckpt, weights_only=True)
        torch.save({k: ckpt_data[k] for k in ("model", "config", "step", "model_spec")}, ckpt)
    elif case == "config-differs":
        raw = yaml.safe_load((out / "config.yaml").read_text())
        raw["train"]["lr"] = 0.25
        (out / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    elif case == "truncated":
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    elif case == "empty":
        ckpt.write_bytes(b"")
    elif case == "garbage":
        ckpt.write_bytes(b"this is not a checkpoint at all")
    elif case == "not-a-dict":
        torch.save([1, 2, 3], ckpt)
    elif case == "unsafe-pickle":
        torch.save({"format": "catapults-checkpoint", "x": Evil(tmp_path / "ran")}, ckpt)
    elif case == "wrong-model":
        _rewrite_checkpoint(out, model={"nope": torch.zeros(1)})
    elif case == "config-yaml-corrupt":
        (out / "config.yaml").write_text("train: [unclosed")
        return out, out / "config.yaml"
    elif case == "summary-corrupt":
        (out / "summary.json").write_text("{not json")
        return out, out / "summary.json"
    return out, ckpt


BAD = ["not-a-run", "missing-dir", "completed", "diverged", "no-checkpoint-every",
       "final-checkpoint-only", "other-version", "other-format-version", "legacy-checkpoint",
       "config-differs", "truncated", "empty", "garbage", "not-a-dict", "unsafe-pickle",
       "wrong-model", "config-yaml-corrupt", "summary-corrupt"]


@pytest.mark.parametrize("case", BAD)
def test_bad_resume_input_exits_2_naming_the_file_and_changes_nothing(tmp_path, monkeypatch,
                                                                      capsys, case):
    out, named = _bad_case(case, tmp_path, monkeypatch)
    before = snapshot(out)
    time.sleep(0.01)  # a rewrite would show in the mtimes
    capsys.readouterr()
    assert cli.main(["resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("catapults: error: "), err
    assert str(named) in err, err
    assert snapshot(out) == before
    assert not (tmp_path / "ran").exists()
    assert not list(tmp_path.rglob("*.tmp-*"))
    with pytest.raises((RunDirError, CheckpointError)):  # the Python face raises the same
        resume(out)


def test_resume_of_a_run_still_going_is_refused(tmp_path, monkeypatch, capsys):
    """A run holds an OS lock on its marker while it trains (dropped when it dies)."""
    import fcntl

    out = interrupted_run(tmp_path, monkeypatch, small_resumable())
    before = snapshot(out)
    fd = os.open(out / ".catapults-run", os.O_RDONLY)  # as the running process would
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        capsys.readouterr()
        assert cli.main(["resume", str(out)]) == 2
        err = capsys.readouterr().err
        assert "still going" in err and str(out) in err and err.count("\n") == 1
        assert snapshot(out) == before
    finally:
        os.close(fd)
    assert resume(out).status == "completed"


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    out = interrupted_run(tmp_path, monkeypatch, small_resumable())
    marker = tmp_path / "code-ran"
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["callbacks"][0]["state"]["vecs"] = Evil(marker)  # deep inside an otherwise fine dict
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused.*run as code"):
        resume(out)
    assert not marker.exists()
    proc = cli_resume(out)
    assert proc.returncode == 2 and "refused" in proc.stderr and not marker.exists()
    bait = torch.load(out / "checkpoint.pt", weights_only=False)  # the bait is real: it runs
    bait["callbacks"][0]["state"]["vecs"].close()                 # code (it opens a file)
    assert marker.exists()
    os.unlink(marker)
