"""The NTK layer rules against the float64 ``vmap(jacrev)`` and finite-difference references of
tests/references.py: every rule, full and trace kernels, several outputs, odd shapes, shared and
tied weights, integer inputs, a user rule, mixed models (rules + generic remainder)."""

import pytest
import torch
import torch.nn.functional as F
from references import reference_kernel, trace_kernel, vmap_jacobian
from torch import nn

from catapults.curvature.ntk_rules import assemble, conv
from catapults.curvature.ntk_rules.engine import plan
from catapults.models import ScaledConv2d
from catapults.ntk import (
    GradFactor,
    KernelError,
    empirical_ntk,
    register_ntk_rule,
    unregister_ntk_rule,
)


def _seed():
    return int(torch.randint(0, 10**6, ()))


def check(model, X, *, methods=("rules",), rtol=1e-10, covered=None):
    """Every method's full and trace kernels against one float64 vmap(jacrev) reference."""
    J = vmap_jacobian(model, X)
    K_ref = J @ J.T
    scale = K_ref.abs().max()
    for kind in ("full", "trace"):
        ref = K_ref if kind == "full" else trace_kernel(K_ref, X.shape[0])
        for method in methods:
            K = empirical_ntk(model, X, kind=kind, method=method)
            assert K.shape == ref.shape
            torch.testing.assert_close(K, K.T, rtol=0, atol=0)  # exactly symmetric
            assert ((K - ref).abs().max() / scale).item() < rtol, (kind, method)
    if covered is not None:
        assert plan(model).covered_fraction(model) == pytest.approx(covered)
    return K_ref


# ---- convolutions ------------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self, conv, c, pool=True):
        super().__init__()
        self.conv = conv
        nxt = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[conv.weight.dim()]
        self.conv2 = nxt(conv.out_channels, 4, 3, padding=1)
        self.fc = nn.LazyLinear(c)
        self.pool = pool

    def forward(self, x):
        h = torch.tanh(self.conv2(torch.tanh(self.conv(x))))
        return self.fc(h.mean(dim=tuple(range(2, h.dim()))) if self.pool else h.flatten(1))


CONVS = {
    "stride2-pad1": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
    "groups2-dil2": lambda: nn.Conv2d(4, 6, (2, 3), groups=2, dilation=2, padding=(1, 2)),
    "same-reflect-nobias": lambda: nn.Conv2d(3, 5, 3, padding="same", padding_mode="reflect",
                                             bias=False),
    "conv1d-stride2-groups": lambda: nn.Conv1d(4, 6, 3, stride=2, groups=2, padding=1),
    "1x1-valid": lambda: nn.Conv2d(3, 4, 1),
    "same-even-kernel-dil": lambda: nn.Conv2d(3, 4, (2, 4), padding="same", dilation=(2, 1)),
    "conv1d-circular-dil": lambda: nn.Conv1d(2, 4, 3, padding=2, dilation=2,
                                             padding_mode="circular"),
    "replicate-stride-nonsquare": lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1),
                                                    padding=(1, 2), padding_mode="replicate"),
    "conv3d-stride-dil-groups": lambda: nn.Conv3d(4, 6, (2, 3, 3), stride=(1, 2, 1),
                                                  dilation=(1, 1, 2), padding=(1, 0, 2),
                                                  groups=2),
    "conv3d-valid-nobias": lambda: nn.Conv3d(3, 4, 2, bias=False),
    # the NTK-parameterised convolution of the toolkit's cnn and wrn models
    "scaled-ntk-stride2-groups-bias": lambda: ScaledConv2d(
        4, 6, 3, stride=2, padding=1, groups=2, bias=True, bias_scale=0.5),
    "scaled-ntk-dil": lambda: ScaledConv2d(3, 4, 3, padding=2, dilation=2),
    "scaled-standard-bias": lambda: ScaledConv2d(3, 4, 3, bias=True,
                                                 parameterization="standard"),
}
SHAPES = {3: (6, 11), 4: (6, 5, 7), 5: (5, 4, 5, 6)}  # (n, *spatial) by the weight's dim


