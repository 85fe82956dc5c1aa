"""Hashed item table (kind 'hash'): B shared buckets, B < P, each item reads one or two of them.

  num_hashes = 1, item_weights = False: the hashing trick (Weinberger et al., 2009): E[i] = T[h_1(i)].
    Items that collide share one embedding exactly.
  num_hashes = 2, item_weights = True (the default): hash embeddings (Svenstrup et al., 2017):
    E[i] = w_i1 T[h_1(i)] + w_i2 T[h_2(i)] with two learned weights per item, so two items are
    identical only if both hashes collide, and the weights can still tell them apart.
Both options are independent (one hash with a weight, two without).

The hashes are universal: h_j(i) = ((a_j i + b_j) mod p) mod B with p = 2^31 - 1 and fixed
a_j, b_j. They are integers computed once, in numpy int64 for JAX (a constant of the jitted
program) and with the same int64 ops inside the ONNX graph, so the file stores no index array.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rec_kd.compress.common import check_positive_ints, spec_error

# The model parameter that holds the table.
PARAM_NAME = "hash_table"
KIND = "hash"
PRIME = 2**31 - 1
# (a_j, b_j) of each hash; any a in [1, p) and b in [0, p) make a universal family.
HASH_CONSTANTS = ((1_103_515_245, 12_345), (1_664_525, 1_013_904_223))


@dataclasses.dataclass(frozen=True)
class HashSpec:
    num_rows: int
    dim: int
    buckets: int
    num_hashes: int = 2
    item_weights: bool = True

    param_name: ClassVar[str] = PARAM_NAME

    def __post_init__(self):
        check_positive_ints(KIND, num_rows=self.num_rows, dim=self.dim, buckets=self.buckets)
        if self.num_hashes not in (1, 2):
            raise spec_error(KIND, f"num_hashes must be 1 or 2, got {self.num_hashes!r}")
        if not isinstance(self.item_weights, bool):
            raise spec_error(KIND, f"item_weights must be a bool, got {self.item_weights!r}")
        if not 2 <= self.buckets < self.num_rows:
            raise spec_error(KIND, f"need 2 <= buckets < rows = {self.num_rows} (fewer buckets than items), got {self.buckets}")

    def num_params(self) -> int:
        return self.buckets * self.dim + self.item_weights * self.num_rows * self.num_hashes

    def bucket_ids(self) -> np.ndarray:
        """(num_hashes, P) int32: the bucket each row reads under each hash."""
        rows = np.arange(self.num_rows, dtype=np.int64)
        return np.stack([((a * rows + b) % PRIME) % self.buckets for a, b in HASH_CONSTANTS[: self.num_hashes]]).astype(np.int32)

    def param_shapes(self) -> dict:
        shapes = {"buckets": jax.ShapeDtypeStruct((self.buckets, self.dim), jnp.float32)}
        if self.item_weights:
            shapes["weights"] = jax.ShapeDtypeStruct((self.num_rows, self.num_hashes), jnp.float32)
        return shapes

    def init(self, key: jax.Array, target_std: float) -> dict:
        """Buckets N(0, target_std^2 / h), weights 1: a row sums h independent buckets, std target_std."""
        std = target_std / np.sqrt(self.num_hashes)
        params = {"buckets": std * jax.random.normal(key, (self.buckets, self.dim))}
        if self.item_weights:
            params["weights"] = jnp.ones((self.num_rows, self.num_hashes))
        return params

    def _combine(self, params: dict, bucket_ids: jax.Array, rows: jax.Array | None) -> jax.Array:
        """sum_j w[rows, j] T[bucket_ids[j]]: bucket_ids (h, n), rows (n,) or None for all rows."""
        gathered = params["buckets"][bucket_ids]  # (h, n, d)
        if self.item_weights:
            weights = params["weights"] if rows is None else params["weights"][rows]  # (n, h)
            gathered = gathered * weights.T[..., None]
        return gathered.sum(axis=0)

    def materialize(self, params: dict) -> jax.Array:
        return self._combine(params, jnp.asarray(self.bucket_ids()), None)  # (P, d)

    def rows(self, params: dict, ids: jax.Array) -> jax.Array:
        flat = ids.reshape(-1)
        table_rows = self._combine(params, jnp.asarray(self.bucket_ids())[:, flat], flat)
        return table_rows.reshape(*ids.shape, self.dim)

    def onnx_table(self, g, params: dict) -> str:
        buckets = g.weight(f"{self.param_name}.buckets", params["buckets"])
        if self.item_weights:
            weights = g.weight(f"{self.param_name}.weights", params["weights"])  # (P, h)
        rows = g.op("Range", g.constant(np.int64(0)), g.constant(np.int64(self.num_rows)), g.constant(np.int64(1)))  # (P,)
        total = None
        for j, (a, b) in enumerate(HASH_CONSTANTS[: self.num_hashes]):
            hashed = g.op(
                "Mod", g.op("Add", g.op("Mul", rows, g.constant(np.int64(a))), g.constant(np.int64(b))), g.constant(np.int64(PRIME))
            )
            ids = g.op("Mod", hashed, g.constant(np.int64(self.buckets)))  # (P,) int64
            part = g.op("Gather", buckets, ids, axis=0)  # (P, d)
            if self.item_weights:
                column = g.op("Gather", weights, g.constant(np.asarray([j], np.int64)), axis=1)  # (P, 1)
                part = g.op("Mul", part, column)  # (P, d) * (P, 1)
            total = part if total is None else g.op("Add", total, part)
        return total


def budget_options(num_rows: int, dim: int, budget: int, options: dict) -> dict:
    """The most buckets that fit the budget beside the item weights (options['buckets'] = 0 asks)."""
    if options.get("buckets"):
        return dict(options)
    weights = bool(options.get("item_weights", True)) * num_rows * int(options.get("num_hashes", 2))
    buckets = min((budget - weights) // dim, num_rows - 1)
    if buckets < 2:
        raise spec_error(KIND, f"a budget of {budget} parameters leaves fewer than 2 buckets of width {dim} after {weights} item weights")
    return {**options, "buckets": int(buckets)}


def spec_from_options(num_rows: int, dim: int, options: dict) -> HashSpec:
    return HashSpec(num_rows, dim, int(options["buckets"]), int(options.get("num_hashes", 2)), bool(options.get("item_weights", True)))
