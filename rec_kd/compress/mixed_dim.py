"""Mixed-dimension item table (Ginart et al., 2021): popular items get wider rows than the rest.

Two blocks, split by the data layer's hot/cold items (`SessionData.hot_mask`: the most frequent
items of the training split): hot rows are `hot_dim` wide, cold rows `cold_dim` wide, and each
block has its own (width, d) projection to the model's width d:

    E[i] = H[rank of i among hot rows] P_hot    if i is hot
           C[rank of i among cold rows] P_cold  otherwise (row 0, the padding, is cold)

Which rows are hot is part of the spec (`hot_rows`: the (P,) mask packed to bits, little-endian
within a byte, base64), so a trained run rebuilds its table from config.json alone, and the ONNX
file stores the same P / 8 bytes and unpacks them in the graph.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rec_kd.compress.common import check_positive_ints, spec_error

# The model parameter that holds the table.
PARAM_NAME = "mixed_dim_table"
KIND = "mixed_dim"


def encode_rows(mask: np.ndarray) -> str:
    """(P,) bool -> base64 of its bits packed little-endian (bit j of byte k is row 8 k + j)."""
    return base64.b64encode(np.packbits(np.asarray(mask, bool), bitorder="little").tobytes()).decode("ascii")


def decode_rows(text: str, num_rows: int) -> np.ndarray:
    """encode_rows' inverse: the (num_rows,) bool mask."""
    packed = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), np.uint8)
    if packed.size != math.ceil(num_rows / 8):
        raise spec_error(KIND, f"hot_rows holds {packed.size} bytes; {num_rows} rows need {math.ceil(num_rows / 8)}")
    return np.unpackbits(packed, bitorder="little")[:num_rows].astype(bool)


