import pytest
import yaml

from catapults.config import ConfigError, RunConfig, describe_defaults, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_documented_fields():
    cfg = RunConfig()
    assert cfg.train.optimizer == "gd" and cfg.train.steps == 1000
    text = describe_defaults()
    for section in ["data:", "model:", "train:", "monitor:", "output:"]:
        assert section in text
    # every leaf field line carries a description
    leaf_lines = [ln for ln in text.splitlines()[1:] if ":" in ln and not ln.strip().endswith(":")
                  and not ln.strip().startswith("#")]
    assert leaf_lines and all("  # " in ln for ln in leaf_lines)
    # and the printed defaults load back to the same config
    assert RunConfig.model_validate(yaml.safe_load(text)).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("text,field", [
    ("train: {lr_typo: 1}", "train.lr_typo"),
    ("train: {lr: fast}", "train.lr"),
    ("train: {lr: -1}", "train.lr"),
    ("train: {optimizer: lbfgs}", "train.optimizer"),
    ("model: {width: 0}", "model.width"),
    ("data: {n_train: 2.5}", "data.n_train"),
    ("bogus: {a: 1}", "bogus"),
    ("train: {steps: 10, epochs: 2}", "train"),
    ("train: {schedule: {kind: step, milestones: [5, 3], values: [1, 2]}}", "train.schedule"),
])
def test_bad_fields_are_named(tmp_path, text, field):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value).startswith(field)


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "train: {lr: 1.0}"),
                      ["train.lr=0.25", "model.width=7", "train.schedule.milestones=[1, 2]",
                       "train.schedule.values=[3, 4]", "train.schedule.kind=step"])
    assert cfg.train.lr == 0.25 and cfg.model.width == 7
    assert cfg.train.schedule.values == [3.0, 4.0]
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: {lr: [1,"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("override, message", [
    ("train.lr=inf", "train.lr: Input should be a finite number"),
    ("train.lr=nan", "train.lr: Input should be a finite number"),
    ("train.lr=1e39", "does not fit in float32"),
    ("train.max_loss=inf", "train.max_loss: Input should be a finite number"),
])
def test_non_finite_and_unrepresentable_numbers(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    load_config(None, ["train.lr=1e39", "train.dtype=float64"])  # fits in float64


def test_config_file_problems_are_named(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("data: {d: 5}\nmodel: {width: 8}\ndata: {d: 6}\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML \(line 3\): key 'data' is "
                                          r"given twice"):
        load_config(dup)
    inner = tmp_path / "inner.yaml"
    inner.write_text("train: {lr: 1, lr: 2}\n")
    with pytest.raises(ConfigError, match="key 'lr' is given twice"):
        load_config(inner)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="bin.yaml: not a UTF-8 text file"):
        load_config(binary)
    (tmp_path / "adir.yaml").mkdir()
    with pytest.raises(ConfigError, match="adir.yaml: is a directory"):
        load_config(tmp_path / "adir.yaml")


def test_every_example_config_validates():
    """The configs under examples/ (the sweep files aside) load and validate as shipped."""
    from pathlib import Path

    from catapults.config import load_config

    root = Path(__file__).resolve().parents[1] / "examples"
    files = [p for p in sorted(root.glob("*.yaml")) if not p.name.startswith("sweep")]
    assert len(files) >= 4
    for path in files:
        cfg = load_config(str(path))
        assert (cfg.train.steps or cfg.train.epochs) > 0, path
