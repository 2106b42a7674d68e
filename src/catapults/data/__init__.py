"""Data: synthetic targets, readers of real data files, and the tasks built from them.

- :mod:`~catapults.data.targets`    synthetic targets from safe expressions; their exact AGOP
- :mod:`~catapults.data.files`      where data sets live, missing / corrupt file messages
- :mod:`~catapults.data.images`     lazily decoded image splits
- :mod:`~catapults.data.readers`    IDX, CIFAR-10 pickles, SVHN .mat, CelebA; ``open_dataset``
- :mod:`~catapults.data.discovery`  which data sets are present (``catapults data list``)
- :mod:`~catapults.data.tasks`      :class:`Dataset`, synthetic regression, classification tasks
"""

from catapults.data.files import data_root
from catapults.data.readers import load_digits_raw, open_dataset
from catapults.data.tasks import (
    Dataset,
    classification_task,
    encode_labels,
    load_dataset,
    make_dataset,
    synthetic_regression,
)
from catapults.errors import DataError, MissingDataError

__all__ = ["DataError", "Dataset", "MissingDataError", "classification_task", "data_root",
           "encode_labels", "load_dataset", "load_digits_raw", "make_dataset", "open_dataset",
           "synthetic_regression"]
