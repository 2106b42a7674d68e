"""The rules path within its memory budget: when the factors of all samples would pass half of
``memory_budget``, the ruled modules are taken in groups (one forward and backward pass each)
and the kernel is the same; float64 against the ``vmap(jacrev)`` reference."""

from __future__ import annotations

import pytest
import torch
from references import reference_kernel
from torch import nn

from catapults.curvature.ntk_rules.engine import factor_bytes, factor_groups, plan, rules_ntk
from catapults.ntk import empirical_ntk


class Mixed(nn.Module):
    """Convolutions, a GroupNorm, a layer called twice, a free parameter (generic path) and a
    head whose weight is also used outside it (the graph check moves it to the generic path)."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)
        self.gn = nn.GroupNorm(2, 6)
        self.c2 = nn.Conv2d(6, 6, 3, stride=2)
        self.shared = nn.Linear(6, 6)
        self.scale = nn.Parameter(torch.randn(6))
        self.head = nn.Linear(6, c)

    def forward(self, x):
        h = torch.tanh(self.gn(self.c1(x)))
        h = torch.tanh(self.c2(h)).mean((2, 3))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h)))) * self.scale
        return self.head(h) + 0.1 * (h @ self.head.weight.T)


def _model(c: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(int(torch.randint(0, 10**6, ())))
    return Mixed(c).double(), torch.randn(7, 2, 6, 5, dtype=torch.float64)


def _sizes(model, X, groups):
    """Each group's factor bytes for all samples (from a full-size factor pass of the group)."""
    from catapults.curvature.ntk_rules.engine import Plan, rules_factors

    pl = plan(model)
    return [factor_bytes(rules_factors(model, X, the_plan=Plan(g, [], pl.names))[0])
            for g in groups]


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("kind", ["full", "trace"])
def test_grouped_rules_give_the_reference_kernel(c, kind):
    model, X = _model(c)
    pl = plan(model)
    whole = sum(_sizes(model, X, [pl.ruled]))
    budget = whole  # half of it for the factors: at least two groups
    groups = factor_groups(model, X, pl, budget / 2)
    assert len(groups) >= 2 and [r.name for g in groups for r in g] == [r.name for r in pl.ruled]
    for g, size in zip(groups, _sizes(model, X, groups)):
        assert len(g) == 1 or size <= budget / 2
    ref = reference_kernel(model, X, kind, how="vmap")
    for b in (budget, 1.0, 2e9):  # groups, one module per group, one group
        K, out = rules_ntk(model, X, kind, memory_budget=b)
        assert ((K - ref).abs().max() / ref.abs().max()).item() < 1e-10, b
        assert torch.equal(K, K.T)
        assert torch.allclose(out, model(X).reshape(7, -1), rtol=1e-12, atol=0)
    K = empirical_ntk(model, X, kind=kind, method="rules", memory_budget=budget)
    assert ((K - ref).abs().max() / ref.abs().max()).item() < 1e-10


def test_one_group_when_the_factors_fit():
    model, X = _model(2)
    pl = plan(model)
    assert factor_groups(model, X, pl, 2e9 / 2) == [pl.ruled]
    assert factor_groups(model, X[:1], pl, 1.0) == [pl.ruled]  # one sample: nothing to measure


def test_factor_sizes_are_measured_once_per_model_n_and_shape(monkeypatch):
    from catapults.curvature.ntk_rules import engine

    model, X = _model(1)
    pl = plan(model)
    calls = []
    record = engine._record
    monkeypatch.setattr(engine, "_record", lambda m, x, r: calls.append(len(x)) or record(m, x, r))
    first = factor_groups(model, X, pl, 1.0)
    assert factor_groups(model, X, pl, 1.0) == first and calls == [2]
    factor_groups(model, X[:5], pl, 1.0)  # another n: the conv rule may pick another form
    factor_groups(model, X[:, :, :4], pl, 1.0)  # another input shape
    assert calls == [2, 2, 2]


def test_a_swapped_module_or_a_cast_is_measured_again():
    """The cached sizes belong to the modules and parameter shapes they were measured on: a
    layer swapped into the same model object, or a cast to float64, is measured again (else
    the groups would be cut for the old sizes and could pass the budget)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 3, 1))
    X = torch.randn(6, 2, 6, 5)
    small = sum(engine_sizes(model, X))
    model[0] = nn.Conv2d(2, 64, 3)
    model[3] = nn.Linear(64 * 4 * 3, 1)
    big = sum(engine_sizes(model, X))
    assert big > 10 * small
    model.double()
    assert sum(engine_sizes(model, X.double())) == pytest.approx(2 * big)


def engine_sizes(model, X):
    from catapults.curvature.ntk_rules import engine

    return engine._per_sample_factor_bytes(model, X, plan(model))
