"""The item-table compressors of rec_kd/compress (besides STTD, tested in test_sttd.py).

Each kind is checked against a plain-numpy, row-at-a-time reference written from the papers'
definitions (not from the vectorised code): the full table, selected rows, the parameter count;
plus its promises (QR: every row unique), gradients to every parameter, and the budget sizing,
hand-computed at Tmall's sizes (40,728 rows, d = 128, the main STTD table's 191,160 parameters).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd.compress import KINDS, dense, hashing, lowrank, mixed_dim, qr

ROWS, DIM = 37, 6
HOT = np.zeros(ROWS, bool)
HOT[[3, 4, 10, 11, 12, 30]] = True  # 6 hot rows, row 0 (padding) cold

SPECS = {
    "lowrank": lowrank.LowRankSpec(ROWS, DIM, rank=3),
    "hash_trick": hashing.HashSpec(ROWS, DIM, buckets=7, num_hashes=1, item_weights=False),
    "hash_embeddings": hashing.HashSpec(ROWS, DIM, buckets=7, num_hashes=2, item_weights=True),
    "hash_two_unweighted": hashing.HashSpec(ROWS, DIM, buckets=7, num_hashes=2, item_weights=False),
    "qr_mult": qr.QRSpec(ROWS, DIM, modulus=5, combine="mult"),
    "qr_add": qr.QRSpec(ROWS, DIM, modulus=5, combine="add"),
    "qr_concat": qr.QRSpec(ROWS, DIM, modulus=5, combine="concat"),
    "mixed_dim": mixed_dim.MixedDimSpec(ROWS, DIM, hot_dim=4, cold_dim=2, hot_rows=mixed_dim.encode_rows(HOT)),
    "dense": dense.DenseSpec(ROWS, DIM),
}


def random_params(spec, seed=0):
    """Every parameter random (not the init), so the reference sees no special values."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32), spec.param_shapes())


def reference_row(spec, params, i: int) -> np.ndarray:
    """Row i from the definitions, one row at a time, in float64."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    if isinstance(spec, dense.DenseSpec):
        return p[i]
    if isinstance(spec, lowrank.LowRankSpec):
        return sum(p["items"][i, k] * p["basis"][k] for k in range(spec.rank))
    if isinstance(spec, hashing.HashSpec):
        row = np.zeros(spec.dim)
        for j, (a, b) in enumerate([(1103515245, 12345), (1664525, 1013904223)][: spec.num_hashes]):
            bucket = ((a * i + b) % (2**31 - 1)) % spec.buckets  # Python ints: no overflow
            row += (p["weights"][i, j] if spec.item_weights else 1.0) * p["buckets"][bucket]
        return row
    if isinstance(spec, qr.QRSpec):
        q, r = p["quotient"][i // spec.modulus], p["remainder"][i % spec.modulus]
        return {"mult": q * r, "add": q + r, "concat": np.concatenate([q, r])}[spec.combine]
    if isinstance(spec, mixed_dim.MixedDimSpec):
        is_hot = spec.hot_mask()
        hot = [row for row in range(spec.num_rows) if is_hot[row]]
        cold = [row for row in range(spec.num_rows) if not is_hot[row]]
        if is_hot[i]:
            return p["hot"][hot.index(i)] @ p["hot_projection"]
        return p["cold"][cold.index(i)] @ p["cold_projection"]
    raise AssertionError(spec)


def reference_param_count(spec) -> int:
    """The count from each method's formula."""
    if isinstance(spec, dense.DenseSpec):
        return ROWS * DIM
    if isinstance(spec, lowrank.LowRankSpec):
        return ROWS * spec.rank + spec.rank * DIM
    if isinstance(spec, hashing.HashSpec):
        return spec.buckets * DIM + (ROWS * spec.num_hashes if spec.item_weights else 0)
    if isinstance(spec, qr.QRSpec):
        width = DIM // 2 if spec.combine == "concat" else DIM
        return (math.ceil(ROWS / spec.modulus) + spec.modulus) * width
    if isinstance(spec, mixed_dim.MixedDimSpec):
        return 6 * spec.hot_dim + spec.hot_dim * DIM + 31 * spec.cold_dim + spec.cold_dim * DIM
    raise AssertionError(spec)


