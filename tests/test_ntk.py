"""The NTK engine against independent float64 references (finite differences, eigh, Hessians)."""

import pytest
import torch
from references import dense_mse_hessian, fd_jacobian, reference_kernel
from torch import nn

from catapults.linalg.gram import mirror_upper_, upper_tiles
from catapults.models import MLP
from catapults.ntk import (
    NTKError,
    block_krylov_top,
    critical_lr,
    eig_top,
    empirical_ntk,
    gram,
    loss_split,
    ntk_matvec,
    per_sample_jacobian,
    top_eigenpairs,
)


@pytest.mark.parametrize("par", ["ntk", "standard"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("kind", ["trace", "full"])
def test_mlp_kernel_against_finite_differences(par, bias, c, kind):
    seed = int(torch.randint(0, 10**6, ()))
    model = MLP(6, c, width=9, depth=3, bias=bias, parameterization=par, activation="tanh",
                seed=seed, dtype=torch.float64)
    X = torch.randn(7, 6, dtype=torch.float64)
    K_ref = reference_kernel(model, X, kind)
    for method in ["fast", "generic"]:
        K = empirical_ntk(model, X, kind=kind, method=method)
        assert K.dtype == torch.float64
        assert K.shape == ((7 * c, 7 * c) if kind == "full" else (7, 7))
        torch.testing.assert_close(K, K_ref, rtol=1e-6, atol=1e-7)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class LayerNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.ln = nn.LayerNorm(8)
        self.b = nn.Linear(8, 1)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.ln(self.a(x))))


@pytest.mark.parametrize("net,shape", [(SmallCNN, (4, 2, 5, 5)), (LayerNormNet, (6, 5))])
def test_generic_path_other_modules(net, shape):
    model = net().double()
    X = torch.randn(*shape, dtype=torch.float64)
    for kind in ["full", "trace"]:
        K = empirical_ntk(model, X, kind=kind)  # auto falls back to the generic path
        torch.testing.assert_close(K, reference_kernel(model, X, kind), rtol=1e-6, atol=1e-7)


def test_generic_path_chunked_without_storing_J():
    model = LayerNormNet().double()
    X = torch.randn(11, 5, dtype=torch.float64)
    K_small = empirical_ntk(model, X, method="generic", chunk_size=3, memory_budget=1)
    torch.testing.assert_close(K_small, reference_kernel(model, X, "full"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_per_sample_jacobian_in_chunks_against_finite_differences(chunk):
    """Chunks are written into one preallocated J (multi-output, sample-major rows, columns in
    parameter order): every chunking gives the same J as finite differences."""
    g = torch.Generator().manual_seed(11)
    model = SmallCNN().double()
    X = torch.randn(7, 2, 5, 5, dtype=torch.float64, generator=g)
    J = per_sample_jacobian(model, X, chunk_size=chunk)
    assert J.shape == (7 * 2, sum(q.numel() for q in model.parameters()))
    torch.testing.assert_close(J, fd_jacobian(model, X), rtol=1e-6, atol=1e-8)
    first = next(iter(dict(model.named_parameters())))
    J1 = per_sample_jacobian(model, X, chunk_size=chunk, names=[first])
    torch.testing.assert_close(J1, J[:, :J1.shape[1]], rtol=0, atol=0)
    assert per_sample_jacobian(model, X, chunk_size=chunk, names=[]).shape == (14, 0)


def test_per_sample_jacobian_promotes_mixed_dtypes_like_a_concatenation():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[1].double()
    model.register_forward_pre_hook(lambda mod, args: (args[0].float(),))
    model[1].register_forward_pre_hook(lambda mod, args: (args[0].double(),))
    X = torch.randn(5, 3)
    J = per_sample_jacobian(model, X, chunk_size=2)
    assert J.dtype == torch.float64 and J.shape == (10, 16 + 10)
    torch.testing.assert_close(J, per_sample_jacobian(model, X, chunk_size=5), rtol=0, atol=0)


def test_probe_removes_its_hooks_when_registering_fails():
    from catapults.curvature.ntk_rules.generic import activation_sizes

    model = nn.Sequential(nn.Linear(3, 3), torch.jit.script(nn.Linear(3, 3)))
    with pytest.raises(RuntimeError, match="not supported on ScriptModules"):
        activation_sizes(model, torch.randn(1, 3))
    assert not model[0]._forward_hooks


def test_auto_method_reprobes_a_probe_that_watched_no_inputs():
    from catapults.curvature.ntk import _auto_method
    from catapults.curvature.ntk_rules.engine import plan
    from catapults.curvature.ntk_rules.generic import activation_sizes

    tokens = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 2, 1))
    X = torch.randn(5, 2, 16)  # the first layer sees tokens: its rule needs (n·T)² products
    unwatched = activation_sizes(tokens, X[:1])
    assert unwatched.wide_inputs is None
    pl = plan(tokens)
    assert _auto_method(tokens, X, pl) == "jacobian"  # 89% of the parameters see tokens
    assert _auto_method(tokens, X, pl, probe=unwatched) == "jacobian"
    blind = unwatched._replace(wide_inputs=frozenset())  # as if nothing had seen tokens
    assert _auto_method(tokens, X, pl, probe=blind) == "rules"