def _conv_input(conv):
    n, *spatial = SHAPES[conv.weight.dim()]
    return torch.randn(n, conv.in_channels, *spatial, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("c", [1, 3])
def test_conv_rules_against_vmap_reference(name, c):
    torch.manual_seed(_seed())
    conv = CONVS[name]()
    X = _conv_input(conv)
    model = ConvNet(conv, c, pool=name != "1x1-valid").double()
    model(X)  # materialise the lazy layer
    check(model, X, covered=1.0)


def test_conv_against_finite_differences_and_tiny_map_hadamard():
    torch.manual_seed(_seed())
    # the last convolution maps to 1x1: the Hadamard form is the cheaper one there
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2), nn.Tanh(), nn.Conv2d(3, 2, 2),
                          nn.Flatten()).double()
    X = torch.randn(5, 2, 5, 6, dtype=torch.float64)
    for kind in ("full", "trace"):
        K = empirical_ntk(model, X, kind=kind)
        torch.testing.assert_close(K, reference_kernel(model, X, kind, how="fd"), rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.parametrize("c", [1, 3])
def test_conv_rule_in_chunks_of_one_sample_and_scaled_tiny_maps(monkeypatch, c):
    """Per-sample gradients formed one sample at a time (patch budget of one byte); a scaled
    convolution on a 2x2 map and another down to 1x1 (the Hadamard form, with its scales)."""
    torch.manual_seed(_seed())
    monkeypatch.setattr(conv, "PATCH_BYTES", 1)
    model = nn.Sequential(
        ScaledConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True, bias_scale=0.7),
        nn.Tanh(), nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.Tanh(),
        ScaledConv2d(4, 3, 2, bias=True, bias_scale=1.3), nn.Tanh(), nn.Flatten(),
        nn.Linear(3, c)).double()
    X = torch.randn(7, 4, 7, 6, dtype=torch.float64)
    check(model, X, methods=("rules", "auto"), covered=1.0)


def test_conv_rule_on_channels_last_inputs():
    """Patches copied in runs of channels: the same kernel from a channels-last input."""
    torch.manual_seed(_seed())
    model = ConvNet(ScaledConv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True), 2).double()
    X = torch.randn(5, 4, 6, 7, dtype=torch.float64)
    model(X)
    K_ref = check(model, X)
    K = empirical_ntk(model, X.contiguous(memory_format=torch.channels_last), method="rules")
    assert ((K - K_ref).abs().max() / K_ref.abs().max()).item() < 1e-10


def test_float32_conv_kernel_matches_float64():
    torch.manual_seed(_seed())
    model = ConvNet(nn.Conv2d(3, 8, 3, padding=1), 2)
    X = torch.randn(20, 3, 8, 8)
    model(X)
    K32 = empirical_ntk(model, X)
    torch.testing.assert_close(K32, K32.T, rtol=0, atol=0)
    m64 = model.double()
    K64 = reference_kernel(m64, X.double(), how="vmap")
    assert ((K32.double() - K64).abs().max() / K64.abs().max()).item() < 1e-4


# ---- normalisation layers --------------------------------------------------------------------
class GNResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.gn1 = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(4, 4)
        self.head = nn.Linear(4, c)

    def forward(self, x):
        h = torch.relu(self.gn1(self.conv1(x)))
        h = torch.relu(x + self.gn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


class NormMLP(nn.Module):
    def __init__(self, norm, c):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(5, 6), norm, nn.Linear(6, c)

    def forward(self, x):
        return self.b(torch.tanh(self.norm(self.a(x))))


@pytest.mark.parametrize("c", [1, 3])
def test_groupnorm_residual_block(c):
    torch.manual_seed(_seed())
    model = GNResBlock(c).double()
    with torch.no_grad():
        for gn in (model.gn1, model.gn2):
            gn.weight.normal_()
            gn.bias.normal_()
    check(model, torch.randn(5, 4, 5, 7, dtype=torch.float64), covered=1.0)


@pytest.mark.parametrize("norm", ["layer", "layer-nobias", "rms", "batch-eval"])
def test_norm_rules(norm):
    torch.manual_seed(_seed())
    mod = {"layer": lambda: nn.LayerNorm(6), "layer-nobias": lambda: nn.LayerNorm(6, bias=False),
           "rms": lambda: nn.RMSNorm(6, eps=1e-5), "batch-eval": lambda: nn.BatchNorm1d(6)}[norm]()
    model = NormMLP(mod, 3).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_()
        if norm == "batch-eval":
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2)
    model.eval()
    check(model, torch.randn(7, 5, dtype=torch.float64), covered=1.0)


def test_batchnorm2d_eval_and_training_refused_by_name():
    torch.manual_seed(_seed())
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2)).double()
    X = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    model(X)
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.normal_()
    for check_first in (True, False):
        with pytest.raises(KernelError, match="'1'.*BatchNorm2d.*training mode"):
            empirical_ntk(model.train(), X, check=check_first)
    check(model.eval(), X, covered=1.0)


# ---- embeddings, attention, free parameters ------------------------------------------------
class TinyTransformer(nn.Module):
    """Embedding (or patch projection), class token, positional embedding, one attention block
    written from linear layers, LayerNorm, and a head on the class token."""

    def __init__(self, c, vocab=None, d=6, T=4, mha=None):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0) if vocab else nn.Linear(3, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, T + 1, d))
        self.ln = nn.LayerNorm(d)
        self.mha = mha
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.head = nn.Linear(d, c)

    def forward(self, x):
        h = self.emb(x)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self.pos
        z = self.ln(h)
        if self.mha is not None:
            if self.mha.batch_first:
                a = self.mha(z, z, z, need_weights=False)[0]
            else:
                a = self.mha(z.transpose(0, 1), z.transpose(0, 1), z.transpose(0, 1))[0]
                a = a.transpose(0, 1)
        else:
            att = torch.softmax(self.q(z) @ self.k(z).transpose(1, 2) / 6 ** 0.5, -1)
            a = self.o(att @ self.v(z))
        return self.head(torch.tanh(h + a)[:, 0])


