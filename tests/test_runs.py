import json
import os

import pytest
import yaml

from catapults import cli
from catapults.config import ConfigError, config_from_dict
from catapults.errors import RunExistsError
from catapults.runs import load_run_model, run
from catapults.storage.atomic import write_text_atomic
from catapults.storage.rundir import read_metrics
from helpers import small_config


def write_cfg(tmp_path, cfg):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_run_directory_layout(tmp_path):
    out = tmp_path / "run"
    res = run(config_from_dict(small_config()), out_dir=out)
    assert res.status == "completed"
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt",
                 "figures/loss.png"]:
        assert (out / name).is_file(), name
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(30))
    assert "test_loss" in rows[0] and "test_loss" in rows[5]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["wall_time_s"] > 0
    assert set(summary) >= {"final_train_loss", "final_test_loss", "steps", "monitors"}
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["momentum"] == 0.9  # defaults are written out
    model, cfg = load_run_model(out)
    assert cfg.model.width == 64 and model.out_dim == 1
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_existing_directory_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RunExistsError):
        run(config_from_dict(small_config()), out_dir=out)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(ConfigError, match="not a run directory"):  # --overwrite is for runs
        run(config_from_dict(small_config()), out_dir=out, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    run(config_from_dict(small_config()), out_dir=out, overwrite=True)  # empty: fine
    (out / "extra.txt").write_text("from the earlier run")
    run(config_from_dict(small_config()), out_dir=out, overwrite=True)  # a run: replaced
    assert not (out / "extra.txt").exists() and (out / "summary.json").exists()


def test_overwrite_needs_the_run_marker_not_a_config_yaml(tmp_path):
    project = tmp_path / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('precious')")
    (project / "NOTES.md").write_text("precious")
    (project / "config.yaml").write_text("{}")  # looks like a run to a name-based test
    with pytest.raises(ConfigError, match="not a run directory.*marker"):
        run(config_from_dict(small_config()), out_dir=project, overwrite=True)
    assert (project / "src" / "main.py").read_text() == "print('precious')"
    assert (project / "NOTES.md").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myproject"]  # nothing left beside
    code = cli.main(["run", str(write_cfg(tmp_path, small_config())), "--out", str(project),
                     "--overwrite"])
    assert code == 2 and (project / "NOTES.md").is_file()


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_be_created(tmp_path, monkeypatch):
    from catapults.storage import rundir

    out = tmp_path / "run"
    run(config_from_dict(small_config()), out_dir=out)
    assert rundir.is_run_dir(out)
    before = (out / "summary.json").read_text()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir.tempfile, "mkdtemp", refuse)  # as a read-only parent would
    with pytest.raises(ConfigError, match="cannot create .*Permission denied"):
        run(config_from_dict(small_config()), out_dir=out, overwrite=True)
    assert (out / "summary.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_swaps_in_a_new_run_and_leaves_nothing_beside(tmp_path):
    out = tmp_path / "run"
    run(config_from_dict(small_config()), out_dir=out)
    (out / "extra.txt").write_text("from the earlier run")
    run(config_from_dict(small_config(train={"lr": 0.25})), out_dir=out, overwrite=True)
    assert not (out / "extra.txt").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 0.25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_never_deletes_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    (tmp_path / "thesis.tex").write_text("precious")
    monkeypatch.chdir(tmp_path / "run")
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(ConfigError, match="current directory"):
            run(config_from_dict(small_config()), out_dir=out, overwrite=True)
    assert (tmp_path / "thesis.tex").read_text() == "precious"
    assert (tmp_path / "run" / "config.yaml").read_text() == "{}"


def test_diverged_run_keeps_metrics(tmp_path):
    out = tmp_path / "run"
    res = run(config_from_dict(small_config(train={"lr": 500.0, "steps": 200})), out_dir=out)
    summary = json.loads((out / "summary.json").read_text())
    assert res.status == summary["status"] == "diverged"
    rows = read_metrics(out)
    assert rows and rows[-1]["loss"] is None  # non-finite written as null (strict JSON)
    assert len(rows) == summary["steps"] + 1


def test_failed_run_records_status(tmp_path):
    from catapults.training import Callback

    class Boom(Callback):
        def on_step_end(self, state, record):
            if state.step == 3:
                raise RuntimeError("boom")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        run(config_from_dict(small_config()), out_dir=out, callbacks=[Boom()])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]
    assert len(read_metrics(out)) == 3


def test_atomic_write_leaves_old_file_on_crash(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    write_text_atomic(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_text_atomic(target, "new")
    assert target.read_text() == "old"


def test_cli_run_and_errors(tmp_path, capsys):
    cfg = write_cfg(tmp_path, small_config())
    out = tmp_path / "r"
    assert cli.main(["run", str(cfg), "--out", str(out), "--set", "train.lr=0.3"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 0.3
    # the same directory again: refused, exit 2, nothing touched
    before = (out / "summary.json").read_text()
    assert cli.main(["run", str(cfg), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    # a bad field: exit 2, one line naming it, nothing written
    out2 = tmp_path / "r2"
    assert cli.main(["run", str(cfg), "--out", str(out2), "--set", "train.lr_typo=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lr_typo" in err
    assert not out2.exists()
    bad_target = write_cfg(tmp_path, small_config(data={"target": "x1*x99"}))
    assert cli.main(["run", str(bad_target), "--out", str(out2)]) == 2
    assert "data.target" in capsys.readouterr().err and not out2.exists()


def test_cli_config_show(capsys):
    assert cli.main(["config", "show"]) == 0
    text = capsys.readouterr().out
    assert "lr: 1.0" in text and "# Learning rate" in text
    with pytest.raises(SystemExit) as e:
        cli.main(["run"])
    assert e.value.code == 2
