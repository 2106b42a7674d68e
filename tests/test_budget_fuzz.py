"""Fuzz suites for what issue 16's hardening added (seeded; a larger tier under ``slow``):

- schema sizes: configs with integer fields drawn across their whole accepted range (alone and
  several at once, monitors on or off) checked against budgets from 1 MiB to 1 PiB: the memory
  check passes or raises one ConfigError naming a config field, with the estimate and budget;
- the budget variable: hostile ``CATAPULTS_MEMORY_BUDGET`` strings give a size, ``off`` or one
  ConfigError naming the variable;
- targets on sampled inputs: random expressions over random sample sizes and dtypes give a data
  set whose targets and squares are finite in the training dtype, or a ``data.target`` error;
- run directory states: every combination of what a killed run can leave (marker, config, rows,
  temporary files of dead and live processes, a user's file) is accepted, reused or refused as
  documented, and checking it never changes it.
"""

import math
import os
import random
import subprocess

import pytest
import torch
from test_config_fuzz import LEAVES, _nest

from catapults import budget, runs
from catapults.budget import Budget, estimate, parse_size
from catapults.config import ConfigError, RunConfig, config_from_dict
from catapults.data import make_dataset
from catapults.errors import RunExistsError
from catapults.storage.rundir import RUN_MARKER, never_started, prepare_run_dir

INT_FIELDS = []
for dotted, field in LEAVES:
    bounds = {type(m).__name__: m for m in field.metadata}
    if int in {field.annotation} | set(getattr(field.annotation, "__args__", ())) and (
            "Ge" in bounds or "Le" in bounds):
        lo = bounds["Ge"].ge if "Ge" in bounds else 0
        hi = bounds["Le"].le if "Le" in bounds else 10**9
        INT_FIELDS.append((dotted, lo, hi))
FIELD_NAMES = {dotted for dotted, _ in LEAVES}
BUDGETS = [2**20, 2**30, 64 * 2**30, 2**50]


def log_uniform(rng, lo, hi):
    lo = max(lo, 1)
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def random_config(rng, n_fields):
    raw: dict = {}
    for dotted, lo, hi in rng.sample(INT_FIELDS, n_fields):
        value = rng.choice([lo, hi, log_uniform(rng, lo, hi)])
        node = raw
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    for section in ("ntk", "agop"):
        if rng.random() < 0.4:
            raw.setdefault("monitor", {}).setdefault(section, {})["enabled"] = True
    if rng.random() < 0.3:
        raw.setdefault("train", {}).update(optimizer=rng.choice(["sgd", "adam", "momentum"]))
    if rng.random() < 0.2:
        raw.setdefault("data", {}).update(name=rng.choice(["digits", "cifar10", "celeba"]))
    return raw


def check_case(raw, size):
    try:
        cfg = config_from_dict(raw)
    except ConfigError:
        return "invalid"
    parts = estimate(cfg)
    assert all(math.isfinite(p.bytes) and p.bytes >= 0 for p in parts)
    assert all(p.field in FIELD_NAMES for p in parts), [p.field for p in parts]
    try:
        budget.check(cfg, Budget(size, "the fuzz budget"))
    except ConfigError as err:
        msg = str(err)
        field = msg.split(":", 1)[0]
        assert field in FIELD_NAMES and "\n" not in msg and len(msg) < 600, msg
        assert "the fuzz budget" in msg and "would need" in msg and f"smaller {field}" in msg
        return "refused"
    assert math.fsum(p.bytes for p in parts) <= size
    return "fits"


