"""Tests for rec_kd/compress/sttd.py against METHOD.md's STTD definition.

The main reference is a plain-numpy, row-at-a-time implementation of METHOD.md's row-by-row
steps (running matrix X, `G_k[:, i_k, :] kron I_t`, row-major reshape), written independently of
the vectorised einsum code under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd.compress import (
    STTDSpec,
    compression_ratio,
    init_cores,
    materialize,
    materialize_rows,
    num_params,
    suggest_spec,
)


def reference_table(cores, spec):
    """METHOD.md's definition, one row at a time, in float64 numpy."""
    cores = [np.asarray(core, np.float64) for core in cores]
    ranks = (1, *spec.ranks, 1)
    num_rows = math.prod(spec.item_factors)
    table = np.zeros((num_rows, math.prod(spec.dim_factors)))
    for row in range(num_rows):
        digits = np.unravel_index(row, spec.item_factors)  # C order: i_1 most significant
        x = cores[0][digits[0]]  # (J_1, R_1)
        for k in range(1, len(cores)):
            step = np.kron(cores[k][:, digits[k], :], np.eye(spec.t))  # (R_{k-1}, J_k R_k)
            x = (x @ step).reshape(-1, ranks[k + 1])  # (J_1..J_k, R_k), row-major
        table[row] = x.reshape(-1)
    return table


def random_cores(spec, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in spec.core_shapes()]


TMALL = STTDSpec(item_factors=(169, 241), dim_factors=(16, 8), ranks=(60,), t=2)
RETAILROCKET = STTDSpec(item_factors=(117, 316), dim_factors=(16, 8), ranks=(60,), t=2)

REFERENCE_SPECS = {
    "K2_t1": STTDSpec((3, 4), (2, 3), (3,), 1),
    "K2_t2": STTDSpec((3, 5), (3, 4), (4,), 2),
    "K2_t3": STTDSpec((2, 3), (2, 3), (6,), 3),
    "K3_t1_uneven_ranks": STTDSpec((2, 3, 2), (2, 3, 2), (3, 5), 1),
    "K3_t2": STTDSpec((2, 3, 2), (3, 2, 4), (4, 2), 2),
    "K4_t2": STTDSpec((2, 2, 3, 2), (2, 1, 2, 2), (2, 4, 2), 2),
}


def test_semi_tensor_product_hand_computed():
    # I = (1, 1), J = (1, 2), R_1 = 2, t = 2: G_1[0] = [[2, 3]] (1 x 2), G_2[:, 0] = [[5]] (1 x 1).
    # Row = [2, 3] (5 kron I_2) = [10, 15]: the semi-tensor product widens the last core by t.
    spec = STTDSpec((1, 1), (1, 2), (2,), 2)
    cores = [jnp.array([[[2.0, 3.0]]]), jnp.array([[[5.0]]])]
    np.testing.assert_array_equal(materialize(cores, spec), [[10.0, 15.0]])


def test_reference_matches_classical_tt_matrix_for_t1():
    # With t = 1 the definition is the TT-matrix:
    # E[(i1, i2), (j1, j2)] = sum_r G1[i1, j1, r] G2[r, i2, j2].
    spec = REFERENCE_SPECS["K2_t1"]
    g1, g2 = (np.asarray(core, np.float64) for core in random_cores(spec, seed=3))
    expected = np.zeros((12, 6))
    for i1, i2, j1, j2 in np.ndindex(3, 4, 2, 3):
        expected[i1 * 4 + i2, j1 * 3 + j2] = sum(g1[i1, j1, r] * g2[r, i2, j2] for r in range(3))
    np.testing.assert_allclose(reference_table([g1, g2], spec), expected, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE_SPECS))
def test_materialize_matches_row_by_row_reference(name):
    spec = REFERENCE_SPECS[name]
    cores = random_cores(spec, seed=len(name))
    table = materialize(cores, spec)
    assert table.shape == (spec.num_rows, spec.dim)
    np.testing.assert_allclose(table, reference_table(cores, spec), rtol=1e-5, atol=1e-5)


