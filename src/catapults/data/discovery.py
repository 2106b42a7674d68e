"""Which real data sets are present under the data root (``catapults data list``)."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from catapults.data.files import (
    _SUBDIR,
    CELEBA_ATTR,
    CELEBA_IMAGES,
    CELEBA_PARTITION,
    CIFAR_FILES,
    IDX_FILES,
    NAMES,
    SHORT_HINT,
    SVHN_FILES,
    _corrupt,
    _missing,
    data_root,
)
from catapults.data.readers import (
    _IDX_TYPES,
    _find_idx,
)
from catapults.errors import DataError, MissingDataError


def _idx_count(path: Path) -> int:
    """Number of items in an IDX file, from its header only."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                head = fh.read(8)
        else:
            with open(path, "rb") as fh:
                head = fh.read(8)
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt(path, f"unreadable ({err})") from None
    if len(head) < 8 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
        raise _corrupt(path, "not an IDX file (bad magic number)")
    return int(np.frombuffer(head, ">u4", count=1, offset=4)[0])


def _probe(name: str, root: Path) -> tuple[str, Callable[[], str]]:
    """(path to show, a check returning a detail string or raising DataError)."""
    if name == "digits":
        def check_digits() -> str:
            try:
                import sklearn  # noqa: F401
            except ImportError:
                raise DataError("scikit-learn is not installed") from None
            return "bundled with scikit-learn: 1797 images 1x8x8, 10 classes, one split"
        return "(scikit-learn)", check_digits
    directory = root / _SUBDIR[name]

    def need(path: Path) -> Path:
        if not path.exists():
            raise _missing(name, path, root)
        return path

    if name in ("mnist", "fashion-mnist"):
        def check_idx() -> str:
            counts = {}
            for split, (img, lab) in IDX_FILES.items():
                n_img = _idx_count(_find_idx(name, directory, img, root))
                n_lab = _idx_count(_find_idx(name, directory, lab, root))
                if n_img != n_lab:
                    raise DataError(f"{split}: {n_img} images but {n_lab} labels")
                counts[split] = n_img
            return f"train {counts['train']}, test {counts['test']}; 1x28x28, 10 classes"
        return str(directory), check_idx
    if name == "cifar10":
        def check_cifar() -> str:
            for fname in CIFAR_FILES["train"] + CIFAR_FILES["test"]:
                need(directory / fname)
            return "data_batch_1..5 + test_batch; 3x32x32, 10 classes"
        return str(directory), check_cifar
    if name == "svhn":
        def check_svhn() -> str:
            sizes = [need(directory / f).stat().st_size for f in SVHN_FILES.values()]
            return (f"train_32x32.mat ({sizes[0] / 2**20:.0f} MiB), test_32x32.mat "
                    f"({sizes[1] / 2**20:.0f} MiB); 3x32x32, 10 classes")
        return str(directory), check_svhn

    def check_celeba() -> str:
        attr = need(directory / CELEBA_ATTR)
        need(directory / CELEBA_PARTITION)
        need(directory / CELEBA_IMAGES)
        with open(attr, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().split()
        if not first or not first[0].isdigit():
            raise _corrupt(directory / CELEBA_ATTR, "line 1 should be the number of images")
        return f"{int(first[0])} images listed; 3x218x178, 40 binary attributes"
    return str(directory), check_celeba


def list_datasets(root: str | os.PathLike | None = None) -> list[dict]:
    """Which data sets are usable under the data root, checked cheaply (headers, not contents).

    Returns one dict per name of :data:`NAMES`, in that order, with keys ``name`` (str),
    ``present`` (bool: all files found and their headers look right), ``path`` (str: the
    directory looked at) and ``detail`` (str: sizes when present, else what is missing or wrong
    and how to obtain the data set).
    """
    root_path = data_root(root)
    rows = []
    for name in NAMES:
        path, check = _probe(name, root_path)
        try:
            detail, present = check(), True
        except MissingDataError as err:
            hint = SHORT_HINT[name].replace("ROOT", str(root_path))
            what = (f"missing {err.path}" if root_path.is_dir()
                    else f"data root {root_path} does not exist")
            detail, present = f"{what}; {hint}", False
        except DataError as err:
            detail, present = str(err), False
        rows.append({"name": name, "present": present, "path": path, "detail": detail})
    return rows


def format_dataset_table(rows: Sequence[dict]) -> str:
    """A plain-text table of :func:`list_datasets` rows: NAME, PRESENT (yes/no), PATH, DETAIL."""
    header = ("NAME", "PRESENT", "PATH", "DETAIL")
    table = [(str(r["name"]), "yes" if r["present"] else "no", str(r["path"]),
              str(r["detail"])) for r in rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(3)]
    lines = []
    for row in [header, *table]:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        lines.append("  ".join([*cells, row[3]]).rstrip())
    return "\n".join(lines)
