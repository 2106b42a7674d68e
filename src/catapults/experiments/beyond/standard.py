"""beyond/standard-images: do SGD spikes still live in the top eigenspace for networks in the
*standard* parameterisation on image data (the seed's check 1)?

On the digits 3 vs 8 task (scikit-learn's bundled images, 8x8; MNIST / Fashion-MNIST / CIFAR-10
are used the same way by ``reproduce real`` when present), an MLP and a CNN in standard
parameterisation (PyTorch's initialisation) train with SGD at batch 16 and 64 at 0.8x the
full-batch critical rate of their initial network, the NTK monitor measuring the probe kernel
(the training set) and every batch's critical rate. Each is compared, as in ``sgd-spikes``, with
the same network linearised at its initialisation (a frozen kernel: it cannot catapult) trained
on the same batches: the share of each spike's loss in the top eigenspace, and how many spikes
have the mechanism (``λ_max`` falls).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catapults.experiments.claims import Claim, make_claim
from catapults.experiments.common import _cfg, _plt, _read_events, _run, _save, _seeds
from catapults.experiments.sgd_spikes import _spike_stats
from catapults.experiments.stats import paired_differences

SETTINGS = (("mlp", 16), ("mlp", 64), ("cnn", 16))


def _model(arch: str, size: str) -> dict[str, Any]:
    if arch == "mlp":
        return {"arch": "mlp", "width": {"tiny": 128, "quick": 512, "full": 1024}[size],
                "depth": 2, "parameterization": "standard"}
    return {"arch": "cnn", "width": {"tiny": 8, "quick": 16, "full": 64}[size], "depth": 2,
            "parameterization": "standard"}


def _run_one(out: Path, size: str, seed: int, arch: str, batch: int, linearize: bool):
    n = {"tiny": 64, "quick": 200, "full": 200}[size]
    data = {"name": "digits", "classes": [3, 8], "n_train": n, "n_test": 150,
            "standardize": True, "seed": seed}
    cfg = _cfg(data=data, model={**_model(arch, size), "linearize": linearize},
               train={"optimizer": "sgd", "lr": 1.0, "batch_size": batch, "seed": seed,
                      "steps": {"tiny": 80, "quick": 300, "full": 1000}[size],
                      "eval_every": 1, "test_every": 50,
                      "schedule": {"kind": "critical", "milestones": [0], "values": [0.8]}},
               monitor={"ntk": {"enabled": True, "every": {"tiny": 2, "quick": 3,
                                                            "full": 2}[size],
                                "k": 5, "batch": True},
                        "events": {"enabled": True, "warning_window": 5}},
               output={"figures": False})
    name = f"std-{arch}-b{batch}-{'linearized' if linearize else 'network'}-seed{seed}"
    res = _run(cfg, out / "runs" / name)
    return _spike_stats(res, _read_events(res))


def standard_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    claims = []
    for arch, batch in SETTINGS:
        mine = sorted((r for r in rows if r["arch"] == arch and r["batch"] == batch),
                      key=lambda r: r["seed"])
        net = [r["network_median_top_share"] for r in mine]
        lin = [r["linearized_median_top_share"] for r in mine]
        prefix = f"{arch}-b{batch}-standard:"
        basis = "top-s eigenvectors of the probe kernel at the spike (s: eigenvalues above n*c/lr)"
        claims += [
            make_claim(f"{prefix}beyond/standard-top-share", "claim 2 (standard param.)",
                       "median over SGD spikes of L_top / L at the spike", net, basis=basis,
                       spikes=[r["network_spikes"] for r in mine]),
            make_claim(f"{prefix}beyond/standard-top-share-vs-linearized",
                       "claim 2 (standard param., null)",
                       "median top share, network - linearised network (paired by seed)",
                       paired_differences(net, lin), basis=basis,
                       control="the network linearised at initialisation, same batches and lr",
                       linearized_spikes=[r["linearized_spikes"] for r in mine],
                       mechanism_network=[r["network_mechanism_spikes"] for r in mine],
                       mechanism_linearized=[r["linearized_mechanism_spikes"] for r in mine]),
        ]
    return claims


def fig_standard(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    labels = [f"{arch} b={batch}" for arch, batch in SETTINGS]
    for i, (arch, batch) in enumerate(SETTINGS):
        mine = [r for r in rows if r["arch"] == arch and r["batch"] == batch]
        for kind, dx, color in [("network", -0.12, "C3"), ("linearized", 0.12, "C0")]:
            share = [r[f"{kind}_median_top_share"] for r in mine
                     if r[f"{kind}_median_top_share"] is not None]
            spikes = [r[f"{kind}_spikes"] for r in mine]
            a.plot([i + dx] * len(share), share, "o", color=color, alpha=0.7,
                   label=kind if i == 0 else None)
            b.plot([i + dx] * len(spikes), spikes, "o", color=color, alpha=0.7,
                   label=kind if i == 0 else None)
    for ax in (a, b):
        ax.set_xticks(range(len(SETTINGS)), labels)
        ax.set_xlabel("model and batch size (standard parameterisation, digits 3 vs 8)")
        ax.legend(fontsize=8)
    a.set_ylabel("median L_top / L at SGD spikes")
    a.set_title("Top-eigenspace share: network vs linearised")
    b.set_ylabel("spikes detected")
    b.set_title("Spikes: network vs linearised")
    return _save(fig, path)


def exp_standard(out: Path, size: str) -> tuple[list[Claim], list[dict[str, Any]], Path]:
    rows = []
    for arch, batch in SETTINGS:
        for seed in _seeds(size):
            a = _run_one(out, size, seed, arch, batch, False)
            b = _run_one(out, size, seed, arch, batch, True)
            rows.append({"arch": arch, "batch": batch, "seed": seed,
                         **{f"network_{k}": v for k, v in a.items()},
                         **{f"linearized_{k}": v for k, v in b.items()}})
    return standard_claims(rows), rows, fig_standard(rows, out / "standard-images.png")
