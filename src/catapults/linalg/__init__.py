"""Linear algebra the curvature layer is built on: exactly symmetric blockwise Gram products
(:mod:`~catapults.linalg.gram`) and top-k symmetric eigensolvers (:mod:`~catapults.linalg.eigen`).
Plain functions of tensors; nothing here knows of models."""

from catapults.linalg.eigen import block_krylov_top, eig_top
from catapults.linalg.gram import (
           gram,
           mirror_upper_,
           sum_of_gram_products,
           syrk_upper_,
           upper_tiles,
)

__all__ = ["block_krylov_top", "eig_top", "gram", "mirror_upper_", "sum_of_gram_products",
           "syrk_upper_", "upper_tiles"]
