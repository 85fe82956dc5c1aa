"""The uncompressed item table: one (P, d) parameter. The teacher's table and the `dense` ablation.

It follows the same table-spec interface as the compressors (rec_kd/compress/__init__.py), so the
model treats every table alike.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import numpy as np

from rec_kd.compress.common import check_positive_ints

# The model parameter that holds the table.
PARAM_NAME = "item_embedding"


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    """A (num_rows, dim) table stored as is."""

    num_rows: int
    dim: int

    # The name the table's parameter has always had in checkpoints.
    param_name: ClassVar[str] = PARAM_NAME

    def __post_init__(self):
        check_positive_ints("dense", num_rows=self.num_rows, dim=self.dim)

    def num_params(self) -> int:
        return self.num_rows * self.dim

    def param_shapes(self):
        return jax.ShapeDtypeStruct((self.num_rows, self.dim), np.float32)

    def init(self, key: jax.Array, target_std: float) -> jax.Array:
        return target_std * jax.random.normal(key, (self.num_rows, self.dim))

    def materialize(self, params: jax.Array) -> jax.Array:
        return params

    def rows(self, params: jax.Array, ids: jax.Array) -> jax.Array:
        return params[ids]

    def onnx_table(self, g, params: np.ndarray) -> str:
        return g.weight(self.param_name, params)


def budget_options(num_rows: int, dim: int, budget: int, options: dict) -> dict:
    """A dense table has no size to choose: the budget does not apply to it."""
    del num_rows, dim, budget
    return dict(options)


def spec_from_options(num_rows: int, dim: int, options: dict) -> DenseSpec:
    del options
    return DenseSpec(num_rows, dim)
