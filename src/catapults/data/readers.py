"""Real data sets read from local files in their standard formats (no torchvision, no network).

Layout under the data root (``root`` argument, else ``$CATAPULTS_DATA``, else ``./data``; see
:func:`catapults.data.files.data_root`), the same as torchvision's:

================  =========================================================================
mnist             ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (raw or ``.gz``)
fashion-mnist     ``FashionMNIST/raw/`` with the same file names (raw or ``.gz``)
cifar10           ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` (python pickles)
svhn              ``svhn/train_32x32.mat`` and ``svhn/test_32x32.mat`` (label 10 means digit 0)
celeba            ``celeba/img_align_celeba/*.jpg``, ``celeba/list_attr_celeba.txt``,
                  ``celeba/list_eval_partition.txt`` (split train = 0, valid = 1, test = 2)
digits            scikit-learn's bundled 8x8 digits (no files; one split)
================  =========================================================================

Two levels of API:

* :func:`open_dataset` returns an :class:`ImageSet`: the labels are read at once, the images are
  decoded (and converted / resized) only for the indices asked for, ``images[idx]``. This is
  what :func:`catapults.data.tasks.make_dataset` uses, so a CelebA subset of a few hundred
  samples decodes only those few hundred JPEGs, and resizing or grayscale conversion touches
  only the subset.
* :func:`load_dataset` returns the whole split as tensors ``(X, labels)``: X float32 in [0, 1] of
  shape ``(N, C, H, W)``, labels int64 ``(N,)`` (CelebA: the 40 attributes as 0/1, ``(N, 40)``).
  For CelebA this decodes every image of the split; it refuses (DataError) above ``max_bytes``.

Errors are :class:`catapults.errors.DataError` with a one-line message: a missing file names the
expected path and how to obtain the data set; a truncated or corrupt file names the file. CIFAR
pickles are read with a restricted unpickler that only builds numpy arrays (no arbitrary code).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import warnings
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from catapults.data.files import (
    _CELEBA_SPLITS,
    _SPLITS,
    _SUBDIR,
    CELEBA_ATTR,
    CELEBA_IMAGES,
    CELEBA_PARTITION,
    CIFAR_FILES,
    DEFAULT_MAX_BYTES,
    IDX_FILES,
    NAMES,
    SVHN_FILES,
    _corrupt,
    _missing,
    data_root,
)
from catapults.data.images import ArrayImages, CelebAImages, ImageSet
from catapults.errors import DataError

# ---- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_idx(name: str, directory: Path, filename: str, root: Path) -> Path:
    for candidate in (directory / filename, directory / (filename + ".gz")):
        if candidate.is_file():
            return candidate
    raise _missing(name, directory / (filename + "[.gz]"), root)


MAX_FILE_BYTES = 256 * 2**20
"""Most bytes a data file (IDX, CIFAR pickle) may hold once decompressed: the real ones are
31-47 MB, so a gzip bomb stops here instead of filling memory."""


def _open_stream(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_bytes(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The (decompressed) bytes of ``path``, at most ``max_bytes`` of them (DataError beyond)."""
    try:
        with _open_stream(path) as fh:
            buf = fh.read(max_bytes + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise _corrupt(path, f"bad gzip data ({err or type(err).__name__})") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if len(buf) > max_bytes:
        raise _corrupt(path, f"more than {max_bytes / 2**20:.0f} MiB of data (decompressed); "
                             "real files of this data set are far smaller")
    return buf


def _read_idx_bytes(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """An IDX file's bytes, read no further than its header says (plus one byte, to see
    trailing data): a file whose header declares more than ``max_bytes`` is refused unread."""
    try:
        with _open_stream(path) as fh:
            head = fh.read(4)
            if len(head) == 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_TYPES:
                head += fh.read(4 * head[3])
                dtype, dims, offset = _parse_idx_header(head, path)
                expected = offset + int(np.prod(dims, dtype=np.float64)) * dtype.itemsize
                if expected > max_bytes:
                    raise _corrupt(path, f"the header declares {dims}, "
                                         f"{expected / 2**20:,.0f} MiB of data (more than the "
                                         f"{max_bytes / 2**20:.0f} MiB accepted)")
                return head + fh.read(int(expected) - len(head) + 1)
            return head
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise _corrupt(path, f"bad gzip data ({err or type(err).__name__})") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None


def _parse_idx_header(buf: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_TYPES:
        raise _corrupt(path, "not an IDX file (bad magic number)")
    ndim = buf[3]
    if ndim == 0 or len(buf) < 4 + 4 * ndim:
        raise _corrupt(path, "IDX header cut short")
    dims = tuple(int(v) for v in np.frombuffer(buf, ">u4", count=ndim, offset=4))
    return np.dtype(_IDX_TYPES[buf[2]]), dims, 4 + 4 * ndim


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (raw, or gzipped when the name ends in .gz) as a numpy array.

    Raises DataError naming the file when it is truncated, has trailing bytes or a bad header.
    """
    path = Path(path)
    buf = _read_idx_bytes(path)
    dtype, dims, offset = _parse_idx_header(buf, path)
    count = int(np.prod(dims))
    expected = offset + count * dtype.itemsize
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "has trailing bytes"
        raise _corrupt(path, f"{what}: {len(buf)} bytes, the header {dims} implies {expected}")
    array = np.frombuffer(buf, dtype, count=count, offset=offset).reshape(dims)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _open_idx(name: str, root: Path, split: str, **kw) -> ArrayImages:
    directory = root / _SUBDIR[name]
    img_name, lab_name = IDX_FILES[split]
    img_path = _find_idx(name, directory, img_name, root)
    lab_path = _find_idx(name, directory, lab_name, root)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise _corrupt(img_path, f"expected uint8 images (N, H, W), got {images.dtype} "
                                 f"{images.shape}")
    if 0 in images.shape[1:]:
        raise _corrupt(img_path, f"empty images ({images.shape[1]}x{images.shape[2]} pixels)")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise _corrupt(lab_path, f"expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{name}: {img_path} has {images.shape[0]} images but {lab_path} has "
                        f"{labels.shape[0]} labels")
    data = torch.from_numpy(images.copy()).unsqueeze(1)
    return ArrayImages(name, split, data, torch.from_numpy(labels.astype(np.int64)),
                       path=directory, **kw)


# ---- CIFAR-10 ---------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds only what CIFAR batches contain: dicts, lists, bytes and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    buf = _read_bytes(path)
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(buf), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise _corrupt(path, f"not a readable CIFAR pickle ({type(err).__name__}: {err})") \
            from None
    if not isinstance(obj, dict):
        raise _corrupt(path, f"expected a dict, got {type(obj).__name__}")
    get = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in get or "labels" not in get:
        raise _corrupt(path, "missing 'data' or 'labels'")
    data, labels = get["data"], get["labels"]
    if not isinstance(data, np.ndarray):  # never materialise a list (a memo bomb's payload)
        raise _corrupt(path, f"'data' must be a numpy array, got {type(data).__name__}")
    if isinstance(labels, list) and len(labels) == data.shape[0] and all(
            type(v) is int for v in labels):
        labels = np.asarray(labels, dtype=np.int64)
    elif isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        labels = labels.astype(np.int64)
    else:
        raise _corrupt(path, f"'labels' must be {data.shape[0] if data.ndim else 0} integers")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(path, f"expected uint8 data (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise _corrupt(path, f"{labels.shape[0] if labels.ndim else 0} labels for "
                             f"{data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise _corrupt(path, "labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _open_cifar(root: Path, split: str, **kw) -> ArrayImages:
    directory = root / _SUBDIR["cifar10"]
    parts = []
    for fname in CIFAR_FILES[split]:
        path = directory / fname
        if not path.is_file():
            raise _missing("cifar10", path, root)
        parts.append(_read_cifar_batch(path))
    data = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ArrayImages("cifar10", split, data, labels, path=directory, **kw)


# ---- SVHN -------------------------------------------------------------------------------------
def _open_svhn(root: Path, split: str, **kw) -> ArrayImages:
    path = root / _SUBDIR["svhn"] / SVHN_FILES[split]
    if not path.is_file():
        raise _missing("svhn", path, root)
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise _corrupt(path, f"unsupported .mat version ({err})") from None
    except Exception as err:  # noqa: BLE001 - scipy raises many types for bad files
        raise _corrupt(path, f"not a readable .mat file ({type(err).__name__}: {err})") from None
    if "X" not in mat or "y" not in mat:
        raise _corrupt(path, "missing variable 'X' or 'y'")
    X, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3) or X.dtype != np.uint8:
        raise _corrupt(path, f"expected uint8 X of shape (32, 32, 3, N), got {X.dtype} {X.shape}")
    if y.shape[0] != X.shape[3]:
        raise _corrupt(path, f"{y.shape[0]} labels for {X.shape[3]} images")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
        raise _corrupt(path, f"labels 'y' must be integers, got {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() > 10):
        raise _corrupt(path, "labels outside 0..10")
    data = torch.from_numpy(np.ascontiguousarray(X.transpose(3, 2, 0, 1)))
    return ArrayImages("svhn", split, data, torch.from_numpy(y % 10), path=path.parent,
                       **kw)


# ---- CelebA -----------------------------------------------------------------------------------
def _read_text(path: Path, root: Path) -> list[str]:
    if not path.is_file():
        raise _missing("celeba", path, root)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise _corrupt(path, "not a text file") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None


@lru_cache(maxsize=4)
def _celeba_tables(directory: str, root: str, _stamp: tuple) -> tuple[list[str], list[str],
                                                                       np.ndarray, np.ndarray]:
    """(attribute names, file names, 0/1 attributes (N, 40) int8, partition (N,) int8)."""
    d, r = Path(directory), Path(root)
    attr_path, part_path = d / CELEBA_ATTR, d / CELEBA_PARTITION
    lines = [ln for ln in _read_text(attr_path, r) if ln.strip()]
    if len(lines) < 2:
        raise _corrupt(attr_path, "fewer than two lines")
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise _corrupt(attr_path, "line 1 should be the number of images") from None
    names = lines[1].split()
    rows = lines[2:]
    if len(rows) != count:
        raise _corrupt(attr_path, f"line 1 announces {count} images, found {len(rows)} rows")
    files: list[str] = []
    for i, line in enumerate(rows):
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[1].split()) != len(names):
            raise _corrupt(attr_path, f"line {i + 3}: expected a file name and {len(names)} "
                                      f"attribute values")
        files.append(parts[0])
    body = " ".join(line.split(None, 1)[1] for line in rows)
    try:  # a fast C parser for the 8M values; at a non-number it warns or raises (numpy >= 2.x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat = np.fromstring(body, dtype=np.int64, sep=" ")
    except ValueError:
        flat = np.zeros(0, dtype=np.int64)
    if flat.size != count * len(names) or not np.isin(flat, (-1, 1)).all():
        raise _corrupt(attr_path, "attribute values must be -1 or 1")
    values = flat.reshape(count, len(names))
    partition_of: dict[str, int] = {}
    for i, line in enumerate(_read_text(part_path, r)):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise _corrupt(part_path, f"line {i + 1}: expected '<file> <0|1|2>'")
        partition_of[parts[0]] = int(parts[1])
    try:
        partition = np.array([partition_of[f] for f in files], dtype=np.int8)
    except KeyError as err:
        raise _corrupt(part_path, f"no partition for {err.args[0]}") from None
    return names, files, (values > 0).astype(np.int8), partition


def _open_celeba(root: Path, split: str, **kw) -> CelebAImages:
    directory = root / _SUBDIR["celeba"]
    stamps = []
    for fname in (CELEBA_ATTR, CELEBA_PARTITION):
        path = directory / fname
        if not path.is_file():
            raise _missing("celeba", path, root)
        st = path.stat()
        stamps.append((st.st_mtime_ns, st.st_size))
    image_dir = directory / CELEBA_IMAGES
    if not image_dir.is_dir():
        raise _missing("celeba", image_dir, root)
    names, files, values, partition = _celeba_tables(str(directory), str(root), tuple(stamps))
    keep = np.nonzero(partition == _CELEBA_SPLITS[split])[0]
    labels = torch.from_numpy(values[keep].astype(np.int64))
    return CelebAImages(split, [image_dir / files[i] for i in keep], labels, list(names),
                        path=directory, **kw)


def celeba_attribute_index(attributes: Sequence[str], attribute: str) -> int:
    """Column of ``attribute`` (case-insensitive) in the CelebA labels; DataError if unknown."""
    lowered = [a.lower() for a in attributes]
    if attribute.lower() not in lowered:
        raise DataError(f"celeba: unknown attribute {attribute!r}; available: "
                        f"{', '.join(attributes)}")
    return lowered.index(attribute.lower())


# ---- public API -------------------------------------------------------------------------------
def load_digits_raw() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 digits (offline): X float32 in [0, 1], (1797, 1, 8, 8); labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return X, torch.tensor(bunch.target, dtype=torch.long)


def _check_split(name: str, split: str) -> str:
    allowed = _CELEBA_SPLITS if name == "celeba" else _SPLITS
    if name == "digits":
        return split
    if split not in allowed:
        raise DataError(f"{name}: unknown split {split!r}; choose from {', '.join(allowed)}")
    return split


def open_dataset(name: str, *, root: str | os.PathLike | None = None, split: str = "train",
                 grayscale: bool = False, image_size: int | None = None) -> ImageSet:
    """One split of data set ``name`` with lazily decoded, optionally converted images.

    Labels are read at once; ``result[indices]`` decodes just those images (float32 in [0, 1],
    grayscale / resized as asked). Splits: ``train`` / ``test`` (CelebA also ``valid``).
    """
    if name not in NAMES:
        raise DataError(f"unknown data set {name!r}; choose from {', '.join(NAMES)}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be >= 1, got {image_size}")
    split = _check_split(name, split)
    kw = {"grayscale": grayscale, "image_size": image_size}
    if name == "digits":
        X, labels = load_digits_raw()
        return ArrayImages("digits", split, X, labels, **kw)
    root_path = data_root(root)
    if name in ("mnist", "fashion-mnist"):
        return _open_idx(name, root_path, split, **kw)
    if name == "cifar10":
        return _open_cifar(root_path, split, **kw)
    if name == "svhn":
        return _open_svhn(root_path, split, **kw)
    return _open_celeba(root_path, split, **kw)


def load_dataset(name: str, *, root: str | os.PathLike | None = None, split: str = "train",
                 grayscale: bool = False, image_size: int | None = None,
                 max_bytes: int | None = DEFAULT_MAX_BYTES) -> tuple[Tensor, Tensor]:
    """The whole split as ``(X, labels)``: X float32 in [0, 1] ``(N, C, H, W)``, labels int64.

    Labels: ``(N,)`` class indices, or for CelebA the 40 attributes as 0/1 ``(N, 40)``.
    Refuses (DataError) when X would exceed ``max_bytes`` (CelebA at full size): use
    :func:`open_dataset` and index a subset instead.
    """
    images = open_dataset(name, root=root, split=split, grayscale=grayscale,
                          image_size=image_size)
    return images.load_all(max_bytes), images.labels
