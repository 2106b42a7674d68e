"""`catapults reproduce` at a tiny size: every experiment writes well-formed claims and figures.

(The claims' outcomes at this size mean nothing; the quick and full sizes are for science.)"""

import json
from pathlib import Path

import pytest

from catapults import cli
from catapults.experiments import EXPERIMENTS, THRESHOLDS, make_claim, spearman


def test_spearman_and_claims():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 2, 3], [5, 5, 5]) is None
    c = make_claim("gd-multi/alignment-vs-catapults", "claim 3", "rho", 0.7)
    assert c.passed and c.threshold == THRESHOLDS["gd-multi/alignment-vs-catapults"][1]
    assert not make_claim("gd-multi/alignment-vs-catapults", "claim 3", "rho", None).passed
    assert not make_claim("real-x:gd-multi/test-loss-vs-catapults", "c", "rho", 0.1).passed


def test_reproduce_all_tiny(tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["reproduce", "all", "--size", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed and ("PASS" in printed or "FAIL" in printed)
    doc = json.loads((out / "claims.json").read_text())
    assert set(doc["experiments"]) == set(EXPERIMENTS)
    assert doc["total"] == len(doc["claims"]) >= 12
    for c in doc["claims"]:
        assert set(c) >= {"id", "claim", "statistic", "value", "comparison", "threshold",
                          "passed"}
        assert isinstance(c["passed"], bool)
        assert c["id"].split(":", 1)[-1] in THRESHOLDS
    for name, info in doc["experiments"].items():
        assert (out / name / "claims.json").is_file()
        assert info["figures"] and info["tables"]
        for p in info["figures"]:
            assert p.endswith(".png") and Path(p).stat().st_size > 1000
        rows = [Path(p).read_text().strip().splitlines() for p in info["tables"]]
        assert rows and all(r for r in rows)  # every CSV has its header
        assert max(len(r) for r in rows) >= 2  # and the main table has rows


def test_reproduce_bad_experiment(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["reproduce", "nope"])
    assert e.value.code == 2


def test_diverged_run_does_not_break_an_experiment(tmp_path, monkeypatch):
    """A raise far above the critical rate diverges: recorded, no AGOP, the figure still drawn."""
    import catapults.experiments as ex

    make = ex._cfg

    def diverging(**kw):
        cfg = make(**kw)
        sch = cfg.get("train", {}).get("schedule", {})
        if sch.get("kind") == "critical" and len(sch.get("values", [])) == 3:
            sch["values"] = [0.9, 1.3, 50.0]
        return cfg

    monkeypatch.setattr(ex, "_cfg", diverging)
    rows, results = ex._multi_runs(tmp_path, "tiny", ex._synthetic("tiny"), tag="x")
    assert rows[-1]["status"] == "diverged" and rows[-1]["agop_alignment"] is None
    assert all(r["agop_alignment"] is not None for r in rows[:-1])
    assert ex._fig_multi(rows, results, tmp_path / "f.png", "t").is_file()
    assert ex._multi_claims("", rows)  # claims are still computed
