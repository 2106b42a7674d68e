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


# ---- --resume: finished units are read back, not trained again ---------------------------------
def _no_training(monkeypatch):
    """Make any training in the architectures experiment fail loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("a unit was trained again")

    monkeypatch.setattr(ar, "_train_unit", refuse)


def _claims(res):
    return [(c.id, c.status, None if c.value is None else round(c.value, 15), c.n_seeds)
            for c in res.claims]


def test_resume_reuses_every_finished_unit_and_gives_the_same_claims(tiny, monkeypatch):
    d, res = tiny
    before = {p.name: p.read_bytes() for p in d.glob("*-digits-*.csv")}
    _no_training(monkeypatch)
    again = ar.exp_architectures(d, "tiny", resume=True)
    assert _claims(again) == _claims(res)
    assert {p.name: p.read_bytes() for p in d.glob("*-digits-*.csv")} == before
    assert sum("reused (--resume)" in n for n in again.notes) == len(list(d.glob("*-unit.json")))
    assert [n for n in again.notes if "reference AGOP" in n] == \
        [n for n in res.notes if "reference AGOP" in n]  # the units' own notes come back


@pytest.mark.parametrize("damage", ["other-seeds", "csv-changed", "csv-missing", "garbage",
                                    "no-record", "file-elsewhere", "list-record",
                                    "entry-string", "deep-nesting", "huge-cell"])
def test_resume_reruns_a_unit_whose_record_does_not_match(tiny, tmp_path, monkeypatch, damage):
    import shutil

    d, _ = tiny
    work = tmp_path / "architectures"
    shutil.copytree(d, work, ignore=shutil.ignore_patterns("runs"))
    record = work / "vit-ntk-digits-unit.json"
    if damage == "other-seeds":
        doc = json.loads(record.read_text())
        doc["key"]["seeds"] = [0, 1, 2]
        record.write_text(json.dumps(doc))
    elif damage == "csv-changed":
        p = work / "vit-ntk-digits-gd-multi.csv"
        p.write_text(p.read_text().replace("completed", "diverged", 1))
    elif damage == "csv-missing":
        (work / "vit-ntk-digits-batch-size-runs.csv").unlink()
    elif damage == "file-elsewhere":  # a record pointing the reader at another CSV
        doc = json.loads(record.read_text())
        doc["tables"]["gd-multi"]["file"] = "cnn-ntk-digits-gd-multi.csv"
        doc["tables"]["gd-multi"]["sha256"] = json.loads(
            (work / "cnn-ntk-digits-unit.json").read_text())["tables"]["gd-multi"]["sha256"]
        record.write_text(json.dumps(doc))
    elif damage == "list-record":
        record.write_text("[1, 2]")
    elif damage == "entry-string":
        doc = json.loads(record.read_text())
        doc["tables"]["summary"] = "vit-ntk-digits-summary.csv"
        record.write_text(json.dumps(doc))
    elif damage == "deep-nesting":
        record.write_text("[" * 100000)
    elif damage == "huge-cell":  # over the csv module's field limit, digest made to match
        p = work / "vit-ntk-digits-summary.csv"
        p.write_text(p.read_text() + '"' + "x" * 200000 + '"\n')
        doc = json.loads(record.read_text())
        import hashlib
        doc["tables"]["summary"]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        record.write_text(json.dumps(doc))
    elif damage == "garbage":
        record.write_bytes(b"\x00{not json")
    else:
        record.unlink()
    trained = []

    def fake_train(out, size, arch, par, task):
        trained.append(f"{arch}-{par}")
        raise RuntimeError("stop here")

    monkeypatch.setattr(ar, "_train_unit", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        ar.exp_architectures(work, "tiny", resume=True)
    assert trained == ["vit-ntk"]  # cnn-ntk and wrn-ntk (before it) were reused


def test_resume_is_off_by_default(tiny, tmp_path, monkeypatch):
    import shutil

    d, _ = tiny
    work = tmp_path / "architectures"
    shutil.copytree(d, work, ignore=shutil.ignore_patterns("runs"))
    trained = []

    def fake_train(out, size, arch, par, task):
        trained.append(arch)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ar, "_train_unit", fake_train)
    with pytest.raises(RuntimeError):
        ar.exp_architectures(work, "tiny")
    assert trained == ["cnn"]


def test_rows_read_back_as_written(tmp_path):
    from catapults.experiments.common import _write_csv
    from catapults.experiments.units import read_rows

    rows = [{"seed": 0, "status": "completed", "loss": 0.1 + 0.2, "tiny": 1e-300,
             "none": None, "flag": True, "inf": float("inf"), "run": "/a/b-seed0",
             "zero": -0.0, "big_float": 1e16, "odd": "007", "under": "1_000", "word": "Infinity"},
            {"seed": 1, "status": "diverged", "loss": float("nan"), "flag": False,
             "neg": -3, "big": 123456789012345678901234567890}]
    back = read_rows(_write_csv(tmp_path / "t.csv", rows))
    assert back[0] == {**rows[0], "neg": None, "big": None}
    assert str(back[0]["zero"]) == "-0.0" and [type(back[0][k]) for k in ("odd", "under", "word")] \
        == [str, str, str]
    nan = back[1].pop("loss")
    assert nan != nan
    assert back[1] == {"seed": 1, "status": "diverged", "tiny": None, "none": None,
                       "flag": False, "inf": None, "run": None, "zero": None, "big_float": None,
                       "odd": None, "under": None, "word": None, "neg": -3,
                       "big": 123456789012345678901234567890}
    assert [type(v) for v in back[0].values()] == [int, str, float, float, type(None), bool,
                                                  float, str, float, float, str, str, str,
                                                  type(None), type(None)]


def test_cli_resume_reuses_the_units(tiny, monkeypatch, capsys):
    from catapults import cli

    d, res = tiny
    _no_training(monkeypatch)
    argv = ["reproduce", "architectures", "--size", "tiny", "--out", str(d.parent), "--resume"]
    assert cli.main(argv) == 0
    doc = json.loads((d / "claims.json").read_text())
    assert [(c["id"], c["status"]) for c in doc["claims"]] == \
        [(c.id, c.status) for c in res.claims]
    assert "reused (--resume)" in json.dumps(doc)
