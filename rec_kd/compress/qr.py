"""Quotient-remainder item table (Shi et al., KDD 2020): two small tables, every row unique.

Row i combines Q[i // m] and R[i % m]. The pair (i // m, i % m) differs for every i, so no two
items share a parameter set (unlike hashing). The combination is 'mult' (element-wise product,
the paper's best), 'add', or 'concat' (each table d / 2 wide).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rec_kd.compress.common import check_positive_ints, spec_error

# The model parameter that holds the table.
PARAM_NAME = "qr_tables"
KIND = "qr"
COMBINES = ("mult", "add", "concat")


@dataclasses.dataclass(frozen=True)
class QRSpec:
    num_rows: int
    dim: int
    modulus: int
    combine: str = "mult"

    param_name: ClassVar[str] = PARAM_NAME

    def __post_init__(self):
        check_positive_ints(KIND, num_rows=self.num_rows, dim=self.dim, modulus=self.modulus)
        if self.combine not in COMBINES:
            raise spec_error(KIND, f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.combine == "concat" and self.dim % 2:
            raise spec_error(KIND, f"'concat' needs an even width, got {self.dim}")
        if not 2 <= self.modulus < self.num_rows:
            raise spec_error(KIND, f"need 2 <= modulus < rows = {self.num_rows}, got {self.modulus}")

    @property
    def quotient_rows(self) -> int:
        return math.ceil(self.num_rows / self.modulus)

    @property
    def part_dim(self) -> int:
        return self.dim // 2 if self.combine == "concat" else self.dim

    def num_params(self) -> int:
        return (self.quotient_rows + self.modulus) * self.part_dim

    def param_shapes(self) -> dict:
        return {
            "quotient": jax.ShapeDtypeStruct((self.quotient_rows, self.part_dim), jnp.float32),
            "remainder": jax.ShapeDtypeStruct((self.modulus, self.part_dim), jnp.float32),
        }

    def init(self, key: jax.Array, target_std: float) -> dict:
        """N(0, s^2) tables, s chosen so the combined entries have std target_std.

        mult: a product of two independent N(0, s^2) entries has std s^2; add: s sqrt(2);
        concat: s.
        """
        std = {"mult": math.sqrt(target_std), "add": target_std / math.sqrt(2), "concat": target_std}[self.combine]
        quotient_key, remainder_key = jax.random.split(key)
        return {
            "quotient": std * jax.random.normal(quotient_key, (self.quotient_rows, self.part_dim)),
            "remainder": std * jax.random.normal(remainder_key, (self.modulus, self.part_dim)),
        }

    def _combine(self, quotient: jax.Array, remainder: jax.Array) -> jax.Array:
        if self.combine == "mult":
            return quotient * remainder
        if self.combine == "add":
            return quotient + remainder
        return jnp.concatenate([quotient, remainder], axis=-1)

    def rows(self, params: dict, ids: jax.Array) -> jax.Array:
        return self._combine(params["quotient"][ids // self.modulus], params["remainder"][ids % self.modulus])

    def materialize(self, params: dict) -> jax.Array:
        return self.rows(params, jnp.arange(self.num_rows))  # (P, d)

    def onnx_table(self, g, params: dict) -> str:
        quotient = g.weight(f"{self.param_name}.quotient", params["quotient"])
        remainder = g.weight(f"{self.param_name}.remainder", params["remainder"])
        rows = g.op("Range", g.constant(np.int64(0)), g.constant(np.int64(self.num_rows)), g.constant(np.int64(1)))  # (P,)
        modulus = g.constant(np.int64(self.modulus))
        q = g.op("Gather", quotient, g.op("Div", rows, modulus), axis=0)  # (P, d')
        r = g.op("Gather", remainder, g.op("Mod", rows, modulus), axis=0)
        if self.combine == "concat":
            return g.op("Concat", q, r, axis=1)
        return g.op({"mult": "Mul", "add": "Add"}[self.combine], q, r)


def budget_options(num_rows: int, dim: int, budget: int, options: dict) -> dict:
    """The modulus whose two tables use the most of the budget (options['modulus'] = 0 asks).

    (ceil(P / m) + m) d' falls as m grows to sqrt(P), so that is the smallest m >= 2 that fits:
    the quotient table as large as the budget allows. The smallest QR table (m ~ sqrt(P)) must fit.
    """
    if options.get("modulus"):
        return dict(options)
    combine = options.get("combine", "mult")
    sizes = {m: QRSpec(num_rows, dim, m, combine).num_params() for m in range(2, min(math.isqrt(num_rows) + 2, num_rows))}
    for modulus, size in sizes.items():
        if size <= budget:
            return {**options, "modulus": modulus}
    smallest = min(sizes.values())
    raise spec_error(KIND, f"a budget of {budget} parameters is below the smallest QR table for {num_rows} rows ({smallest})")


def spec_from_options(num_rows: int, dim: int, options: dict) -> QRSpec:
    return QRSpec(num_rows, dim, int(options["modulus"]), str(options.get("combine", "mult")))