@pytest.mark.parametrize("name", SPECS)
def test_table_and_rows_match_the_reference(name):
    spec = SPECS[name]
    params = random_params(spec)
    table = np.asarray(jax.jit(spec.materialize)(params))
    reference = np.stack([reference_row(spec, params, i) for i in range(ROWS)])
    assert table.shape == (ROWS, DIM)
    np.testing.assert_allclose(table, reference, rtol=1e-5, atol=1e-5)
    ids = jnp.asarray([[0, 36, 3], [11, 5, 5]])
    np.testing.assert_allclose(np.asarray(spec.rows(params, ids)), reference[np.asarray(ids)], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SPECS)
def test_param_count_matches_formula_and_shapes(name):
    spec = SPECS[name]
    leaves = jax.tree.leaves(spec.init(jax.random.key(0), 0.1))
    assert spec.num_params() == reference_param_count(spec) == sum(leaf.size for leaf in leaves)
    assert [leaf.shape for leaf in leaves] == [leaf.shape for leaf in jax.tree.leaves(spec.param_shapes())]


@pytest.mark.parametrize("name", SPECS)
def test_init_gives_about_the_target_std(name):
    spec = SPECS[name]
    big = dataclass_at_rows(spec, 4001)
    table = np.asarray(big.materialize(big.init(jax.random.key(1), 0.1)))
    assert 0.07 < table[1:].std() < 0.13


def dataclass_at_rows(spec, rows: int):
    """The same kind with more rows (a steadier std estimate); mixed_dim keeps 1 in 6 rows hot."""
    if isinstance(spec, mixed_dim.MixedDimSpec):
        return dataclasses.replace(spec, num_rows=rows, hot_rows=mixed_dim.encode_rows(np.arange(rows) % 6 == 1))
    if isinstance(spec, hashing.HashSpec):
        return dataclasses.replace(spec, num_rows=rows, buckets=500)
    return dataclasses.replace(spec, num_rows=rows)


@pytest.mark.parametrize("name", SPECS)
def test_gradients_reach_every_parameter(name):
    spec = SPECS[name]
    params = random_params(spec)
    cotangent = jnp.asarray(np.random.default_rng(3).standard_normal((ROWS, DIM)), jnp.float32)
    grads = jax.grad(lambda p: jnp.sum(spec.materialize(p) * cotangent))(params)
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.asarray(grad) != 0), f"{name}: entries of {jax.tree_util.keystr(path)} get no gradient"


