"""Checkpoint files: written atomically, read only as plain data.

A checkpoint is a dict saved with :func:`torch.save` that :func:`torch.load` reads with
``weights_only=True``: tensors, dicts, lists, tuples, str, int, float, bool and None only, so
that loading one never runs code. :func:`weights_only_safe` converts what a trainer or a monitor
holds into those types (numpy values into Python numbers or tensors, tensors onto the CPU);
:func:`read_checkpoint` refuses anything else with one line naming the file.

The keys (the format is :data:`FORMAT`, version :data:`VERSION`; see
:func:`catapults.runs.resume` for what each one holds) are checked by the run layer.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from catapults.errors import CheckpointError
from catapults.storage.atomic import save_torch_atomic
from catapults.storage.rundir import first_difference

FORMAT = "catapults-checkpoint"
"""The value of a catapults checkpoint's ``format`` key."""
VERSION = 1
"""The checkpoint format version (the ``version`` key); a resume reads only this version."""


def weights_only_safe(obj: Any) -> Any:
    """``obj`` in the types that ``torch.load(..., weights_only=True)`` reads back: tensors (moved
    to the CPU, detached), dicts, lists, tuples, str, int, float, bool, None; numpy scalars become
    Python numbers, numpy arrays tensors, paths strings. Anything else is a :class:`TypeError`
    (better than a checkpoint that cannot be read)."""
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    for plain in (bool, int, float, str):  # subclasses: torch.__version__, enums, ...
        if isinstance(obj, plain):
            return plain(obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: weights_only_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [weights_only_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(weights_only_safe(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (only tensors and "
                    "plain data load with weights_only=True)")


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` (made :func:`weights_only_safe`) to ``path`` atomically: a kill at
    any moment leaves the previous checkpoint or this one, never half a file."""
    save_torch_atomic(path, weights_only_safe(checkpoint))


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's message (torch's are paragraphs)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else "no message"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict in the checkpoint ``path``, loaded with ``weights_only=True`` onto the CPU.

    Raises :class:`CheckpointError` (one line naming the file) if it is missing, truncated or
    corrupt, holds objects other than plain data (a pickle that would run code is refused
    without running it), or is not a dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(
                f"{path}: refused: it refers to {found.group(1) or found.group(2)}, which "
                "loading would have to run as code (a checkpoint holds only tensors and plain "
                "data and loads with weights_only=True)") from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({_first_line(err)})") from None
    except Exception as err:  # truncated zip (RuntimeError), empty (EOFError), garbage, ...
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint (torch.load: "
                              f"{type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a catapults checkpoint (it holds a "
                              f"{type(obj).__name__}, not a dict)")
    return obj


def check_resumable(ckpt: dict[str, Any], path: Path, resolved: dict[str, Any],
                    config_path: Path, version: str) -> None:
    """:class:`CheckpointError` naming ``path`` unless ``ckpt`` is a checkpoint to resume the run
    from: this format, written by catapults ``version``, resumable, with the run's resolved
    config (``resolved``, read from ``config_path``) and an integer step."""
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resumable catapults checkpoint (it holds only a "
                              "final model, or was written by an earlier version)")
    if ckpt.get("version") != VERSION or ckpt.get("catapults_version") != version:
        raise CheckpointError(
            f"{path}: written by catapults {ckpt.get('catapults_version')} (checkpoint format "
            f"{ckpt.get('version')}), this is catapults {version} (format "
            f"{VERSION}); resume it with the version that wrote it")
    if not ckpt.get("resumable"):
        raise CheckpointError(f"{path}: holds only the final model of the run, not the state "
                              "to resume from")
    where = first_difference(ckpt.get("config"), resolved)
    if where is not None:
        raise CheckpointError(f"{path}: its config differs from {config_path} at {where}; "
                              "resume needs the config the run was started with")
    if not isinstance(ckpt.get("step"), int):
        raise CheckpointError(f"{path}: its step is not an integer")
