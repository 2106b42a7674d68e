"""`catapults reproduce stability` at the tiny size: its files and claims, and science checks
that can fail (the edge-of-stability statistic of GD; GD at a small lr stays below its edge)."""

import csv
import json
import math

import pytest
import torch

from catapults.experiments import EXPERIMENTS, RUNNERS, THRESHOLDS
from catapults.experiments import stability as st
from catapults.experiments.stability_catapults import OPTIMIZERS, PreconditionedSplit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from catapults.experiments import reproduce

    out = tmp_path_factory.mktemp("stab")
    res = reproduce("stability", out=out, size="tiny", threads=1, echo=None)
    return out, res[0]


def test_stability_is_registered():
    assert "stability" in EXPERIMENTS and RUNNERS["stability"] is st.exp_stability
    from catapults.cli.reproduce import EXPERIMENT_NAMES

    assert "stability" in EXPERIMENT_NAMES


def test_tiny_run_writes_files_and_claims(tiny):
    out, res = tiny
    d = out / "stability"
    for name in ("stability-eos", "stability-adam", "stability-catapults",
                 "stability-batch-sharpness"):
        assert (d / f"{name}.png").stat().st_size > 1000
    for name in ("stability-eos", "stability-eos-runs", "stability-adam", "stability-adam-runs",
                 "stability-catapults", "stability-batch-sharpness"):
        rows = list(csv.DictReader((d / f"{name}.csv").open()))
        assert rows, name
    doc = json.loads((d / "claims.json").read_text())
    ids = [c["id"] for c in doc["claims"]]
    expected = ["stability/eos-reaches-edge", "stability/eos-hover-low",
                "stability/eos-hover-high", "stability/eos-loss-decreases",
                "stability/adam-reaches-edge", "stability/adam-hover-low",
                "stability/adam-hover-high"]
    for opt in OPTIMIZERS:
        expected += [f"{opt}:stability/{k}" for k in (
            "catapult-above-edge", "none-below-edge", "top-share-above-edge",
            "test-loss-gain-vs-below-edge", "alignment-gain-vs-below-edge")]
    for b in st.BATCHES["tiny"]:
        expected += [f"b{b}:stability/batch-sharpness-{side}" for side in ("low", "high")]
    assert ids == expected
    for c in doc["claims"]:
        assert c["id"].split(":", 1)[-1] in THRESHOLDS
        assert c["status"] in ("pass", "fail", "not run") and len(c["per_seed"]) == 2
        if c["status"] == "not run":
            assert c["reason"] and c["interval"] is None
        else:
            lo, hi = c["interval"]
            assert lo <= c["value"] <= hi
    # the two sides of a band are decided on the same statistic
    by = {c["id"]: c for c in doc["claims"]}
    assert by["stability/eos-hover-low"]["per_seed"] == by["stability/eos-hover-high"]["per_seed"]


def test_tiny_gd_sits_at_the_edge_of_stability(tiny):
    """Science check (can fail): full-batch GD on the tanh MLP in standard parameterisation
    reaches eta * lambda_max(H) = 1.8 at every lr and then hovers near 2 (a loose band: tiny
    runs are short), with the Gauss-Newton sharpness beside it; its loss keeps falling."""
    out, _ = tiny
    runs = list(csv.DictReader((out / "stability" / "stability-eos-runs.csv").open()))
    assert len(runs) == 2 * len(st.EOS_MULTIPLES["tiny"])
    for r in runs:
        assert r["status"] == "completed" and float(r["reached"]) == 1.0
        assert 1.6 <= float(r["hover_median"]) <= 2.6
        assert 1.4 <= float(r["gn_hover_median"]) <= 2.6
        assert float(r["loss_ratio"]) < 1.0
        # the detector at a fixed lr: any catapult after the first steps is spontaneous
        assert 0 <= int(r["spontaneous"]) <= int(r["catapults"])
    rows = list(csv.DictReader((out / "stability" / "stability-eos.csv").open()))
    first = [float(r["eta_lambda_hessian"]) for r in rows if r["step"] == "0"]
    assert first and max(first) < 1.2  # it starts well below the edge: the rise is sharpening


def test_gd_at_a_small_lr_stays_below_its_edge(tmp_path, monkeypatch):
    """Science check (can fail): at m = 0.02 (eta * lambda_max(H_GN) = 0.04 at step 0) the tiny
    setting's sharpness stays far below 2/eta over 150 steps (measured every 50)."""
    data, model, _, _ = st._eos_setting("tiny", 0)
    monkeypatch.setattr(st, "_eos_setting", lambda size, seed: (data, model, 150, 50))
    run = st._sharp_run(tmp_path, "tiny", 0, "gd", 0.02)
    vals = [r["eta_lambda_hessian"] for r in run["rows"]]
    assert vals and max(vals) < 1.0 and run["stats"]["reached"] == 0.0
    assert run["stats"]["hover_median"] is None


