"""Low-rank item table: E = A B with A (P, r) per item and B (r, d) shared.

The simplest compressor: P r + r d parameters. At Tmall's STTD budget (191,160) the rank is 4,
so each item is 4 numbers: the baseline any structured table has to beat.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from rec_kd.compress.common import check_positive_ints, spec_error

# The model parameter that holds the table.
PARAM_NAME = "lowrank_table"
KIND = "lowrank"


@dataclasses.dataclass(frozen=True)
class LowRankSpec:
    num_rows: int
    dim: int
    rank: int

    param_name: ClassVar[str] = PARAM_NAME

    def __post_init__(self):
        check_positive_ints(KIND, num_rows=self.num_rows, dim=self.dim, rank=self.rank)

    def num_params(self) -> int:
        return self.num_rows * self.rank + self.rank * self.dim

    def param_shapes(self) -> dict:
        return {
            "items": jax.ShapeDtypeStruct((self.num_rows, self.rank), jnp.float32),
            "basis": jax.ShapeDtypeStruct((self.rank, self.dim), jnp.float32),
        }

    def init(self, key: jax.Array, target_std: float) -> dict:
        """Both factors N(0, s^2) with s^4 r = target_std^2, so table entries have std target_std."""
        std = (target_std**2 / self.rank) ** 0.25
        item_key, basis_key = jax.random.split(key)
        return {
            "items": std * jax.random.normal(item_key, (self.num_rows, self.rank)),
            "basis": std * jax.random.normal(basis_key, (self.rank, self.dim)),
        }

    def materialize(self, params: dict) -> jax.Array:
        return params["items"] @ params["basis"]  # (P, d)

    def rows(self, params: dict, ids: jax.Array) -> jax.Array:
        return params["items"][ids] @ params["basis"]

    def onnx_table(self, g, params: dict) -> str:
        items = g.weight(f"{self.param_name}.items", params["items"])
        basis = g.weight(f"{self.param_name}.basis", params["basis"])
        return g.op("MatMul", items, basis)


def budget_options(num_rows: int, dim: int, budget: int, options: dict) -> dict:
    """The largest rank whose P r + r d fits the budget (options['rank'] = 0 asks for it), at most d.

    Past rank d the factorisation is no longer a compression: the dense table has P d parameters.
    """
    if options.get("rank"):
        return dict(options)
    rank = min(budget // (num_rows + dim), dim)
    if rank < 1:
        raise spec_error(KIND, f"a budget of {budget} parameters cannot hold even rank 1 for {num_rows} rows (needs {num_rows + dim})")
    return {**options, "rank": int(rank)}


def spec_from_options(num_rows: int, dim: int, options: dict) -> LowRankSpec:
    return LowRankSpec(num_rows, dim, int(options["rank"]))
