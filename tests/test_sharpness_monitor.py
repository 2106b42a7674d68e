"""The sharpness monitor (config monitor.sharpness): Hessian and Gauss-Newton sharpness against
the optimizer's edge, in a run, checked against the float64 dense Hessian of tests/references."""

import pytest
import torch
from references import dense_mse_hessian

from catapults import metrics, run
from catapults.config import config_from_dict
from catapults.data import make_dataset
from helpers import small_config


@pytest.mark.parametrize("optimizer,extra,factor", [
    ("gd", {}, 1.0), ("momentum", {"momentum": 0.9}, 1.9), ("adam", {}, 19.0)])
def test_run_records_sharpness_and_the_optimizers_threshold(tmp_path, optimizer, extra, factor):
    cfg = small_config(
        model={"width": 16},
        train={"optimizer": optimizer, "lr": 0.01, "steps": 6, **extra},
        monitor={"sharpness": {"enabled": True, "every": 3, "probe_size": 24,
                               "batch_size": 8}})
    res = run(config_from_dict(cfg), out_dir=tmp_path / "r")
    rows = [r for r in res.history if metrics.SHARPNESS_HESSIAN in r]
    assert [r["step"] for r in rows] == [0, 3]
    for r in rows:
        assert r[metrics.SHARPNESS_THRESHOLD] == pytest.approx(2 * factor / r["lr"])
        assert r[metrics.SHARPNESS_GN] > 0 and r[metrics.SHARPNESS_BATCH] is not None
        assert (metrics.SHARPNESS_PRECONDITIONED in r) == (optimizer == "adam")
    assert res.summary["monitors"]["sharpness"]["measurements"] == 2
    # the final model's sharpness on the same probe against the dense float64 Hessian
    data = make_dataset(config_from_dict(cfg).data)
    model = res.model.double()
    X, y = data.X_train[:24].double(), data.y_train[:24].double()
    from catapults.monitors import SharpnessMonitor

    mon = SharpnessMonitor(X, y, every=1)
    row = mon.measure(model, 0.01, None)
    dense = float(torch.linalg.eigvalsh(dense_mse_hessian(model, X, y))[-1])
    assert row[metrics.SHARPNESS_HESSIAN] == pytest.approx(dense, rel=1e-6)


def test_bad_sharpness_config_is_refused():
    from catapults.errors import ConfigError

    for bad in ({"every": 0}, {"batch_size": 0}, {"probe_size": "all"}):
        with pytest.raises(ConfigError, match="monitor.sharpness"):
            config_from_dict({"monitor": {"sharpness": bad}})


