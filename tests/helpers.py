"""Shared test helpers."""


def small_config(**sections):
    """A tiny, fast run config (dict) with overrides per section."""
    cfg = {
        "data": {"name": "synthetic", "d": 10, "target": "x1*x2", "n_train": 64, "n_test": 64},
        "model": {"depth": 2, "width": 64},
        "train": {"optimizer": "gd", "lr": 0.5, "steps": 30, "eval_every": 5, "device": "cpu"},
        "output": {"progress": False},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg
