"""`catapults reproduce architectures` at the tiny size: its files, its claim ids per
architecture and parameterisation, and a science check that can fail: in NTK parameterisation
every architecture catapults in its raised runs (learning rate 1.3x the critical rate)."""

import csv
import json

import pytest

from catapults.experiments import EXPERIMENTS, RUNNERS, THRESHOLDS
from catapults.experiments import architectures as ar


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from catapults.experiments import reproduce

    out = tmp_path_factory.mktemp("arch")
    res = reproduce("architectures", out=out, size="tiny", threads=1, echo=None)
    return out / "architectures", res[0]


def test_architectures_is_registered():
    assert "architectures" in EXPERIMENTS
    assert RUNNERS["architectures"] is ar.exp_architectures
    from catapults.cli.reproduce import EXPERIMENT_NAMES

    assert "architectures" in EXPERIMENT_NAMES


def test_every_claim_id_has_a_threshold():
    assert ar.KEYS and all(k in THRESHOLDS for k in ar.KEYS)
    assert all(k in THRESHOLDS for k in ar.SUMMARY_KEYS)


def test_tiny_writes_files_and_claims_per_architecture(tiny):
    d, res = tiny
    assert (d / "architectures-summary.png").stat().st_size > 1000
    doc = json.loads((d / "claims.json").read_text())
    ids = {c["id"]: c for c in doc["claims"]}
    for arch in ar.ARCHS:
        for par in ar.PARAMETERIZATIONS:
            for key in ar.KEYS:
                assert f"{arch}-{par}:{key}" in ids, (arch, par, key)
            ran = par == "ntk" or arch in ar.SETTINGS["tiny"]["standard"]
            c = ids[f"{arch}-{par}:gd-multi/catapults-follow-raises"]
            if ran:
                assert c["status"] != "not run" or "seed" in (c["reason"] or "")
                for name in ("gd-multi", "summary", "batch-size", "batch-size-runs"):
                    rows = list(csv.DictReader((d / f"{arch}-{par}-digits-{name}.csv").open()))
                    assert rows, name
            else:
                assert c["status"] == "not run" and "standard parameterisation" in c["reason"]
    assert len(res.claims) == len(ar.ARCHS) * len(ar.PARAMETERIZATIONS) * len(ar.KEYS)
    table = list(csv.DictReader((d / "architectures-claims.csv").open()))
    assert len(table) == len(res.claims)


def test_each_architecture_catapults_above_its_critical_rate(tiny):
    """Science check: in every architecture (NTK parameterisation), a run with raises to 1.3x
    the critical rate has a catapult the raise explains (not spontaneous), in both seeds."""
    d, _ = tiny
    for arch in ar.ARCHS:
        rows = list(csv.DictReader((d / f"{arch}-ntk-digits-gd-multi.csv").open()))
        for seed in ("0", "1"):
            caused = [int(r["catapults"] or 0) - int(r["spontaneous"] or 0) for r in rows
                      if r["seed"] == seed and r["kind"] == "raises" and int(r["raises"]) > 0]
            assert max(caused) >= 1, (arch, seed, caused)
