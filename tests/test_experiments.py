"""`catapults reproduce` at a tiny size: every experiment writes well-formed claims and figures.

(The claims' outcomes at this size mean nothing; the quick and full sizes are for science.)"""

import json
from pathlib import Path

import pytest
import yaml

from catapults import cli
from catapults.config import config_from_dict
from catapults.experiments import EXPERIMENTS, THRESHOLDS, format_claims, make_claim


def test_claims_are_decided_on_the_interval_over_seeds():
    key = "gd-multi/alignment-vs-catapults"  # >= 0.6
    c = make_claim(key, "claim 3", "rho", [0.7, 0.8, 0.9])
    assert c.status == "pass" and c.passed and c.threshold == THRESHOLDS[key][1]
    assert c.value == pytest.approx(0.8) and c.n_seeds == 3
    assert 0.6 <= c.interval[0] <= 0.8 <= c.interval[1] <= 0.9
    # the mean passes but the interval reaches below the threshold: fail
    c = make_claim(key, "claim 3", "rho", [0.2, 0.9, 1.0])
    assert c.value > 0.6 and c.status == "fail" and not c.passed
    # one seed (or all runs diverged): not run, with the reason, neither pass nor fail
    for per_seed in ([0.9], [None, None, None], [float("nan"), 0.9]):
        c = make_claim(key, "claim 3", "rho", per_seed)
        assert c.status == "not run" and not c.passed and c.interval is None and c.reason
    c = make_claim("real-x:gd-multi/test-loss-vs-catapults", "c", "rho", [0.1, 0.2],
                   reason="the x files are not present")
    assert c.status == "not run" and c.reason == "the x files are not present"
    with pytest.raises(TypeError):
        make_claim(key, "claim 3", "rho", 0.7)  # a point value is not a claim any more
    table = format_claims([make_claim(key, "claim 3", "rho", [0.7, 0.8, 0.9]),
                           make_claim(key, "claim 3", "rho", [None])])
    assert "PASS" in table and "NOT RUN" in table and "95% interval" in table
    assert "not run:" in table and "at least 2 are needed" in table


def test_reproduce_all_tiny(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["reproduce", "all", "--size", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "claims.json").read_text())
    # the printed claims table: a header, then one row per claim of claims.json, in order, with
    # PASS exactly for the claims that passed (columns start where their header starts)
    lines = printed.splitlines()
    heads = [i for i, line in enumerate(lines) if line.split() == [
        "claim", "id", "value", "95%", "interval", "seeds", "threshold", "result"]]
    assert len(heads) == 1
    head = lines[heads[0]]
    id_at, value_at, result_at = head.index(" id ") + 1, head.index(" value "), head.index("result")
    table = []
    for line in lines[heads[0] + 1:]:
        if not line.strip():
            break
        table.append((line[id_at:value_at].strip(), line[result_at:].strip()))
    assert table == [(c["id"], c["status"].upper()) for c in doc["claims"]]
    assert doc["passed"] + doc["failed"] + doc["not_run"] == doc["total"]
    for c in doc["claims"]:  # every claim over the tiny size's seeds, decided on its interval
        assert c["status"] in ("pass", "fail", "not run")
        assert c["passed"] == (c["status"] == "pass")
        assert len(c["per_seed"]) == 2
        if c["status"] == "not run":
            assert c["reason"] and c["interval"] is None
        else:
            lo, hi = c["interval"]
            assert lo <= c["value"] <= hi
    assert set(doc["experiments"]) == set(EXPERIMENTS)
    assert doc["total"] == len(doc["claims"]) >= 12
    for c in doc["claims"]:
        assert set(c) >= {"id", "claim", "statistic", "value", "comparison", "threshold",
                          "passed", "status", "interval", "per_seed", "n_seeds", "control",
                          "basis", "reason"}
        assert isinstance(c["passed"], bool)
        assert c["id"].split(":", 1)[-1] in THRESHOLDS
    for name, info in doc["experiments"].items():
        assert (out / name / "claims.json").is_file()
        assert info["figures"] and info["tables"]
        for p in info["figures"]:
            assert p.endswith(".png") and Path(p).stat().st_size > 1000
        rows = [Path(p).read_text().strip().splitlines() for p in info["tables"]]
        assert rows and all(r for r in rows)  # every CSV has its header
        assert max(len(r) for r in rows) >= 2  # and the main table has rows


def test_reproduce_bad_experiment(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "nope"])
    assert e.value.code == 2


def test_diverged_run_does_not_break_an_experiment(tmp_path, monkeypatch):
    """A raise far above the critical rate diverges: recorded, no AGOP, the figure still drawn."""
    import catapults.experiments.gd_multi as ex  # _multi_runs looks _cfg up there

    make = ex._cfg

    def diverging(**kw):
        cfg = make(**kw)
        sch = cfg.get("train", {}).get("schedule", {})
        if sch.get("kind") == "critical" and len(sch.get("values", [])) == 3:
            sch["values"] = [0.9, 1.3, 50.0]
        return cfg

    monkeypatch.setattr(ex, "_cfg", diverging)
    rows, results = ex._multi_runs(tmp_path, "tiny", ex._synthetic("tiny"), tag="x")
    bad = [r for r in rows if r["raises"] == 2]
    assert bad[0]["status"] == "diverged" and bad[0]["agop_alignment"] is None
    assert all(r["agop_alignment"] is not None for r in rows if r["raises"] != 2)
    assert [r["kind"] for r in rows].count("ramp") == 1  # the control of the last level
    wd = [r for r in rows if r["kind"] == "weight-decay"]
    assert len(wd) == 1 and wd[0]["weight_decay"] > 0 and wd[0]["catapults"] == 0
    assert ex._fig_multi(rows, results, tmp_path / "f.png", "t").is_file()
    assert ex._multi_claims("", rows)  # claims are still computed


