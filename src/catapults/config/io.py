"""Reading configs: YAML files (safe, duplicate keys refused), ``--set KEY=VALUE`` overrides,
validation into :class:`~catapults.config.schema.RunConfig` with messages that name the field,
and the commented default config (``catapults config show``)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from catapults.config.schema import (
    DataConfig,
    ModelConfig,
    MonitorConfig,
    OutputConfig,
    RunConfig,
    TrainConfig,
)
from catapults.errors import ConfigError
from catapults.storage.limits import check_file_size, check_structure

MAX_YAML_BYTES = 4 * 2**20
"""Largest config or sweep file read (4 MiB: real ones are a few KiB)."""


_NAMES_A_FIELD = re.compile(r"^[a-z_]+\.[a-z_.]+: ")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (an alias bomb's repr is gigabytes)."""
    if isinstance(value, (list, tuple, dict)):
        kind = type(value).__name__
        return f"a {kind} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        field = ".".join(loc)
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if _NAMES_A_FIELD.match(msg) and (not field or msg.startswith(f"{field}.")):
            # a cross-field check names its field itself (``model.heads: ...``)
            lines.append(msg)
            continue
        lines.append(f"{field or '<root>'}: {msg}" + (
            f" (got {_short(e['input'])})" if e["type"] not in ("extra_forbidden", "missing")
            and not isinstance(e.get("input"), dict) else ""))
    return lines[0] if len(lines) == 1 else "; ".join(lines)


def config_from_dict(raw: dict[str, Any] | None) -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`.

    Raises :class:`ConfigError` whose message names the field."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError("<root>: a config must be a mapping of sections data, model, train, "
                          f"monitor, output; got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``'train.lr=0.5'`` into (['train', 'lr'], 0.5); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=0.5")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override {text!r}: bad key {key!r}")
    if not value.strip():
        return path, None
    try:
        parsed = yaml.load(value, Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as err:  # a key given twice in a flow mapping
        raise ConfigError(f"override {text!r}: {err.problem}") from None
    except (yaml.YAMLError, RecursionError):
        return path, value  # not YAML: the plain string
    check_structure(parsed, f"override {key.strip()!r}")
    return path, parsed


def set_dotted(raw: dict[str, Any], key: str | list[str], value: Any) -> None:
    """Set ``raw['a']['b'] = value`` for ``key='a.b'`` in place, creating missing sections."""
    path = key.split(".") if isinstance(key, str) else key
    node = raw
    for i, p in enumerate(path[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(path[: i + 1])}: is a value, not a section")
        node = nxt
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``KEY=VALUE`` override applied (dotted keys)."""
    out = copy.deepcopy(raw)
    seen: set[str] = set()
    for text in overrides:
        path, value = parse_override(text)
        dotted = ".".join(path)
        if dotted in seen:
            raise ConfigError(f"override {dotted}: given twice (once is enough)")
        seen.add(dotted)
        set_dotted(out, path, value)
    return out


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: fast, bounded nesting


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """A safe YAML loader (libyaml's parser when present) that refuses a key given twice in one
    mapping (YAML would keep the last silently). Merge keys (``<<: *base``) work: keys given
    explicitly override merged ones, as YAML specifies."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml_text(text: str, what: str) -> Any:
    """Parse YAML ``text`` safely (no tags that build objects, no duplicate keys) and check its
    size after alias expansion and its nesting (:mod:`catapults.storage.limits`). Raises
    :class:`ConfigError` starting with ``what``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or ""
        if "nesting depth" in problem:
            raise ConfigError(f"{what}: nested too deeply{where}") from None
        detail = f": {problem}" if problem and "twice" in problem else ""
        raise ConfigError(f"{what}: not valid YAML{where}{detail}") from None
    check_structure(data, what)
    return data


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file, or raise :class:`ConfigError` naming it (missing, a directory, too
    large, not UTF-8 text, invalid YAML with its line, a key given twice, nested too deeply or
    too many values after alias expansion)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a {what}")
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    check_file_size(p, what, max_bytes=MAX_YAML_BYTES)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file (is it a YAML {what}?)") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror}") from None
    return parse_yaml_text(text, str(p))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config file (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        raw = read_yaml(p)
        raw = {} if raw is None else raw  # an empty file: all defaults
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a config must be a mapping with sections data, model, ...")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def describe_defaults() -> str:
    """The full default config as commented YAML: every field with its default and meaning."""
    lines: list[str] = [
        "# catapults run config: every field with its default. Conventions: docs/conventions.md.",
    ]

    def emit(model_cls: type[BaseModel], indent: int) -> None:
        pad = "  " * indent
        instance = model_cls()
        for name, field in model_cls.model_fields.items():
            value = getattr(instance, name)
            if isinstance(value, BaseModel):
                if field.description:
                    lines.append(f"{pad}# {field.description}")
                lines.append(f"{pad}{name}:")
                emit(type(value), indent + 1)
                continue
            dumped = yaml.safe_dump(
                _jsonable(value), default_flow_style=True, width=1000
            ).strip()
            if dumped.endswith("\n..."):
                dumped = dumped[: -len("\n...")]
            dumped = dumped.removesuffix("...").strip()
            desc = (field.description or "").strip()
            lines.append(f"{pad}{name}: {dumped}" + (f"  # {desc}" if desc else ""))

    for section, cls in [
        ("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig),
        ("monitor", MonitorConfig), ("output", OutputConfig),
    ]:
        lines.append(f"{section}:")
        emit(cls, 1)
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