def test_frozen_parameters_are_excluded():
    model = MLP(4, 1, width=5, depth=2, dtype=torch.float64)
    model.net[1].weight.requires_grad_(False)
    X = torch.randn(5, 4, dtype=torch.float64)
    J = per_sample_jacobian(model, X)
    assert J.shape[1] == 5  # only the output layer
    torch.testing.assert_close(empirical_ntk(model, X), J @ J.T)


def test_gram_blocks():
    A = torch.randn(2500, 30, dtype=torch.float64)
    torch.testing.assert_close(gram(A, block=700), A @ A.T)


@pytest.mark.parametrize("block", [None, 7, 64])
def test_gram_products_accumulated_on_the_upper_blocks(block):
    from catapults.linalg.gram import add_gram_products_upper_, sum_of_gram_products

    n = 50
    H, F, H2, L = (torch.randn(n, d, dtype=torch.float64) for d in (6, 4, 3, 5))
    terms = [(H, F, 0.3, 0.0), (H2, F, 1.0, 0.7), (L, None, 2.0, 0.0)]
    K0 = torch.randn(n, n, dtype=torch.float64)
    K = add_gram_products_upper_(K0.clone(), terms, block)
    dense = (H @ H.T) * (0.3 * F @ F.T) + (H2 @ H2.T) * (F @ F.T + 0.7) + 2.0 * L @ L.T
    upper = torch.ones(n, n, dtype=torch.bool).triu()
    torch.testing.assert_close(K[upper], (K0 + dense)[upper])
    touched = torch.zeros(n, n, dtype=torch.bool)
    for r0, r1, c0, c1 in upper_tiles(n, leaf=block):
        touched[r0:r1, c0:c1] = True
    torch.testing.assert_close(K[~touched], K0[~touched])  # outside the tiles: untouched
    strictly_lower = torch.ones(n, n, dtype=torch.bool).tril(-1)
    if n > 2 * (block or 128):  # more than one square: most of the lower triangle is skipped
        assert touched[strictly_lower].float().mean() < 0.5
    torch.testing.assert_close(mirror_upper_(K - K0.triu() - K0.triu(1).T), dense)
    sym = sum_of_gram_products(terms, n, torch.float64, torch.device("cpu"), block)
    torch.testing.assert_close(sym, dense)
    assert torch.equal(sym, sym.T)


