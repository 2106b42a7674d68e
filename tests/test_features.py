"""Feature-learning measures (catapults.experiments.features) against direct float64
computations from finite-difference input gradients (tests/references.py)."""

import pytest
import torch
from references import fd_input_gradients

from catapults.experiments.features import feature_metrics, target_projector
from catapults.models import MLP, Linearized


def _cos(A, B):
    return float((A * B).sum() / (A.norm() * B.norm()))


def test_measures_against_direct_computation():
    d = 6
    model = MLP(d, 1, width=40, depth=2, activation="tanh", seed=1, dtype=torch.float64)
    X = torch.randn(50, d, dtype=torch.float64)
    G_true = torch.zeros(d, d, dtype=torch.float64)
    G_true[0, 0], G_true[1, 1] = 1.0, 0.5
    m = feature_metrics(model, X, G_true)
    grads = fd_input_gradients(lambda x: model(x), X)  # (n, c, d)
    G = torch.einsum("ncd,nce->de", grads, grads) / X.shape[0]
    P = torch.zeros(d, d, dtype=torch.float64)
    P[0, 0] = P[1, 1] = 1.0
    assert torch.allclose(target_projector(G_true), P, atol=1e-12)
    vals, vecs = torch.linalg.eigh(G)
    G_half = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    assert m["agop_alignment"] == pytest.approx(_cos(G, G_true), rel=1e-4)
    assert m["agop_sqrt_alignment"] == pytest.approx(_cos(G_half, G_true.sqrt()), rel=1e-4)
    assert m["target_trace_share"] == pytest.approx(float(G[0, 0] + G[1, 1]) / float(G.trace()),
                                                    rel=1e-4)
    W = model.net[1].weight.detach()
    assert m["first_layer_alignment"] == pytest.approx(_cos(W.T @ W, G_true), rel=1e-5)
    assert m["energy_target"] == pytest.approx(float(W[:, :2].pow(2).sum()) / 2, rel=1e-5)
    assert m["energy_other"] == pytest.approx(float(W[:, 2:].pow(2).sum()) / 4, rel=1e-5)


def test_a_model_without_a_first_layer_of_d_inputs_reports_none():
    d = 4
    lin = Linearized(MLP(d, 1, width=16, depth=2, seed=0))
    G_true = torch.eye(d)
    m = feature_metrics(lin, torch.randn(20, d), G_true)
    assert m["first_layer_alignment"] is None and m["energy_other"] is None
    assert 0 < m["agop_alignment"] <= 1 and m["target_trace_share"] == pytest.approx(1.0)
