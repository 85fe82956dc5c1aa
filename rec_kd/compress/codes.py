"""Compositional-code item table: each item is M fixed integer codes into M trained codebooks.

    pq: E[i] = concat_m C_m[codes[i, m]]      C_m (K, d / M), the m-th slice of the width
    rq: E[i] = sum_m    C_m[codes[i, m]]      C_m (K, d)

Why: a tensor-train table cannot hold what a trained table knows about which items are alike
(docs/findings.md: the STTD student is nearly blind to targets new to the session). Codes taken
from a table that knows it keep that knowledge: items the teacher places close share codes. This
is the design of EODRec (Xia et al., arXiv 2209.13422) and, without a teacher, RecJPQ (Petrov and
Macdonald, WSDM 2024).

The codes are not trained: they are stored at their bit width (uint8 for K <= 256) as an integer
leaf of the table's parameters (the step trains only float leaves: rec_kd/train/step.py), so
checkpoints, members and the export carry them like any parameter. Only items 1..N have codes;
row 0, the padding, is always zero. Where the codes come from (`source`, derive_table):

  teacher  the teacher's trained table, quantized with k-means weighted by item frequency; the
           codebooks start at the centroids, so the untrained table is the teacher's, quantized
  svd      RecJPQ's: a truncated SVD of the training data's session x item matrix, quantized the
           same way; no teacher is needed (the codebooks start at the centroids, rescaled)
  random   uniform codes and random codebooks (a baseline: no item knowledge at all)
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rec_kd.compress import quantize
from rec_kd.compress.common import check_positive_ints, spec_error

# The model parameter that holds the table: {'codes': (P - 1, M) uint, 'codebooks': (M, K, d')}.
PARAM_NAME = "code_table"
KIND = "codes"
METHODS = ("pq", "rq")
SOURCES = ("teacher", "svd", "random")
# budget_options reads its budget in bytes (the codes are integers, not fp32 parameters).
BUDGET_IN_BYTES = True


def code_dtype(codebook_size: int):
    """The narrowest unsigned integer holding codes 0..K-1."""
    return np.uint8 if codebook_size <= 2**8 else np.uint16


@dataclasses.dataclass(frozen=True)
class CodesSpec:
    num_rows: int
    dim: int
    num_codebooks: int
    codebook_size: int
    method: str = "pq"

    param_name: ClassVar[str] = PARAM_NAME
    # The codes are drawn by the spec itself under every init scheme (an integer leaf has no U(-0.1, 0.1)).
    own_init: ClassVar[bool] = True

    def __post_init__(self):
        check_positive_ints(KIND, num_rows=self.num_rows, dim=self.dim, num_codebooks=self.num_codebooks, codebook_size=self.codebook_size)
        if self.method not in METHODS:
            raise spec_error(KIND, f"table.codes.method must be one of {METHODS}, got {self.method!r}")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1) or self.codebook_size > 2**16:
            raise spec_error(KIND, f"table.codes.codebook_size must be a power of two in [2, 65536], got {self.codebook_size}")
        if self.method == "pq" and self.dim % self.num_codebooks:
            raise spec_error(KIND, f"table.codes.num_codebooks={self.num_codebooks} must divide the width {self.dim} for pq")

    @property
    def sub_dim(self) -> int:
        return self.dim // self.num_codebooks if self.method == "pq" else self.dim

    def num_params(self) -> int:
        """Trained parameters: the codebooks (the codes are fixed integers, counted in num_bytes)."""
        return self.num_codebooks * self.codebook_size * self.sub_dim

    def num_bytes(self) -> int:
        """Bytes on device: fp32 codebooks and the codes at their width."""
        return 4 * self.num_params() + (self.num_rows - 1) * self.num_codebooks * np.dtype(code_dtype(self.codebook_size)).itemsize

    def param_shapes(self) -> dict:
        return {
            "codes": jax.ShapeDtypeStruct((self.num_rows - 1, self.num_codebooks), code_dtype(self.codebook_size)),
            "codebooks": jax.ShapeDtypeStruct((self.num_codebooks, self.codebook_size, self.sub_dim), jnp.float32),
        }

    def init(self, key: jax.Array, target_std: float) -> dict:
        """Random codes and N(0, s^2) codebooks; s makes a row's entries std target_std (rq sums M)."""
        codes_key, books_key = jax.random.split(key)
        std = target_std if self.method == "pq" else target_std / math.sqrt(self.num_codebooks)
        shapes = self.param_shapes()
        codes = jax.random.randint(codes_key, shapes["codes"].shape, 0, self.codebook_size).astype(shapes["codes"].dtype)
        return {"codes": codes, "codebooks": std * jax.random.normal(books_key, shapes["codebooks"].shape)}

    def _decode(self, codebooks: jax.Array, codes: jax.Array) -> jax.Array:
        """(..., M) codes -> (..., d) rows."""
        parts = codebooks[jnp.arange(self.num_codebooks), codes.astype(jnp.int32)]  # (..., M, d')
        if self.method == "pq":
            return parts.reshape(*codes.shape[:-1], self.dim)
        return jnp.sum(parts, axis=-2)

    def materialize(self, params: dict) -> jax.Array:
        rows = self._decode(params["codebooks"], params["codes"])  # (P - 1, d)
        return jnp.concatenate([jnp.zeros((1, self.dim), rows.dtype), rows])

    def rows(self, params: dict, ids: jax.Array) -> jax.Array:
        decoded = self._decode(params["codebooks"], params["codes"][jnp.maximum(ids - 1, 0)])
        return jnp.where((ids > 0)[..., None], decoded, 0.0)

    def onnx_table(self, g, params: dict) -> str:
        """Codes as an integer initializer, codebooks as weights (int8 in the quantized file)."""
        m, k, sub = self.num_codebooks, self.codebook_size, self.sub_dim
        codes = g.constant(np.asarray(params["codes"]), f"{self.param_name}.codes")  # (P - 1, M) uint8/16
        books = g.weight(f"{self.param_name}.codebooks", np.asarray(params["codebooks"]).reshape(m * k, sub))
        # Flat index m K + code into the stacked codebooks (M K, d').
        flat = g.op("Add", g.op("Cast", codes, to=7), g.constant((np.arange(m, dtype=np.int64) * k)[None, :]))  # 7: INT64
        parts = g.op("Gather", books, flat, axis=0)  # (P - 1, M, d')
        rows = g.reshape(parts, [-1, self.dim]) if self.method == "pq" else g.reduce_sum(parts, 1, keepdims=0)
        padding = g.constant(np.zeros((1, self.dim), np.float32))
        return g.op("Concat", padding, rows, axis=0)