@pytest.mark.parametrize("n", [0, 1, 31, 128, 129, 333, 1000])
@pytest.mark.parametrize("leaf", [None, 1, 7, 96])
def test_upper_tiles_cover_the_upper_triangle_once(n, leaf):
    from catapults.linalg.gram import LEAF

    count = torch.zeros(n, n, dtype=torch.int64)
    for r0, r1, c0, c1 in upper_tiles(n, leaf=leaf, strip=100):
        assert r0 < r1 and c0 < c1
        count[r0:r1, c0:c1] += 1
        if r0 == c0:  # a square on the diagonal, computed whole
            assert r1 == c1 and r1 - r0 <= (leaf or LEAF)
        else:  # strictly above the diagonal, at most `strip` rows
            assert r1 <= c0 and r1 - r0 <= 100
    upper = torch.ones(n, n, dtype=torch.bool).triu()
    assert (count[upper] == 1).all() and (count <= 1).all()
    if n > 2 * (leaf or LEAF):  # the halving leaves little of the lower triangle computed
        assert count.tril(-1).sum() <= n * (leaf or LEAF) / 2


def test_gram_rows_must_be_positive_and_transforms_work():
    from torch.func import jvp, vmap

    from catapults.linalg.gram import syrk_upper_

    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="block must be a positive number of rows"):
            gram(torch.randn(300, 3), block=bad)
    with pytest.raises(ValueError, match="strip"):
        upper_tiles(300, strip=-1)
    with pytest.raises(ValueError, match="block"):
        mirror_upper_(torch.zeros(4, 4), -2)
    with pytest.raises(ValueError, match="block"):
        syrk_upper_(torch.zeros(4, 4), torch.ones(2, 4), -1)
    g = torch.Generator().manual_seed(3)
    A = torch.randn(3, 10, 4, dtype=torch.float64, generator=g)  # one square: vmap works
    torch.testing.assert_close(vmap(gram)(A), A @ A.transpose(1, 2))
    B, T = (torch.randn(300, 5, dtype=torch.float64, generator=g) for _ in range(2))
    out, tangent = jvp(gram, (B,), (T,))  # forward-mode AD through the rectangles
    torch.testing.assert_close(out, B @ B.T)
    torch.testing.assert_close(tangent, T @ B.T + B @ T.T)


def test_syrk_upper_and_gram_against_dense_products():
    from catapults.linalg.gram import syrk_upper_

    g = torch.Generator().manual_seed(7)
    F = torch.randn(40, 300, dtype=torch.float64, generator=g)
    A0 = torch.randn(300, 300, dtype=torch.float64, generator=g)
    A = mirror_upper_(syrk_upper_(A0.triu().clone(), F, 64), 50)
    torch.testing.assert_close(A, A0.triu() + A0.triu(1).T + F.T @ F)
    B = torch.randn(300, 20, dtype=torch.float64, generator=g, requires_grad=True)
    K = gram(B, block=64)
    assert torch.equal(K, K.T)
    K.sum().backward()  # differentiable when its input is tracked
    torch.testing.assert_close(B.grad, 2 * torch.ones(300, 300, dtype=torch.float64) @ B.detach())


def test_float32_fast_path_matches_float64():
    model = MLP(20, 1, width=256, depth=3, seed=3)
    X = torch.randn(300, 20)
    K32 = empirical_ntk(model, X)
    K64 = empirical_ntk(model.double(), X.double())
    assert ((K32.double() - K64).abs().max() / K64.abs().max()).item() < 1e-5


def test_top_eigenpairs_against_eigh():
    model = MLP(8, 2, width=32, depth=3, dtype=torch.float64, seed=5)
    X = torch.randn(150, 8, dtype=torch.float64)  # N = 300 > 256: Lanczos on the dense kernel
    K = empirical_ntk(model, X, kind="full")
    ref_vals, ref_vecs = torch.linalg.eigh(K)
    ref_vals, ref_vecs = ref_vals.flip(0)[:4], ref_vecs.flip(1)[:, :4]
    for method in ["dense", "lanczos"]:
        vals, vecs = top_eigenpairs(model, X, 4, method=method)
        assert vals.shape == (4,) and vecs.shape == (300, 4)
        torch.testing.assert_close(vals, ref_vals, rtol=1e-7, atol=1e-8)
        overlap = (vecs.T @ ref_vecs).abs().diagonal()
        torch.testing.assert_close(overlap, torch.ones(4, dtype=torch.float64), atol=1e-6,
                                   rtol=0)
        residual = (K @ vecs - vecs * vals).norm(dim=0) / vals
        assert residual.max() < 1e-6


