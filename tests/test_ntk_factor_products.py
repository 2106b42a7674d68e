"""Matrix-free kernel products from the rules' factors (``ntk_matvec(product="factors")``,
catapults.curvature.ntk_rules.products) against ``K V`` from the float64 vmap(jacrev) reference
of tests/references.py: dense layers with and without bias, scaled layers, several outputs,
convolutions (per-sample gradients and the tiny-map Hadamard form), norms, attention, dense
layers over tokens, embeddings (integer inputs, padding index), shared and tied weights, free
parameters (their Jacobian, or autograd products when it does not fit), and the eigensolver on
top of them."""

import pytest
import torch
from references import vmap_jacobian
from test_ntk_rules import (
    CONVS,
    ConvNet,
    GNResBlock,
    NormMLP,
    Shared,
    Tied,
    TinyTransformer,
    _conv_input,
)
from torch import nn

import catapults.curvature.ntk as ntk_mod
from catapults.curvature.ntk_rules.engine import factor_bytes, rules_factors
from catapults.models import MLP, ScaledConv2d
from catapults.ntk import KernelError, empirical_ntk, ntk_matvec, top_eigenpairs


def check_products(model, X, *, product="factors", rtol=1e-11, **kw):
    """``ntk_matvec`` on one vector and on a block of 3 against ``J (Jᵀ V)`` in float64."""
    J = vmap_jacobian(model, X)
    V = torch.randn(J.shape[0], 3, dtype=torch.float64)
    ref = J @ (J.T @ V)
    mv = ntk_matvec(model, X, product=product, **kw)
    for got, want in ((mv(V), ref), (mv(V[:, 1]), ref[:, 1])):
        assert got.shape == want.shape
        assert ((got - want).abs().max() / want.abs().max()).item() < rtol
    return J


def _spy_factor_products(monkeypatch):
    used = []
    real = ntk_mod.factor_products

    def spy(factors, n, c):
        used.append(len(factors))
        return real(factors, n, c)

    monkeypatch.setattr(ntk_mod, "factor_products", spy)
    return used


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_mlp_products_ntk_and_standard(c, bias):
    for par in ("ntk", "standard"):
        model = MLP(5, c, width=9, depth=3, bias=bias, parameterization=par, bias_scale=0.6,
                    activation="tanh", dtype=torch.float64, seed=int(torch.randint(99, ())))
        check_products(model, torch.randn(11, 5, dtype=torch.float64))


@pytest.mark.parametrize("name", ["stride2-pad1", "groups2-dil2", "conv1d-stride2-groups",
                                  "conv3d-valid-nobias", "scaled-ntk-stride2-groups-bias"])
@pytest.mark.parametrize("c", [1, 2])
def test_convolution_products(name, c):
    conv = CONVS[name]()
    X = _conv_input(conv)
    model = ConvNet(conv, c).double()
    model(X)
    check_products(model, X)


def test_tiny_map_hadamard_conv_and_groupnorm_block():
    model = nn.Sequential(ScaledConv2d(4, 6, 3, stride=2, padding=1, bias=True, bias_scale=0.7),
                          nn.Tanh(), ScaledConv2d(6, 3, 3, bias=True, bias_scale=1.3),
                          nn.Tanh(), nn.Flatten(), nn.Linear(3, 2)).double()
    check_products(model, torch.randn(6, 4, 5, 6, dtype=torch.float64))
    block = GNResBlock(3).double()
    with torch.no_grad():
        for gn in (block.gn1, block.gn2):
            gn.weight.normal_()
            gn.bias.normal_()
    check_products(block, torch.randn(5, 4, 5, 7, dtype=torch.float64))


@pytest.mark.parametrize("norm", ["layer", "rms", "batch-eval"])
def test_norm_products(norm):
    mod = {"layer": lambda: nn.LayerNorm(6), "rms": lambda: nn.RMSNorm(6, eps=1e-5),
           "batch-eval": lambda: nn.BatchNorm1d(6)}[norm]()
    model = NormMLP(mod, 2).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.normal_()
    check_products(model.eval(), torch.randn(7, 5, dtype=torch.float64))


@pytest.mark.parametrize("c", [1, 3])
def test_tokens_attention_and_free_parameters(c):
    """Dense layers over positions, attention from linear layers, LayerNorm, and the class token
    and positional embedding (no rule: their per-sample Jacobian joins the factors)."""
    model = TinyTransformer(c).double()
    check_products(model, torch.randn(5, 4, 3, dtype=torch.float64))
    mha = TinyTransformer(c, mha=nn.MultiheadAttention(6, 2, batch_first=True)).double().eval()
    check_products(mha, torch.randn(4, 4, 3, dtype=torch.float64))


