"""Bad input on the command line: one message naming the option or file, exit code 2, no
traceback, and nothing written or overwritten."""

import json
import shutil

import pytest
import yaml

from catapults import cli
from catapults.cli import main
from catapults.detect import find_catapults

BASE = {
    "data": {"name": "synthetic", "d": 5, "target": "x1*x2", "n_train": 32, "n_test": 32},
    "model": {"depth": 2, "width": 16},
    "train": {"optimizer": "sgd", "batch_size": 8, "lr": 0.5, "steps": 20, "eval_every": 5},
    "monitor": {"events": {"enabled": True}},
    "output": {"progress": False, "checkpoint": False, "figures": False},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A config, a sweep file, a finished run and a finished sweep with its report."""
    root = tmp_path_factory.mktemp("made")
    (root / "base.yaml").write_text(yaml.safe_dump(BASE))
    (root / "sweep.yaml").write_text(yaml.safe_dump(
        {"base_config": "base.yaml", "grid": {"train.lr": [0.5, 1.0]}, "seeds": [0],
         "metrics": ["final_test_loss"]}))
    assert main(["run", str(root / "base.yaml"), "--out", str(root / "run"), "--no-progress"]) == 0
    assert main(["sweep", str(root / "sweep.yaml"), "--out", str(root / "sw"), "--workers", "1",
                 "--no-progress", "--no-report"]) == 0
    assert main(["sweep-report", str(root / "sw"), "--no-figures"]) == 0
    return root


def fails(capsys, argv, *names):
    """main(argv) exits 2 with one error line naming each of ``names`` and no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("catapults: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def usage_fails(capsys, argv, *names):
    """An argparse error: SystemExit(2), one line naming each of ``names``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in names:
        assert name in err, (name, err)


# ---- 1. output paths that cannot be created ----------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["run", "{base}", "--out", "{afile}/sub"],
    ["run", "{base}", "--out", "{afile}"],
    ["sweep", "{sweep}", "--out", "{afile}/s", "--workers", "1"],
    ["reproduce", "gd-single", "--size", "tiny", "--out", "{afile}"],
    ["reproduce", "gd-single", "--size", "tiny", "--out", "{afile}/x"],
    ["inspect", "{run}", "--figure", "{afile}/x.png"],
    ["inspect", "{run}", "--figure", "{adir}/d.png"],
])
def test_output_path_that_cannot_be_created(made, tmp_path, capsys, argv):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    (tmp_path / "adir" / "d.png").mkdir(parents=True)
    argv = [a.format(base=made / "base.yaml", sweep=made / "sweep.yaml", run=made / "run",
                     afile=afile, adir=tmp_path / "adir") for a in argv]
    name = afile if "afile" in " ".join(argv) else tmp_path / "adir" / "d.png"
    fails(capsys, argv, name, "--out" if "--out" in argv else "--figure")
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_os_error_reaching_main_is_one_line(monkeypatch, capsys):
    def boom(args):
        raise NotADirectoryError(20, "Not a directory", "afile/sub")

    monkeypatch.setitem(cli.COMMANDS, "data", boom)
    err = fails(capsys, ["data", "list"])
    assert err == "catapults: error: afile/sub: Not a directory\n"


# ---- 2. corrupt run and sweep files ------------------------------------------------------------
@pytest.mark.parametrize("name, content", [
    ("summary.json", b'{"sta'),
    ("summary.json", b"[1]"),
    ("events.json", b'{"ev'),
    ("events.json", b'{"events": 5}'),
    ("events.json", b'{"events": [1]}'),
    ("events.json", b"\xff\xfe\x00garbage"),
    ("metrics.jsonl", bytes(range(256))),
    ("metrics.jsonl", b"[1]\n"),
])
def test_inspect_corrupt_run_file(made, tmp_path, capsys, name, content):
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    (run / name).write_bytes(content)
    fails(capsys, ["inspect", run], run / name)


@pytest.mark.parametrize("name, content", [
    ("index.jsonl", b'{"trial_id": "a", "par'),
    ("index.jsonl", bytes(range(256))),
    ("index.jsonl", b"[1, 2]\n"),
    ("index.jsonl", b'{"a": 1}\n'),
    ("sweep.yaml", b"grid: [\n"),
    ("sweep.yaml", b"[1]\n"),
    ("sweep.yaml", b"metrics: 5\n"),
])
def test_sweep_report_corrupt_sweep_file(made, tmp_path, capsys, name, content):
    sw = tmp_path / "sw"
    shutil.copytree(made / "sw", sw)
    before = (sw / "report" / "report.csv").read_bytes()
    (sw / name).write_bytes(content)
    fails(capsys, ["sweep-report", sw], sw / name)
    assert (sw / "report" / "report.csv").read_bytes() == before


def test_sweep_report_trial_summary_not_an_object(made, tmp_path, capsys):
    sw = tmp_path / "sw"
    shutil.copytree(made / "sw", sw)
    row = json.loads((sw / "index.jsonl").read_text().splitlines()[0])
    (sw / row["dir"] / "summary.json").write_text("[1]")
    fails(capsys, ["sweep-report", sw], sw / row["dir"] / "summary.json")


def test_sweep_report_csv_is_a_directory(made, tmp_path, capsys):
    sw = tmp_path / "sw"
    shutil.copytree(made / "sw", sw)
    (sw / "report" / "report.csv").unlink()
    (sw / "report" / "report.csv").mkdir()
    fails(capsys, ["sweep-report", sw], sw / "report" / "report.csv", "directory")
    assert not list((sw / "report").glob("*.png"))


# ---- 3. unknown metrics ------------------------------------------------------------------------
@pytest.mark.parametrize("metric, names", [
    ("no.such", ["'no.such'", "final_test_loss", "monitors.events.count"]),
    ("", ["--metric", "empty"]),
])
def test_sweep_report_unknown_metric_writes_nothing(made, tmp_path, capsys, metric, names):
    sw = tmp_path / "sw"
    shutil.copytree(made / "sw", sw)
    before = (sw / "report" / "report.csv").read_bytes()
    fails(capsys, ["sweep-report", sw, "--metric", metric], *names)
    assert (sw / "report" / "report.csv").read_bytes() == before
    assert not list((sw / "report").glob("*.png"))


def test_sweep_file_unknown_metric_warns(made, tmp_path, capsys):
    sw = tmp_path / "sw"
    shutil.copytree(made / "sw", sw)
    spec = yaml.safe_load((sw / "sweep.yaml").read_text())
    spec["metrics"] = ["final_test_loss", "bogus.metric"]
    (sw / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep-report", str(sw), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "'bogus.metric'" in err and "final_test_loss" in err


# ---- 4. thread and worker counts ---------------------------------------------------------------
@pytest.mark.parametrize("argv, option", [
    (["reproduce", "gd-single", "--threads", "0"], "--threads"),
    (["reproduce", "gd-single", "--threads", "-3"], "--threads"),
    (["sweep", "{sweep}", "--threads", "0"], "--threads"),
    (["sweep", "{sweep}", "--workers", "0"], "--workers"),
    (["sweep", "{sweep}", "--workers", "two"], "--workers"),
])
def test_counts_must_be_positive_integers(made, tmp_path, capsys, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)
    usage_fails(capsys, [a.format(sweep=made / "sweep.yaml") for a in argv], option)
    assert not list(tmp_path.iterdir())


# ---- 5. the spike ratio ------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", ["-1", "0.5", "1", "nan", "inf", "x"])
def test_inspect_ratio_must_be_finite_above_one(made, capsys, ratio):
    usage_fails(capsys, ["inspect", made / "run", "--ratio", ratio], "--ratio")


def test_inspect_small_ratio_works(made, capsys):
    assert main(["inspect", str(made / "run"), "--ratio", "1.2"]) == 0
    assert "catapults:" in capsys.readouterr().out


@pytest.mark.parametrize("ratio", [float("nan"), float("inf"), 1.0, -1.0])
def test_find_catapults_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio must be a finite number > 1"):
        find_catapults([1.0, 2.0], ratio=ratio)


# ---- 6. the figure path ------------------------------------------------------------------------
def test_figure_must_be_a_png_and_never_replaces_another_file(made, tmp_path, capsys):
    cfg = tmp_path / "base.yaml"
    shutil.copy(made / "base.yaml", cfg)
    text = cfg.read_text()
    fails(capsys, ["inspect", made / "run", "--figure", cfg], "--figure", cfg, ".png")
    assert cfg.read_text() == text
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    fails(capsys, ["inspect", made / "run", "--figure", fake], "--figure", fake, "not a PNG")
    assert fake.read_text() == "not an image"
    png = tmp_path / "fig.png"
    for _ in range(2):  # written, then replaced: it is a PNG
        assert main(["inspect", str(made / "run"), "--figure", str(png)]) == 0
        assert png.read_bytes()[:4] == b"\x89PNG"


# ---- 7. a directory where a config file is expected --------------------------------------------
def test_config_that_is_a_directory(tmp_path, capsys):
    (tmp_path / "adir.yaml").mkdir()
    fails(capsys, ["run", tmp_path / "adir.yaml"], tmp_path / "adir.yaml", "is a directory")


@pytest.mark.parametrize("override, message", [
    ("data.target=x99", "data.target"),
    ("train.batch_size=1000", "train.batch_size: 1000 is larger than the training set"),
    ("train.loss=cross_entropy", "train.loss"),
])
def test_config_validate_checks_what_run_checks(tmp_path, capsys, override, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": {"name": "synthetic", "d": 5, "target": "x1*x2",
                                             "n_train": 32, "n_test": 8},
                                    "train": {"optimizer": "sgd", "batch_size": 8}}))
    assert cli.main(["config", "validate", str(path)]) == 0
    capsys.readouterr()
    assert cli.main(["config", "validate", str(path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sweep_dry_run_and_resume_over_damaged_files(tmp_path, capsys):
    from catapults.sweeps import read_index, run_sweep

    base = {"data": {"name": "synthetic", "d": 5, "target": "x1*x2", "n_train": 32,
                     "n_test": 8},
            "model": {"depth": 2, "width": 8}, "train": {"steps": 5},
            "output": {"progress": False, "checkpoint": False, "figures": False}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": base, "grid": {"data.target": ["x1", "x99"]}}))
    assert cli.main(["sweep", str(bad), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    assert "x99" in capsys.readouterr().err and not (tmp_path / "o").exists()

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"base": base, "seeds": [0, 1]}))
    out = tmp_path / "sw"
    run_sweep(good, out, workers=1, progress=False, report=False)
    (out / "index.jsonl").write_text("[1]\n{half")  # damaged index: rebuilt from the trials
    first = sorted((out / "trials").iterdir())[0]
    (first / "summary.json").write_bytes(b"\xff\xfe\x00")  # unreadable: that trial runs again
    res = run_sweep(good, out, workers=1, progress=False, report=False)
    assert res.ran == 1 and res.skipped == 1
    assert sorted(r["status"] for r in read_index(out)) == ["completed", "completed"]
