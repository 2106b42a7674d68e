"""Crash-safe files: every write goes to a temporary name, is flushed and fsynced, then renamed,
so a reader never sees half a file and a kill at any moment leaves either the old file or the
new one. Strict JSON: non-finite floats are written as ``null``."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from catapults.errors import ConfigError, WriteError


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename. An ``OSError`` (disk
    full, read-only file system, ...) is raised as :class:`WriteError` naming ``path``; the
    temporary file is removed and ``path`` keeps its old content (or stays absent)."""
    path = Path(path)
    tmp = _tmp(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(path, err) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def jsonable(obj: Any) -> Any:
    """Make ``obj`` strict-JSON safe: tensors to lists, non-finite floats to None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def save_torch_atomic(path: str | Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def save_figure_atomic(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """Save a matplotlib figure as PNG atomically. A figure that pyplot manages is closed
    afterwards (pyplot is never imported here, and no backend is selected)."""
    import sys

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=kwargs.pop("dpi", 120), bbox_inches="tight", **kwargs)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and getattr(fig.canvas, "manager", None) is not None:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`ConfigError` naming the file if it is not one, or
    if it is larger or nests deeper than :mod:`catapults.storage.limits` allows."""
    from catapults.storage.limits import check_file_size, check_structure

    check_file_size(path, "JSON file")
    try:
        data = json.loads(path.read_bytes())
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: corrupt or truncated JSON ({err.msg}: line {err.lineno} "
                          f"column {err.colno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not JSON (binary data)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {_JSON_TYPES[type(data)]}")
    check_structure(data, str(path))
    return data
