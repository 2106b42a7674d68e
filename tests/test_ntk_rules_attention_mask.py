"""nn.MultiheadAttention's NTK rule with masks: a 2-D attn_mask shared by all samples, a
key_padding_mask and a 3-D attn_mask (batch × heads, L, S) built from each sample's input,
against the float64 vmap(jacrev) reference."""

import pytest
import torch
from references import vmap_jacobian
from torch import nn

from catapults.curvature.ntk_rules.engine import plan
from catapults.ntk import empirical_ntk


class MaskedAttention(nn.Module):
    """Tokens (b, T, 3) -> attention whose mask depends on each sample's own tokens."""

    def __init__(self, c, mask, batch_first, heads=2, d=6):
        super().__init__()
        self.emb = nn.Linear(3, d)
        self.mha = nn.MultiheadAttention(d, heads, batch_first=batch_first)
        self.head = nn.Linear(d, c)
        self.mask, self.heads = mask, heads

    def masks(self, x):
        b, T = x.shape[:2]
        keep = x[..., 0] > -0.5  # tokens this sample attends to
        keep[:, 0] = True  # never a fully masked row
        if self.mask == "3d":
            m = ~(keep[:, None, :] & torch.ones(T, T, dtype=torch.bool)[None])  # (b, T, T)
            return {"attn_mask": m.repeat_interleave(self.heads, 0)}  # (b·heads, T, T)
        if self.mask == "3d-positional":
            m = ~(keep[:, None, :] & torch.ones(T, T, dtype=torch.bool)[None])
            return {"positional": m.repeat_interleave(self.heads, 0)}
        if self.mask == "2d":
            return {"attn_mask": torch.triu(torch.ones(T, T, dtype=torch.bool), 1)}
        return {"key_padding_mask": ~keep}

    def forward(self, x):
        z = torch.tanh(self.emb(x))
        kw = self.masks(x)
        pos = kw.pop("positional", None)
        q = z if self.mha.batch_first else z.transpose(0, 1)
        if pos is not None:
            a = self.mha(q, q, q, None, False, pos)[0]
        else:
            a = self.mha(q, q, q, need_weights=False, **kw)[0]
        a = a if self.mha.batch_first else a.transpose(0, 1)
        return self.head(torch.tanh(z + a).mean(1))


@pytest.mark.parametrize("mask", ["3d", "3d-positional", "2d", "padding"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("c", [1, 2])
def test_masked_attention_rule_against_vmap_jacrev(mask, batch_first, c):
    torch.manual_seed(int(torch.randint(0, 10**6, ())))
    model = MaskedAttention(c, mask, batch_first).double()
    X = torch.randn(5, 4, 3, dtype=torch.float64)
    assert any(r.name == "mha" for r in plan(model).ruled)
    J = vmap_jacobian(model, X)
    K_ref = J @ J.T
    for kind in ("full", "trace"):
        K = empirical_ntk(model, X, kind=kind, method="rules")
        ref = K_ref if kind == "full" else K_ref.reshape(5, c, 5, c).diagonal(
            dim1=1, dim2=3).sum(-1)
        assert ((K - ref).abs().max() / K_ref.abs().max()).item() < 1e-10



def test_auto_counts_dense_layers_over_positions_as_per_sample():
    """``auto`` takes the rules for dense layers on vectors and the generic path when the dense
    layers run over token positions (a small ViT measured 1.8x slower on the rules); either way
    the kernel is the reference's."""
    from catapults.curvature.ntk import _auto_method
    from catapults.models import MLP

    torch.manual_seed(int(torch.randint(0, 10**6, ())))
    mlp = MLP(4, 2, width=16, depth=3, dtype=torch.float64)
    X = torch.randn(6, 4, dtype=torch.float64)
    assert _auto_method(mlp, X, plan(mlp)) == "rules"
    tokens = MaskedAttention(2, "2d", True).double()
    Xt = torch.randn(5, 4, 3, dtype=torch.float64)
    assert _auto_method(tokens, Xt, plan(tokens)) == "jacobian"
    for model, x in ((mlp, X), (tokens, Xt)):
        J = vmap_jacobian(model, x)
        K = empirical_ntk(model, x)
        assert ((K - J @ J.T).abs().max() / (J @ J.T).abs().max()).item() < 1e-10


def test_auto_takes_the_conv_rule_on_cuda_or_when_the_jacobian_does_not_fit():
    """``auto`` counts the convolution rule on a CUDA device (1.9-8.7x faster than the generic
    path on an H200, 0.8-0.9x on a CPU), and on a CPU when J does not fit in the memory budget
    (the generic path then recomputes blocks); never the attention rules (the ViT was faster on
    the generic path on the GPU too)."""
    from torch import nn

    from catapults.curvature.ntk import _auto_method
    from catapults.models import ViT

    torch.manual_seed(int(torch.randint(0, 10**6, ())))
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    X = torch.randn(10, 3, 6, 6)
    J_bytes = 10 * 3 * sum(p.numel() for p in cnn.parameters()) * 4
    assert _auto_method(cnn, X, plan(cnn)) == "jacobian"  # on this CPU, J fits
    assert _auto_method(cnn, X, plan(cnn), J_bytes, cuda=False) == "jacobian"
    assert _auto_method(cnn, X, plan(cnn), J_bytes - 4, cuda=False) == "rules"
    assert _auto_method(cnn, X, plan(cnn), cuda=True) == "rules"
    vit = ViT((3, 8, 8), 1, seed=0).eval()
    Xv = torch.randn(4, 3, 8, 8)
    assert _auto_method(vit, Xv, plan(vit), cuda=True) == "jacobian"
    assert _auto_method(vit, Xv, plan(vit), 1.0, cuda=False) == "jacobian"
