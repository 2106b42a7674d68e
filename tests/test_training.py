import math

import pytest
import torch

from catapults.config import RunConfig, ScheduleConfig, TrainConfig, config_from_dict
from catapults.data import make_dataset, synthetic_regression
from catapults.models import MLP, ScaledLinear
from catapults.ntk import critical_lr
from catapults.training import Callback, Trainer, make_schedule, mse_loss
from helpers import small_config


def fit(cfg_dict, callbacks=()):
    cfg = config_from_dict(cfg_dict)
    data = make_dataset(cfg.data)
    model = MLP(data.in_dim, data.out_dim, width=cfg.model.width, depth=cfg.model.depth,
                seed=cfg.train.seed)
    return Trainer(model, data, cfg.train, callbacks=callbacks, device="cpu").fit()


def test_mse_is_torch_mean_mse():
    out, y = torch.randn(7, 3), torch.randn(7, 3)
    assert mse_loss(out, y).item() == pytest.approx(torch.nn.MSELoss()(out, y).item())
    assert mse_loss(out, y).item() == pytest.approx(((out - y) ** 2).sum().item() / 21)


def test_ntk_parameterisation_layer():
    gen = torch.Generator().manual_seed(0)
    layer = ScaledLinear(400, 300, bias=True, parameterization="ntk", bias_scale=0.5,
                         generator=gen)
    x = torch.randn(5, 400)
    expected = x @ layer.weight.T / 20.0 + 0.5 * layer.bias
    torch.testing.assert_close(layer(x), expected)
    assert abs(layer.weight.std().item() - 1) < 0.01  # W ~ N(0, 1)
    std = ScaledLinear(400, 300, parameterization="standard", generator=gen)
    assert std.weight.abs().max() <= 1 / 20.0  # torch default U(-1/sqrt(in), 1/sqrt(in))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 7), (7,)])
def test_scaled_linear_scales_its_product_against_the_definition(bias, shape):
    """``weight_scale · x Wᵀ + bias_scale · b`` on a batch, tokens and one vector (as under
    vmap), with the gradients of the scaled-weight definition, in float64."""
    gen = torch.Generator().manual_seed(1)
    layer = ScaledLinear(7, 3, bias=bias, parameterization="ntk", bias_scale=0.3,
                         generator=gen, dtype=torch.float64)
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    out = layer(x)
    b = 0.3 * layer.bias if bias else 0.0
    ref = x @ (layer.weight / 7 ** 0.5).T + b
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)
    g = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    grads = torch.autograd.grad(out, list(layer.parameters()), g)
    ref_grads = torch.autograd.grad(ref, list(layer.parameters()), g)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("opt,batch", [("gd", None), ("sgd", 16), ("momentum", 16),
                                       ("momentum", None), ("adam", 16)])
def test_optimisers_reduce_loss_and_are_deterministic(opt, batch):
    lr = {"gd": 0.5, "sgd": 0.3, "momentum": 0.05, "adam": 1e-3}[opt]
    cfg = small_config(train={"optimizer": opt, "lr": lr, "batch_size": batch, "steps": 60})
    a, b = fit(cfg), fit(cfg)
    assert a.status == "completed"
    assert a.summary["final_train_loss"] < a.history[0]["loss"]
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


def test_sgd_batches_cover_epoch_and_drop_last():
    seen = []

    class Spy(Callback):
        def on_step_begin(self, state, X, y, record):
            seen.append((state.epoch, state.batch_index.tolist()))

    cfg = small_config(data={"n_train": 50}, train={"optimizer": "sgd", "batch_size": 16,
                                                    "epochs": 2, "steps": None, "lr": 0.1})
    res = fit(cfg, [Spy()])
    assert res.steps == 6 and len(seen) == 6  # 50 // 16 = 3 batches per epoch, last dropped
    first_epoch = sum((idx for e, idx in seen if e == 0), [])
    assert len(set(first_epoch)) == 48
    cfg["train"]["drop_last"] = False
    seen.clear()
    assert fit(cfg, [Spy()]).steps == 8
    assert sorted(sum((idx for e, idx in seen if e == 0), [])) == list(range(50))


def test_schedules():
    step = make_schedule(ScheduleConfig(kind="step", milestones=[2, 5], values=[8, 16]), 1.0,
                         total_steps=10)
    assert [step(t) for t in range(7)] == [1, 1, 8, 8, 8, 16, 16]
    ep = make_schedule(ScheduleConfig(kind="step", milestones=[1], values=[3], unit="epoch"),
                       1.0, total_steps=10, steps_per_epoch=4)
    assert [ep(t) for t in range(6)] == [1, 1, 1, 1, 3, 3]
    warm = make_schedule(ScheduleConfig(kind="warmup", warmup=4), 2.0, total_steps=10)
    assert [warm(t) for t in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cos = make_schedule(ScheduleConfig(kind="cosine", min_lr=0.1), 1.0, total_steps=11)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.1)
    assert cos(5) == pytest.approx(0.55)


