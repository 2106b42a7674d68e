"""Configs generated from the schema itself: every leaf field with a wrong type, out of range,
non-finite, huge and nested values. Each is either valid or a ConfigError naming the field, never
another exception; wrong types are refused, never coerced."""

import math
import random
import typing

import pytest
from pydantic import BaseModel

from catapults import cli
from catapults.config import ConfigError, RunConfig, config_from_dict
from catapults.config.schema import _base_types


def _leaves(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = next((t for t in _base_types(ann) if isinstance(t, type) and issubclass(
            t, BaseModel)), None)
        if sub is not None:
            yield from _leaves(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


LEAVES = list(_leaves(RunConfig))


def _nest(dotted: str, value):
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _wrong_types(kinds):
    """Values of a type the field does not admit (and that must not be coerced)."""
    out = []
    if bool not in kinds:
        out.append(True)
    if kinds & {int, float} == set() and bool in kinds:
        out += [1, "yes", 0.0]
    if int in kinds and float not in kinds and str not in kinds:
        out += ["7", 2.5]
    if not kinds & {list, tuple}:
        out.append([1, 2])
    out.append({"a": 1})
    return out


HOSTILE = [math.nan, math.inf, -math.inf, 1e300, -1e300, 2**64, -(2**63), 10**40, "", "x" * 10_000,
           [[[[[[1]]]]]], None, 0, -1]

CASES = []
for dotted, field in LEAVES:
    kinds = _base_types(field.annotation)
    for v in _wrong_types(kinds):
        CASES.append((dotted, v, "wrong type"))
    for v in HOSTILE:
        CASES.append((dotted, v, "hostile"))


@pytest.mark.parametrize("dotted,value,klass", CASES,
                         ids=[f"{d}={str(v)[:12]}-{k}" for d, v, k in CASES])
def test_every_field_refuses_bad_values_with_one_clear_error(dotted, value, klass):
    raw = _nest(dotted, value)
    try:
        config_from_dict(raw)
    except ConfigError as err:
        msg = str(err)
        assert dotted in msg or dotted.rsplit(".", 1)[0] in msg, msg
        assert len(msg) < 400, msg[:500]
        return
    assert klass != "wrong type", f"{dotted}={value!r} was coerced instead of refused"


def test_the_fuzz_covers_every_field_and_many_cases():
    assert len(LEAVES) >= 60 and len(CASES) >= 1000


@pytest.mark.parametrize("seed", range(3))
def test_cli_validate_on_random_hostile_configs(tmp_path, capsys, seed):
    import yaml

    rng = random.Random(seed)
    for i, (dotted, value, _) in enumerate(rng.sample(CASES, 25)):
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)  # YAML spells them .nan / .inf; a string must be refused too
        path = tmp_path / f"c{i}.yaml"
        path.write_text(yaml.safe_dump(_nest(dotted, value)))
        code = cli.main(["config", "validate", str(path)])
        captured = capsys.readouterr()
        assert code in (0, 2), (dotted, value)
        assert "Traceback" not in captured.err
        if code == 2:
            assert len(captured.err.strip().splitlines()) == 1


def test_annotations_are_introspected():
    assert _base_types(int | None) == {int, type(None)}
    assert _base_types(typing.Literal["a", 1]) == {str, int}