SIZE_CASES = [(dotted, value, size) for dotted, lo, hi in INT_FIELDS
              for value in sorted({lo, hi, (lo + hi) // 2, min(hi, 4096)}) for size in BUDGETS]


@pytest.mark.parametrize("dotted,value,size", SIZE_CASES,
                         ids=[f"{d}={v}-{s}" for d, v, s in SIZE_CASES])
def test_each_size_field_across_its_range(dotted, value, size):
    check_case(_nest(dotted, value), size)


@pytest.mark.parametrize("seed, n", [(0, 300), pytest.param(1, 3000, marks=pytest.mark.slow)])
def test_random_size_combinations(seed, n):
    rng = random.Random(seed)
    outcomes = [check_case(random_config(rng, rng.randint(1, 6)), rng.choice(BUDGETS))
                for _ in range(n)]
    assert {"fits", "refused"} <= set(outcomes)


def test_refused_before_anything_is_allocated(monkeypatch):
    """Over-budget random configs through check_config: the data and model are never built."""
    def boom(*args, **kwargs):
        raise AssertionError("allocated before the memory check")
    monkeypatch.setattr(runs, "make_dataset", boom)
    monkeypatch.setattr(runs, "build_model", boom)
    monkeypatch.setattr(budget, "memory_budget", lambda: Budget(2**20, "1 MiB"))
    rng, refused = random.Random(7), 0
    while refused < 40:
        raw = random_config(rng, 4)
        try:
            cfg = config_from_dict(raw)
        except ConfigError:
            continue
        if math.fsum(p.bytes for p in estimate(cfg)) <= 2**20:
            continue
        with pytest.raises(ConfigError, match="would need"):
            runs.check_config(cfg)
        refused += 1


HOSTILE_SIZES = ["", " ", "0", "-1", "-1GiB", "1e999", "1e308TiB", "nan", "inf", "NaN GiB",
                 "12 GiBs", "12 parsecs", "0x10", "1_000", "١٢GiB", "１２GiB", "1" * 10_000,
                 "12GiB; rm -rf /", "\x00", "12\nGiB", "1.5.5G", ".5G", "5.", "1e3k", "GiB",
                 "off", "OFF", " none ", "unlimited", "64GiB", "64 gib", "2e9", "512MB", "3t"]


@pytest.mark.parametrize("text", HOSTILE_SIZES, ids=[repr(t)[:20] for t in HOSTILE_SIZES])
def test_budget_variable_never_crashes(text):
    try:
        size = parse_size(text)
    except ConfigError as err:
        assert str(err).startswith(budget.ENV_VAR) and len(str(err)) < 200
        return
    assert size is None or (math.isfinite(size) and size > 0)


TARGET_PARTS = ["x1", "x2", "x3", "x1*x2", "x2**2", "1", "2.5", "x3/3"]
FUNCS = ["exp", "sqrt", "abs", "tanh", "sin", "relu", "cos"]


def random_target(rng, depth=0):
    if depth > 2 or rng.random() < 0.3:
        return rng.choice(TARGET_PARTS)
    kind = rng.random()
    if kind < 0.4:
        scale = rng.choice([1, 3, 10, 20, 30, 50])
        return f"{rng.choice(FUNCS)}({scale}*({random_target(rng, depth + 1)}))"
    if kind < 0.6:
        return f"{rng.choice(FUNCS)}({rng.uniform(-4, 4):.2f} - {random_target(rng, depth + 1)})"
    op = rng.choice(["+", "-", "*", "/"])
    return f"({random_target(rng, depth + 1)}) {op} ({random_target(rng, depth + 1)})"


@pytest.mark.parametrize("seed, n", [(0, 120), pytest.param(1, 1500, marks=pytest.mark.slow)])
def test_random_targets_on_sampled_inputs(seed, n):
    from catapults.config.schema import DataConfig

    rng = random.Random(seed)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(n):
        expr = random_target(rng)
        dtype = rng.choice([torch.float32, torch.float64])
        cfg = DataConfig(name="synthetic", d=3, target=expr, n_train=rng.choice([8, 256, 4000]),
                         n_test=rng.choice([0, 100, 4000]), seed=rng.randrange(100),
                         noise=rng.choice([0.0, 0.1]))
        try:
            ds = make_dataset(cfg, dtype=dtype)
        except ConfigError as err:
            assert str(err).startswith(("data.target: ", "data.noise: ")), (expr, str(err))
            outcomes["refused"] += 1
            continue
        for y in (ds.y_train, ds.y_test):
            assert y.dtype == dtype and bool(torch.isfinite(y.square()).all()), expr
        outcomes["ok"] += 1
    assert outcomes["ok"] and outcomes["refused"], outcomes


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


ENTRIES = ["marker", "config.yaml", "metrics.jsonl", "notes.txt", "dead-tmp", "live-tmp",
           "subdir"]


def test_run_directory_states(tmp_path):
    """All 128 combinations of what may be in an output directory x overwrite: accepted iff
    empty, never started (marker and dead temporary files only), or a run with overwrite;
    checking changes nothing."""
    dead = _dead_pid()
    count = 0
    for mask in range(2 ** len(ENTRIES)):
        present = [e for i, e in enumerate(ENTRIES) if mask >> i & 1]
        out = tmp_path / f"d{mask}"
        out.mkdir()
        for e in present:
            name = {"marker": RUN_MARKER, "dead-tmp": f".config.yaml.tmp-{dead}",
                    "live-tmp": f".config.yaml.tmp-{os.getpid()}"}.get(e, e)
            (out / name).mkdir() if e == "subdir" else (out / name).write_text("x")
        before = sorted(p.name for p in out.iterdir())
        fresh = not present or (set(present) <= {"marker", "dead-tmp"} and "marker" in present)
        assert never_started(out) == (bool(present) and fresh)
        for overwrite in (False, True):
            count += 1
            accepted = fresh or (overwrite and "marker" in present)
            try:
                prepare_run_dir(out, overwrite=overwrite)
            except RunExistsError:
                assert not accepted and not overwrite, (present, overwrite)
            except ConfigError as err:
                assert not accepted and overwrite and "not a run directory" in str(err)
            else:
                assert accepted, (present, overwrite)
            assert sorted(p.name for p in out.iterdir()) == before
    assert count == 256


def test_fuzz_case_counts():
    """The sizes of the suites (reported in the closing note of issue 16)."""
    assert len(INT_FIELDS) >= 20 and len(SIZE_CASES) >= 300
    assert len(HOSTILE_SIZES) >= 30
    assert {d for d, _, _ in INT_FIELDS} >= {"model.width", "data.n_train", "data.d",
                                            "monitor.ntk.probe_size", "train.batch_size",
                                            "monitor.agop.n_samples", "train.threads"}
    assert isinstance(RunConfig(), RunConfig)
