"""Learning-rate raises and whether each could catapult (catapults.detect.lr_raises)."""

import json

from catapults import cli
from catapults.detect import Catapult, lr_raises, raise_warnings


def _rows(lrs, crits):
    return [{"step": t, "lr": lr, **({"ntk/eta_crit": c} if c is not None else {})}
            for t, (lr, c) in enumerate(zip(lrs, crits))]


def test_raises_with_their_critical_rate_and_catapult():
    lrs = [1.0] * 5 + [3.0] * 5 + [3.1] * 5 + [4.0] * 5  # 3.1: a small step, not a raise
    crits = [2.0] * 5 + [2.0, 2.5, 3.5, 4.5, 5.0] + [5.0] * 10
    ev = Catapult(start=6, peak=7, end=9, trigger=6, baseline_loss=1.0, peak_loss=10.0,
                  recovered=True)
    raises = lr_raises(_rows(lrs, crits), [ev])
    assert [(r["step"], r["lr_before"], r["lr"]) for r in raises] == [(5, 1.0, 3.0), (15, 3.1, 4.0)]
    first, second = raises
    assert first["eta_crit"] == 2.0 and first["eta_crit_step"] == 4  # measured before the raise
    assert first["above_critical"] is True and first["catapult"] == 0
    assert second["eta_crit"] == 5.0 and second["above_critical"] is False
    assert second["catapult"] is None
    (line,) = raise_warnings(raises)
    assert "step 15" in line and "not above the critical rate 5" in line


def test_without_ntk_rows_nothing_is_claimed():
    raises = lr_raises(_rows([1.0, 1.0, 2.0, 2.0], [None] * 4))
    assert raises[0]["eta_crit"] is None and raises[0]["above_critical"] is None
    assert raise_warnings(raises) == []
    assert lr_raises([]) == [] and lr_raises(_rows([0.0, 1.0], [None, None])) == []  # from 0


def test_a_run_says_when_a_raise_cannot_catapult(tmp_path, capsys):
    """A step schedule whose last raise stays below the critical rate measured before it."""
    import yaml

    cfg = {"data": {"name": "synthetic", "d": 5, "target": "x1*x2", "n_train": 32,
                    "n_test": 16},
           "model": {"depth": 2, "width": 64},
           "train": {"optimizer": "gd", "lr": 0.01, "steps": 12, "device": "cpu",
                     "schedule": {"kind": "step", "milestones": [6], "values": [0.02]}},
           "monitor": {"ntk": {"enabled": True, "every": 1, "k": 1}, "events": {"enabled": True}},
           "output": {"progress": False, "figures": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "note: the learning-rate raise at step 6 (to 0.02) is not above the critical" in out
    ev = json.loads((tmp_path / "r" / "events.json").read_text())
    assert ev["lr_raises"][0]["above_critical"] is False and len(ev["warnings"]) == 1
    assert sum(ev["causes"].values()) == ev["count"]  # every catapult has a cause
    assert cli.main(["inspect", str(tmp_path / "r")]) == 0
    assert "note: the learning-rate raise at step 6" in capsys.readouterr().out


def _ev(start):
    return Catapult(start=start, peak=start + 2, end=start + 5, trigger=start + 1,
                    baseline_loss=1.0, peak_loss=10.0, recovered=True)


def test_catapults_are_labelled_by_cause():
    """The first catapult after a raise is caused by it; one near the start before any raise
    by the initial lr; a second one after the same raise, or one at a constant lr far from the
    start (the edge of stability), is spontaneous."""
    from catapults.detect import CAUSES, label_causes

    lrs = [1.0] * 100 + [3.0] * 100
    events = [_ev(3), _ev(40), _ev(102), _ev(150)]
    raises = lr_raises(_rows(lrs, [None] * 200), events)
    counts = label_causes(events, raises, _rows(lrs, [None] * 200))
    assert [e.info["cause"] for e in events] == ["initial lr", "spontaneous", "lr raise",
                                                 "spontaneous"]
    assert counts == {"lr raise": 1, "lr ramp": 0, "initial lr": 1, "spontaneous": 2}
    assert set(counts) == set(CAUSES)
    const = [_ev(500), _ev(900)]  # a fixed lr: nothing but the start can explain them
    assert label_causes(const, [], first_step=0) == {"lr raise": 0, "lr ramp": 0,
                                                     "initial lr": 0, "spontaneous": 2}
    late = [_ev(510)]  # a run whose rows begin at step 500: "near the start" is relative
    assert label_causes(late, [], first_step=500)["initial lr"] == 1


def test_catapults_under_a_ramp_are_caused_by_it():
    """A linear ramp rises by steps smaller than a raise: the catapults during it are caused by
    the ramp, not spontaneous (also the first one after it ended: the lr rose since the previous
    catapult); a later one at the constant top lr is spontaneous."""
    from catapults.detect import label_causes

    lrs = [1.0 + 0.02 * min(t, 100) for t in range(300)]  # ramp to 3, then constant
    events = [_ev(50), _ev(90), _ev(120), _ev(250)]
    hist = _rows(lrs, [None] * 300)
    assert lr_raises(hist, events) == []
    assert label_causes(events, [], hist)["lr ramp"] == 3
    assert [e.info["cause"] for e in events] == ["lr ramp"] * 3 + ["spontaneous"]
