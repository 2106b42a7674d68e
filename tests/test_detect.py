"""Catapult detection on synthetic loss series with known spikes, and on a real GD run."""

import json
import math

import numpy as np
import pytest

from catapults import cli
from catapults.config import config_from_dict
from catapults.detect import early_warning, find_catapults
from catapults.runs import run
from helpers import small_config


def trend(n, start=1.0, rate=0.01):
    return start * np.exp(-rate * np.arange(n))


def add_spike(losses, at, height, rise=4, fall=4):
    """Multiply the series by a smooth bump peaking at `height` x at step `at`."""
    out = np.array(losses, dtype=float)
    for k in range(-rise, fall + 1):
        frac = 1 - abs(k) / ((rise if k < 0 else fall) + 1)
        out[at + k] *= height ** frac
    return out


def test_clean_spikes_each_one_event():
    base = trend(400)
    series = add_spike(add_spike(add_spike(base, 60, 5.0), 150, 100.0), 300, 3.2)
    events = find_catapults(series)
    assert len(events) == 3
    for ev, at in zip(events, [60, 150, 300]):
        assert ev.peak == at and ev.recovered
        assert ev.start < at < ev.end
        assert ev.peak_loss == pytest.approx(series[at])
        assert ev.peak_loss >= 3 * ev.baseline_loss


def test_small_rise_is_not_an_event():
    series = add_spike(trend(200), 100, 2.5)
    assert find_catapults(series) == []


def test_multiplicative_noise_gives_no_event():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        series = trend(2000, rate=0.003) * rng.uniform(0.7, 1.3, 2000)
        assert find_catapults(series) == [], seed


def test_noisy_series_with_spikes():
    rng = np.random.default_rng(1)
    base = trend(1000, rate=0.002) * rng.uniform(0.7, 1.3, 1000)
    series = add_spike(add_spike(base, 300, 20.0), 700, 8.0)
    events = find_catapults(series)
    assert [e.peak for e in events] == [300, 700]


def test_two_spikes_ten_steps_apart():
    series = add_spike(add_spike(trend(200), 80, 10.0, rise=3, fall=3), 90, 10.0, rise=3,
                       fall=3)
    events = find_catapults(series)
    assert [e.peak for e in events] == [80, 90]
    assert events[0].end <= events[1].start


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_divergence_is_one_unrecovered_event(bad):
    series = list(trend(100))
    series[50:53] = [series[49] * 10, series[49] * 1000, bad]
    events = find_catapults(series + [1.0, 1.0])  # nothing after the non-finite value counts
    assert len(events) == 1
    ev = events[0]
    assert not ev.recovered and ev.end == 52 and ev.start <= 50 and math.isinf(ev.peak_loss)


def test_divergence_without_warning_and_never_back():
    series = list(trend(60)) + [float("nan")]
    (ev,) = find_catapults(series)
    assert not ev.recovered and ev.end == 60
    series = list(trend(60)) + [10.0] * 30  # rises and never comes back
    (ev,) = find_catapults(series)
    assert not ev.recovered and ev.end == 89 and ev.start <= 60


def test_bad_parameters():
    with pytest.raises(ValueError):
        find_catapults([1.0], ratio=1.0)
    with pytest.raises(ValueError):
        find_catapults([1.0], ratio=3, return_ratio=3)


def test_early_warning_scores():
    class E:
        def __init__(self, s):
            self.start = s

    out = early_warning([10, 50, 52, 90], [E(12), E(55), E(200)], window=5, n_steps=300)
    assert out["precision"] == pytest.approx(3 / 4)  # 10->12, 50->55, 52->55; 90 misses
    assert out["recall"] == pytest.approx(2 / 3)


def test_gd_run_with_known_raises_gives_that_many_events(tmp_path):
    """Three raises to 1.3x the critical lr (measured at each raise) -> three catapults."""
    cfg = small_config(
        data={"d": 20, "n_train": 64, "n_test": 0, "seed": 3},
        model={"width": 1024},
        train={"lr": 0.5, "steps": 330, "schedule": {
            "kind": "critical", "milestones": [20, 120, 220], "values": [1.3, 1.3, 1.3]}},
        monitor={"ntk": {"enabled": True, "every": 2}, "events": {"enabled": True}})
    out = tmp_path / "run"
    res = run(config_from_dict(cfg), out_dir=out)
    assert res.status == "completed"
    events = json.loads((out / "events.json").read_text())
    assert events["count"] == 3 == res.summary["monitors"]["events"]["count"]
    for ev, milestone in zip(events["events"], [20, 120, 220]):
        assert ev["recovered"] and milestone <= ev["start"] < milestone + 40
        info = ev["info"]
        assert info["top_share"] > 0.5  # the spike lives in the top eigenspace
        assert info["lambda_max_after"] < info["lambda_max_before"]  # lambda_max drops
    assert (out / "figures" / "events.png").is_file()
    assert cli.main(["inspect", str(out)]) == 0


def test_sgd_run_tracks_batch_critical_rates_and_early_warning(tmp_path):
    """Every SGD step records lambda_max(K_B) and eta_crit(B) of its own batch (checked against
    an independent critical_lr of that batch at the same parameters), and the run scores the
    early warning."""
    from catapults.ntk import critical_lr
    from catapults.training import Callback

    checked = []

    class Check(Callback):  # runs after the NTK monitor, before the update
        def on_step_begin(self, state, X, y, record):
            if state.step % 7 == 0:
                checked.append((record["ntk/batch_eta_crit"],
                                critical_lr(state.model, X.double().float())))

    cfg = small_config(
        train={"optimizer": "sgd", "batch_size": 8, "lr": 2.0, "steps": 60, "eval_every": 1},
        monitor={"ntk": {"enabled": True, "every": 10, "probe_size": 32},
                 "events": {"enabled": True}})
    out = tmp_path / "run"
    res = run(config_from_dict(cfg), out_dir=out, callbacks=[Check()])
    rows = [r for r in res.history if "loss" in r]
    assert all("ntk/batch_eta_crit" in r and "ntk/batch_lambda_max" in r for r in rows)
    for got, ref in checked:
        assert got == pytest.approx(ref, rel=1e-4)
    probe = [r for r in rows if "ntk/lambda" in r]
    assert [r["step"] for r in probe] == list(range(0, 60, 10))
    warn = res.summary["monitors"]["events"]["early_warning"]
    assert warn is not None and warn["steps"] == 60
    assert warn["flags"] == sum(r["lr"] > r["ntk/batch_eta_crit"] for r in rows)
    assert res.summary["monitors"]["ntk"]["batch_steps"] == 60