def test_embedding_indices_with_padding():
    model = TinyTransformer(3, vocab=7).double()
    X = torch.randint(0, 7, (6, 4))
    X[0, 1] = 0  # the padding index gets no gradient
    X[2] = X[1]  # repeated rows of the table
    check_products(model, X)


@pytest.mark.parametrize("c", [1, 3])
def test_shared_and_tied_weights(c):
    check_products(Shared(c).double(), torch.randn(5, 3, 4, 5, dtype=torch.float64))
    check_products(Tied().double(), torch.randint(0, 5, (4, 3)))


def test_uncovered_parameters_by_autograd_when_their_jacobian_does_not_fit(monkeypatch):
    """Factors fit but the free parameters' Jacobian does not: their products go through a VJP
    and a JVP over those parameters only, summed with the factors' products."""
    model = TinyTransformer(2).double()
    X = torch.randn(5, 4, 3, dtype=torch.float64)
    factors, _, _ = rules_factors(model, X)
    budget = 2 * factor_bytes(factors) + 2  # half the budget: the factors and one byte more
    monkeypatch.setattr(ntk_mod, "remainder_jacobian", lambda *a: pytest.fail("formed J_rest"))
    used = _spy_factor_products(monkeypatch)
    check_products(model, X, product="auto", memory_budget=budget)
    assert used


def test_auto_falls_back_to_autograd_when_factors_do_not_fit(monkeypatch):
    model = MLP(4, 2, width=8, depth=2, dtype=torch.float64, seed=3)
    X = torch.randn(9, 4, dtype=torch.float64)
    used = _spy_factor_products(monkeypatch)
    check_products(model, X, product="auto", memory_budget=64)
    assert not used
    check_products(model, X, product="auto")  # the default budget: factors
    assert used
    used.clear()
    check_products(model, X, product="autograd")
    assert not used


class Poly(nn.Module):
    """A module with no rule: all of its parameters are on the generic path."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.randn(6, dtype=torch.float64))

    def forward(self, x):
        return torch.stack([(x.flatten(1) * self.a).tanh().sum(1), (x[:, 0] @ self.a[:3])], 1)


def test_a_model_with_no_rule_at_all_uses_its_jacobian(monkeypatch):
    used = _spy_factor_products(monkeypatch)
    X = torch.randn(7, 2, 3, dtype=torch.float64)
    model = Poly()
    J = check_products(model, X)
    assert used == [1]  # one factor: the Jacobian of the uncovered parameters
    torch.testing.assert_close(empirical_ntk(model, X, method="rules"), J @ J.T)


def test_eigenpairs_from_factor_products_match_eigh():
    for model, X in [
        (MLP(6, 2, width=24, depth=3, bias=True, dtype=torch.float64, seed=8),
         torch.randn(40, 6, dtype=torch.float64)),
        (ConvNet(nn.Conv2d(3, 4, 3, padding=1), 1).double(),
         torch.randn(30, 3, 6, 5, dtype=torch.float64)),
    ]:
        model(X)
        J = vmap_jacobian(model, X)
        K = J @ J.T
        want = torch.linalg.eigvalsh(K).flip(0)[:4]
        for product in ("factors", "autograd"):
            vals, vecs = top_eigenpairs(model, X, 4, method="lanczos", tol=1e-10,
                                        product=product)
            torch.testing.assert_close(vals, want, rtol=1e-8, atol=1e-10)
            assert ((K @ vecs - vecs * vals).norm(dim=0) / vals).max() < 1e-7


def test_float32_factor_products_match_float64():
    model = MLP(10, 1, width=64, depth=3, seed=2)
    X = torch.randn(50, 10)
    v = torch.randn(50)
    got = ntk_matvec(model, X, product="factors")(v).double()
    want = ntk_matvec(model.double(), X.double(), product="autograd")(v.double())
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_bad_product_and_batchnorm_in_training_mode_are_refused():
    model = MLP(3, 1, width=4, depth=2, dtype=torch.float64)
    X = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(KernelError, match="product must be one of 'auto', 'factors', "
                                          "'autograd', got 'fast'"):
        ntk_matvec(model, X, product="fast")
    with pytest.raises(KernelError, match="product must be one of"):
        top_eigenpairs(model, X, 2, method="lanczos", product="dense")
    for product in ("factors", "autograd"):
        with pytest.raises(KernelError, match="X has no samples"):
            ntk_matvec(model, X[:0], product=product)
        with pytest.raises(KernelError, match="X has no samples"):
            top_eigenpairs(model, X[:0], 2, method="lanczos", product=product)
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double().train()
    with pytest.raises(KernelError, match="training mode"):
        ntk_matvec(bn, X)