@pytest.mark.parametrize("c", [1, 3])
def test_attention_from_linear_layers_with_free_parameters(c):
    torch.manual_seed(_seed())
    model = TinyTransformer(c).double()
    X = torch.randn(5, 4, 3, dtype=torch.float64)
    pl = plan(model)
    assert sorted(pl.remainder) == ["cls", "pos"]  # free parameters: generic path
    check(model, X, methods=("rules", "auto", "matvec"))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_rule(batch_first):
    torch.manual_seed(_seed())
    mha = nn.MultiheadAttention(6, 2, batch_first=batch_first)
    model = TinyTransformer(3, mha=mha).double().eval()
    pl = plan(model)
    assert any(r.name == "mha" and "out_proj.weight" in r.want for r in pl.ruled)
    check(model, torch.randn(4, 4, 3, dtype=torch.float64))


def test_embedding_integer_inputs_both_forms(monkeypatch):
    torch.manual_seed(_seed())
    model = TinyTransformer(3, vocab=7).double()
    X = torch.randint(0, 7, (6, 4))
    X[0, 1] = 0  # the padding index gets no gradient
    K_ref = check(model, X)
    # the other form: per-sample gradients for every factor with positions
    monkeypatch.setattr(assemble, "HADAMARD_MAX_ENTRIES", 0)
    K = empirical_ntk(model, X)
    assert ((K - K_ref).abs().max() / K_ref.abs().max()).item() < 1e-10
    torch.testing.assert_close(empirical_ntk(model, X, kind="trace"),
                               trace_kernel(K_ref, 6), rtol=1e-10, atol=1e-12)


# ---- shared and tied weights ------------------------------------------------------------------
class Shared(nn.Module):
    """One linear layer and one convolution, each applied twice (weights shared)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.lin = nn.Linear(3, 3)
        self.head = nn.Linear(3, c)

    def forward(self, x):
        h = torch.tanh(self.conv(torch.tanh(self.conv(x)))).mean((2, 3))
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(h)))))


@pytest.mark.parametrize("c", [1, 3])
def test_shared_weights_sum_over_calls(c):
    torch.manual_seed(_seed())
    model = Shared(c).double()
    X = torch.randn(5, 3, 4, 5, dtype=torch.float64)
    check(model, X, covered=1.0)
    K = empirical_ntk(model, X, kind="trace")
    torch.testing.assert_close(K, reference_kernel(model, X, "trace", how="fd"), rtol=1e-6,
                               atol=1e-7)


class Tied(nn.Module):
    """An embedding whose table is also the output layer (``F.linear``), plus a module tie."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.mid = nn.Linear(4, 4)
        self.again = nn.Linear(4, 4)
        self.again.weight = self.mid.weight  # the same Parameter in two modules

    def forward(self, x):
        h = torch.tanh(self.again(torch.tanh(self.mid(self.emb(x).mean(1)))))
        return F.linear(h, self.emb.weight)  # (b, 5): the table used outside its module


def test_tied_weights_go_to_the_generic_path():
    torch.manual_seed(_seed())
    model = Tied().double()
    X = torch.randint(0, 5, (4, 3))
    pl = plan(model)
    assert "mid.weight" in pl.remainder  # claimed by two modules
    check(model, X)


# ---- user rules, generic remainder, bad input ----------------------------------------------
class Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.w


def test_user_registered_rule():
    def rule(module, call, want, n, c):
        x, g = call.input, call.cot  # g: (c, b, d)
        return [GradFactor((g * x).transpose(0, 1).reshape(-1, x.shape[1]))]

    model = nn.Sequential(nn.Linear(4, 5), Scale(5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(6, 4, dtype=torch.float64)
    assert plan(model).remainder == ["1.w"]
    K_generic = check(model, X)  # without the rule: generic path for Scale
    register_ntk_rule(Scale, rule)
    try:
        assert plan(model).remainder == []
        K = check(model, X, covered=1.0)
    finally:
        unregister_ntk_rule(Scale)
    torch.testing.assert_close(K, K_generic)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.ones(3))

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: vmap cannot run it
            return x * self.p
        return x


def test_module_without_rule_that_vmap_cannot_run_is_named():
    model = nn.Sequential(nn.Linear(3, 3), DataDependent(), nn.Linear(3, 1)).double()
    X = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(KernelError, match=r"'1' \(DataDependent\)"):
        empirical_ntk(model, X, method="rules")


def test_method_vocabulary():
    model = GNResBlock(2).double()
    X = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    K = empirical_ntk(model, X, method="jacobian")
    for m in ("auto", "rules", "matvec", "fast", "generic"):
        torch.testing.assert_close(empirical_ntk(model, X, method=m), K, rtol=1e-10, atol=1e-12)
    with pytest.raises(KernelError, match="method must be one of"):
        empirical_ntk(model, X, method="dense")