def test_matvec_matches_dense():
    model = MLP(5, 3, width=16, depth=2, dtype=torch.float64, seed=2)
    X = torch.randn(10, 5, dtype=torch.float64)
    K = empirical_ntk(model, X, kind="full")
    V = torch.randn(30, 4, dtype=torch.float64)
    torch.testing.assert_close(ntk_matvec(model, X)(V), K @ V)


def test_critical_lr_equals_hessian_bound_for_linear_model():
    d, c, n = 6, 2, 20
    model = nn.Linear(d, c).double()  # linear in its parameters
    X, y = torch.randn(n, d, dtype=torch.float64), torch.randn(n, c, dtype=torch.float64)
    H = dense_mse_hessian(model, X, y)
    assert critical_lr(model, X) == pytest.approx(2 / torch.linalg.eigvalsh(H)[-1].item(),
                                                  rel=1e-10)


@pytest.mark.parametrize("factor,converges", [(0.95, True), (1.05, False)])
def test_gd_converges_below_and_diverges_above_critical_lr(factor, converges):
    d, n = 10, 30
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1).double()
    eta = factor * critical_lr(model, X)
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    losses = []
    for _ in range(1500):
        loss = ((model(X) - y) ** 2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    if converges:
        assert losses[-1] <= losses[0] and abs(losses[-1] - losses[-2]) < 1e-8
    else:
        assert losses[-1] > 1e6 * losses[0]


def test_loss_split_sums_and_projects():
    model = MLP(5, 2, width=24, depth=2, dtype=torch.float64, seed=4)
    X, y = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    L, top, rest = loss_split(model, X, y, 3)
    with torch.no_grad():
        r = (model(X) - y).reshape(-1)
    assert L == pytest.approx(torch.nn.MSELoss()(model(X), y).item())
    assert top + rest == pytest.approx(L) and top >= 0 and rest >= 0
    K = empirical_ntk(model, X, kind="full")
    U = torch.linalg.eigh(K)[1][:, -3:]
    assert top == pytest.approx(((U.T @ r) ** 2).sum().item() / 24)
    L_all, top_all, rest_all = loss_split(model, X, y, 24)
    assert rest_all == pytest.approx(0, abs=1e-12)


def test_batch_mixing_models_are_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    X = torch.randn(10, 4)
    before = model[1].running_mean.clone()
    with pytest.raises(NTKError, match="training mode"):
        empirical_ntk(model, X)
    assert torch.equal(model[1].running_mean, before)  # refused before running it
    model.eval()
    assert empirical_ntk(model, X).shape == (10, 10)
    drop = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5), nn.Linear(64, 1))
    with pytest.raises(NTKError, match="depends on the other samples"):
        empirical_ntk(drop, X)

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            return self.lin(x - x.mean(0))

    with pytest.raises(NTKError, match="depends on the other samples"):
        empirical_ntk(Mixer(), X)


