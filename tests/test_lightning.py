"""catapults.integrations.lightning.CatapultsCallback in a lightning.pytorch.Trainer, with a
user-defined model: rows, losses, learning rates and critical rates against independent values;
no effect on training; a GD catapult; checkpoint resume; bad input."""

import copy
import importlib
import json
import logging
import sys

import pytest

L = pytest.importorskip("lightning.pytorch")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from references import reference_critical_lr  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from catapults.errors import CatapultsError, MonitorError  # noqa: E402
from catapults.integrations.lightning import CatapultsCallback  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


class UserNet(nn.Module):
    """Not a catapults model: tanh, dropout (so that a consumed random number would show) and a
    free parameter."""

    def __init__(self, d=6, width=32, dropout=0.1):
        super().__init__()
        self.inp = nn.Linear(d, width)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scale = nn.Parameter(torch.ones(width))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        return self.out(self.drop(torch.tanh(self.inp(x))) * self.scale)


class NTKNet(nn.Module):
    """A two-layer ReLU network in NTK parameterisation, no bias, written here."""

    def __init__(self, d, width):
        super().__init__()
        self.d, self.width = d, width
        self.W1 = nn.Parameter(torch.randn(width, d))
        self.w2 = nn.Parameter(torch.randn(1, width))

    def forward(self, x):
        return F.relu(x @ self.W1.T / self.d ** 0.5) @ self.w2.T / self.width ** 0.5


class Module(L.LightningModule):
    """Mean-MSE regression; records each batch's loss, the optimizer's lr and the training flags
    as training_step sees them. ``lr_at(t)``: the learning rate of update t (LambdaLR, base 1)."""

    def __init__(self, net, lr_at, manual=False):
        super().__init__()
        self.net, self.lr_at = net, lr_at
        self.automatic_optimization = not manual
        self.losses, self.lrs, self.flags = [], [], []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.losses.append(float(loss.detach()))
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        self.flags.append(all(m.training for m in self.modules()))
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: self.lr_at(t))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Snapshot(L.Callback):
    """Placed before CatapultsCallback: θ_t, its gradients and independent critical rates (float64
    vmap(jacrev) kernels, eigvalsh) of the probe and of update t's batch, every ``every`` steps."""

    def __init__(self, X, every):
        self.X, self.every = X, every
        self.reference, self.state = {}, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        t = trainer.global_step
        self.state = [(p.detach().clone(), None if p.grad is None else p.grad.clone())
                      for p in pl_module.parameters()]
        if t % self.every == 0:
            net = copy.deepcopy(pl_module.net).eval()
            self.reference[t] = (reference_critical_lr(net, self.X),
                                 reference_critical_lr(net, batch[0]))


class Unchanged(L.Callback):
    """Placed after CatapultsCallback: parameters, gradients and train mode as Snapshot saw."""

    def __init__(self, snapshot):
        self.snapshot, self.checked = snapshot, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for (p0, g0), p in zip(self.snapshot.state, pl_module.parameters()):
            assert torch.equal(p0, p)
            assert (g0 is None and p.grad is None) or torch.equal(g0, p.grad)
        assert all(m.training for m in pl_module.modules())
        self.checked += 1


def _data(n, d):
    X = torch.randn(n, d)
    return X, (X[:, 0] * X[:, 1]).reshape(-1, 1)