def budget_options(num_rows: int, dim: int, budget_bytes: int, options: dict) -> dict:
    """num_codebooks = 0 asks for the most codebooks whose table fits `budget_bytes` (pq: a divisor of d)."""
    if options.get("num_codebooks"):
        return dict(options)
    size, method = int(options["codebook_size"]), str(options.get("method", "pq"))
    candidates = [m for m in range(1, dim + 1) if method == "rq" or dim % m == 0]
    fitting = [m for m in candidates if CodesSpec(num_rows, dim, m, size, method).num_bytes() <= budget_bytes]
    if not fitting:
        smallest = CodesSpec(num_rows, dim, 1, size, method).num_bytes()
        raise spec_error(KIND, f"a budget of {budget_bytes} bytes is below the smallest {method} table for {num_rows} rows ({smallest})")
    return {**options, "num_codebooks": max(fitting)}


def spec_from_options(num_rows: int, dim: int, options: dict) -> CodesSpec:
    """The spec; also checks the options that only deriving the codes reads (source, k-means, beam)."""
    if options.get("source", "teacher") not in SOURCES:
        raise spec_error(KIND, f"table.codes.source must be one of {SOURCES}, got {options.get('source')!r}")
    for name in ("kmeans_iterations", "beam"):
        value = options.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise spec_error(KIND, f"table.codes.{name} must be a positive int, got {value!r}")
    return CodesSpec(num_rows, dim, int(options["num_codebooks"]), int(options["codebook_size"]), str(options.get("method", "pq")))


# ----------------------------------------------------------------------------------------------
# Where the codes come from: a table to quantize, then codes and starting codebooks.
# ----------------------------------------------------------------------------------------------


def svd_item_vectors(sessions: list[np.ndarray], num_items: int, dim: int, seed: int) -> np.ndarray:
    """(N, dim) item vectors from a truncated SVD of the binary session x item matrix (RecJPQ).

    Row s of the matrix marks the items of session s; the vectors are V S^(1/2) of its top `dim`
    singular triplets, so items that occur in the same sessions get close vectors.
    """
    import scipy.sparse
    import scipy.sparse.linalg

    rows = np.concatenate([np.full(len(items), s) for s, items in enumerate(sessions)]) if sessions else np.zeros(0, int)
    cols = np.concatenate(sessions) if sessions else np.zeros(0, int)
    keep = cols > 0
    matrix = scipy.sparse.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep] - 1)), shape=(len(sessions), num_items))
    matrix.data[:] = 1.0  # duplicates summed by csr: binary again
    rank = min(dim, min(matrix.shape) - 1)
    if rank < 1:
        raise ValueError(f"svd codes need at least two sessions and two items, got a {matrix.shape} matrix")
    start = np.random.default_rng(seed).standard_normal(min(matrix.shape)).astype(np.float32)
    _, singular, vt = scipy.sparse.linalg.svds(matrix, k=rank, v0=start)
    vectors = (vt.T * np.sqrt(singular)[None, :]).astype(np.float32)  # (N, rank)
    return np.pad(vectors, ((0, 0), (0, dim - rank)))


def quantize_table(spec: CodesSpec, vectors: np.ndarray, weights: np.ndarray, iterations: int, seed: int, beam: int) -> dict:
    """{'codes', 'codebooks'} of items 1..N's vectors (N, d), padded with random codes to P - 1 rows."""
    if spec.method == "pq":
        codes, books = quantize.product_quantize(vectors, weights, spec.num_codebooks, spec.codebook_size, iterations, seed)
    else:
        codes, books = quantize.residual_quantize(vectors, weights, spec.num_codebooks, spec.codebook_size, iterations, seed, beam)
    extra = spec.num_rows - 1 - len(codes)  # rows past num_items are never read
    codes = np.concatenate([codes, np.zeros((extra, spec.num_codebooks), codes.dtype)])
    return {"codes": codes.astype(code_dtype(spec.codebook_size)), "codebooks": books.astype(np.float32)}


def rescaled(codebooks: np.ndarray, spec: CodesSpec, codes: np.ndarray, target_std: float) -> np.ndarray:
    """Codebooks scaled so the decoded rows' entries have std target_std (another space's vectors, e.g. SVD's)."""
    decode = quantize.pq_decode if spec.method == "pq" else quantize.rq_decode
    std = float(np.std(decode(codes.astype(np.int64), codebooks)))
    return codebooks * (target_std / std) if std > 0 else codebooks