@dataclasses.dataclass(frozen=True)
class MixedDimSpec:
    num_rows: int
    dim: int
    hot_dim: int
    cold_dim: int
    hot_rows: str  # encode_rows of the (num_rows,) hot mask

    param_name: ClassVar[str] = PARAM_NAME

    def __post_init__(self):
        check_positive_ints(KIND, num_rows=self.num_rows, dim=self.dim, hot_dim=self.hot_dim, cold_dim=self.cold_dim)
        try:
            mask = decode_rows(self.hot_rows, self.num_rows)
        except (ValueError, TypeError) as error:
            raise spec_error(KIND, f"hot_rows is not an encoded mask of {self.num_rows} rows: {error}") from None
        if not 0 < mask.sum() < self.num_rows:
            raise spec_error(KIND, f"need at least one hot and one cold row, got {int(mask.sum())} hot of {self.num_rows}")

    def hot_mask(self) -> np.ndarray:
        return decode_rows(self.hot_rows, self.num_rows)

    @property
    def num_hot(self) -> int:
        return int(self.hot_mask().sum())

    def block_positions(self) -> np.ndarray:
        """(P,) int32: each row's index in the stacked [hot block; cold block] rows."""
        hot = self.hot_mask()
        return np.where(hot, np.cumsum(hot) - 1, hot.sum() + np.cumsum(~hot) - 1).astype(np.int32)

    def num_params(self) -> int:
        num_hot = self.num_hot
        return num_hot * self.hot_dim + self.hot_dim * self.dim + (self.num_rows - num_hot) * self.cold_dim + self.cold_dim * self.dim

    def param_shapes(self) -> dict:
        num_hot = self.num_hot
        shape = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.float32)  # noqa: E731
        return {
            "hot": shape(num_hot, self.hot_dim),
            "hot_projection": shape(self.hot_dim, self.dim),
            "cold": shape(self.num_rows - num_hot, self.cold_dim),
            "cold_projection": shape(self.cold_dim, self.dim),
        }

    def init(self, key: jax.Array, target_std: float) -> dict:
        """Blocks N(0, target_std^2), projections N(0, 1 / width): rows of std target_std."""
        shapes = self.param_shapes()
        keys = dict(zip(shapes, jax.random.split(key, len(shapes)), strict=True))
        return {
            "hot": target_std * jax.random.normal(keys["hot"], shapes["hot"].shape),
            "hot_projection": self.hot_dim**-0.5 * jax.random.normal(keys["hot_projection"], shapes["hot_projection"].shape),
            "cold": target_std * jax.random.normal(keys["cold"], shapes["cold"].shape),
            "cold_projection": self.cold_dim**-0.5 * jax.random.normal(keys["cold_projection"], shapes["cold_projection"].shape),
        }

    def _stacked(self, params: dict) -> jax.Array:
        """(P, d): the projected hot block, then the projected cold block."""
        return jnp.concatenate([params["hot"] @ params["hot_projection"], params["cold"] @ params["cold_projection"]])

    def materialize(self, params: dict) -> jax.Array:
        return self._stacked(params)[jnp.asarray(self.block_positions())]

    def rows(self, params: dict, ids: jax.Array) -> jax.Array:
        """Each id's block row, projected: both blocks' rows are gathered, then one is kept."""
        positions = jnp.asarray(self.block_positions())[ids]
        num_hot = params["hot"].shape[0]
        is_hot = (positions < num_hot)[..., None]
        hot = params["hot"][jnp.minimum(positions, num_hot - 1)] @ params["hot_projection"]
        cold = params["cold"][jnp.maximum(positions - num_hot, 0)] @ params["cold_projection"]
        return jnp.where(is_hot, hot, cold)

    def onnx_table(self, g, params: dict) -> str:
        """The table from the P / 8 mask bytes: unpack the bits, rank them, gather the stacked blocks."""
        from onnx import TensorProto  # only the exporter calls this

        hot = g.op(
            "MatMul",
            g.weight(f"{self.param_name}.hot", params["hot"]),
            g.weight(f"{self.param_name}.hot_projection", params["hot_projection"]),
        )
        cold = g.op(
            "MatMul",
            g.weight(f"{self.param_name}.cold", params["cold"]),
            g.weight(f"{self.param_name}.cold_projection", params["cold_projection"]),
        )
        stacked = g.op("Concat", hot, cold, axis=0)  # (P, d)
        packed = np.frombuffer(base64.b64decode(self.hot_rows), np.uint8)
        as_ints = g.op("Cast", g.reshape(g.constant(packed, f"{self.param_name}.hot_rows"), [-1, 1]), to=TensorProto.INT64)  # (P/8, 1)
        bits = g.op("Mod", g.op("Div", as_ints, g.constant((2 ** np.arange(8, dtype=np.int64))[None, :])), g.constant(np.int64(2)))
        is_hot = g.op(
            "Slice", g.reshape(bits, [-1]), g.constant(np.asarray([0], np.int64)), g.constant(np.asarray([self.num_rows], np.int64))
        )  # (P,) 0/1
        axis = g.constant(np.int64(0))
        hot_rank = g.op("Sub", g.op("CumSum", is_hot, axis), g.constant(np.int64(1)))
        cold_rank = g.op("Sub", g.op("CumSum", g.op("Sub", g.constant(np.int64(1)), is_hot), axis), g.constant(np.int64(1)))
        cold_position = g.op("Add", cold_rank, g.constant(np.int64(self.num_hot)))
        position = g.op("Where", g.op("Cast", is_hot, to=TensorProto.BOOL), hot_rank, cold_position)
        return g.op("Gather", stacked, position, axis=0)


def budget_options(num_rows: int, dim: int, budget: int, options: dict) -> dict:
    """The widest hot rows (cold rows cold_ratio as wide, at least 1) within the budget.

    options['hot_dim'] = 0 asks for the search; options['cold_dim'] = 0 derives the cold width
    from the hot one. options['hot_rows'] must already hold the hot mask.
    """
    ratio = float(options.get("cold_ratio", 0.25))

    def cold_width(hot_dim: int) -> int:
        return int(options.get("cold_dim") or max(1, round(hot_dim * ratio)))

    def size(hot_dim: int) -> int:
        return MixedDimSpec(num_rows, dim, hot_dim, cold_width(hot_dim), options["hot_rows"]).num_params()

    hot_dim = int(options.get("hot_dim") or 0)
    if not hot_dim:
        fitting = [width for width in range(1, dim + 1) if size(width) <= budget]
        if not fitting:
            raise spec_error(KIND, f"a budget of {budget} parameters cannot hold 1-wide rows for {num_rows} rows ({size(1)})")
        hot_dim = max(fitting)
    return {**options, "hot_dim": hot_dim, "cold_dim": cold_width(hot_dim)}


def spec_from_options(num_rows: int, dim: int, options: dict) -> MixedDimSpec:
    return MixedDimSpec(num_rows, dim, int(options["hot_dim"]), int(options["cold_dim"]), str(options["hot_rows"]))
