"""Write tests/data/detector_real_runs.json: loss curves of small runs of the toolkit, with the
events labelled by hand, for the detector benchmark (tests/detector_cases.py ``real_cases``).

    PYTHONPATH=src:tests python benchmarks/make_detector_real_runs.py   # about 2 minutes (CPU)

The runs are seeded; the labels below were written after looking at each curve (log scale,
zoomed in on every spike), before the new detector was scored on them. Rule used by eye: a
catapult is a rise to at least ~3x the loss level just before it, that comes back down; its
``start`` is the bottom before the rise, its ``end`` where the fall is over; an oscillation is a
stretch where the loss visibly alternates up and down every step. Rises smaller than that,
inside SGD noise, are not labelled (on sgd-critical-0.8 four rises of 2.2-2.9x over the level
before them were left out: 48, 177, 296-315, 558).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from catapults.config import config_from_dict  # noqa: E402
from catapults.runs import run  # noqa: E402
from helpers import small_config  # noqa: E402

OUT = ROOT / "tests" / "data" / "detector_real_runs.json"

# name -> (config sections, series, steps kept, labels)
RUNS = {
    # GD on the NTK-parameterised MLP, three raises to 1.3x the critical rate (the test config)
    "gd-raises": (
        dict(data={"d": 20, "n_train": 64, "n_test": 0, "seed": 3}, model={"width": 1024},
             train={"lr": 0.5, "steps": 330, "schedule": {
                 "kind": "critical", "milestones": [20, 120, 220], "values": [1.3, 1.3, 1.3]}}),
        "loss", None,
        {"catapults": [(30, 40, 44), (137, 154, 158), (232, 249, 253)]}),
    # raises to 1.05x (a slow catapult, 0.1/step), 1.8x (a violent one), 1.15x
    "gd-slow-and-big": (
        dict(data={"d": 20, "n_train": 64, "n_test": 0, "seed": 4}, model={"width": 1024},
             train={"lr": 0.5, "steps": 500, "schedule": {
                 "kind": "critical", "milestones": [30, 200, 350],
                 "values": [1.05, 1.8, 1.15]}}),
        "loss", None,
        {"catapults": [(75, 113, 134), (203, 214, 218), (363, 383, 392)]}),
    # SGD batch 8 at lr 2 (below the batch critical rates): noisy batch losses, no catapult
    "sgd-b8-batch-loss": (
        dict(data={"d": 10, "n_train": 64, "n_test": 0, "seed": 0}, model={"width": 256},
             train={"optimizer": "sgd", "batch_size": 8, "lr": 2.0, "steps": 600,
                    "eval_every": 1}),
        "loss", None, {"catapults": []}),
    "sgd-b8-train-loss": (None, "train_loss", None, {"catapults": []}),
    # SGD batch 8 at 0.8x the full-batch critical rate: spikes in the full training loss
    "sgd-critical-0.8": (
        dict(data={"d": 20, "n_train": 128, "n_test": 0, "seed": 2}, model={"width": 512},
             train={"optimizer": "sgd", "batch_size": 8, "lr": 1.0, "steps": 600,
                    "eval_every": 1,
                    "schedule": {"kind": "critical", "milestones": [0], "values": [0.8]}}),
        "train_loss", None,
        {"catapults": [(40, 42, 47), (108, 114, 116), (122, 127, 128), (230, 231, 234),
                       (247, 248, 249), (425, 427, 429), (467, 469, 471), (575, 576, 580)]}),
    # GD, standard parameterisation, tanh, fixed lr: repeated catapults of falling size
    "gd-tanh-standard": (
        dict(data={"d": 10, "n_train": 64, "n_test": 0, "seed": 1},
             model={"width": 64, "depth": 3, "parameterization": "standard",
                    "activation": "tanh"},
             train={"lr": 0.1, "steps": 800, "eval_every": 100}),
        "loss", None,
        {"catapults": [(104, 109, 110), (229, 242, 249), (297, 324, 336), (362, 407, 432)]}),
    # GD, standard parameterisation, relu, lr 1: an unstable start, one spike, then a long
    # period-2 oscillation (the edge of stability)
    "gd-relu-standard": (
        dict(data={"d": 10, "n_train": 64, "n_test": 0, "seed": 1},
             model={"width": 64, "depth": 3, "parameterization": "standard",
                    "activation": "relu"},
             train={"lr": 1.0, "steps": 500, "eval_every": 100}),
        "loss", None,
        {"catapults": [(45, 49, 50)], "oscillations": [(51, 300)]}),
}


def main() -> None:
    out = []
    previous = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, (sections, series, keep, labels) in RUNS.items():
            if sections is not None:
                cfg = small_config(**sections)
                res = run(config_from_dict(cfg), out_dir=Path(tmp) / name)
                previous = (cfg, [r for r in res.history if "loss" in r])
            cfg, rows = previous
            losses = [None if r.get(series) is None else float(f"{r[series]:.7g}")
                      for r in rows][:keep]
            out.append({"name": name, "series": series, "config": cfg, "losses": losses,
                        "catapults": labels["catapults"],
                        "oscillations": labels.get("oscillations", []), "tolerance": 3})
            print(f"{name}: {len(losses)} steps, {len(labels['catapults'])} labelled catapults",
                  flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"about": __doc__, "runs": out}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