# ---- the blockwise fast path and the block Krylov eigensolver (float64 references) ----------
@pytest.mark.parametrize("bias,c", [(True, 1), (True, 3), (False, 3)])
def test_fast_path_several_row_blocks_matches_generic(bias, c):
    # n = 600 > 256 rows per block: the upper-triangle block rows and their mirror are exercised
    model = MLP(6, c, width=16, depth=3, bias=bias, bias_scale=0.7, activation="tanh",
                dtype=torch.float64, seed=11)
    X = torch.randn(600, 6, dtype=torch.float64)
    K = empirical_ntk(model, X, kind="trace", method="fast")
    K_ref = empirical_ntk(model, X, kind="trace", method="generic")
    torch.testing.assert_close(K, K_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(K, K.T, rtol=0, atol=0)


def _psd(N, spectrum, seed):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    return (Q * spectrum) @ Q.T


def test_block_krylov_against_eigh_cold_warm_and_restarted():
    N, k = 500, 5
    # one large eigenvalue, then a tight cluster (like the NTK of a wide ReLU net)
    spec = torch.cat([torch.tensor([150.0]), 5.0 - 0.05 * torch.arange(N - 1.0)]).clamp_min(0)
    K = _psd(N, spec.to(torch.float64), 0)
    w_ref, V_ref = torch.linalg.eigh(K)
    w_ref, V_ref = w_ref.flip(0)[:k], V_ref.flip(1)[:, :k]
    E = torch.randn(N, N, dtype=torch.float64) * 1e-4
    K2 = K + (E + E.T)
    w2_ref = torch.linalg.eigvalsh(K2).flip(0)[:k]
    for kwargs in [{}, {"max_blocks": 2}, {"block": 12}]:
        vals, vecs = block_krylov_top(K.__matmul__, N, k, tol=1e-10, **kwargs)
        torch.testing.assert_close(vals, w_ref, rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(vecs.T @ vecs, torch.eye(k, dtype=torch.float64),
                                   atol=1e-10, rtol=0)
        assert ((K @ vecs - vecs * vals).norm(dim=0) / vals).max() < 1e-9
        overlap = (vecs.T @ V_ref).abs().diagonal()
        torch.testing.assert_close(overlap, torch.ones(k, dtype=torch.float64), atol=1e-8, rtol=0)
        # warm start on a perturbed kernel (tracking during training)
        vals2, vecs2 = block_krylov_top(K2.__matmul__, N, k, v0=vecs, tol=1e-10, **kwargs)
        torch.testing.assert_close(vals2, w2_ref, rtol=1e-12, atol=1e-10)
        assert ((K2 @ vecs2 - vecs2 * vals2).norm(dim=0) / vals2).max() < 1e-9


def test_block_krylov_rank_deficient_and_tiny():
    # rank 3 < k = 5: the Krylov space becomes invariant; the zero eigenvalues are found too
    A = torch.randn(400, 3, dtype=torch.float64)
    K = A @ A.T
    vals, vecs = block_krylov_top(K.__matmul__, 400, 5, tol=1e-10)
    ref = torch.linalg.eigvalsh(K).flip(0)[:5]
    torch.testing.assert_close(vals, ref, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(5, dtype=torch.float64), atol=1e-10,
                               rtol=0)
    K = _psd(12, torch.linspace(3, 0.1, 12, dtype=torch.float64), 1)
    vals, _ = block_krylov_top(K.__matmul__, 12, 4)
    torch.testing.assert_close(vals, torch.linalg.eigvalsh(K).flip(0)[:4])


def test_eig_top_float32_kernel_default_tolerance():
    model = MLP(10, 1, width=64, depth=3, seed=8)
    X = torch.randn(700, 10)
    K = empirical_ntk(model, X)
    vals, vecs = eig_top(K, 5)
    assert vals.dtype == torch.float32 and vecs.shape == (700, 5)
    K64 = K.double()
    ref = torch.linalg.eigvalsh(K64).flip(0)[:5]
    torch.testing.assert_close(vals.double(), ref, rtol=1e-6, atol=0)
    v, U = vals.double(), vecs.double()
    assert ((K64 @ U - U * v).norm(dim=0) / v).max() < 3e-6


def test_monitor_solvers_agree_with_finite_difference_kernel():
    """NTKMonitor: 'auto' is dense up to max_dense rows of the full kernel, Lanczos above; both
    give the eigenvalues and loss split of a finite-difference kernel (c = 2, float64)."""
    from catapults.monitors.ntk import NTKMonitor

    seed = int(torch.randint(0, 10**6, ()))
    model = MLP(5, 2, width=16, depth=2, activation="tanh", seed=seed, dtype=torch.float64)
    X = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randn(12, 2, dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(reference_kernel(model, X, "full"))
    lam_ref, top = evals.flip(0)[:3], evecs.flip(1)[:, :2]
    with torch.no_grad():
        r = (model(X) - y).reshape(-1)
    L_top_ref = float((top.T @ r).pow(2).sum() / r.numel())
    assert NTKMonitor(X, y, k=3).method == "dense"
    assert NTKMonitor(X, y, k=3, max_dense=23).method == "lanczos"
    for mon in (NTKMonitor(X, y, k=3, s=2), NTKMonitor(X, y, k=3, s=2, max_dense=23)):
        row = mon.measure(model, lr=1.0)
        torch.testing.assert_close(torch.tensor(row["ntk/lambda"], dtype=torch.float64),
                                   lam_ref, rtol=1e-6, atol=1e-8)
        assert row["ntk/eta_crit"] == pytest.approx(24 / float(lam_ref[0]), rel=1e-6)
        assert row["ntk/L_top"] == pytest.approx(L_top_ref, rel=1e-5, abs=1e-10)
    with pytest.raises(ValueError, match="method"):
        NTKMonitor(X, y, method="eigh")


def test_generic_chunk_keeps_the_largest_activation_in_cache(monkeypatch):
    from catapults.curvature.ntk_rules import generic

    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(1))
    X = torch.randn(100, 3, 32, 32)
    wide(X[:1])
    p = sum(q.numel() for q in wide.parameters())
    # 64 x 32 x 32 float32 = 256 KiB per sample: 32 samples make the 8 MiB cap
    assert generic.chunk_for(wide, X, p, 1, 1e12) == 32
    assert generic.chunk_for(wide, X, p, 1, 1.0) == 1  # the memory budget still binds
    small = SmallCNN()
    Xs = torch.randn(50, 2, 5, 5)
    assert generic.chunk_for(small, Xs, 10, 2, 2e9) == 50  # small activations: unchunked
    monkeypatch.setattr(generic, "CHUNK_ACTIVATION_BYTES", 1)  # one sample per chunk
    model = SmallCNN().double()
    Xd = torch.randn(7, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(empirical_ntk(model, Xd, method="jacobian"),
                               reference_kernel(model, Xd, "full", how="vmap"),
                               rtol=1e-10, atol=1e-12)


def test_generic_chunk_comes_from_the_memory_budget():
    from catapults.curvature.ntk_rules.generic import auto_chunk, bytes_per_sample

    model = SmallCNN().double()
    X = torch.randn(9, 2, 5, 5, dtype=torch.float64)
    p = sum(q.numel() for q in model.parameters())
    per = bytes_per_sample(model, X, p, 2)
    assert per >= 8 * 2 * 2 * p  # at least the sample's Jacobian rows, twice
    assert auto_chunk(9, per, 2e9) == 9  # everything fits: one unchunked vmap(jacrev)
    assert auto_chunk(9, per, 3.5 * per) == 3 and auto_chunk(9, per, 1) == 1
    K_ref = reference_kernel(model, X, "full", how="vmap")
    for budget in (2e9, 3.5 * per, 1):  # one chunk, chunks of 3, and J recomputed blockwise
        K = empirical_ntk(model, X, method="generic", memory_budget=budget)
        torch.testing.assert_close(K, K_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(K, K.T, rtol=0, atol=0)


def test_one_kernel_serves_every_quantity(monkeypatch):
    from catapults.curvature import spectrum
    from catapults.ntk import ntk_summary

    model = MLP(5, 2, width=12, depth=2, dtype=torch.float64, seed=4)
    X, y = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    K = reference_kernel(model, X, "full", how="vmap")
    vals_ref = torch.linalg.eigvalsh(K).flip(0)
    calls = []
    real = spectrum.empirical_ntk
    monkeypatch.setattr(spectrum, "empirical_ntk",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    vals, vecs = top_eigenpairs(model, X, 3, K=K)
    torch.testing.assert_close(vals, vals_ref[:3], rtol=1e-10, atol=1e-12)
    assert critical_lr(None, None, K=K) == pytest.approx(18 / vals_ref[0].item(), rel=1e-10)
    split = loss_split(model, X, y, 3, K=K)
    assert not calls  # none of them formed another kernel
    assert split == pytest.approx(loss_split(model, X, y, 3), rel=1e-9)
    summ = ntk_summary(model, X, y, k=3, lr=36 / (vals_ref[1] + vals_ref[2]).item(),
                       keep_kernel=True)
    assert len(calls) == 2  # loss_split without K (above) and the summary: one kernel each
    torch.testing.assert_close(summ.eigenvalues, vals_ref[:3], rtol=1e-10, atol=1e-12)
    assert summ.eta_crit == pytest.approx(critical_lr(model, X), rel=1e-10)
    assert summ.s == 2  # λ_1 and λ_2 above n·c/lr
    L, top, rest = loss_split(model, X, y, 2, K=K)
    assert (summ.L, summ.L_top, summ.L_rest) == pytest.approx((L, top, rest), rel=1e-9)
    torch.testing.assert_close(summ.K, K, rtol=1e-10, atol=1e-12)


def test_matrix_free_eigenpairs_multiply_blocks_of_vectors_on_request(monkeypatch):
    from catapults.curvature import spectrum

    model = MLP(6, 2, width=24, depth=2, dtype=torch.float64, seed=8)
    X = torch.randn(40, 6, dtype=torch.float64)
    shapes = []
    real = spectrum.ntk_matvec

    def spy(m, x, **kw):
        mv = real(m, x, **kw)
        return lambda V: shapes.append(tuple(V.shape)) or mv(V)

    monkeypatch.setattr(spectrum, "ntk_matvec", spy)
    K = reference_kernel(model, X, "full", how="vmap")
    for block in (6, 1):  # blocks of batched VJP/JVP pairs on request; one vector by default
        shapes.clear()
        kw = {"block": block} if block > 1 else {}
        vals, vecs = top_eigenpairs(model, X, 3, method="lanczos", tol=1e-10, **kw)
        assert shapes and all(len(s) == 2 and s[1] == block for s in shapes)
        torch.testing.assert_close(vals, torch.linalg.eigvalsh(K).flip(0)[:3], rtol=1e-8,
                                   atol=1e-10)
        assert ((K @ vecs - vecs * vals).norm(dim=0) / vals).max() < 1e-7


@pytest.mark.parametrize("max_blocks,keep", [(60, None), (12, None), (8, 5), (8, 7)])
def test_single_vector_lanczos_thick_restarts_against_eigh(max_blocks, keep):
    """block=1 (the Hessian's setting): thick restarts keep the top Ritz vectors and their Krylov
    relation, so a small basis still converges to the eigh pairs; the basis stays orthonormal
    (the residuals read off the Krylov relation are the true ones)."""
    seed = int(torch.randint(0, 10**6, ()))
    N, k = 400, 5
    spec = torch.cat([torch.tensor([40.0, 3.0, 2.95, 2.9, 2.85]),
                      torch.linspace(2.5, 0.0, N - 5)]).double()
    K = _psd(N, spec, seed)
    ref = torch.linalg.eigvalsh(K).flip(0)[:k]
    count = [0]

    def counted(A):
        def mm(V):
            count[0] += V.shape[1]
            return A @ V
        return mm

    vals, vecs = block_krylov_top(counted(K), N, k, block=1, max_blocks=max_blocks, keep=keep,
                                  tol=1e-10)
    torch.testing.assert_close(vals, ref, rtol=1e-10, atol=1e-10)
    assert ((K @ vecs - vecs * vals).norm(dim=0) / vals).max() < 1e-9
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(k, dtype=torch.float64), atol=1e-10,
                               rtol=0)
    cold = count[0]
    # warm start from the k eigenvectors of a perturbed operator, with one vector per block:
    # the start vector is their sum, so the Krylov space holds them all and converges faster
    E = torch.randn(N, N, dtype=torch.float64) * 1e-5
    K2 = K + (E + E.T)
    count[0] = 0
    vals2, _ = block_krylov_top(counted(K2), N, k, block=1, max_blocks=max_blocks, keep=keep,
                                v0=vecs, tol=1e-10)
    torch.testing.assert_close(vals2, torch.linalg.eigvalsh(K2).flip(0)[:k], rtol=1e-10,
                               atol=1e-10)
    assert count[0] < cold


def test_block_krylov_floor_stops_on_an_inexact_operator():
    """Products rounded to float32: a relative tolerance below their accuracy is met through
    the floor (``10·eps32·|θ_1|``), and the residuals are then at that level."""
    N, k = 600, 3
    K = _psd(N, torch.cat([torch.tensor([50.0, 2.0, 1.9]),
                           torch.linspace(1.5, 0, N - 3)]).double(), 11)
    K32 = K.float()

    def mm(V):
        return (K32 @ V.float()).double()

    floor = 10 * torch.finfo(torch.float32).eps
    vals, vecs = block_krylov_top(mm, N, k, block=1, max_blocks=40, tol=1e-12, floor=floor,
                                  max_restarts=20)
    res = (K @ vecs - vecs * vals).norm(dim=0)
    assert (res <= 1e-12 * vals.abs() + 2 * floor * 50.0 + 1e-5).all()
    torch.testing.assert_close(vals, torch.linalg.eigvalsh(K).flip(0)[:k], rtol=1e-5, atol=0)


@pytest.mark.parametrize("bad", [{"block": 0}, {"block": -2}, {"block": 1.5}, {"keep": 0},
                                 {"max_blocks": True}, {"tol": -1e-3}, {"floor": float("nan")}])
def test_block_krylov_refuses_bad_options_by_name(bad):
    K = _psd(60, torch.linspace(3, 0.1, 60, dtype=torch.float64), 2)
    name = next(iter(bad))
    with pytest.raises(NTKError, match=name):
        block_krylov_top(K.__matmul__, 60, 3, **bad)


def test_top_level_solvers_pass_bad_block_through_to_one_message():
    from catapults import stability

    model = MLP(3, 1, width=8, depth=2, seed=1, dtype=torch.float64)
    X = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(NTKError, match="block must be an integer"):
        top_eigenpairs(model, X, 2, method="lanczos", block=0)
    with pytest.raises(NTKError, match="block must be an integer"):
        stability.hessian_top_eigenpairs(model, X, torch.randn(10, 1, dtype=torch.float64), 2,
                                         block=-1)


@pytest.mark.parametrize("method", ["auto", "rules", "jacobian"])
def test_kernel_runs_few_probing_forward_passes(method):
    """Besides the pass over all samples, a warm call probes the model on a few samples only:
    the per-sample check (two passes) and one pass that gives the output width, the activation
    sizes and, for ``auto``, the input shapes that choose the method (the generic path's
    ``vmap`` over samples also shows as one pass on one sample). Each probe costs as much as
    the model's weights (an NTK-scaled layer rescales them), which shows at small n and when
    watching every step."""
    model = MLP(10, 2, width=32, depth=3, seed=0).double()
    X = torch.randn(50, 10, dtype=torch.float64)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    K = empirical_ntk(model, X, method=method)
    sizes.clear()
    torch.testing.assert_close(empirical_ntk(model, X, method=method), K, rtol=0, atol=0)
    probes = [b for b in sizes if b < X.shape[0]]
    assert len(probes) <= {"auto": 3, "rules": 3, "jacobian": 4}[method], sizes
    assert max(probes) <= 5 and sizes.count(X.shape[0]) <= 1, sizes
