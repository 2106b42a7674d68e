"""Disk full and other write failures (issue 16): an OSError while writing (ENOSPC, EROFS, ...)
is one message naming the file; a failed write leaves no half-written file under a final name
(nor a temporary one); a failed checkpoint leaves summary.json saying failed with the reason (when
that can still be written), and the run resumes from its last good checkpoint."""

import builtins
import errno
import json
import os
import types
from pathlib import Path

import pytest
import torch
import yaml

from catapults import runs
from catapults.cli import main
from catapults.config import config_from_dict
from catapults.errors import WriteError
from catapults.storage import atomic, rundir
from catapults.storage.checkpoint import read_checkpoint
from tests.helpers import small_config


def _config(tmp_path, **output):
    return config_from_dict(small_config(
        train={"steps": 12, "threads": 1},
        output={"dir": str(tmp_path / "run"), "figures": False, "checkpoint_every": 4,
                **output}))


class _Half:
    """A file that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, fh, code):
        self._fh, self._code = fh, code

    def write(self, data):
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def fail_writes(monkeypatch, names, *, after=0, code=errno.ENOSPC):
    """Writes of the files ``names`` (final names) through the atomic writer fail with ``code``
    after ``after`` successful ones."""
    seen = {"n": 0}

    def fake_open(file, mode="r", *args, **kwargs):
        fh = builtins.open(file, mode, *args, **kwargs)
        final = Path(file).name.lstrip(".").split(".tmp-")[0]
        if "w" in mode and final in names:
            seen["n"] += 1
            if seen["n"] > after:
                return _Half(fh, code)
        return fh

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    return seen


def assert_nothing_half_written(run_dir: Path):
    """No temporary file left; every file under its final name reads back whole."""
    left = [p.name for p in run_dir.rglob("*") if ".tmp-" in p.name]
    assert not left, left
    for p in run_dir.rglob("*"):
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)
        elif p.suffix == ".yaml":
            yaml.safe_load(p.read_text())
        elif p.suffix == ".pt":
            read_checkpoint(p)


def test_checkpoint_disk_full_leaves_failed_summary_and_resumes(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    reference = runs.run(config_from_dict({**cfg.to_dict(), "output": {
        **cfg.to_dict()["output"], "dir": str(tmp_path / "ref")}}))
    fail_writes(monkeypatch, {"checkpoint.pt"}, after=1)  # the step-4 checkpoint is written
    with pytest.raises(WriteError) as err:
        runs.run(cfg)
    run_dir = tmp_path / "run"
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(run_dir / "checkpoint.pt")
    assert str(err.value) == (f"{run_dir / 'checkpoint.pt'}: cannot write it: "
                              "No space left on device")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "checkpoint.pt" in summary["error"]
    assert "No space left on device" in summary["error"]
    assert_nothing_half_written(run_dir)
    assert read_checkpoint(run_dir / "checkpoint.pt")["step"] == 4
    monkeypatch.undo()
    resumed = runs.resume(run_dir)  # the space is back: resume from the last good checkpoint
    assert resumed.status == "completed" and resumed.summary["resumed_from"] == [4]
    for a, b in zip(resumed.history, reference.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-12)


def test_summary_unwritable_too_reports_the_first_error(tmp_path, monkeypatch):
    fail_writes(monkeypatch, {"checkpoint.pt", "summary.json"}, after=1)
    with pytest.raises(WriteError, match="checkpoint.pt: cannot write it"):
        runs.run(_config(tmp_path))
    run_dir = tmp_path / "run"
    assert not (run_dir / "summary.json").exists()
    assert_nothing_half_written(run_dir)


@pytest.mark.parametrize("name, code", [
    ("config.yaml", errno.EROFS), ("summary.json", errno.ENOSPC),
    ("checkpoint.pt", errno.ENOSPC), ("loss.png", errno.EDQUOT)])
def test_cli_write_failure_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys, name, code):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(small_config(
        train={"steps": 8, "threads": 1}, output={"checkpoint_every": 4, "figures": True})))
    fail_writes(monkeypatch, {name}, code=code)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{name}: cannot write it: {os.strerror(code)}" in err and str(out) in err, err
    assert_nothing_half_written(out)
    if name != "config.yaml" and name != "summary.json":
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "failed" and name in summary["error"]


def test_metrics_line_cut_back_on_disk_full(tmp_path, monkeypatch):
    """A row that cannot be appended whole is cut off: no torn line in metrics.jsonl."""
    calls = {"n": 0}

    def write(fd, data):
        calls["n"] += 1
        if calls["n"] == 7:
            os.write(fd, bytes(data)[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    monkeypatch.setattr(rundir, "os", types.SimpleNamespace(**{**vars(os), "write": write}))
    with pytest.raises(WriteError, match=r"metrics.jsonl: cannot write it: No space left"):
        runs.run(_config(tmp_path))
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    lines = (run_dir / "metrics.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 7  # six whole rows, then nothing
    assert [json.loads(line)["step"] for line in lines[:-1]] == list(range(6))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert_nothing_half_written(run_dir)


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic.write_json_atomic(target, {"old": 1})
    fail_writes(monkeypatch, {"x.json"})
    with pytest.raises(WriteError) as err:
        atomic.write_json_atomic(target, {"new": list(range(1000))})
    assert isinstance(err.value, OSError) and err.value.filename == str(target)
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_torch_save_failure_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    atomic.save_torch_atomic(target, {"step": 1, "w": torch.ones(3)})
    fail_writes(monkeypatch, {"checkpoint.pt"})
    with pytest.raises(WriteError, match="checkpoint.pt"):
        atomic.save_torch_atomic(target, {"step": 2, "w": torch.zeros(1000)})
    assert torch.load(target, weights_only=True)["step"] == 1
