"""Hostile config, override and run files: each costs milliseconds, gives one message naming the
file or field, exit code 2, and writes nothing."""

import json
import time

import pytest
import yaml

from catapults import cli
from catapults.config import ConfigError, apply_overrides, load_config
from catapults.storage.atomic import read_json_object
from helpers import small_config

BOMB = "\n".join([
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")),
])


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def _cli_refuses(tmp_path, capsys, args, match):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code = cli.main(args + ["--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and len(err) < 400, err[:500]
    assert match in err, err
    assert not out.exists()
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("name,text,match", [
    ("bomb.yaml", BOMB + "\ntrain: {lr: *i}\n", "too large"),
    ("deep-list.yaml", "train: {lr: " + "[" * 10000 + "]" * 10000 + "}\n", "nested too deeply"),
    ("deep-map.yaml", "train: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply"),
    ("deep-block.yaml", "".join("  " * i + f"k{i}:\n" for i in range(1500)) + "  " * 1500
     + "v: 1\n", "nested too deeply"),
    ("list-root.yaml", "[]\n", "must be a mapping"),
    ("false-root.yaml", "false\n", "must be a mapping"),
    ("zero-root.yaml", "0\n", "must be a mapping"),
])
def test_hostile_configs_are_refused_quickly(tmp_path, capsys, name, text, match):
    path = _write(tmp_path, name, text)
    _cli_refuses(tmp_path, capsys, ["run", str(path)], match)


def test_huge_config_file_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text("x: [" + "1, " * 2_500_000 + "1]\n")  # 7.5 MB
    _cli_refuses(tmp_path, capsys, ["run", str(path)], "larger than")


def test_merge_keys_work_and_explicit_keys_override(tmp_path):
    path = _write(tmp_path, "merge.yaml", "base: &b {lr: 0.1, steps: 7}\n"
                  "train:\n  <<: *b\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="base: unknown field"):
        load_config(path)  # the anchor's own section is not a config section...
    path = _write(tmp_path, "merge2.yaml", "train: &t {lr: 0.1, steps: 7}\n")
    assert load_config(path).train.steps == 7
    text = "data: {n_train: 32}\ntrain:\n  <<: {lr: 0.1, steps: 7}\n  lr: 0.2\n"
    cfg = load_config(_write(tmp_path, "merge3.yaml", text))
    assert (cfg.train.lr, cfg.train.steps) == (0.2, 7)


def test_override_duplicates_and_repeats_are_refused():
    with pytest.raises(ConfigError, match="given twice"):
        apply_overrides({}, ["train={lr: 0.1, lr: 0.2}"])
    with pytest.raises(ConfigError, match="train.lr: given twice"):
        apply_overrides({}, ["train.lr=0.1", "train.lr=0.2"])
    with pytest.raises(ConfigError, match="too large"):
        apply_overrides({}, ["train.lr=" + BOMB.replace("\n", ", ").join("{}")])


def test_validation_message_does_not_embed_a_huge_input(tmp_path):
    cfg = small_config()
    cfg["train"]["lr"] = list(range(100_000))
    path = _write(tmp_path, "c.yaml", yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value)) < 300 and "train.lr" in str(err.value)


@pytest.mark.parametrize("name,text,match", [
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("deep-obj.json", '{"a":' * 200 + "1" + "}" * 200, "nested too deeply"),
    ("array.json", "[1, 2]", "expected a JSON object"),
    ("torn.json", '{"status": "comp', "corrupt or truncated"),
])
def test_hostile_run_files_name_the_file(tmp_path, name, text, match):
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=match) as err:
        read_json_object(path)
    assert str(path) in str(err.value)


def test_inspect_of_a_run_with_a_deeply_nested_summary(tmp_path, capsys):
    from catapults.config import config_from_dict
    from catapults.runs import run

    out = tmp_path / "run"
    run(config_from_dict(small_config(monitor={"events": {"enabled": True}})), out_dir=out)
    (out / "events.json").write_text('{"events": ' + "[" * 50_000 + "]" * 50_000 + "}")
    code = cli.main(["inspect", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "nested too deeply" in err and "events.json" in err
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


# ---- hostile data files -----------------------------------------------------------------------
def test_gzip_bomb_posing_as_mnist_is_refused_without_decompressing_it(tmp_path):
    import gzip

    from catapults.data.readers import read_idx
    from catapults.errors import DataError

    raw = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(raw, "wb", compresslevel=9) as fh:  # declares 60000 x 28 x 28, then 300 MB
        fh.write(bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big")
                 + (28).to_bytes(4, "big"))
        for _ in range(300):
            fh.write(bytes(2**20))
    assert raw.stat().st_size < 2 * 2**20
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(raw)
    huge = tmp_path / "huge-idx3-ubyte.gz"
    with gzip.open(huge, "wb") as fh:  # declares 10^12 bytes
        fh.write(bytes([0, 0, 8, 3]) + (10**6).to_bytes(4, "big") + (1000).to_bytes(4, "big")
                 + (1000).to_bytes(4, "big") + bytes(1000))
    with pytest.raises(DataError, match="declares .* MiB of data"):
        read_idx(huge)
    assert time.perf_counter() - t0 < 5


def test_cifar_pickle_with_list_data_is_refused_unmaterialised(tmp_path):
    import pickle

    from catapults.data.readers import load_dataset
    from catapults.errors import DataError

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    row = list(range(3072))
    bomb = {b"data": [row] * 200_000, b"labels": [0] * 200_000}  # memo: one row, many refs
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps(bomb, protocol=2))
    assert (d / "test_batch").stat().st_size < 2 * 2**20
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="'data' must be a numpy array"):
        load_dataset("cifar10", root=tmp_path)
    assert time.perf_counter() - t0 < 5


def test_svhn_with_string_labels_is_a_data_error(tmp_path):
    import numpy as np
    from scipy.io import savemat

    from catapults.data.readers import load_dataset
    from catapults.errors import DataError

    (tmp_path / "svhn").mkdir()
    X = np.zeros((32, 32, 3, 3), dtype=np.uint8)
    savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": X, "y": np.array(["a", "b", "c"])})
    with pytest.raises(DataError, match="labels 'y' must be integers"):
        load_dataset("svhn", root=tmp_path)