def test_materialize_matches_method_einsum_for_k2():
    spec = REFERENCE_SPECS["K2_t2"]
    g1, g2 = random_cores(spec, seed=1)
    i1, j1, r1 = g1.shape
    i2 = g2.shape[1]
    viewed = g1.reshape(i1, j1, r1 // spec.t, spec.t)
    expected = jnp.einsum("xjav,ayc->xyjcv", viewed, g2).reshape(i1 * i2, spec.dim)
    np.testing.assert_allclose(materialize([g1, g2], spec), expected, rtol=1e-6, atol=1e-6)


def test_materialize_matches_method_einsum_for_k3():
    spec = REFERENCE_SPECS["K3_t2"]
    g1, g2, g3 = random_cores(spec, seed=2)
    (i1, i2, i3), (j1, j2, j3) = spec.item_factors, spec.dim_factors
    (r1, r2), t = spec.ranks, spec.t
    first = jnp.einsum("xjav,ayc->xyjcv", g1.reshape(i1, j1, r1 // t, t), g2)
    first = first.reshape(i1, i2, j1, j2, r2 // t, t)
    expected = jnp.einsum("xyjkbv,bzc->xyzjkcv", first, g3).reshape(i1 * i2 * i3, j1 * j2 * j3)
    np.testing.assert_allclose(materialize([g1, g2, g3], spec), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["K2_t2", "K3_t1_uneven_ranks", "K4_t2"])
def test_materialize_rows_equals_rows_of_materialize(name):
    spec = REFERENCE_SPECS[name]
    cores = random_cores(spec, seed=4)
    table = materialize(cores, spec)
    rows = jnp.array([0, spec.num_rows - 1, 5, 5, 1])
    looked_up = materialize_rows(cores, spec, rows)
    np.testing.assert_allclose(looked_up, table[rows], rtol=1e-6, atol=1e-6)
    batch = jnp.array([[0, 3, 2], [spec.num_rows - 1, 1, 4]])  # (B, L) lookups keep their shape
    looked_up = jax.jit(materialize_rows, static_argnums=1)(cores, spec, batch)
    assert looked_up.shape == (2, 3, spec.dim)
    np.testing.assert_allclose(looked_up, table[batch], rtol=1e-6, atol=1e-6)


def test_materialize_rows_at_tmall_shape():
    cores = init_cores(jax.random.key(0), TMALL)
    rows = jnp.array([0, 1, 240, 241, 12345, TMALL.num_rows - 1])
    np.testing.assert_allclose(materialize_rows(cores, TMALL, rows), materialize(cores, TMALL)[rows], rtol=1e-5, atol=1e-7)


def test_core_shapes_follow_method():
    assert TMALL.core_shapes() == [(169, 16, 60), (30, 241, 4)]
    assert REFERENCE_SPECS["K4_t2"].core_shapes() == [(2, 2, 2), (1, 2, 2), (2, 3, 2), (1, 2, 1)]
    cores = init_cores(jax.random.key(1), REFERENCE_SPECS["K3_t2"])
    assert [core.shape for core in cores] == [(2, 3, 4), (2, 3, 2), (1, 2, 2)]


@pytest.mark.parametrize("spec", [*REFERENCE_SPECS.values(), TMALL, RETAILROCKET], ids=repr)
def test_num_params_matches_formula_and_core_sizes(spec):
    i, j, r, t = spec.item_factors, spec.dim_factors, (*spec.ranks, 1), spec.t
    later_cores = sum(i[k] * j[k] * r[k - 1] * r[k] / t**2 for k in range(1, len(i)))
    formula = i[0] * j[0] * r[0] + later_cores
    assert num_params(spec) == formula
    assert num_params(spec) == sum(math.prod(shape) for shape in spec.core_shapes())


def test_paper_settings():
    assert num_params(TMALL) == 191_160  # METHOD.md
    assert TMALL.num_rows * TMALL.dim == 5_213_312
    assert compression_ratio(TMALL) == pytest.approx(5_213_312 / 191_160)
    assert round(compression_ratio(TMALL), 1) == 27.3
    # RetailRocket: 117*16*60 + 316*8*60*1/2^2 = 112,320 + 37,920.
    assert num_params(RETAILROCKET) == 117 * 16 * 60 + 316 * 8 * 60 // 4 == 150_240
    assert round(compression_ratio(RETAILROCKET), 1) == 31.5
    assert compression_ratio(RETAILROCKET, num_rows=36_969) == pytest.approx(36_969 * 128 / 150_240)


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        (dict(item_factors=(10,), dim_factors=(8,), ranks=(), t=1), "K >= 2"),
        (dict(item_factors=(3, 4), dim_factors=(8,), ranks=(2,), t=1), "dim_factors"),
        (dict(item_factors=(3, 4), dim_factors=(2, 4), ranks=(2, 2), t=1), "ranks"),
        (dict(item_factors=(3, 4), dim_factors=(2, 4), ranks=(3,), t=2), "divide every rank"),
        (dict(item_factors=(3, 4), dim_factors=(4, 3), ranks=(4,), t=2), "J_K"),
        (dict(item_factors=(3, 0), dim_factors=(2, 4), ranks=(2,), t=1), "positive"),
        (dict(item_factors=(3, 4), dim_factors=(2, 4), ranks=(-2,), t=1), "positive"),
        (dict(item_factors=(3, 4), dim_factors=(2, 4), ranks=(2,), t=0), "t must be"),
        (dict(item_factors=(3, 4.0), dim_factors=(2, 4), ranks=(2,), t=1), "ints"),
    ],
)
def test_invalid_specs_raise(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        STTDSpec(**kwargs)


def test_spec_normalises_to_hashable_tuples():
    spec = STTDSpec([3, 4], [2, 4], [2], 2)
    assert spec == STTDSpec((3, 4), (2, 4), (2,), 2)
    assert hash(spec) == hash(STTDSpec((3, 4), (2, 4), (2,), 2))
    assert (spec.num_rows, spec.dim) == (12, 8)


def test_wrong_core_shapes_raise():
    spec = REFERENCE_SPECS["K2_t2"]
    cores = random_cores(spec)
    with pytest.raises(ValueError, match="core shapes"):
        materialize(cores[::-1], spec)
    with pytest.raises(ValueError, match="core shapes"):
        materialize_rows(cores[:1], spec, jnp.array([0]))


@pytest.mark.parametrize("spec", [TMALL, STTDSpec((30, 40, 50), (4, 4, 8), (8, 16), 2)], ids=repr)
def test_init_gives_target_entry_std(spec):
    table = materialize(init_cores(jax.random.key(7), spec), spec)
    assert float(jnp.std(table)) == pytest.approx(1 / math.sqrt(spec.dim), rel=0.05)
    assert abs(float(jnp.mean(table))) < 0.01 / math.sqrt(spec.dim)
    wider = materialize(init_cores(jax.random.key(7), spec, target_std=0.5), spec)
    assert float(jnp.std(wider)) == pytest.approx(0.5, rel=0.05)


def test_init_is_deterministic_and_respects_dtype():
    spec = REFERENCE_SPECS["K3_t2"]
    first = init_cores(jax.random.key(3), spec, jnp.bfloat16)
    second = init_cores(jax.random.key(3), spec, jnp.bfloat16)
    for a, b in zip(first, second, strict=False):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@pytest.mark.parametrize("name", ["K2_t2", "K4_t2"])
def test_materialize_is_jittable_and_differentiable(name):
    spec = REFERENCE_SPECS[name]
    cores = random_cores(spec, seed=5)

    def sum_of_squares(cores):
        return jnp.sum(materialize(cores, spec) ** 2)

    np.testing.assert_allclose(jax.jit(materialize, static_argnums=1)(cores, spec), materialize(cores, spec), rtol=1e-6)
    grads = jax.jit(jax.grad(sum_of_squares))(cores)
    assert len(grads) == len(cores)
    for grad, core in zip(grads, cores, strict=False):
        assert grad.shape == core.shape
        assert bool(jnp.all(jnp.isfinite(grad)))
        assert float(jnp.max(jnp.abs(grad))) > 0
    # Directional derivative against a central finite difference in float64 numpy.
    direction = random_cores(spec, seed=6)
    step = 1e-4
    plus = reference_table([c + step * d for c, d in zip(cores, direction, strict=False)], spec)
    minus = reference_table([c - step * d for c, d in zip(cores, direction, strict=False)], spec)
    numeric = (np.sum(plus**2) - np.sum(minus**2)) / (2 * step)
    analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(grads, direction, strict=False))
    assert analytic == pytest.approx(numeric, rel=1e-3)


def test_suggest_spec_tmall():
    spec = suggest_spec(40728, 128, 60, 2, 2)
    # Least possible sum of two factors with product >= 40,728 is 404 (201 * 202 < 40,728);
    # among sum-404 pairs, 194 * 210 = 40,740 pads least (12 rows).
    assert spec == STTDSpec((194, 210), (16, 8), (60,), 2)
    assert suggest_spec(40728, 128, 60, 2, 2) == spec  # deterministic


@pytest.mark.parametrize(
    "num_rows, dim, rank, t, num_cores",
    [
        (40728, 128, 60, 2, 2),
        (36969, 128, 60, 2, 2),
        (40728, 128, 60, 2, 3),
        (1683, 64, 16, 4, 2),
        (1001, 64, 8, 2, 3),
        (40728, 128, 30, 1, 4),
        (97, 12, 6, 3, 2),
    ],
)
def test_suggest_spec_properties(num_rows, dim, rank, t, num_cores):
    spec = suggest_spec(num_rows, dim, rank, t, num_cores)
    assert len(spec.item_factors) == num_cores
    assert spec.num_rows >= num_rows
    assert spec.num_rows - num_rows <= 0.02 * num_rows + 1  # little padding
    assert spec.dim == dim
    assert spec.ranks == (rank,) * (num_cores - 1)
    assert spec.t == t and spec.dim_factors[-1] % t == 0
    assert all(r % t == 0 for r in spec.ranks)
    assert list(spec.item_factors) == sorted(spec.item_factors)
    root = num_rows ** (1 / num_cores)
    assert max(spec.item_factors) <= 1.5 * root and min(spec.item_factors) >= root / 1.5  # balanced
    assert suggest_spec(num_rows, dim, rank, t, num_cores) == spec


def test_suggest_spec_item_factors_are_optimal_by_brute_force():
    # Least sum of factors, then least padding, checked exhaustively for small tables.
    for num_rows in range(1, 300, 7):
        pairs = [(a, -(-num_rows // a)) for a in range(1, num_rows + 1)]
        best = min((a + b, a * b - num_rows) for a, b in pairs)
        got = suggest_spec(num_rows, 4, 2, 1, 2).item_factors
        assert (sum(got), math.prod(got) - num_rows) == best
    for num_rows in (50, 101, 343, 500):
        triples = [(a, b, -(-num_rows // (a * b))) for a in range(1, 40) for b in range(1, 40)]
        best = min((sum(f), math.prod(f) - num_rows) for f in triples)
        got = suggest_spec(num_rows, 8, 2, 1, 3).item_factors
        assert (sum(got), math.prod(got) - num_rows) == best


def test_suggest_spec_dim_factors():
    assert suggest_spec(100, 128, 4, 2, 3).dim_factors == (8, 4, 4)
    assert suggest_spec(100, 128, 16, 16, 2).dim_factors == (8, 16)  # t must divide J_K
    assert suggest_spec(100, 96, 4, 1, 2).dim_factors == (12, 8)


@pytest.mark.parametrize(
    "args, problem",
    [
        ((100, 128, 60, 7, 2), "divide rank"),
        ((100, 100, 8, 8, 2), "divide dim"),
        ((100, 128, 60, 2, 1), "num_cores"),
        ((0, 128, 60, 2, 2), "num_rows"),
    ],
)
def test_suggest_spec_errors(args, problem):
    with pytest.raises(ValueError, match=problem):
        suggest_spec(*args)