def test_watch_tracks_sharpness_in_a_plain_loop(tmp_path):
    import json

    import catapults
    from catapults.errors import MonitorError
    from catapults.models import MLP

    model = MLP(5, 1, width=16, depth=2, seed=0)
    X, y = torch.randn(32, 5), torch.randn(32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = catapults.watch(model, opt, probe=(X, y), out=tmp_path / "w", every=2, k=1,
                          sharpness=True, sharpness_batch_size=8, figures=False)
    for _ in range(4):
        loss = torch.nn.functional.mse_loss(model(X), y)
        mon.step(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mon.close()
    rows = [json.loads(line) for line in
            (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in rows if r.get(metrics.SHARPNESS_HESSIAN) is not None]
    assert [r["step"] for r in measured] == [0, 2]
    assert measured[0][metrics.SHARPNESS_THRESHOLD] == pytest.approx(2 * 1.9 / 0.05)
    with pytest.raises(MonitorError, match="sharpness"):
        catapults.watch(model, opt, sharpness=True, batch_kernel=False)


def _train_in_batches(model, opt, mon, X, y, *, batch, steps, before_step=None):
    """``steps`` mini-batch steps of ``batch`` consecutive samples under ``watch``'s ``mon``
    (``before_step(i, xb)`` is called before each, at the parameters it measures); the
    summary of ``mon.close()``."""
    for i in range(steps):
        xb, yb = X[batch * i:batch * (i + 1)], y[batch * i:batch * (i + 1)]
        if before_step is not None:
            before_step(i, xb)
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        mon.step(loss, batch=(xb, yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mon.close()


def test_the_early_warning_uses_the_momentum_edge_of_each_batch(tmp_path):
    """With heavy-ball SGD the batch rows carry ntk/batch_edge = (1 + beta) x the GD batch
    critical rate, and the flags of the early warning compare the lr with it."""
    import catapults
    from catapults.models import MLP

    model = MLP(5, 1, width=16, depth=2, seed=0)
    X, y = torch.randn(32, 5), torch.randn(32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    mon = catapults.watch(model, opt, probe=(X, y), out=None, every=100, k=1)
    summary = _train_in_batches(model, opt, mon, X, y, batch=4, steps=6)
    rows = [r for r in mon.history if metrics.NTK_BATCH_ETA_CRIT in r]
    assert len(rows) == 6
    for r in rows:
        assert r[metrics.NTK_BATCH_EDGE] == pytest.approx(1.9 * r[metrics.NTK_BATCH_ETA_CRIT])
    flagged = sum(r["lr"] > r[metrics.NTK_BATCH_EDGE] for r in rows)
    assert summary["monitors"]["ntk"]["batch_steps_above_critical"] == flagged


def test_the_early_warning_uses_adams_preconditioned_edge_of_each_batch():
    """With Adam the batch rows carry ntk/batch_edge = Adam's edge on the batch's
    preconditioned kernel (catapults.stability.critical_lr on the batch, P as it is before
    the update); before Adam's first step the edge is None (no second moments), never flagged."""
    import catapults
    from catapults import stability
    from catapults.models import MLP

    model = MLP(5, 1, width=16, depth=2, seed=0)
    X, y = torch.randn(32, 5), torch.randn(32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    mon = catapults.watch(model, opt, probe=(X, y), out=None, every=100, k=1)
    expected = []
    summary = _train_in_batches(model, opt, mon, X, y, batch=4, steps=5, before_step=lambda i, xb:
                                expected.append(stability.critical_lr(model, xb, opt)
                                                if i else None))
    rows = [r for r in mon.history if metrics.NTK_BATCH_ETA_CRIT in r]
    assert rows[0][metrics.NTK_BATCH_EDGE] is None
    for r, e in zip(rows[1:], expected[1:]):
        assert r[metrics.NTK_BATCH_EDGE] == pytest.approx(e, rel=1e-4)
    flagged = sum(e is not None and 0.05 > e for e in expected)
    assert summary["monitors"]["ntk"]["batch_steps_above_critical"] == flagged


def test_tracking_follows_lambda_max_with_one_product_per_measurement():
    """method='track' on a GD run measured every step: after the first (Lanczos) solve each
    measurement is one Hessian-vector product; the tracked value never exceeds the dense
    float64 lambda_max and comes within its recorded residual bound of it."""
    from catapults.curvature import hessian
    from catapults.models import MLP
    from catapults.monitors import SharpnessMonitor

    torch.manual_seed(0)
    model = MLP(4, 1, width=12, depth=2, activation="tanh", seed=0).double()
    X = torch.randn(40, 4, dtype=torch.float64)
    y = (X[:, :1] * X[:, 1:2]).double()
    mon = SharpnessMonitor(X, y, method="track", gauss_newton=False, every=1)
    products = []
    real = hessian.hvp_operator

    def counting(*args, **kwargs):
        mv, p = real(*args, **kwargs)
        return (lambda V: products.append(1 if V.dim() == 1 else V.shape[1]) or mv(V)), p

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(12):
        hessian.hvp_operator = counting
        try:
            before = len(products)
            row = mon.measure(model, 0.05, opt)
            used = sum(products[before:])
        finally:
            hessian.hvp_operator = real
        H = dense_mse_hessian(model, X, y)
        top = float(torch.linalg.eigvalsh(H)[-1])
        lam = row[metrics.SHARPNESS_HESSIAN]
        assert lam <= top * (1 + 1e-10)
        if step > 0 and row[metrics.SHARPNESS_HESSIAN_RESIDUAL] is not None:
            assert used == 1
            assert top - lam <= row[metrics.SHARPNESS_HESSIAN_RESIDUAL] * abs(lam) + 1e-12
        assert metrics.SHARPNESS_GN not in row
        loss = torch.nn.functional.mse_loss(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tracked = [r for r in [row] if r[metrics.SHARPNESS_HESSIAN_RESIDUAL] is not None]
    assert tracked and tracked[-1][metrics.SHARPNESS_HESSIAN_RESIDUAL] < 0.05
    with pytest.raises(ValueError, match="method"):
        SharpnessMonitor(X, y, method="power")


def test_a_cross_entropy_run_gets_the_hessian_form_and_is_refused_the_ntk_form(tmp_path):
    """train.loss cross_entropy: the sharpness monitor measures the CE Hessian (no
    Gauss-Newton NTK form); the critical schedule and the NTK monitor are refused naming the
    field, before anything is written."""
    from catapults.cli import main
    from catapults.config import ConfigError

    base = {"data": {"name": "digits", "classes": [3, 8], "n_train": 40, "n_test": 20},
            "model": {"width": 16}, "output": {"progress": False, "figures": False}}
    cfg = {**base, "train": {"optimizer": "gd", "lr": 0.1, "steps": 3, "loss": "cross_entropy"},
           "monitor": {"sharpness": {"enabled": True, "every": 2, "probe_size": 40}}}
    res = run(config_from_dict(cfg), out_dir=tmp_path / "ce")
    rows = [r for r in res.history if metrics.SHARPNESS_HESSIAN in r]
    assert [r["step"] for r in rows] == [0, 2] and metrics.SHARPNESS_GN not in rows[0]
    assert rows[0][metrics.SHARPNESS_HESSIAN] > 0
    for extra, field in [({"schedule": {"kind": "critical", "milestones": [0], "values": [1]}},
                          "train.schedule.kind"), ({}, "monitor.ntk.enabled")]:
        bad = {**base, "train": {"loss": "cross_entropy", **extra},
               "monitor": {"ntk": {"enabled": field == "monitor.ntk.enabled"}}}
        with pytest.raises(ConfigError, match=f"^{field}: .*Hessian form applies"):
            config_from_dict(bad)
        path = tmp_path / "bad.yaml"
        import yaml
        path.write_text(yaml.safe_dump(bad))
        assert main(["run", str(path), "--out", str(tmp_path / "never")]) == 2
        assert not (tmp_path / "never").exists()


def test_an_optimizer_without_a_known_edge_gets_no_threshold_not_a_wrong_one():
    """RMSprop: the sharpness monitor records lambda_max(H) with no threshold and says why in
    its summary (naming the known optimizers); the early warning flags no batch (GD's edge
    would be the wrong threshold)."""
    import catapults
    from catapults.models import MLP

    model = MLP(5, 1, width=16, depth=2, seed=0)
    X, y = torch.randn(32, 5), torch.randn(32, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=50.0)  # far above GD's edge
    mon = catapults.watch(model, opt, probe=(X, y), every=1, k=1, sharpness=True)
    summary = _train_in_batches(model, opt, mon, X, y, batch=8, steps=2)
    row = mon.history[0]
    assert row[metrics.SHARPNESS_HESSIAN] > 0 and row[metrics.SHARPNESS_THRESHOLD] is None
    note = summary["monitors"]["sharpness"]["threshold_note"]
    assert "RMSprop" in note and "known: SGD" in note and "Adam" in note
    assert row[metrics.NTK_BATCH_EDGE] is None
    assert summary["monitors"]["ntk"]["batch_steps_above_critical"] == 0
