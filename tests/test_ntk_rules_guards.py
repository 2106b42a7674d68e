"""Models the layer rules must not be trusted with, and bad arguments: the rules path refuses
them by name (``method="rules"``, ``product="factors"``) and the defaults fall back to exact
paths, against the float64 vmap(jacrev) reference. Found by a hostile review: before these
guards, ``empirical_ntk``'s default was silently 10-60% wrong on some of these models."""

import math

import pytest
import torch
from references import vmap_jacobian
from torch import nn

from catapults.curvature.ntk_rules import verify
from catapults.curvature.ntk_rules.engine import plan
from catapults.ntk import KernelError, empirical_ntk, ntk_matvec, top_eigenpairs

D = torch.float64


class SeqFirst(nn.Module):
    """A dense layer on a sequence-first tensor ``(T, b, d)``."""

    def __init__(self, c):
        super().__init__()
        self.lin, self.head = nn.Linear(3, 4), nn.Linear(4, c)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x.transpose(0, 1))).mean(0))


class PosTable(nn.Module):
    """A dense layer on a table of T rows shared by every sample."""

    def __init__(self, c, T):
        super().__init__()
        self.register_buffer("pe", torch.randn(T, 3))
        self.p, self.a, self.head = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, c)

    def forward(self, x):
        return self.head(torch.tanh(self.a(x) + self.p(self.pe)).mean(1))


class Folded(nn.Module):
    """Tokens folded into the batch dimension, ``(b·T, d)``."""

    def __init__(self, c):
        super().__init__()
        self.lin, self.head = nn.Linear(3, 4), nn.Linear(4, c)

    def forward(self, x):
        b, T, d = x.shape
        return self.head(torch.tanh(self.lin(x.reshape(b * T, d))).reshape(b, T, -1).mean(1))


def _mismatched(name, c):
    """(model, X) for each model whose ruled layer is not batched along its first dimension;
    ``square`` variants have T = n, so the factors even have the right shapes."""
    if name == "seq-first":
        return SeqFirst(c).double(), torch.randn(5, 3, 3, dtype=D)
    if name == "seq-first-square":
        return SeqFirst(c).double(), torch.randn(4, 4, 3, dtype=D)
    if name == "table-square":
        return PosTable(c, 5).double(), torch.randn(5, 5, 3, dtype=D)
    return Folded(c).double(), torch.randn(5, 3, 3, dtype=D)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", ["seq-first", "seq-first-square", "table-square", "folded"])
@pytest.mark.parametrize("c", [1, 2])
def test_layers_not_batched_along_dim0_fall_back_or_are_refused(name, c):
    model, X = _mismatched(name, c)
    J = vmap_jacobian(model, X)
    K = J @ J.T
    assert _rel(empirical_ntk(model, X), K) < 1e-10  # auto: the generic path
    V = torch.randn(K.shape[0], 2, dtype=D)
    assert _rel(ntk_matvec(model, X)(V), K @ V) < 1e-10  # auto: autograd products
    with pytest.raises(KernelError, match="first dimension|do not reproduce autograd"):
        empirical_ntk(model, X, method="rules")
    with pytest.raises(KernelError, match="first dimension|do not reproduce autograd"):
        ntk_matvec(model, X, product="factors")


class Doubled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("wrap", ["spectral_norm", "weight_norm", "subclass", "hooked"])
def test_reparametrised_or_hooked_layers_go_to_the_generic_path(wrap):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old-style weight_norm is deprecated
        first = {"spectral_norm": lambda: nn.utils.spectral_norm(nn.Linear(3, 4)),
                 "weight_norm": lambda: nn.utils.weight_norm(nn.Linear(3, 4)),
                 "subclass": lambda: Doubled(3, 4), "hooked": lambda: nn.Linear(3, 4)}[wrap]()
    if wrap == "hooked":
        first.register_forward_hook(lambda mod, args, out: 3 * out)
    model = nn.Sequential(first, nn.Tanh(), nn.Linear(4, 2)).double().eval()
    X = torch.randn(5, 3, dtype=D)
    assert all(r.name != "0" for r in plan(model).ruled)  # the first layer has no rule
    J = vmap_jacobian(model, X)
    for method in ("auto", "rules"):
        assert _rel(empirical_ntk(model, X, method=method), J @ J.T) < 1e-10
    V = torch.randn(10, 3, dtype=D)
    assert _rel(ntk_matvec(model, X, product="factors")(V), J @ (J.T @ V)) < 1e-10


class Keyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(input=x)))


class Cut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x).detach() + x[:, :2]