def _trainer(callbacks, steps, **kw):
    return L.Trainer(max_steps=steps, callbacks=callbacks, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", **kw)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


def test_rows_losses_lrs_and_critical_rates_match_lightning(tmp_path):
    X, y = _data(160, 6)
    module = Module(UserNet(), lambda t: 0.05 / (1 + 0.1 * t))
    snap = Snapshot(X, every=5)
    check = Unchanged(snap)
    cb = CatapultsCallback(probe=(X, y), out=tmp_path / "pl", every=5, k=3,
                           log_to_lightning=True)
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)
    trainer = _trainer([snap, cb, check], 30)
    trainer.fit(module, loader)

    rows = _rows(tmp_path / "pl")
    assert [r["step"] for r in rows] == list(range(30)) and check.checked == 30
    assert [r["loss"] for r in rows] == module.losses            # Lightning's own batch losses
    assert [r["lr"] for r in rows] == module.lrs
    assert module.lrs[0] == 0.05 and module.lrs[29] == pytest.approx(0.05 / 3.9)
    assert all(module.flags)                                      # train mode in training_step
    assert sorted(snap.reference) == [0, 5, 10, 15, 20, 25]
    for t, (eta, eta_b) in snap.reference.items():
        lam = rows[t]["ntk/lambda"]
        assert len(lam) == 3 and lam == sorted(lam, reverse=True)
        assert rows[t]["ntk/eta_crit"] == pytest.approx(eta, rel=1e-4)
        assert rows[t]["ntk/batch_eta_crit"] == pytest.approx(eta_b, rel=1e-4)
    assert all("ntk/batch_eta_crit" in r for r in rows)
    assert all(("ntk/eta_crit" in r) == (r["step"] % 5 == 0) for r in rows)

    summary = cb.summary
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert isinstance(summary["events"], list)
    assert json.loads((tmp_path / "pl" / "summary.json").read_text())["steps"] == 30
    for name in ["events.json", "watch.json", "figures/loss.png", "figures/ntk_spectrum.png"]:
        assert (tmp_path / "pl" / name).is_file(), name
    logged = trainer.callback_metrics                             # log_to_lightning
    assert float(logged["ntk/eta_crit"]) == pytest.approx(rows[25]["ntk/eta_crit"])
    assert float(logged["lr"]) == pytest.approx(rows[29]["lr"])
    assert "loss" not in logged


def _train(with_callback, tmp_path):
    torch.manual_seed(1234)
    X, y = _data(96, 6)
    module = Module(UserNet(), lambda t: 0.1)
    loader = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)
    cbs = [CatapultsCallback(probe=(X, y), out=tmp_path / "w", every=1, k=2, figures=False)]
    _trainer(cbs if with_callback else [], 24).fit(module, loader)
    return module


def test_training_is_bit_for_bit_the_same_with_and_without_the_callback(tmp_path):
    plain, watched = _train(False, tmp_path), _train(True, tmp_path)
    assert watched.losses == plain.losses and len(plain.losses) == 24
    a, b = plain.state_dict(), watched.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(_rows(tmp_path / "w")) == 24


def test_gd_catapult_found_when_a_scheduler_raises_the_lr_above_critical(tmp_path):
    X, y = _data(48, 5)
    net = NTKNet(5, 256)
    eta0 = reference_critical_lr(net, X)
    raised = {}

    def lr_at(t):  # LambdaLR asks for update t's rate with the model at θ_t
        if t >= 30 and not raised:
            raised["lr"] = 1.8 * reference_critical_lr(net, X)
        return raised.get("lr", 0.5 * eta0)

    module = Module(net, lr_at)
    cb = CatapultsCallback(probe=(X, y), out=tmp_path / "gd", every=1, k=2, figures=False)
    loader = DataLoader(TensorDataset(X, y), batch_size=48)       # the batch is the probe
    _trainer([cb], 100).fit(module, loader)

    rows = _rows(tmp_path / "gd")
    assert [r["step"] for r in rows] == list(range(100))
    assert not any("ntk/batch_eta_crit" in r for r in rows)      # full batch: no batch kernels
    assert rows[29]["lr"] == 0.5 * eta0
    assert rows[30]["lr"] == raised["lr"] == pytest.approx(1.8 * rows[30]["ntk/eta_crit"],
                                                           rel=1e-4)
    events = cb.summary["events"]
    assert len(events) == 1 and events[0]["start"] >= 29 and events[0]["end"] > events[0]["peak"]
    assert events[0]["info"]["lambda_max_after"] < events[0]["info"]["lambda_max_before"]
    assert json.loads((tmp_path / "gd" / "events.json").read_text())["count"] == 1


