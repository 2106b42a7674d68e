"""Data sets and tasks: synthetic regression with known targets, and real classification data.

A :class:`Dataset` holds train/test tensors with targets always of shape ``(n, c)`` (``c = 1`` for
regression and binary +-1 tasks, ``c`` classes for one-hot). Inputs keep their natural shape
``(n, ...)``; models flatten them. Conventions: docs/conventions.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

import catapults.data.readers as readers
from catapults.data.files import IDX_FILES, data_root
from catapults.data.images import ImageSet
from catapults.data.readers import load_digits_raw
from catapults.data.targets import Target, parse_target
from catapults.errors import ConfigError, DataError, TargetError

MAX_RESIZED_BYTES = 4 * 2**30  # data.image_size: budget for the resized images (float64)


@dataclass
class Dataset:
    """Train/test data of one task.

    Attributes:
        X_train: ``(n_train, ...)`` inputs.  y_train: ``(n_train, c)`` targets.
        X_test: ``(n_test, ...)``.  y_test: ``(n_test, c)``.
        task: ``"regression"`` or ``"classification"`` (+-1 binary when c == 1, else one-hot).
        target: the true function f* for synthetic tasks (maps ``(n, d)`` to ``(n,)``), else None.
    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    task: Literal["regression", "classification"]
    name: str
    target: Target | None = None
    info: dict = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return int(self.X_train[0].numel())

    @property
    def out_dim(self) -> int:
        return int(self.y_train.shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Dataset:
        def mv(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)

        return Dataset(mv(self.X_train), mv(self.y_train), mv(self.X_test), mv(self.y_test),
                       self.task, self.name, self.target, dict(self.info))


# ---- synthetic ----------------------------------------------------------------------------
def synthetic_regression(
    target: str | Target | Callable[[Tensor], Tensor],
    *,
    d: int = 100,
    n_train: int = 256,
    n_test: int = 1000,
    noise: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """x ~ N(0, I_d); y = f*(x) (+ N(0, noise^2) on the training targets only).

    ``target`` is an expression or name (see :mod:`catapults.targets`), a parsed Target, or any
    callable mapping ``(n, d)`` to ``(n,)``. Sampling is done in float64, then cast.
    """
    if isinstance(target, str):
        target = parse_target(target, d)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_train + n_test, d, generator=gen, dtype=torch.float64)
    y = target(X).reshape(-1, 1)
    _check_targets(y, n_train, dtype, getattr(target, "expression", repr(target)))
    y_train = y[:n_train].clone()
    if noise > 0:
        y_train += noise * torch.randn(n_train, 1, generator=gen, dtype=torch.float64)
        if not bool(torch.isfinite(y_train.to(dtype).square()).all()):
            raise ConfigError(f"data.noise: {noise:g} makes the squared training targets "
                              f"overflow {str(dtype).removeprefix('torch.')} (the loss would be "
                              "inf at step 0); use a smaller noise or train.dtype float64")
    return Dataset(
        X[:n_train].to(dtype), y_train.to(dtype), X[n_train:].to(dtype), y[n_train:].to(dtype),
        task="regression", name="synthetic", target=target if isinstance(target, Target) else None,
        info={"target": getattr(target, "expression", repr(target)), "d": d, "noise": noise},
    )


def _check_targets(y: Tensor, n_train: int, dtype: torch.dtype, name: str) -> None:
    """TargetError unless every training and test target, and its square (the loss at step 0),
    is finite in ``dtype``: a target finite on parse_target's probe can still overflow or be
    undefined on some sampled inputs (``exp(30*x1)`` in float32, ``sqrt(3.5-x1)``)."""
    cast = y.to(dtype)
    bad = ~torch.isfinite(cast).reshape(-1)
    where = bad if bool(bad.any()) else ~torch.isfinite(cast.square()).reshape(-1)
    if not bool(where.any()):
        return
    n_bad_train, n_bad_test = int(where[:n_train].sum()), int(where[n_train:].sum())
    places = [f"{k} of the {total} {split} inputs" for k, total, split in [
        (n_bad_train, n_train, "training"), (n_bad_test, y.shape[0] - n_train, "test")] if k]
    what = ("non-finite values (inf/nan)" if bool(bad.any()) else
            "values whose square (the loss) overflows")
    raise TargetError(f"{name!r} gives {what} on {' and '.join(places)} "
                      f"(in {str(dtype).removeprefix('torch.')}): a value overflows (e.g. exp of "
                      "a large number) or is undefined (e.g. sqrt of a negative number)")


# ---- real classification data ---------------------------------------------------------------
def encode_labels(labels: Tensor, classes: list[int], encoding: str) -> Tensor:
    """Targets ``(n, c)`` from integer labels: +-1 (first class +1) for 'binary', else one-hot."""
    if encoding == "binary":
        return torch.where(labels == classes[0], 1.0, -1.0).reshape(-1, 1)
    index = {c: i for i, c in enumerate(classes)}
    idx = torch.tensor([index[int(v)] for v in labels.tolist()], dtype=torch.long)
    return torch.nn.functional.one_hot(idx, len(classes)).to(torch.float32)


def classification_task(
    X: Tensor,
    labels: Tensor,
    X_test: Tensor | None,
    labels_test: Tensor | None,
    *,
    name: str,
    classes: list[int] | None = None,
    encoding: str = "auto",
    n_train: int = 256,
    n_test: int = 1000,
    standardize: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """A classification task from raw labelled data.

    Keeps ``classes``, draws ``n_train`` / ``n_test`` samples with ``seed`` (from the test split
    when one is given, else disjointly from the same pool), encodes targets, and standardises
    each input feature with training-set mean and std (each std floored at 10% of the average
    std over features, so that pixels nearly constant on the training subset stay bounded).
    The steps share the seeded generator and the chosen indices, so they stay in one function.
    """
    all_classes = sorted(set(labels.tolist()) | set(
        labels_test.tolist() if labels_test is not None else []))
    classes = list(classes) if classes is not None else all_classes
    missing = [c for c in classes if c not in all_classes]
    if missing:
        raise ConfigError(f"data.classes: {missing} not among the labels of {name} {all_classes}")
    if encoding == "auto":
        encoding = "binary" if len(classes) == 2 else "onehot"
    gen = torch.Generator().manual_seed(seed)

    def pick(Xs: Tensor, ls: Tensor, count: int, exclude: Tensor | None = None) -> Tensor:
        mask = torch.isin(ls, torch.tensor(classes))
        if exclude is not None:
            mask[exclude] = False
        idx = torch.nonzero(mask).flatten()
        if count > idx.numel():
            raise ConfigError(
                f"data.n_train/n_test: asked for {count} samples of classes {classes} in {name}, "
                f"only {idx.numel()} available")
        return idx[torch.randperm(idx.numel(), generator=gen)[:count]]

    tr = pick(X, labels, n_train)
    if X_test is None or labels_test is None:
        te = pick(X, labels, n_test, exclude=tr)
        X_test, labels_test = X, labels
    else:
        te = pick(X_test, labels_test, n_test)
    Xtr, Xte = X[tr].to(torch.float64), X_test[te].to(torch.float64)
    if standardize:
        mean = Xtr.mean(0, keepdim=True)
        std = Xtr.std(0, keepdim=True) if n_train > 1 else torch.ones_like(mean)
        # floor: a feature (pixel) almost constant on the training subset would otherwise be
        # blown up on test inputs; no feature's std counts as less than 10% of the average
        floor = 0.1 * std.mean() if float(std.mean()) > 0 else torch.tensor(1.0)
        std = torch.clamp(std, min=float(floor))
        Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    return Dataset(
        Xtr.to(dtype), encode_labels(labels[tr], classes, encoding).to(dtype),
        Xte.to(dtype), encode_labels(labels_test[te], classes, encoding).to(dtype),
        task="classification", name=name,
        info={"classes": classes, "encoding": encoding},
    )


def load_dataset(
    name: str, *, root: str | os.PathLike | None = None, split: str = "train"
) -> tuple[Tensor, Tensor]:
    """The raw data set ``name`` as ``(X, labels)``: X float32 in [0, 1] of shape (N, C, H, W).

    Labels are int64 ``(N,)``; for CelebA the 40 attributes as 0/1, ``(N, 40)``. Names: mnist,
    fashion-mnist, cifar10, svhn, celeba (read from files under :func:`data_root`, see
    :mod:`catapults.data.readers` for the layout), and digits (bundled; ``split`` is ignored).
    Splits: ``train`` / ``test`` (CelebA also ``valid``). Raises :class:`DataError` for a
    missing, truncated or corrupt file. For a subset without decoding a whole split (CelebA),
    use :func:`catapults.readers.open_dataset`.
    """
    if name == "digits":
        return load_digits_raw()
    return readers.load_dataset(name, root=root, split=split)


def make_dataset(cfg: Any, *, dtype: torch.dtype = torch.float32) -> Dataset:
    """Build the task described by ``cfg``: a :class:`catapults.config.DataConfig`, or any object
    with the same attributes (``name``, ``d``, ``target``, ``n_train``, ...)."""
    if cfg.name == "synthetic":
        try:
            target = parse_target(cfg.target, cfg.d)
            return synthetic_regression(target, d=cfg.d, n_train=cfg.n_train,
                                        n_test=cfg.n_test, noise=cfg.noise, seed=cfg.seed,
                                        dtype=dtype)
        except TargetError as err:
            raise ConfigError(f"data.target: {err}") from None
    if cfg.name == "digits":
        X, labels = load_digits_raw()
        if cfg.image_size is not None:  # digits are 8x8, one channel: grayscale is a no-op
            _check_image_size(cfg.image_size, len(X), 1)
            X = torch.nn.functional.interpolate(X, size=(cfg.image_size, cfg.image_size),
                                                mode="bilinear", antialias=True,
                                                align_corners=False).clamp(0, 1)
        return classification_task(
            X, labels, None, None, name="digits", classes=cfg.classes, encoding=cfg.encoding,
            n_train=cfg.n_train, n_test=cfg.n_test, standardize=cfg.standardize, seed=cfg.seed,
            dtype=dtype)
    # Real data from files: labels are read at once, images are decoded (and converted to
    # grayscale / resized) only for the n_train + n_test samples that classification_task picks
    # (it only indexes X), so a CelebA subset never decodes the whole split.
    opts = {"root": cfg.root, "grayscale": cfg.grayscale, "image_size": cfg.image_size}
    train = readers.open_dataset(cfg.name, split="train", **opts)
    test = readers.open_dataset(cfg.name, split="test", **opts)
    if train.image_shape != test.image_shape:
        raise DataError(f"{cfg.name}: the train images ({_source(train)}) are "
                        f"{_shape(train.image_shape)} but the test images ({_source(test)}) are "
                        f"{_shape(test.image_shape)}; both splits need the same image size")
    if cfg.image_size is not None:
        _check_image_size(cfg.image_size, cfg.n_train + cfg.n_test, train.image_shape[0])
    labels, labels_test, classes = train.labels, test.labels, cfg.classes
    info: dict = {"root": str(data_root(cfg.root)), "image_shape": list(train.image_shape),
                  "grayscale": cfg.grayscale, "image_size": cfg.image_size}
    if cfg.name == "celeba":
        try:
            col = readers.celeba_attribute_index(train.attributes or [], cfg.attribute)
        except DataError as err:
            raise ConfigError(f"data.attribute: {err}") from None
        labels, labels_test = labels[:, col], labels_test[:, col]
        classes = classes if classes is not None else [1, 0]  # attribute present -> +1
        info["attribute"] = train.attributes[col]
    ds = classification_task(
        train, labels, test, labels_test, name=cfg.name, classes=classes,  # type: ignore[arg-type]
        encoding=cfg.encoding, n_train=cfg.n_train, n_test=cfg.n_test,
        standardize=cfg.standardize, seed=cfg.seed, dtype=dtype)
    ds.info.update(info)
    return ds


def _check_image_size(size: int, n_images: int, channels: int) -> None:
    """ConfigError (data.image_size) if ``n_images`` resized images exceed MAX_RESIZED_BYTES."""
    need = 8 * n_images * channels * size * size  # float64, as classification_task works
    if need > MAX_RESIZED_BYTES:
        raise ConfigError(
            f"data.image_size: {size} is too large: {n_images} images of {channels}x{size}x{size} "
            f"would need {need / 2**30:,.1f} GiB (at most {MAX_RESIZED_BYTES / 2**30:.0f} GiB); "
            f"use a smaller image_size")


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _source(images: ImageSet) -> str:
    """Where a split's images come from: the IDX file for MNIST-like sets, else the directory."""
    path = images.path
    if images.name in ("mnist", "fashion-mnist") and path is not None:
        name = IDX_FILES[images.split][0]
        path = path / name if (path / name).is_file() else path / f"{name}.gz"
    return str(path)
