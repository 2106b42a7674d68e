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