def test_resume_from_a_checkpoint_keeps_the_rows_and_writes_each_step_once(tmp_path):
    X, y = _data(160, 6)
    loader = DataLoader(TensorDataset(X, y), batch_size=16)

    def fit(steps, ckpt=None, save=None):
        module = Module(UserNet(), lambda t: 0.05 / (1 + 0.1 * t))
        cb = CatapultsCallback(probe=(X, y), out=tmp_path / "run", every=4, k=2, figures=False)
        trainer = _trainer([cb], steps)
        trainer.fit(module, loader, ckpt_path=ckpt)
        if save is not None:
            trainer.save_checkpoint(save)
        return cb, module

    first, m1 = fit(10, save=tmp_path / "ten.ckpt")
    state = torch.load(tmp_path / "ten.ckpt", weights_only=False)["callbacks"][first.state_key]
    assert state["watch"]["steps"] == 10 and len(state["watch"]["history"]) == 10
    resumed, m2 = fit(25, ckpt=tmp_path / "ten.ckpt")  # the same run directory

    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(25))
    assert rows[:10] == [json.loads(json.dumps(r)) for r in first.watch.history]
    assert [r["loss"] for r in rows] == m1.losses + m2.losses
    assert [r["lr"] for r in rows] == m1.lrs + m2.lrs
    assert [r["lr"] for r in rows] == pytest.approx([0.05 / (1 + 0.1 * t) for t in range(25)])
    assert [r["step"] for r in rows if "ntk/eta_crit" in r] == [0, 4, 8, 12, 16, 20, 24]
    assert resumed.summary["steps"] == 25 and resumed.summary["status"] == "completed"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 25


def test_manual_optimization_records_the_returned_loss(tmp_path):
    X, y = _data(64, 6)
    module = Module(UserNet(), lambda t: 0.1, manual=True)
    cb = CatapultsCallback(probe=(X, y), every=3, k=2, figures=False)
    loader = DataLoader(TensorDataset(X, y), batch_size=16)
    _trainer([cb], 8).fit(module, loader)
    rows = cb.watch.history
    assert [r["step"] for r in rows] == list(range(8))
    assert [r["loss"] for r in rows] == module.losses
    assert all("ntk/batch_eta_crit" in r for r in rows) and "ntk/eta_crit" in rows[6]


def test_divergence_ends_as_diverged_with_every_row_kept(tmp_path):
    """At lr 1e4 the kernel overflows before the loss does: the row measured in
    on_train_batch_start says diverged_in, training goes on unmeasured, the rows stay."""
    X, y = _data(64, 6)
    module = Module(UserNet(dropout=0), lambda t: 1e4)
    cb = CatapultsCallback(probe=(X, y), out=tmp_path / "div", every=1, k=2, figures=False)
    _trainer([cb], 12).fit(module, DataLoader(TensorDataset(X, y), batch_size=16))
    rows = _rows(tmp_path / "div")
    assert [r["step"] for r in rows] == list(range(12)) and cb.summary["status"] == "diverged"
    assert sum("diverged_in" in r for r in rows) == 1 and rows[-1]["loss"] is None
    assert json.loads((tmp_path / "div" / "summary.json").read_text())["status"] == "diverged"


class Mixer(nn.Module):  # the output of a sample depends on the batch
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 1)

    def forward(self, x):
        return self.lin(x - x.mean(0, keepdim=True))


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    X, y = _data(64, 6)
    loader = DataLoader(TensorDataset(X, y), batch_size=16)
    out = tmp_path / "never"

    def fit(net, probe, **kw):
        cb = CatapultsCallback(probe=probe, out=out, figures=False)
        _trainer([cb], 4, **kw).fit(Module(net, lambda t: 0.1), loader)

    with pytest.raises(MonitorError, match="CatapultsCallback: .*1 output.*shape \\(64, 2\\)"):
        fit(UserNet(), (X, torch.zeros(64, 2)))
    with pytest.raises(MonitorError, match="64 samples but y has 10"):
        fit(UserNet(), (X, y[:10]))
    with pytest.raises(MonitorError, match="cannot be applied to the probe inputs of shape "
                                           "\\(64, 5\\)"):
        fit(UserNet(d=6), (torch.randn(64, 5), y))  # inputs of another width
    with pytest.raises(MonitorError, match="depends on the other samples"):
        fit(Mixer(), (X, y))
    with pytest.raises(MonitorError, match="accumulate_grad_batches"):
        fit(UserNet(), (X, y), accumulate_grad_batches=2)
    assert not out.exists()
    with pytest.raises(MonitorError, match="checkpoint: not a saved watch state"):
        CatapultsCallback(probe=(X, y)).load_state_dict({"watch": {"version": 99}})
    assert issubclass(MonitorError, CatapultsError)


def test_without_lightning_the_import_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "catapults.integrations.lightning")
    with pytest.raises(MonitorError, match="pip install lightning") as info:
        importlib.import_module("catapults.integrations.lightning")
    assert isinstance(info.value, ImportError) and "\n" not in str(info.value)
