"""Memory checks before allocation (issue 16): every size a config implies is estimated and
checked against a memory budget before data, model or files exist; one message gives the
estimate, the budget and the field that sets it; `config validate`, `sweep --dry-run` and
`run` say the same and write nothing."""

import re

import pytest
import torch
import yaml

from catapults import budget, runs
from catapults.budget import Budget, estimate, parse_size
from catapults.cli import main
from catapults.config import config_from_dict
from catapults.config.schema import MAX_SEED, TrainConfig
from catapults.errors import ConfigError
from catapults.models import build_model
from tests.helpers import small_config

REAL_MEMORY_BUDGET = budget.memory_budget
SMALL = Budget(64 * 2**20, "a test budget")  # 64 MiB

# (overrides, the field the message must name): each asks for far more than SMALL
HUGE = [
    ({"model": {"depth": 3, "width": 2**17}}, "model.width"),
    ({"data": {"n_train": 10**7, "n_test": 10}}, "data.n_train"),
    ({"data": {"n_train": 10, "n_test": 10**7}}, "data.n_test"),
    ({"train": {"optimizer": "sgd", "batch_size": 50_000}, "data": {"n_train": 50_000},
      "monitor": {"ntk": {"enabled": True, "probe_size": 10, "batch": True}}},
     "train.batch_size"),
    ({"data": {"n_train": 20_000}, "monitor": {"ntk": {"enabled": True, "method": "dense"}}},
     "monitor.ntk.probe_size"),
    ({"data": {"n_train": 20_000}, "train": {"optimizer": "sgd", "batch_size": 8},
      "monitor": {"ntk": {"enabled": True, "probe_size": 20_000, "method": "dense",
                          "batch": False}}}, "monitor.ntk.probe_size"),
    ({"data": {"n_train": 20_000},
      "monitor": {"sharpness": {"enabled": True, "probe_size": 20_000}}},
     "monitor.sharpness.probe_size"),
    ({"data": {"d": 20_000, "n_train": 8, "n_test": 8}, "model": {"width": 4},
      "monitor": {"agop": {"enabled": True}}}, "data.d"),
    ({"data": {"name": "digits", "image_size": 32, "n_train": 1500, "n_test": 10},
      "model": {"width": 4}, "train": {"optimizer": "sgd", "batch_size": 8},
      "monitor": {"agop": {"enabled": True, "n_samples": 1500,
                           "reference_run": "unused"}}}, "monitor.agop.n_samples"),
    ({"data": {"name": "digits", "image_size": 512, "n_train": 500, "n_test": 10},
      "model": {"width": 4}}, "data.image_size"),
]


def _config(**sections):
    return config_from_dict(small_config(**sections))


