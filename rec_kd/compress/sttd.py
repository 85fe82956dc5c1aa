"""STTD: the semi-tensor-product tensor-train item table of the OD-Rec student.

The student stores its (P, d) item table as K small cores and rebuilds it (or some of its rows)
on demand. This module is the math only, with no model attached: the spec and its validation,
initialisation, materialisation of the whole table or of selected rows, parameter counting and a
deterministic factor suggestion. The definition followed is the row-by-row one in
../shared/design/METHOD.md ("Student: the same network with an STTD item table"):

    row i of E = G_1[i_1] |x G_2[:, i_2] |x ... |x G_K[:, i_K]

evaluated left to right with a running matrix X of shape (J_1..J_{k-1}) x R_{k-1}: multiply X by
`G_k[:, i_k, :] kron I_t`, then reshape the product row-major to (J_1..J_k) x R_k. Item and width
indices are mixed-radix with the first factor most significant. t = 1 is the plain TT-matrix
embedding of TT-Rec; every t dividing the ranks and J_K works, for any K >= 2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp

# The model parameter that holds the table.
PARAM_NAME = "sttd_cores"


def _spec_error(problem: str) -> ValueError:
    return ValueError(f"rec_kd/compress/sttd.py: {problem}")


def _as_positive_ints(name: str, values) -> tuple[int, ...]:
    """Coerce a sequence of integers to a tuple, so specs hash and compare as jit static args."""
    try:
        items = tuple(values)
    except TypeError:
        raise _spec_error(f"{name} must be a sequence of ints, got {values!r}") from None
    for value in items:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _spec_error(f"{name} must hold ints, got {value!r} in {items}")
        if value < 1:
            raise _spec_error(f"{name} must be positive, got {items}")
    return items


@dataclasses.dataclass(frozen=True)
class STTDSpec:
    """Shape of an STTD table: P = prod(item_factors) rows, d = prod(dim_factors) columns.

    item_factors: I_1..I_K (rows, mixed radix, I_1 most significant).
    dim_factors:  J_1..J_K (width, mixed radix, J_1 most significant).
    ranks:        R_1..R_{K-1} (R_0 = R_K = 1 are implied).
    t:            semi-tensor-product factor; 1 gives the plain TT-matrix.
    """

    item_factors: tuple[int, ...]
    dim_factors: tuple[int, ...]
    ranks: tuple[int, ...]
    t: int

    # The model parameter holding the cores (a list of K arrays).
    param_name: ClassVar[str] = PARAM_NAME

    def __post_init__(self):
        item_factors = _as_positive_ints("item_factors", self.item_factors)
        dim_factors = _as_positive_ints("dim_factors", self.dim_factors)
        ranks = _as_positive_ints("ranks", self.ranks)
        num_cores = len(item_factors)
        if num_cores < 2:
            raise _spec_error(f"need K >= 2 cores, got item_factors={item_factors}")
        if len(dim_factors) != num_cores:
            raise _spec_error(f"dim_factors {dim_factors} must have K = {num_cores} entries like item_factors")
        if len(ranks) != num_cores - 1:
            raise _spec_error(f"ranks {ranks} must have K - 1 = {num_cores - 1} entries (R_1..R_{{K-1}})")
        if isinstance(self.t, bool) or not isinstance(self.t, int) or self.t < 1:
            raise _spec_error(f"t must be a positive int, got {self.t!r}")
        if any(rank % self.t for rank in ranks):
            raise _spec_error(f"t = {self.t} must divide every rank, got ranks {ranks}")
        if dim_factors[-1] % self.t:
            raise _spec_error(f"t = {self.t} must divide the last dim factor J_K = {dim_factors[-1]}")
        # Frozen dataclass: store the normalised tuples so equal specs hash equally.
        object.__setattr__(self, "item_factors", item_factors)
        object.__setattr__(self, "dim_factors", dim_factors)
        object.__setattr__(self, "ranks", ranks)

    @property
    def num_cores(self) -> int:
        return len(self.item_factors)

    @property
    def num_rows(self) -> int:
        return math.prod(self.item_factors)

    @property
    def dim(self) -> int:
        return math.prod(self.dim_factors)

    def core_shapes(self) -> list[tuple[int, int, int]]:
        """Core 1: (I_1, J_1, R_1); core k >= 2: (R_{k-1}/t, I_k, J_k R_k / t) with R_K = 1."""
        ranks = _boundary_ranks(self)
        shapes = [(self.item_factors[0], self.dim_factors[0], ranks[1])]
        for k in range(1, self.num_cores):
            shapes.append(
                (
                    ranks[k] // self.t,
                    self.item_factors[k],
                    self.dim_factors[k] * ranks[k + 1] // self.t,
                )
            )
        return shapes

    # The table-spec interface (rec_kd/compress/__init__.py), over the functions below.
    def num_params(self) -> int:
        return num_params(self)

    def param_shapes(self) -> list[jax.ShapeDtypeStruct]:
        return [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in self.core_shapes()]

    def init(self, key: jax.Array, target_std: float) -> list[jax.Array]:
        return init_cores(key, self, target_std=target_std)

    def materialize(self, params) -> jax.Array:
        return materialize(core_list(params), self)

    def rows(self, params, ids: jax.Array) -> jax.Array:
        return materialize_rows(core_list(params), self, ids)

    def onnx_table(self, g, params) -> str:
        """The (P, d) table built from the cores inside an ONNX graph, as `materialize`.

        Every input is a constant, so ONNX Runtime folds it once when the session is created.
        """
        return onnx_materialized_table(g, onnx_core_names(g, core_list(params)), self)


def core_list(cores) -> list:
    """The cores in order, whether kept as a list or (restored from a checkpoint) a {'0': ...} dict."""
    if isinstance(cores, dict):
        return [cores[key] for key in sorted(cores, key=int)]
    return list(cores)


def onnx_core_names(g, cores: Sequence) -> list[str]:
    """The cores as weights of an ONNX graph builder (rec_kd.serve.export.GraphBuilder)."""
    return [g.weight(f"sttd_core_{k}", core) for k, core in enumerate(cores)]


def onnx_materialized_table(g, cores: list[str], spec: STTDSpec) -> str:
    """(P, d) table from the cores' graph names, the same einsums as `materialize`."""
    ranks = _boundary_ranks(spec)
    t = spec.t
    state = cores[0]  # (I_1, J_1, R_1)
    rows, width = spec.item_factors[0], spec.dim_factors[0]
    for k in range(1, spec.num_cores):
        chunks = g.reshape(state, [rows, width, ranks[k] // t, t])  # (n, W, R_{k-1}/t, t)
        grown = g.op("Einsum", chunks, cores[k], equation="nwav,ayc->nywcv")  # (n, I_k, W, J_k R_k/t, t)
        rows, width = rows * spec.item_factors[k], width * spec.dim_factors[k]
        state = g.reshape(grown, [rows, width, ranks[k + 1]])
    return g.reshape(state, [spec.num_rows, spec.dim])  # (P, d)


def _boundary_ranks(spec: STTDSpec) -> tuple[int, ...]:
    """(R_0, R_1, ..., R_K) = (1, ranks..., 1)."""
    return (1, *spec.ranks, 1)


def num_params(spec: STTDSpec) -> int:
    """I_1 J_1 R_1 + sum_{k>=2} I_k J_k R_{k-1} R_k / t^2, i.e. the total size of the cores."""
    ranks = _boundary_ranks(spec)
    total = spec.item_factors[0] * spec.dim_factors[0] * ranks[1]
    for k in range(1, spec.num_cores):
        total += spec.item_factors[k] * spec.dim_factors[k] * ranks[k] * ranks[k + 1] // spec.t**2
    return total


def compression_ratio(spec: STTDSpec, num_rows: int | None = None) -> float:
    """Dense table size over STTD size, P d / num_params, with P = spec.num_rows by default.

    The authors count P as the padded rows of the table; pass num_rows to count another P (e.g.
    the real catalogue size).
    """
    rows = spec.num_rows if num_rows is None else num_rows
    return rows * spec.dim / num_params(spec)


def init_cores(
    key: jax.Array,
    spec: STTDSpec,
    dtype=jnp.float32,
    *,
    target_std: float | None = None,
) -> list[jax.Array]:
    """I.i.d. normal cores scaled so the materialised table's entries have std `target_std`.

    Why this scale: the student should start like a dense normal(0, target_std) embedding, whatever
    K, t and the ranks are. Each table entry is a sum of prod_{k=1}^{K-1} (R_k / t) products of K
    independent zero-mean core entries (one per core), and these products are uncorrelated, so
    with every core ~ normal(0, s^2) an entry has variance s^(2K) prod_k (R_k / t). All cores get
    the same s, solved from that. The default target_std is 1 / sqrt(d).
    """
    if target_std is None:
        target_std = 1.0 / math.sqrt(spec.dim)
    if not target_std > 0:
        raise _spec_error(f"target_std must be positive, got {target_std!r}")
    terms_per_entry = math.prod(rank // spec.t for rank in spec.ranks)
    core_std = (target_std**2 / terms_per_entry) ** (1.0 / (2 * spec.num_cores))
    keys = jax.random.split(key, spec.num_cores)
    return [core_std * jax.random.normal(core_key, shape, dtype) for core_key, shape in zip(keys, spec.core_shapes(), strict=False)]


def _check_core_shapes(cores: Sequence[jax.Array], spec: STTDSpec) -> None:
    shapes = [tuple(core.shape) for core in cores]
    if shapes != spec.core_shapes():
        raise _spec_error(f"core shapes {shapes} do not match the spec's {spec.core_shapes()}")


def _extend(state: jax.Array, core_part: jax.Array, subscripts: str, t: int, width: int, rank: int):
    """One row-by-row step for a batch of running matrices X, vectorised.

    `state` is (n, W, R_{k-1}). `X (G kron I_t)` mixes only column a*t + v of X with row a of G,
    keeping v, so viewing R_{k-1} as (R_{k-1}/t, t) turns the kron into an einsum whose output
    column c*t + v is the kron product's column. The row-major reshape of the (W, J_k R_k)
    product to (W J_k, R_k) is then a plain reshape to (-1, width, rank).
    """
    num, old_width, old_rank = state.shape
    chunks = state.reshape(num, old_width, old_rank // t, t)  # (n, W, R_{k-1}/t, t)
    grown = jnp.einsum(subscripts, chunks, core_part)  # (n, [I_k,] W, J_k R_k / t, t)
    return grown.reshape(-1, width, rank)


def materialize(cores: Sequence[jax.Array], spec: STTDSpec) -> jax.Array:
    """The whole (prod I, prod J) table; row and width indices mixed-radix, first most significant.

    Rows are built for all item-index prefixes at once: the state after core k is
    (I_1..I_k, J_1..J_k, R_k), and core k+1 extends both the row and the width index.
    """
    _check_core_shapes(cores, spec)
    ranks = _boundary_ranks(spec)
    state = cores[0]  # (I_1, J_1, R_1)
    for k in range(1, spec.num_cores):
        core = cores[k]  # (R_{k-1}/t, I_k, J_k R_k / t)
        width = state.shape[1] * spec.dim_factors[k]
        state = _extend(state, core, "nwav,ayc->nywcv", spec.t, width, ranks[k + 1])
        # (I_1..I_k, J_1..J_k, R_k)
    return state.reshape(spec.num_rows, spec.dim)  # R_K = 1


def row_digits(rows: jax.Array, spec: STTDSpec) -> list[jax.Array]:
    """Mixed-radix digits (i_1..i_K) of row ids, i_1 most significant."""
    digits = []
    remainder = rows
    for factor in reversed(spec.item_factors):
        digits.append(remainder % factor)
        remainder = remainder // factor
    return digits[::-1]


def materialize_rows(cores: Sequence[jax.Array], spec: STTDSpec, rows: jax.Array) -> jax.Array:
    """Rows `rows` of the table, shape rows.shape + (d,), without building the (P, d) table.

    Costs O(len(rows) d R) instead of O(P d R): for lookups of a batch's items, or for scoring a
    slice of the catalogue at a time on a device that cannot hold the table. Row ids must lie in
    [0, P); out-of-range ids are not checked (jit) and give meaningless rows.
    """
    _check_core_shapes(cores, spec)
    ranks = _boundary_ranks(spec)
    rows = jnp.asarray(rows)
    flat_rows = rows.reshape(-1)  # (n,)
    digits = row_digits(flat_rows, spec)
    running = cores[0][digits[0]]  # (n, J_1, R_1)
    for k in range(1, spec.num_cores):
        core_slice = cores[k][:, digits[k], :]  # (R_{k-1}/t, n, J_k R_k / t)
        width = running.shape[1] * spec.dim_factors[k]
        running = _extend(running, core_slice, "nwav,anc->nwcv", spec.t, width, ranks[k + 1])
        # (n, J_1..J_k, R_k)
    return running.reshape(*rows.shape, spec.dim)


def _smallest_root_at_least(value: int, degree: int) -> int:
    """Smallest integer c >= 1 with c ** degree >= value (exact, no float rounding trouble)."""
    root = max(1, int(round(value ** (1.0 / degree))))
    while root**degree < value:
        root += 1
    while root > 1 and (root - 1) ** degree >= value:
        root -= 1
    return root


def balanced_item_factors(num_rows: int, num_cores: int) -> tuple[int, ...]:
    """Nondecreasing (I_1..I_K) with prod >= num_rows: least sum, then least padding.

    The sum of the factors is what the cores' sizes grow with (each core is linear in its I_k),
    and for a fixed product it is smallest when the factors are equal; among the tuples with the
    least sum, the one with the least padding (prod - num_rows) wins, then the smallest tuple.
    E.g. 40,728 rows, K = 2: sum 404 is the least possible, and (194, 210) pads only 12 rows.

    Exhaustive over the tuples that can be optimal: with the factors sorted, a factor above the
    balanced root of what remains, or a last factor above ceil(remaining), can always be lowered.
    """
    best_key = None
    best = None

    def search(prefix: tuple[int, ...], prefix_product: int):
        nonlocal best_key, best
        needed = -(-num_rows // prefix_product)  # ceil
        remaining = num_cores - len(prefix)
        # AM-GM: the remaining factors cannot sum to less than remaining * needed^(1/remaining).
        least_sum = sum(prefix) + remaining * needed ** (1.0 / remaining)
        if best_key is not None and least_sum > best_key[0] + 1e-9:
            return
        if remaining == 1:
            factors = tuple(sorted((*prefix, needed)))
            key = (sum(factors), prefix_product * needed - num_rows, factors)
            if best_key is None or key < best_key:
                best_key, best = key, factors
            return
        lowest = prefix[-1] if prefix else 1
        highest = _smallest_root_at_least(needed, remaining)
        for factor in range(lowest, highest + 1):
            search((*prefix, factor), prefix_product * factor)

    search((), 1)
    return best


def _divisors(value: int) -> list[int]:
    return [d for d in range(1, value + 1) if value % d == 0]


def balanced_dim_factors(dim: int, num_cores: int, t: int) -> tuple[int, ...]:
    """(J_1..J_K) with prod = dim and t | J_K: least sum, then the lexicographically largest.

    Largest first puts the wide factors on the early cores, as in the paper's J = (16, 8).
    """
    if dim % t:
        raise _spec_error(f"t = {t} must divide dim = {dim} (it must divide J_K, a factor of dim)")
    candidates = []

    def search(prefix: tuple[int, ...], remaining_dim: int):
        if len(prefix) == num_cores - 1:
            if remaining_dim % t == 0:
                candidates.append((*prefix, remaining_dim))
            return
        for factor in _divisors(remaining_dim):
            search((*prefix, factor), remaining_dim // factor)

    search((), dim)
    return min(candidates, key=lambda factors: (sum(factors), tuple(-f for f in factors)))


def suggest_spec(num_rows: int, dim: int, rank: int, t: int, num_cores: int) -> STTDSpec:
    """A deterministic spec for a (>= num_rows, dim) table with every R_k = rank.

    Item factors: balanced_item_factors (prod >= num_rows, least sum then least padding,
    nondecreasing). Width factors: balanced_dim_factors (prod = dim, t | J_K). Raises ValueError
    when t does not divide rank or dim, or an argument is not a positive int.
    """
    for name, value in (("num_rows", num_rows), ("dim", dim), ("rank", rank), ("t", t)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _spec_error(f"suggest_spec: {name} must be a positive int, got {value!r}")
    if isinstance(num_cores, bool) or not isinstance(num_cores, int) or num_cores < 2:
        raise _spec_error(f"suggest_spec: num_cores must be an int >= 2, got {num_cores!r}")
    if rank % t:
        raise _spec_error(f"suggest_spec: t = {t} must divide rank = {rank}")
    return STTDSpec(
        item_factors=balanced_item_factors(num_rows, num_cores),
        dim_factors=balanced_dim_factors(dim, num_cores, t),
        ranks=(rank,) * (num_cores - 1),
        t=t,
    )


def suggest_spec_at_compression(num_rows: int, dim: int, target_compression: float, t: int, num_cores: int) -> STTDSpec | None:
    """suggest_spec at the largest rank (a multiple of t) whose compression_ratio is >= target.

    Why a target and not a rank: a fixed rank compresses a large catalogue far more than a small
    one (rank 60 is 27x for Tmall's 40,728 rows, under 3x for 1,683), so for a dataset we have not
    seen, the compression the user asks for is the stable thing to hold. The factors do not depend
    on the rank, and the parameter count grows with it, so the ratio falls as the rank rises; the
    search stops at the first rank that misses the target, or at I_1 J_1 (the most the first core's
    rank can usefully be). None when even rank t misses it: the catalogue is too small.
    """
    if not target_compression > 0:
        raise _spec_error(f"suggest_spec_at_compression: target_compression must be > 0, got {target_compression!r}")
    best = None
    base = suggest_spec(num_rows, dim, t, t, num_cores)
    for rank in range(t, base.item_factors[0] * base.dim_factors[0] + 1, t):
        spec = dataclasses.replace(base, ranks=(rank,) * (num_cores - 1))
        if compression_ratio(spec) < target_compression:
            break
        best = spec
    return best


# ----------------------------------------------------------------------------------------------
# Config options (rec_kd/compress/__init__.py): the STTD/TT fields are config.table's own.
# ----------------------------------------------------------------------------------------------


def budget_options(num_rows: int, dim: int, budget: int, options: dict) -> dict:
    """The largest equal rank (a multiple of t) whose cores fit the budget, on the given or suggested factors."""
    t = int(options["t"])
    if options.get("item_factors"):
        base = spec_from_options(num_rows, dim, {**options, "ranks": (t,) * (len(options["item_factors"]) - 1)})
    else:
        base = suggest_spec(num_rows, dim, t, t, int(options.get("num_cores", 2)))
    best = None
    for rank in range(t, base.item_factors[0] * base.dim_factors[0] + 1, t):
        spec = dataclasses.replace(base, ranks=(rank,) * (base.num_cores - 1))
        if num_params(spec) > budget:
            break
        best = spec
    if best is None:
        raise _spec_error(
            f"a budget of {budget} parameters is below the smallest table on factors {base.item_factors} ({num_params(base)})"
        )
    return {**options, "item_factors": best.item_factors, "dim_factors": best.dim_factors, "ranks": best.ranks}


def spec_from_options(num_rows: int, dim: int, options: dict) -> STTDSpec:
    """The spec of config.table's fields (num_rows and dim are checked by the model, not here)."""
    del num_rows, dim
    return STTDSpec(
        item_factors=tuple(options["item_factors"]),
        dim_factors=tuple(options["dim_factors"]),
        ranks=tuple(options["ranks"]),
        t=int(options["t"]),
    )