def test_keyword_inputs_and_outputs_cut_from_the_graph():
    X = torch.randn(6, 3, dtype=D)
    model = Keyword().double()
    J = vmap_jacobian(model, X)
    assert _rel(empirical_ntk(model, X, method="rules"), J @ J.T) < 1e-10
    cut = Cut().double()
    for method in ("rules", "jacobian"):
        assert empirical_ntk(cut, X, method=method).abs().max() == 0
    assert ntk_matvec(cut, X, product="factors")(torch.randn(12, dtype=D)).abs().max() == 0


class CastOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x))).double()


def test_float32_model_with_float64_outputs():
    model, X = CastOut(), torch.randn(7, 3)
    v = torch.randn(7, dtype=D)
    got = ntk_matvec(model, X, product="factors")(v)
    want = ntk_matvec(model, X, product="autograd")(v)
    assert got.dtype == D and _rel(got, want) < 1e-5


class Centred(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(3, 4), nn.Linear(4, 1)

    def forward(self, x):
        h = self.lin(x)
        return self.head(torch.tanh(h - h.mean(0)))


def test_matvec_refuses_models_that_mix_samples():
    X = torch.randn(5, 3, dtype=D)
    for product in ("auto", "factors", "autograd"):
        with pytest.raises(KernelError, match="mix|depend"):
            ntk_matvec(Centred().double(), X, product=product)


@pytest.mark.parametrize("budget", [0, -1.0, math.nan, math.inf, True, "2e9"])
def test_bad_memory_budgets_are_named(budget):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    X = torch.randn(5, 3, dtype=D)
    for call in (lambda: empirical_ntk(model, X, memory_budget=budget),
                 lambda: ntk_matvec(model, X, memory_budget=budget),
                 lambda: top_eigenpairs(model, X, 2, method="lanczos", memory_budget=budget)):
        with pytest.raises(KernelError, match="memory_budget must be a positive number"):
            call()


def test_bad_vectors_and_products_are_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = torch.randn(5, 3, dtype=D)
    mv = ntk_matvec(model, X, product="factors")
    for bad in (torch.randn(9, dtype=D), torch.randn(5, 2, dtype=D), torch.randn(10, 2, 2)):
        with pytest.raises(KernelError, match=r"v must have shape \(n·c,\) or \(n·c, k\)"):
            mv(bad)
    for method in ("dense", "auto", "lanczos"):
        with pytest.raises(KernelError, match="product must be one of"):
            top_eigenpairs(model, X, 2, method=method, product="factorz")


def test_the_check_runs_once_per_model_and_input_shape(monkeypatch):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    calls = []
    real = verify.rules_factors
    monkeypatch.setattr(verify, "rules_factors",
                        lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    for n in (7, 9):
        empirical_ntk(model, torch.randn(n, 3, dtype=D), method="rules")
    assert len(calls) == 1  # same model, same sample shape: checked once
    model.float()
    empirical_ntk(model, torch.randn(6, 3), method="rules")  # another dtype: checked again
    assert len(calls) == 2 and calls[0][0] == verify.SAMPLES


class ConvTable(nn.Module):
    """A convolution on an unbatched (C, H, W) map shared by all samples."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.randn(2, 4, 4))
        self.conv, self.lin = nn.Conv2d(2, 3, 3), nn.Linear(3, 1)

    def forward(self, x):
        bias = self.conv(self.table).mean((1, 2))  # (3,)
        return self.lin(torch.tanh(x + bias))


def test_a_rule_that_refuses_a_call_is_a_mismatch_auto_falls_back():
    model, X = ConvTable().double(), torch.randn(6, 3, dtype=D)
    J = vmap_jacobian(model, X)
    assert _rel(empirical_ntk(model, X), J @ J.T) < 1e-10
    with pytest.raises(KernelError, match=r"module 'conv' \(Conv2d\).*batched"):
        empirical_ntk(model, X, method="rules")


def test_autograd_products_name_an_op_without_forward_mode_ad():
    class Encoder(nn.Module):  # in eval mode: PyTorch's fused encoder, no forward-mode AD
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0,
                                                    batch_first=True)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.layer(x).mean(1))

    model, X = Encoder().double().eval(), torch.randn(5, 3, 4, dtype=D)
    with pytest.raises(KernelError, match="needs forward-mode AD"):
        ntk_matvec(model, X, product="autograd")(torch.randn(5, dtype=D))
    J = vmap_jacobian(model, X)  # the default (factors) and the dense kernel are exact
    v = torch.randn(5, dtype=D)
    assert _rel(ntk_matvec(model, X)(v), J @ (J.T @ v)) < 1e-10
    assert _rel(empirical_ntk(model, X), J @ J.T) < 1e-10
