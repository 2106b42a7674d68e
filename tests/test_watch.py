"""catapults.watch in a hand-written loop, with a user-defined model; loggers and TensorBoard."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from references import reference_critical_lr
from torch import nn

import catapults
from catapults.errors import CatapultsError, KernelError, MonitorError
from catapults.loggers import MemoryLogger
from catapults.models import MLP


class UserNet(nn.Module):
    """A model the toolkit has never seen: a free parameter (generic NTK path) and tanh."""

    def __init__(self, d=6, width=32):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.scale = nn.Parameter(torch.ones(width))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x)) * self.scale)


def _data(n=64, d=6):
    X = torch.randn(n, d)
    return X, (X[:, 0] * X[:, 1]).reshape(-1, 1)


def test_plain_loop_with_a_user_model(tmp_path):
    X, y = _data()
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    mem = MemoryLogger()
    mon = catapults.watch(model, opt, probe=(X, y), out=tmp_path / "mine", every=5, k=3,
                          loggers=[mem])
    checks = []
    for t in range(25):
        idx = torch.arange(t % 4 * 16, t % 4 * 16 + 16)
        xb, yb = X[idx], y[idx]
        loss = F.mse_loss(model(xb), yb)
        before = [p.detach().clone() for p in model.parameters()]
        if t % 5 == 0:
            checks.append((t, reference_critical_lr(model, X), reference_critical_lr(model, xb)))
        row = mon.step(loss, batch=(xb, yb))
        # watching changes no parameter, creates no .grad and leaves the loss's graph usable
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert all(p.grad is None or t > 0 for p in model.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        assert row["lr"] == pytest.approx(0.2 * 0.5 ** (t // 10))
    summary = mon.close()
    assert summary["status"] == "completed" and summary["steps"] == 25
    assert isinstance(summary["events"], list)
    rows = [json.loads(line) for line in (tmp_path / "mine" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(25)) and mem.rows == rows
    for t, eta, eta_b in checks:
        r = rows[t]
        lam = r["ntk/lambda"]
        assert lam == sorted(lam, reverse=True) and len(lam) == 3
        assert r["ntk/eta_crit"] == pytest.approx(eta, rel=1e-4)
        assert r["ntk/batch_eta_crit"] == pytest.approx(eta_b, rel=1e-4)
        assert r["ntk/L_top"] + r["ntk/L_rest"] == pytest.approx(r["ntk/L"], rel=1e-6)
    for name in ["events.json", "summary.json", "watch.json", "figures/loss.png",
                 "figures/ntk_spectrum.png", ".catapults-run"]:
        assert (tmp_path / "mine" / name).is_file(), name


def test_full_batch_gd_catapult_is_found(tmp_path):
    """GD on the NTK-parameterised MLP, lr raised to 1.8x the critical rate: one catapult."""
    X, y = _data(n=48, d=5)
    model = MLP(5, 1, width=256, depth=2, seed=0)
    eta0 = reference_critical_lr(model, X)
    opt = torch.optim.SGD(model.parameters(), lr=0.5 * eta0)
    with catapults.watch(model, opt, probe=(X, y), every=1, k=2) as mon:
        for t in range(160):
            if t == 60:
                for g in opt.param_groups:
                    g["lr"] = 1.8 * reference_critical_lr(model, X)
            loss = F.mse_loss(model(X), y)
            mon.step(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    events = mon.summary["events"]
    assert len(events) == 1 and events[0]["start"] >= 59 and events[0]["end"] > events[0]["peak"]
    assert events[0]["info"]["lambda_max_after"] < events[0]["info"]["lambda_max_before"]


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    X, y = _data()
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = tmp_path / "never"
    with pytest.raises(MonitorError, match="1 output.*shape \\(64, 2\\)"):
        catapults.watch(model, opt, probe=(X, torch.zeros(64, 2)), out=out)
    with pytest.raises(MonitorError, match="64 samples but y has 10"):
        catapults.watch(model, opt, probe=(X, y[:10]), out=out)

    class Mixer(nn.Module):  # output of a sample depends on the batch
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 1)

        def forward(self, x):
            return self.lin(x - x.mean(0, keepdim=True))

    with pytest.raises(KernelError, match="depends on the other samples"):
        catapults.watch(Mixer(), opt, probe=(X, y), out=out)

    class NoLR(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"rho": 0.1})

    with pytest.raises(MonitorError, match="no 'lr'"):
        catapults.watch(model, NoLR(model.parameters()), probe=(X, y), out=out)
    assert not out.exists()
    assert issubclass(MonitorError, CatapultsError)


def test_non_finite_loss_ends_as_diverged_with_rows_kept(tmp_path):
    X, y = _data()
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = catapults.watch(model, opt, probe=(X, y), out=tmp_path / "w", every=1)
    mon.step(torch.tensor(1.0))
    mon.step(torch.tensor(float("nan")))
    summary = mon.close()
    assert summary["status"] == "diverged"
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").open()]
    assert len(rows) == 2 and rows[1]["loss"] is None
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["status"] == "diverged"


def _read_tensorboard(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_files_read_back_by_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    X, y = _data()
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = catapults.watch(model, opt, probe=(X, y), out=tmp_path / "tb", every=2, k=2,
                          tensorboard=True)
    losses = []
    for _ in range(6):
        loss = F.mse_loss(model(X), y)
        losses.append(float(loss.detach()))
        mon.step(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mon.close()
    tags = _read_tensorboard(tmp_path / "tb" / "tensorboard")
    assert {"loss", "lr", "ntk/eta_crit", "ntk/lambda_1", "ntk/lambda_2", "ntk/L_top"} <= set(tags)
    assert [s for s, _ in tags["loss"]] == list(range(6))
    assert [v for _, v in tags["loss"]] == pytest.approx(losses, rel=1e-6)
    assert [s for s, _ in tags["ntk/eta_crit"]] == [0, 2, 4]


def test_run_writes_tensorboard_with_output_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from catapults.config import config_from_dict
    from catapults.runs import run
    from helpers import small_config

    cfg = small_config(output={"tensorboard": True, "progress": False},
                       monitor={"ntk": {"enabled": True, "every": 10}})
    res = run(config_from_dict(cfg), out_dir=tmp_path / "run")
    tags = _read_tensorboard(tmp_path / "run" / "tensorboard")
    assert {"loss", "lr", "train_loss", "test_loss", "ntk/eta_crit", "ntk/lambda_1"} <= set(tags)
    losses = [r["loss"] for r in res.history]
    assert [v for _, v in tags["loss"]] == pytest.approx(losses, rel=1e-6)
    assert all(math.isfinite(v) for _, v in tags["ntk/eta_crit"])


def test_plot_functions_return_figures_accept_ax_and_leave_the_backend_alone(tmp_path):
    import matplotlib
    from matplotlib.figure import Figure

    from catapults import plotting

    backend = matplotlib.get_backend()
    rows = [{"step": t, "lr": 1.0 if t < 5 else 3.0, "loss": 1.0 / (t + 1),
             "ntk/L": 1.0 / (t + 1), "ntk/L_top": 0.5 / (t + 1), "ntk/L_rest": 0.5 / (t + 1),
             "ntk/eta_crit": 2.0, "ntk/lambda": [3.0, 2.0], "ntk/critical_level": 1.0}
            for t in range(10)]
    fig = plotting.plot_training(rows, tmp_path / "a.png")
    assert isinstance(fig, Figure) and (tmp_path / "a.png").is_file()
    assert plotting.lr_changes(rows) == [5]
    own = Figure()
    ax = own.subplots()
    assert plotting.plot_loss_split(rows, ax=ax) is own and not (tmp_path / "b.png").exists()
    assert isinstance(plotting.plot_spectrum(rows), Figure)
    assert matplotlib.get_backend() == backend
def test_begin_end_and_state_dict_resume_a_watch(tmp_path):
    """begin() measures θ_t before the loss is known, end(loss) writes the row (as step() does);
    a watch resumed from state_dict() holds every step once and goes on counting."""
    X, y = _data()
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = catapults.watch(model, opt, probe=(X, y), out=tmp_path / "a", every=2, k=2,
                          figures=False)
    for _ in range(4):
        row = mon.begin((X[:16], y[:16]))
        assert row["loss"] is None and "ntk/batch_eta_crit" in row and mon.steps == row["step"]
        loss = F.mse_loss(model(X[:16]), y[:16])
        assert mon.end(loss)["loss"] == float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with pytest.raises(MonitorError, match="end\\(\\) without begin"):
        mon.end(1.0)
    mon.begin()
    with pytest.raises(MonitorError, match="begin\\(\\) again"):
        mon.begin()
    mon.discard()
    state = mon.state_dict()
    assert state["steps"] == 4 and [r["step"] for r in state["history"]] == [0, 1, 2, 3]
    mon.close()
    again = catapults.watch(model, opt, probe=(X, y), out=tmp_path / "b", every=2, k=2,
                            figures=False)
    again.load_state_dict(state)
    assert again.step(F.mse_loss(model(X), y))["step"] == 4
    summary = again.close()
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(5)) and summary["steps"] == 5
    assert rows[:4] == [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").open()]
    with pytest.raises(MonitorError, match="not a saved watch state"):
        catapults.watch(model, opt).load_state_dict({"version": 1, "history": [{"step": 3}]})


def test_a_zero_kernel_gives_no_critical_rate_instead_of_a_crash(tmp_path):
    """Every gradient vanishes (all ReLUs dead): lambda_max = 0 on the probe and on every
    batch; eta_crit is infinite (null in metrics.jsonl), not a ZeroDivisionError."""
    import json

    import torch

    import catapults
    from catapults.models import MLP

    model = MLP(4, 1, width=8, depth=2, seed=0)
    with torch.no_grad():
        model.net[1].weight.zero_()
    X, y = torch.randn(16, 4), torch.randn(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = catapults.watch(model, opt, probe=(X, y), out=tmp_path / "w", every=1, k=2,
                          figures=False)
    for i in range(3):
        xb, yb = X[4 * i:4 * i + 4], y[4 * i:4 * i + 4]
        loss = torch.nn.functional.mse_loss(model(xb), yb)
        mon.step(loss, batch=(xb, yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
    mon.close()
    text = (tmp_path / "w" / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows and all(r["ntk/eta_crit"] is None and r["ntk/batch_eta_crit"] is None
                        for r in rows)


@pytest.mark.parametrize("kernel_method", ["rules", "jacobian", "matvec"])
def test_watch_computes_kernels_by_the_method_asked(kernel_method):
    """kernel_method reaches the probe and the batch kernels: every method gives the float64
    reference critical rate of the probe; an unknown method is refused naming the choices."""
    torch.manual_seed(0)
    model = MLP(4, 1, width=16, depth=2, seed=0).double()
    X, y = torch.randn(24, 4, dtype=torch.float64), torch.randn(24, 1, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = catapults.watch(model, opt, probe=(X, y), every=1, k=1, kernel_method=kernel_method)
    expected = reference_critical_lr(model, X)
    loss = F.mse_loss(model(X[:6]), y[:6])
    mon.step(loss, batch=(X[:6], y[:6]))
    mon.close()
    row = mon.history[0]
    assert row["ntk/eta_crit"] == pytest.approx(expected, rel=1e-8)
    assert row["ntk/batch_eta_crit"] == pytest.approx(reference_critical_lr(model, X[:6]),
                                                      rel=1e-8)
    with pytest.raises((ValueError, MonitorError), match="kernel_method must be one of"):
        catapults.watch(model, opt, probe=(X, y), kernel_method="fastest")


def test_config_kernel_method_reaches_the_monitor():
    from catapults.config import ConfigError, config_from_dict
    from catapults.data import make_dataset
    from catapults.runs import build_monitors
    from helpers import small_config

    cfg = config_from_dict(small_config(monitor={"ntk": {"enabled": True,
                                                         "kernel_method": "jacobian"}}))
    (mon,) = [m for m in build_monitors(cfg, make_dataset(cfg.data)) if m.name == "ntk"]
    assert mon.kernel["method"] == "jacobian"
    with pytest.raises(ConfigError, match="monitor.ntk.kernel_method"):
        config_from_dict(small_config(monitor={"ntk": {"kernel_method": "fast"}}))