def _no_allocation(monkeypatch):
    """Make building data or a model fail the test: the check must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("allocated before the memory check")
    monkeypatch.setattr(runs, "make_dataset", boom)
    monkeypatch.setattr(runs, "build_model", boom)


@pytest.mark.parametrize("sections, field", HUGE, ids=[f for _, f in HUGE])
def test_huge_config_refused_before_allocation(monkeypatch, sections, field):
    _no_allocation(monkeypatch)
    monkeypatch.setattr(budget, "memory_budget", lambda: SMALL)
    with pytest.raises(ConfigError) as err:
        runs.check_config(_config(**sections))
    msg = str(err.value)
    assert msg.startswith(f"{field}: ") and f"use a smaller {field}" in msg, msg
    assert "64.0 MiB (a test budget)" in msg and re.search(r"would need [\d,.]+ [MG]iB", msg)
    assert "\n" not in msg


def test_small_config_passes_and_estimate_matches_the_model():
    cfg = _config(model={"depth": 3, "width": 32, "bias": True})
    runs.check_config(cfg)
    parts = {p.field: p for p in estimate(cfg)}
    p = sum(t.numel() for t in build_model(runs.model_spec(cfg, _data(cfg))).parameters())
    assert f"{p:,} parameters" in parts["model.width"].what
    # parameters, gradients, no optimizer state (gd), checkpoint copies: 4 bytes each
    assert parts["model.width"].bytes == pytest.approx(p * 4 * 4)


def _data(cfg):
    from catapults.data import make_dataset
    return make_dataset(cfg.data)


def test_kernel_estimate_bounds_the_kernel():
    cfg = _config(monitor={"ntk": {"enabled": True}}, data={"n_train": 64})
    part = next(p for p in estimate(cfg) if "NTK" in p.what)
    assert part.bytes >= 64 * 64 * 4  # at least K itself in float32


def test_sharpness_estimate_bounds_its_largest_objects():
    """At least the Gauss-Newton kernel on the probe (float32) and one float64 vector per
    Krylov basis column of the size of θ."""
    cfg = _config(monitor={"sharpness": {"enabled": True, "probe_size": 50}},
                  data={"n_train": 64}, model={"depth": 2, "width": 64})
    part = next(p for p in estimate(cfg) if "sharpness" in p.what)
    p = sum(t.numel() for t in build_model(runs.model_spec(cfg, _data(cfg))).parameters())
    assert part.bytes >= 50 * 50 * 4 + 52 * p * 8 and part.field == "monitor.sharpness.probe_size"


def test_budget_names_no_field_when_it_fits(monkeypatch):
    monkeypatch.setattr(budget, "memory_budget", lambda: Budget(2**40, "huge"))
    runs.check_config(_config(model={"depth": 3, "width": 2048}))


@pytest.mark.parametrize("text, size", [
    ("64GiB", 64 * 2**30), ("512 MiB", 512 * 2**20), ("2e9", 2e9), ("1.5G", 1.5 * 2**30),
    ("100kb", 1e5), ("off", None), ("None", None)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["bogus", "-5", "0", "12 parsecs", "1e", ""])
def test_bad_budget_variable_is_one_error(text, monkeypatch):
    if not text:
        monkeypatch.setenv(budget.ENV_VAR, "")  # empty: the default budget
        assert budget.memory_budget() is None or budget.memory_budget().bytes > 0
        return
    with pytest.raises(ConfigError, match=budget.ENV_VAR):
        parse_size(text)


def test_default_budget_is_a_share_of_available_memory(monkeypatch):
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    avail = budget.available_memory()
    assert avail is not None and avail[0] > 0
    b = budget.memory_budget()
    assert b.bytes == pytest.approx(budget.FRACTION * avail[0], rel=0.2)
    assert budget.ENV_VAR in b.source
    monkeypatch.setenv(budget.ENV_VAR, "3GiB")
    assert budget.memory_budget() == Budget(3 * 2**30, f"{budget.ENV_VAR}=3GiB")
    monkeypatch.setenv(budget.ENV_VAR, "off")
    assert budget.memory_budget() is None


def _yaml(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_line(capsys, *names):
    err = capsys.readouterr().err
    assert err.startswith("catapults: error: ") and err.count("\n") == 1, err
    for name in names:
        assert name in err, (name, err)
    return err


def test_cli_validate_dry_run_and_run_say_the_same(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(budget.ENV_VAR, "64MiB")
    cfg = small_config(model={"depth": 3, "width": 2**17})
    path = _yaml(tmp_path, cfg)
    assert main(["config", "validate", str(path)]) == 2
    first = _one_line(capsys, "model.width", f"{budget.ENV_VAR}=64MiB", "GiB")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base_config": "cfg.yaml", "seeds": [0]}))
    assert main(["sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "sw")]) == 2
    assert first.split(": error: ")[1] in _one_line(capsys, "model.width")
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert _one_line(capsys) == first
    assert not (tmp_path / "run").exists() and not (tmp_path / "sw").exists()


def test_seed_and_thread_bounds_fit_torch():
    """The largest seed and thread count a config accepts are values torch takes."""
    torch.Generator().manual_seed(MAX_SEED + 1)  # the trainer's batch-order seed
    threads = TrainConfig.model_fields["threads"].metadata
    top = min(m.le for m in threads if hasattr(m, "le"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(top)
    finally:
        torch.set_num_threads(before)
    for section, field in [("data", "seed"), ("train", "seed")]:
        with pytest.raises(ConfigError, match=f"{section}.{field}"):
            config_from_dict({section: {field: 2**64}})
    with pytest.raises(ConfigError, match="train.threads"):
        config_from_dict({"train": {"threads": 2**31}})


def test_cuda_run_is_checked_against_the_device_memory(monkeypatch):
    """On a CUDA device the estimate is also checked against 80% of the device's free memory
    (torch.cuda.mem_get_info, faked here: no GPU needed)."""
    _no_allocation(monkeypatch)
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    monkeypatch.setattr(budget, "memory_budget", lambda: Budget(2**50, "host"))
    monkeypatch.setattr(runs, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 2**31))
    cfg = _config(model={"depth": 3, "width": 2**14})  # ~1 GiB of parameters and copies
    with pytest.raises(ConfigError) as err:
        runs.check_config(cfg)
    assert "model.width" in str(err.value) and "80% of the 1.0 GiB free on cuda:0" in str(err.value)
    assert budget.device_budget(torch.device("cpu")) is None
    monkeypatch.setattr(budget, "memory_budget", REAL_MEMORY_BUDGET)
    monkeypatch.setenv(budget.ENV_VAR, "off")
    assert budget.device_budget(torch.device("cuda", 0)) is None


@pytest.mark.parametrize("arch,extra", [("cnn", {}), ("cnn", {"width": 256, "depth": 4}),
                                        ("wrn", {}), ("wrn", {"depth": 28, "widen_factor": 10}),
                                        ("vit", {}), ("vit", {"width": 192, "heads": 3})])
def test_image_architectures_are_estimated(arch, extra):
    """Every architecture gets a parameter estimate close to its true count (the MLP's is
    exact), and a normal config passes the check (an arch with no `width` once crashed it)."""
    from catapults.budget import _arch_sizes, _shape
    from catapults.config.model import model_spec
    from catapults.models import count_parameters

    cfg = config_from_dict({"data": {"name": "digits", "classes": [3, 8]},
                            "model": {"arch": arch, **extra}})
    d, c, _, _ = _shape(cfg.data)
    p, act, _ = _arch_sizes(cfg.model, cfg.data, d, c)
    true = count_parameters(model_spec(cfg.model, in_shape=[1, 8, 8], out_dim=c, seed=0,
                                       dtype="float32"))
    assert 0.8 * true <= p <= 1.3 * true and act > 0
    budget.check(cfg)


def test_a_huge_cnn_is_refused_naming_its_width():
    cfg = config_from_dict({"data": {"name": "digits", "classes": [3, 8]},
                            "model": {"arch": "cnn", "width": 60000, "depth": 8}})
    with pytest.raises(ConfigError, match=r"^model\.width: 60000"):
        budget.check(cfg, budget.Budget(2**33, "a test budget"))