def test_hover_statistic():
    series = [(0, 0.5), (10, 1.0), (20, 1.9), (30, 2.4), (40, 2.0), (50, 1.7)]
    assert st._hover(series, 1.8) == (20, pytest.approx(1.95))
    assert st._hover(series, 3.0) == (None, None)


def test_preconditioned_split_is_the_top_direction_of_adams_kernel():
    """The split callback against a dense computation of J P^-1 J^T from the optimizer state."""
    from catapults.models import MLP
    from catapults.training.callbacks import StepContext

    torch.manual_seed(0)
    model = MLP(3, 1, width=8, depth=2, seed=0).double()
    X, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        opt.step()
    cb = PreconditionedSplit(at=0)
    record: dict = {}
    ctx = StepContext(model, opt, torch.device("cpu"), torch.float64, True, step=5)
    cb.on_step_begin(ctx, X, y, record)
    from torch.func import functional_call, jacrev

    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (X,)).reshape(-1))(params)
    cols = []
    for name, p in model.named_parameters():
        s = opt.state[p]
        v_hat = s["exp_avg_sq"] / (1 - 0.999 ** float(s["step"]))
        cols.append(jac[name].reshape(10, -1) / (v_hat.sqrt() + 1e-8).reshape(1, -1).sqrt())
    Jp = torch.cat(cols, 1)
    u = torch.linalg.eigh(Jp @ Jp.T)[1][:, -1]
    r = (model(X) - y).reshape(-1).detach()
    want = float((u @ r) ** 2) / 10
    assert record["ntk/L_top_preconditioned"] == pytest.approx(want, rel=1e-6)
    assert record["ntk/L_top_preconditioned_fixed"] == pytest.approx(want, rel=1e-6)
    assert math.isfinite(want) and want <= float(r @ r) / 10 + 1e-12


def test_preconditioned_split_of_remembered_steps_equals_measuring_every_step():
    """With every = 3 and keep=True the steps in between are remembered, and measuring one after
    the run gives what measuring every step gave at that step (the top and the fixed-basis
    split alike); the first step from ``at`` on is measured in the run."""
    from catapults.models import MLP
    from catapults.training.callbacks import StepContext

    torch.manual_seed(1)
    model = MLP(3, 1, width=8, depth=2, seed=1).double()
    X, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    dense, sparse = PreconditionedSplit(at=4), PreconditionedSplit(every=3, at=4, keep=True)
    rec_dense, rec_sparse = {}, {}
    for step in range(10):
        ctx = StepContext(model, opt, torch.device("cpu"), torch.float64, True, step=step)
        rec_dense[step], rec_sparse[step] = {}, {}
        dense.on_step_begin(ctx, X, y, rec_dense[step])
        sparse.on_step_begin(ctx, X, y, rec_sparse[step])
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        opt.step()
    assert rec_dense[0] == {} and rec_sparse[0] == {}  # no second moments before step 1
    assert sorted(s for s, r in rec_sparse.items() if r) == [3, 4, 6, 9]
    assert sorted(sparse.snapshots) == [1, 2, 5, 7, 8]
    for step in range(1, 10):
        got = rec_sparse[step] or sparse.measure(step)
        assert got.keys() == rec_dense[step].keys()
        for k, v in rec_dense[step].items():
            assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-300), (step, k)
    assert "ntk/L_top_preconditioned_fixed" in rec_dense[5]
    assert "ntk/L_top_preconditioned_fixed" not in rec_dense[3]
    # the model after training is the trained one, not a remembered step's
    assert not torch.equal(next(sparse._model.parameters()), next(model.parameters()))


def test_adam_catapult_top_share_is_the_same_measured_every_step_or_after_the_run(
        tmp_path, monkeypatch):
    """The claim's statistic at the full size's schedule (the split every k steps, the
    catapult's peak measured after the run from the remembered step) equals the statistic
    measured every step, on tiny seed 0 at 1.5x (its catapult peaks at step 11, after the raise
    at 10: not a multiple of 4)."""
    from catapults.experiments import stability_catapults as sc

    dense = sc._run_one(tmp_path / "dense", "tiny", 0, "adam", sc.ABOVE)["row"]
    monkeypatch.setitem(sc.SPLIT_EVERY, "tiny", 4)
    sparse = sc._run_one(tmp_path / "sparse", "tiny", 0, "adam", sc.ABOVE)["row"]
    assert dense["catapult"] == sparse["catapult"] == 1.0
    assert dense["split_measured_after_run"] is False
    assert sparse["split_measured_after_run"] is True and sparse["catapult_peak_step"] % 4
    for key in ("top_share", "top_share_fixed_at_raise", "top_share_K", "catapult_peak_step",
                "final_test_loss", "agop_alignment"):
        assert sparse[key] == pytest.approx(dense[key], rel=1e-9), key
    rows = [json.loads(line) for line in
            (tmp_path / "sparse" / "runs" / "adam-1.5x-seed0" / "metrics.jsonl").open()]
    measured = [r["step"] for r in rows if "ntk/L_top_preconditioned" in r]
    assert measured == sorted({*range(4, 80, 4), 10})  # every 4 steps, and the raise
