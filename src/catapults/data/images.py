"""Images of one split, decoded lazily: labels at once, pixels (converted to grayscale and resized
as asked) only for the indices asked for, so a subset never decodes the whole split."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from catapults.data.files import DEFAULT_MAX_BYTES, _corrupt, _missing
from catapults.errors import DataError


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
