"""Limits on what a file may make the toolkit build: nesting depth and the number of values after
YAML aliases are expanded. A tiny hostile file (an alias bomb, a list nested 10,000 deep) must
cost milliseconds and give one message, not minutes, gigabytes or a RecursionError."""

from __future__ import annotations

from typing import Any

from catapults.errors import ConfigError

MAX_DEPTH = 64
"""Deepest nesting of lists / mappings accepted in configs, sweep files and run files."""
MAX_VALUES = 1_000_000
"""Most values (counting every alias expansion) accepted in one such file."""
MAX_FILE_BYTES = 64 * 2**20
"""Largest config, sweep or run-summary file read (64 MiB)."""


def check_structure(obj: Any, what: str, *, max_depth: int = MAX_DEPTH,
                    max_values: int = MAX_VALUES) -> None:
    """Raise :class:`ConfigError` naming ``what`` if ``obj`` (parsed YAML / JSON) nests deeper
    than ``max_depth`` or holds more than ``max_values`` values when shared sub-objects (YAML
    aliases) are counted each time they appear. Iterative: never recurses, stops early."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > max_values:
            raise ConfigError(f"{what}: too large: more than {max_values:,} values (after "
                              "expanding YAML aliases)")
        if isinstance(node, dict):
            children = list(node.keys()) + list(node.values())
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth >= max_depth and children:
            raise ConfigError(f"{what}: nested too deeply (more than {max_depth} levels)")
        stack.extend((c, depth + 1) for c in children)


def check_file_size(path: Any, what: str, *, max_bytes: int = MAX_FILE_BYTES) -> None:
    """Raise :class:`ConfigError` if the file at ``path`` is larger than ``max_bytes``."""
    import os

    size = os.stat(path).st_size
    if size > max_bytes:
        raise ConfigError(f"{path}: {what} of {size / 2**20:,.1f} MiB is larger than the "
                          f"{max_bytes / 2**20:,.0f} MiB accepted")