def _fake_run(energy: float, lrs=(), status: str = "completed"):
    """A stand-in RunResult: a first layer with ``‖W₁‖² = energy`` and lr rows."""
    from types import SimpleNamespace

    import torch

    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.fill_(1.0).mul_((energy / 12) ** 0.5)
    return SimpleNamespace(status=status, model=layer,
                           history=[{"step": i, "lr": lr} for i, lr in enumerate(lrs)])


@pytest.mark.parametrize("pull", [1.0, 0.2, 0.02])
def test_weight_decay_search_matches_the_energy(pull):
    """The weight-decay control's search reaches the treatment's ||W1||^2 within WD_MATCH in
    WD_TRIES runs when ln E falls linearly in the decay (``pull`` = how much of the pure-decay
    shrinkage survives the gradient), starting from the pure-decay guess; λ is positive."""
    import math

    from catapults.experiments import gd_multi as ex

    base = _fake_run(100.0, lrs=[1.0] * 50)
    tried = []

    def run_with(lam, attempt):
        tried.append(lam)
        return _fake_run(100.0 * math.exp(-2 * pull * lam * 50))

    res, lam, n = ex._match_weight_decay(run_with, base, 10.0)
    energy = float(res.model.weight.detach().pow(2).sum())
    assert abs(energy / 10.0 - 1) < ex.WD_MATCH and lam > 0 and n == len(tried) <= ex.WD_TRIES
    assert abs(lam - math.log(10) / (2 * pull * 50)) < 0.05 * lam  # the decay that does it


def test_weight_decay_search_backs_off_and_gives_up_cleanly():
    """Nothing to match when the treatment did not shrink W1 or the baseline diverged; a
    diverging try halves λ; every try diverging gives None."""
    from catapults.experiments import gd_multi as ex

    base = _fake_run(100.0, lrs=[1.0] * 10)
    never = pytest.fail  # must not be called
    assert ex._match_weight_decay(never, base, 120.0) is None
    assert ex._match_weight_decay(never, _fake_run(100.0, status="diverged"), 10.0) is None
    tried = []

    def diverging(lam, attempt):
        tried.append(lam)
        return _fake_run(1.0, status="diverged")

    assert ex._match_weight_decay(diverging, base, 10.0) is None
    assert len(tried) == ex.WD_TRIES and tried[1] == tried[0] / 2


@pytest.fixture
def real_files(tmp_path, monkeypatch):
    """CIFAR-10, SVHN and CelebA files in their real formats (random pixels) under a data root
    that $CATAPULTS_DATA points at."""
    import test_datasets as fx  # the data-file fixtures

    root = tmp_path / "data"
    fx.make_cifar(root, per_batch=60, n_test=60)
    fx.make_svhn(root, n=(300, 150))
    fx.make_celeba(root, partitions=[0] * 150 + [2] * 60)
    monkeypatch.setenv("CATAPULTS_DATA", str(root))
    return root


REAL = ("cifar10", "svhn", "celeba")


def test_real_tasks_use_every_present_data_set(real_files, tmp_path):
    """At full size `reproduce real` adds every data set present; each task's preprocessing
    (grayscale, resize, attribute) goes through a short run."""
    from catapults import experiments, runs

    tasks = {t["name"]: t for t in experiments._real_tasks("full")}
    assert set(tasks) == {"digits", *REAL}
    assert tasks["cifar10"]["grayscale"] and tasks["celeba"]["attribute"] == "Smiling"
    for name in REAL:
        data = {"standardize": True, "seed": 0, **tasks[name], "n_train": 48, "n_test": 10}
        cfg = config_from_dict(experiments._cfg(
            data=data, model={"width": 64, "depth": 2},
            train={"optimizer": "gd", "lr": 0.5, "steps": 5}, output={"figures": False}))
        res = runs.run(cfg, out_dir=tmp_path / name, progress=False)
        assert res.status == "completed", name
        side = tasks[name]["image_size"]
        first = next(p for p in res.model.parameters() if p.ndim == 2)
        assert first.shape[1] == side * side, name  # grayscale, resized


@pytest.mark.slow
def test_real_experiment_runs_cifar_svhn_celeba_end_to_end(real_files, tmp_path, monkeypatch):
    """The whole `real` experiment (gd-multi and batch-size runs, best-run reference AGOP,
    claims, figures) on CIFAR-10, SVHN and CelebA files, at the tiny size."""
    from catapults import experiments
    from catapults.experiments import real

    tasks = {t["name"]: t for t in experiments._real_tasks("full")}
    small = [dict(tasks[name], n_train=48, n_test=10) for name in REAL]
    monkeypatch.setattr(real, "_real_tasks", lambda size: small)  # exp_real looks it up there
    res = experiments.exp_real(tmp_path / "out", "tiny")
    assert {c.id.split(":")[0] for c in res.claims} == {f"real-{n}" for n in REAL}
    assert len(res.figures) == 6 and all(Path(f).is_file() for f in res.figures)
    for name in REAL:
        run_dir = tmp_path / "out" / "runs" / f"{name}-gd-raises0"
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["data"]["name"] == name and cfg["data"]["n_train"] == 48
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