@pytest.mark.parametrize("combine", qr.COMBINES)
def test_qr_rows_are_all_distinct(combine):
    spec = qr.QRSpec(1000, 8, modulus=31, combine=combine)
    params = spec.init(jax.random.key(0), 0.1)
    table = np.asarray(spec.materialize(params))
    assert len(np.unique(table.round(7), axis=0)) == 1000
    # Structurally: changing quotient row q changes exactly the rows i // 31 == q, and remainder
    # row r exactly the rows i % 31 == r; so each row is the only one with its (q, r) pair.
    rows = np.arange(1000)
    for part, index, expected in (("quotient", 7, rows // 31 == 7), ("remainder", 30, rows % 31 == 30)):
        moved = {**params, part: params[part].at[index].add(1.0)}
        changed = np.any(np.asarray(spec.materialize(moved)) != table, axis=1)
        np.testing.assert_array_equal(changed, expected)


def test_plain_hashing_trick_shares_rows_exactly_where_hashes_collide():
    spec = SPECS["hash_trick"]
    table = np.asarray(spec.materialize(random_params(spec)))
    buckets = spec.bucket_ids()[0]
    for i in range(ROWS):
        for k in range(ROWS):
            assert np.array_equal(table[i], table[k]) == (buckets[i] == buckets[k])


# Tmall: 40,727 items + padding, d = 128; the main STTD table (169 x 241, J = 16 x 8, R = 60, t = 2).
TMALL_ROWS, TMALL_BUDGET = 40728, 191_160


def test_budget_sizing_at_tmall():
    assert lowrank.budget_options(TMALL_ROWS, 128, TMALL_BUDGET, {"rank": 0}) == {"rank": 4}  # 5 x 40,856 > budget
    # 2 x 40,728 item weights leave 109,704: 857 buckets of 128.
    assert hashing.budget_options(TMALL_ROWS, 128, TMALL_BUDGET, {"buckets": 0, "num_hashes": 2, "item_weights": True})["buckets"] == 857
    assert hashing.budget_options(TMALL_ROWS, 128, TMALL_BUDGET, {"buckets": 0, "num_hashes": 1, "item_weights": False})["buckets"] == 1493
    # m = 28: (ceil(40728 / 28) = 1455) + 28 = 1483 rows <= 1493; m = 27 needs 1509 + 27.
    assert qr.budget_options(TMALL_ROWS, 128, TMALL_BUDGET, {"modulus": 0, "combine": "mult"})["modulus"] == 28
    hot = np.arange(TMALL_ROWS) % 5 == 1  # 8,146 hot rows, 32,582 cold
    options = mixed_dim.budget_options(
        TMALL_ROWS, 128, TMALL_BUDGET, {"hot_dim": 0, "cold_dim": 0, "cold_ratio": 0.25, "hot_rows": mixed_dim.encode_rows(hot)}
    )
    # hot_dim 11, cold 3: 8146*11 + 11*128 + 32582*3 + 3*128 = 189,144; hot_dim 12 (cold 3) = 197,418.
    assert (options["hot_dim"], options["cold_dim"]) == (11, 3)
    for kind, options in (
        ("lowrank", {"rank": 4}),
        ("hash", {"buckets": 857}),
        ("qr", {"modulus": 28}),
    ):
        assert KINDS[kind].spec_from_options(TMALL_ROWS, 128, options).num_params() <= TMALL_BUDGET


def test_budget_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="lowrank.*cannot hold even rank 1"):
        lowrank.budget_options(TMALL_ROWS, 128, 1000, {"rank": 0})
    with pytest.raises(ValueError, match="qr.*below the smallest QR table"):
        qr.budget_options(TMALL_ROWS, 128, 1000, {"modulus": 0})
    with pytest.raises(ValueError, match="hash.*fewer than 2 buckets"):
        hashing.budget_options(TMALL_ROWS, 128, 1000, {"buckets": 0})


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda: hashing.HashSpec(10, 4, buckets=10), "buckets < rows"),
        (lambda: hashing.HashSpec(10, 4, buckets=3, num_hashes=3), "num_hashes must be 1 or 2"),
        (lambda: qr.QRSpec(10, 4, modulus=3, combine="max"), "combine must be one of"),
        (lambda: qr.QRSpec(10, 5, modulus=3, combine="concat"), "even width"),
        (lambda: lowrank.LowRankSpec(10, 4, rank=0), "rank must be a positive int"),
        (lambda: mixed_dim.MixedDimSpec(10, 4, 2, 1, hot_rows=mixed_dim.encode_rows(np.zeros(10, bool))), "at least one hot"),
        (lambda: mixed_dim.MixedDimSpec(20, 4, 2, 1, hot_rows=mixed_dim.encode_rows(np.ones(10, bool))), "need 3"),
    ],
)
def test_invalid_specs_raise(make, problem):
    with pytest.raises(ValueError, match=problem):
        make()


def test_hot_rows_round_trip():
    mask = np.random.default_rng(0).random(1001) < 0.2
    assert np.array_equal(mixed_dim.decode_rows(mixed_dim.encode_rows(mask), 1001), mask)
    spec = mixed_dim.MixedDimSpec(1001, 4, 2, 1, mixed_dim.encode_rows(mask))
    positions = spec.block_positions()
    assert sorted(positions.tolist()) == list(range(1001))  # a permutation
    assert np.all(positions[mask] < mask.sum()) and np.all(positions[~mask] >= mask.sum())


@pytest.mark.parametrize("name", SPECS)
def test_the_onnx_table_is_the_jax_table(name):
    """Each spec's onnx_table, alone in a graph, run by ONNX Runtime: every variant, no training."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from rec_kd.serve import export

    spec = SPECS[name]
    params = jax.tree.map(np.asarray, random_params(spec, seed=4))
    g = export.GraphBuilder(quantize=None)
    table = g.op("Identity", spec.onnx_table(g, params), out="table")
    output = helper.make_tensor_value_info(table, TensorProto.FLOAT, [ROWS, DIM])
    model = helper.make_model(
        helper.make_graph(g.nodes, "table", [], [output], g.initializers), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    (got,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    np.testing.assert_allclose(got, np.asarray(spec.materialize(params)), rtol=1e-6, atol=1e-6)