def test_schedule_reaches_optimizer():
    lrs = []

    class Spy(Callback):
        def on_step_end(self, state, record):
            lrs.append(state.optimizer.param_groups[0]["lr"])

    cfg = small_config(train={"steps": 6, "lr": 0.1, "schedule": {
        "kind": "step", "milestones": [3], "values": [0.2]}})
    fit(cfg, [Spy()])
    assert lrs == [0.1, 0.1, 0.1, 0.2, 0.2, 0.2]


def test_divergence_ends_cleanly():
    cfg = small_config(train={"lr": 500.0, "steps": 200})
    res = fit(cfg)
    assert res.status == "diverged"
    assert res.steps < 200
    assert not math.isfinite(res.history[-1]["loss"])
    assert all(math.isfinite(r["loss"]) for r in res.history[:-1])


def test_catapult_in_wide_two_layer_net():
    """GD at ~1.5x the critical lr: the loss rises >= 10x, then falls below its start."""
    torch.manual_seed(0)
    data = synthetic_regression("x1*x2", d=20, n_train=64, n_test=0, seed=3)
    model = MLP(20, 1, width=2048, depth=2, parameterization="ntk", seed=1)
    eta = 1.5 * critical_lr(model, data.X_train)
    cfg = TrainConfig(optimizer="gd", lr=eta, steps=100)
    res = Trainer(model, data, cfg, device="cpu").fit()
    losses = [r["loss"] for r in res.history]
    start = losses[0]
    peak_at = max(range(len(losses)), key=losses.__getitem__)
    assert losses[peak_at] >= 10 * start
    assert min(losses[peak_at:]) < start
    assert res.status == "completed"


def test_cross_entropy_needs_classification():
    from catapults.config import ConfigError

    with pytest.raises(ConfigError, match="train.loss"):
        fit(small_config(train={"loss": "cross_entropy"}))


def test_digits_binary_and_onehot():
    cfg = RunConfig.model_validate(
        {"data": {"name": "digits", "classes": [3, 8], "n_train": 100, "n_test": 50}})
    d = make_dataset(cfg.data)
    assert d.y_train.shape == (100, 1) and set(d.y_train.flatten().tolist()) == {-1.0, 1.0}
    assert d.X_train.shape == (100, 1, 8, 8)
    assert d.X_train.reshape(100, -1).mean(0).abs().max() < 1e-5  # standardised
    cfg = RunConfig.model_validate({"data": {"name": "digits", "classes": [0, 1, 2],
                                             "n_train": 60, "n_test": 30}})
    d = make_dataset(cfg.data)
    assert d.y_train.shape == (60, 3) and (d.y_train.sum(1) == 1).all()
    cfg = small_config(data={"name": "digits", "classes": [0, 1], "n_train": 100, "n_test": 50},
                       train={"loss": "cross_entropy", "lr": 0.5, "steps": 20})
    res = fit(cfg)
    assert "final_test_error" in res.summary


@pytest.mark.parametrize("extra", [
    {"monitor": {"agop": {"enabled": True, "every": 5}}},
    {"train": {"optimizer": "sgd", "batch_size": 8}, "monitor": {"ntk": {"enabled": True}}},
    {"monitor": {"ntk": {"enabled": True, "every": 1, "method": "lanczos"}}},
    {"train": {"schedule": {"kind": "critical", "milestones": [2], "values": [1e6]}}},
], ids=["agop", "ntk-batch", "ntk-lanczos", "critical-schedule"])
def test_divergence_inside_a_monitor_or_schedule_is_divergence(tmp_path, extra):
    """A monitor or schedule that fails on NaN / inf weights (eigh, Lanczos, critical lr) does
    not turn a diverging run into a crash: the status is 'diverged' and the metrics are kept."""
    from catapults.runs import run
    from catapults.storage.rundir import read_metrics

    cfg = {"data": {"name": "synthetic", "d": 5, "target": "x1*x2", "n_train": 32,
                    "n_test": 32},
           "model": {"depth": 2, "width": 16},
           "train": {"steps": 20, "lr": 1e6},
           "output": {"progress": False, "checkpoint": False, "figures": False}}
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    res = run(config_from_dict(cfg), out_dir=tmp_path / "run")
    assert res.status == "diverged"
    rows = read_metrics(tmp_path / "run")
    assert rows and len(rows) <= 4
