"""AGOP and AGOP alignment against independent float64 references (finite differences, direct
formulas, eigh/sqrtm), and the AGOP monitor in a short training run."""

import types

import numpy as np
import pytest
import scipy.linalg
import torch
from references import fd_input_gradients
from torch import nn

from catapults.agop import (
    AGOPError,
    FactoredAGOP,
    agop,
    agop_alignment,
    agop_factor,
    agop_for_alignment,
    alignment,
    input_gradients,
    psd_sqrt,
)
from catapults.config import ConfigError, TrainConfig, config_from_dict
from catapults.data import Dataset, synthetic_regression
from catapults.data.targets import parse_target
from catapults.models import MLP
from catapults.monitors.agop import AGOPMonitor
from catapults.runs import build_monitors, reference_agop_for, run
from catapults.training import Trainer
from helpers import small_config

F64 = torch.float64


def agop_from_grads(G):
    return torch.einsum("ncd,nce->de", G, G) / G.shape[0]


def rand_psd(d, r, gen=None):
    F = torch.randn(r, d, dtype=F64, generator=gen)
    return F.T @ F / r


# ---- the AGOP -------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_agop_against_finite_differences(c, bias):
    seed = int(torch.randint(0, 10**6, ()))
    model = MLP(12, c, width=16, depth=3, activation="tanh", bias=bias, seed=seed, dtype=F64)
    X = torch.randn(9, 3, 4, dtype=F64)  # non-flat inputs: d = 12
    G_ref = fd_input_gradients(model, X)
    G = input_gradients(model, X)
    assert G.shape == (9, c, 12) and G.dtype == F64
    torch.testing.assert_close(G, G_ref, rtol=1e-7, atol=1e-9)
    A = agop(model, X)
    assert A.shape == (12, 12)
    torch.testing.assert_close(A, agop_from_grads(G_ref), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(A, A.T)
    # chunking, block size and the factored form change nothing
    torch.testing.assert_close(agop(model, X, chunk_size=2, block=5), A)
    torch.testing.assert_close(agop_factor(model, X, chunk_size=4).matrix(block=7), A)


def test_multi_output_sums_over_outputs_and_plain_callables():
    W = torch.randn(2, 5, dtype=F64)

    def f(X):  # (n, 5) -> (n, 2): f_0 = sin(w0.x), f_1 = (w1.x)^2
        z = X @ W.T
        return torch.stack([torch.sin(z[:, 0]), z[:, 1] ** 2], dim=1)

    X = torch.randn(30, 5, dtype=F64)
    z = X @ W.T
    g0 = torch.cos(z[:, 0:1]) * W[0]
    g1 = 2 * z[:, 1:2] * W[1]
    expected = (g0.T @ g0 + g1.T @ g1) / 30
    torch.testing.assert_close(agop(f, X), expected)
    single = agop(lambda X: f(X)[:, 0], X) + agop(lambda X: f(X)[:, 1], X)
    torch.testing.assert_close(agop(f, X), single)


def test_constant_and_partly_constant_functions():
    X = torch.randn(6, 4, dtype=F64)
    assert agop(lambda x: torch.ones(x.shape[0], dtype=F64), X).abs().max() == 0
    A = agop(lambda x: torch.stack([x[:, 0] * 0 + 1, 3 * x[:, 1]], 1), X)
    expected = torch.zeros(4, 4, dtype=F64)
    expected[1, 1] = 9.0
    torch.testing.assert_close(A, expected)


def test_parameters_grad_untouched():
    model = MLP(6, 1, width=8, depth=2, dtype=F64)
    agop(model, torch.randn(5, 6, dtype=F64))
    assert all(p.grad is None for p in model.parameters())


def test_product_target_sample_agop_approaches_diag():
    target = parse_target("x1*x2", 10)
    exact = torch.zeros(10, 10, dtype=F64)
    exact[0, 0] = exact[1, 1] = 1.0
    torch.testing.assert_close(target.expected_agop(), exact)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    n = 20000
    A = agop(target, torch.randn(n, 10, dtype=F64, generator=gen))
    # diagonal entries are means of x^2 (sd sqrt(2/n) = 0.01), off-diagonal of x1*x2 (0.007),
    # all other entries exactly 0: 5 standard deviations
    assert (A - exact).abs().max() < 0.05
    assert A[2:, :].abs().max() == 0
    assert alignment(A, exact) > 0.999


def test_non_polynomial_target_expected_agop_uses_agop():
    # E[cos(x1)^2] = (1 + e^-2) / 2 for x1 ~ N(0, 1); other entries exactly 0
    G = parse_target("sin(x1)", 3).expected_agop(n_mc=40000, seed=3)
    assert G[0, 0] == pytest.approx((1 + np.exp(-2)) / 2, abs=0.01)
    assert G[1:].abs().max() == 0 and G[:, 1:].abs().max() == 0


# ---- alignment ------------------------------------------------------------------------------
def test_alignment_basic_properties():
    A, B = rand_psd(8, 3), rand_psd(8, 5)
    assert alignment(A, A) == pytest.approx(1.0, abs=1e-12)
    rho = alignment(A, B)
    assert 0 < rho < 1
    assert alignment(3.0 * A, 0.25 * B) == pytest.approx(rho, abs=1e-12)
    assert rho == pytest.approx(float((A * B).sum() / (A.norm() * B.norm())), abs=1e-12)
    # Frobenius-orthogonal: B minus its projection on A
    Bp = B - (A * B).sum() / (A * A).sum() * A
    assert abs(alignment(A, Bp)) < 1e-12
    E1, E2 = torch.zeros(8, 8, dtype=F64), torch.zeros(8, 8, dtype=F64)
    E1[0, 0], E2[1, 1] = 1.0, 1.0
    assert alignment(E1, E2) == 0.0
    # the same in factored form: rank-1 factors along e1 and e2
    f1 = FactoredAGOP(torch.eye(8, dtype=F64)[:1], torch.ones(1, dtype=F64))
    f2 = FactoredAGOP(torch.eye(8, dtype=F64)[1:2], torch.ones(1, dtype=F64))
    assert alignment(f1, f2) == 0.0 and alignment(f1, f1) == pytest.approx(1.0)
    assert np.isnan(alignment(torch.zeros(8, 8), A))
    with pytest.raises(AGOPError, match="same shape"):
        alignment(A, rand_psd(7, 2))


def direct_centered(A, B):
    return float(np.corrcoef(A.reshape(-1).numpy(), B.reshape(-1).numpy())[0, 1])


def direct_sqrt(A):
    return torch.from_numpy(np.real(scipy.linalg.sqrtm(A.numpy())))


def cosine(A, B):
    return float((A * B).sum() / (A.norm() * B.norm()))


def test_centered_and_sqrt_variants_against_direct_formulas():
    A, B = rand_psd(9, 4), rand_psd(9, 20)
    assert alignment(A, B, centered=True) == pytest.approx(direct_centered(A, B), abs=1e-10)
    sA, sB = direct_sqrt(A + 1e-12 * torch.eye(9, dtype=F64)), direct_sqrt(B)
    torch.testing.assert_close(psd_sqrt(B), sB, rtol=1e-7, atol=1e-7)
    assert alignment(A, B, sqrt=True) == pytest.approx(cosine(sA, sB), abs=1e-6)
    assert alignment(A, B, sqrt=True, centered=True) == pytest.approx(
        direct_centered(sA, sB), abs=1e-6)
    # the centred variant differs from the default when the means differ
    assert alignment(A, B, centered=True) != pytest.approx(alignment(A, B), abs=1e-6)


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("sqrt", [False, True])
def test_gram_alignment_equals_dense(centered, sqrt):
    d = 40
    Fa, Fb = torch.randn(7, d, dtype=F64), torch.randn(11, d, dtype=F64) + 0.3
    a, b = FactoredAGOP.from_gradients(Fa), FactoredAGOP.from_gradients(Fb.reshape(11, 1, d))
    Ad, Bd = a.matrix(), b.matrix()
    torch.testing.assert_close(Ad, Fa.T @ Fa / 7)
    dense = alignment(Ad, Bd, centered=centered, sqrt=sqrt)
    for x, y in [(a, b), (a, Bd), (Ad, b)]:
        got = alignment(x, y, centered=centered, sqrt=sqrt, method="factored")
        assert got == pytest.approx(dense, abs=1e-9)
    assert alignment(a, Ad, centered=centered, sqrt=sqrt, method="factored") == pytest.approx(
        1.0, abs=1e-9)
    assert alignment(a, b, centered=centered, sqrt=sqrt, method="auto") == pytest.approx(
        dense, abs=1e-9)


def test_factored_helpers():
    F = torch.randn(6, 15, dtype=F64)
    a = FactoredAGOP.from_gradients(F)
    vals = torch.linalg.eigvalsh(a.matrix()).flip(0)
    torch.testing.assert_close(a.eigenvalues(), vals[:6])
    torch.testing.assert_close(a.sqrt().matrix(), psd_sqrt(a.matrix()), atol=1e-9, rtol=1e-7)
    assert a.trace() == pytest.approx(float(torch.trace(a.matrix())))


def test_agop_alignment_uses_gram_path_when_d_exceeds_n():
    model = MLP(50, 2, width=16, depth=2, activation="tanh", dtype=F64)
    X = torch.randn(10, 50, dtype=F64)  # n*c = 20 < d = 50: factored path
    ref = rand_psd(50, 5)
    dense = alignment(agop(model, X), ref)
    assert agop_alignment(model, X, ref) == pytest.approx(dense, abs=1e-10)
    assert agop_alignment(model, X, ref, method="factored") == pytest.approx(dense, abs=1e-10)
    assert agop_alignment(model, X, ref, sqrt=True) == pytest.approx(
        alignment(agop(model, X), ref, sqrt=True, method="dense"), abs=1e-7)
    ref_f = FactoredAGOP.from_gradients(torch.randn(5, 50, dtype=F64))
    # against a dense reference the d x d AGOP is cheaper; against a factored one, Gram matrices
    assert isinstance(agop_for_alignment(model, X, ref), torch.Tensor)
    assert isinstance(agop_for_alignment(model, X, ref_f), FactoredAGOP)
    assert isinstance(agop_for_alignment(model, X, ref, sqrt=True), FactoredAGOP)
    X40 = torch.randn(40, 50, dtype=F64)  # n*c = 80 >= d: dense
    assert isinstance(agop_for_alignment(model, X40, ref_f), torch.Tensor)
    assert agop_alignment(model, X, ref_f, centered=True) == pytest.approx(
        alignment(agop(model, X), ref_f.matrix(), centered=True), abs=1e-10)
    X2 = torch.randn(40, 50, dtype=F64)  # dense path
    assert agop_alignment(model, X2, ref) == pytest.approx(alignment(agop(model, X2), ref),
                                                           abs=1e-12)
    with pytest.raises(AGOPError, match="reference must be 50 x 50"):
        agop_alignment(model, X, rand_psd(10, 2))


# ---- refusals -------------------------------------------------------------------------------
def test_batch_mixing_models_are_refused():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    X = torch.randn(16, 5)
    with pytest.raises(AGOPError, match="training mode.*model.eval"):
        agop(model, X)
    model.eval()
    assert agop(model, X).shape == (5, 5)

    def mixing(X):
        return (X - X.mean(0)).pow(2).sum(1)

    with pytest.raises(AGOPError, match="depends on the other samples"):
        agop(mixing, X)
    dropout = nn.Sequential(nn.Linear(5, 64), nn.Dropout(0.5), nn.Linear(64, 1))
    with pytest.raises(AGOPError, match="random"):
        agop(dropout, X)
    with pytest.raises(AGOPError, match="no samples"):
        agop(lambda x: x.sum(1), torch.zeros(0, 3))


def test_monitor_refuses_batch_mixing_model_at_train_begin():
    data = synthetic_regression("x1*x2", d=4, n_train=16, n_test=4)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    mon = AGOPMonitor(data.X_train, data.target.expected_agop(), every=1)
    begin = types.SimpleNamespace(model=model.train(), device="cpu", dtype=torch.float32)
    with pytest.raises(AGOPError, match="monitor.agop: .*BatchNorm1d.*training mode"):
        mon.on_train_begin(begin)  # a hand-written loop that measures in training mode
    # the trainer measures in eval mode (BatchNorm's running statistics) and updates in
    # training mode, so there the monitor runs
    res = Trainer(model, data, TrainConfig(optimizer="gd", lr=0.1, steps=2), callbacks=[mon],
                  device="cpu").fit()
    assert res.status == "completed" and [r["step"] for r in mon.rows] == [0, 1, 2]
    with pytest.raises(ConfigError, match="reference AGOP is"):
        AGOPMonitor(data.X_train, torch.eye(5), every=1)


# ---- the monitor ----------------------------------------------------------------------------
def test_monitor_in_a_training_run(tmp_path):
    data = synthetic_regression("x1*x2", d=10, n_train=64, n_test=32, seed=1)
    ref = data.target.expected_agop()
    model = MLP(10, 1, width=32, depth=2, seed=0)
    mon = AGOPMonitor(data.X_train, ref, every=4)
    res = Trainer(model, data, TrainConfig(optimizer="gd", lr=0.5, steps=10), callbacks=[mon],
                  device="cpu").fit()
    rows = [r for r in res.history if "agop/alignment" in r]
    assert [r["step"] for r in rows] == [0, 4, 8]
    assert all(-1 <= r["agop/alignment"] <= 1 for r in rows)
    out = res.summary["monitors"]["agop"]
    assert out["initial_alignment"] == rows[0]["agop/alignment"]
    assert out["final_alignment"] == pytest.approx(mon.measure(res.model), abs=1e-6)
    assert out["final_step"] == 10 and out["measurements"] == 4
    for centered, sqrt in [(True, False), (False, True), (True, True)]:
        variant = AGOPMonitor(data.X_train, ref, centered=centered, sqrt=sqrt)
        assert variant.measure(res.model) == pytest.approx(alignment(
            agop(res.model, data.X_train).double(), ref, centered=centered, sqrt=sqrt,
            method="dense"), abs=1e-5)
    mon.write_artifacts(tmp_path)
    saved = torch.load(tmp_path / "agop.pt", weights_only=True)
    assert saved["agop"].shape == (10, 10)
    torch.testing.assert_close(saved["agop"], agop(res.model, data.X_train).cpu(), atol=1e-6,
                               rtol=1e-5)
    assert (tmp_path / "figures" / "agop.png").stat().st_size > 0
    assert (tmp_path / "figures" / "agop_alignment.png").stat().st_size > 0
    assert not list(tmp_path.rglob(".*tmp*"))


def test_reference_agop_for_synthetic_and_real(tmp_path):
    cfg = config_from_dict(small_config(monitor={"agop": {"enabled": True}}))
    data = synthetic_regression("x1*x2", d=10, n_train=64, n_test=8)
    torch.testing.assert_close(reference_agop_for(cfg, data), data.target.expected_agop())

    real = Dataset(torch.randn(20, 10), torch.randn(20, 1), torch.randn(5, 10),
                   torch.randn(5, 1), task="regression", name="digits")
    with pytest.raises(ConfigError, match=r"monitor\.agop\.reference_run: .*no known target"):
        reference_agop_for(cfg, real)
    missing = config_from_dict(small_config(
        monitor={"agop": {"enabled": True, "reference_run": str(tmp_path / "nope")}}))
    with pytest.raises(ConfigError, match=r"monitor\.agop\.reference_run: .*not a directory"):
        reference_agop_for(missing, real)
    (tmp_path / "empty").mkdir()
    empty = config_from_dict(small_config(
        monitor={"agop": {"enabled": True, "reference_run": str(tmp_path / "empty")}}))
    with pytest.raises(ConfigError, match=r"monitor\.agop\.reference_run: .*checkpoint"):
        reference_agop_for(empty, real)

    res = run(config_from_dict(small_config(train={"steps": 3})), out_dir=tmp_path / "ref")
    good = config_from_dict(small_config(
        monitor={"agop": {"enabled": True, "reference_run": str(res.dir), "every": 2}}))
    ref = reference_agop_for(good, real)
    assert isinstance(ref, FactoredAGOP)
    torch.testing.assert_close(ref.matrix(), agop(res.model, real.X_train), atol=1e-6,
                               rtol=1e-5)
    (mon,) = [m for m in build_monitors(good, real) if isinstance(m, AGOPMonitor)]
    assert mon.every == 2 and mon.measure(res.model) == pytest.approx(1.0, abs=1e-5)
