"""train.table_update='rows': the row-sparse Adam update against a numpy Adam, and the row-sparse
train step against the dense one (equal on a run's first step, lazy on a row the step skips)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd import data as data_lib
from rec_kd.defaults import ConfigError
from rec_kd.train import members, row_sparse
from rec_kd.train.sharding import Placement
from tests.test_sampling import tiny_synthetic


def numpy_adam(param, mu, nu, grad, count, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam(W) update, float64, with `count` updates done before it (Kingma and Ba, Algorithm 1)."""
    mu = b1 * mu + (1 - b1) * grad
    nu = b2 * nu + (1 - b2) * grad**2
    t = count + 1
    step = (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps) + weight_decay * param
    return param - lr * step, mu, nu


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_rows_updates_the_given_rows_as_adam_does_and_leaves_the_rest(weight_decay):
    rng = np.random.default_rng(0)
    table, mu = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    nu = rng.uniform(0.1, 1.0, size=(7, 3))
    rows = np.array([0, 2, 5, 7, 7])  # 7 = the table's size: touched_rows' padding, dropped
    grads = rng.normal(size=(5, 3))
    got_table, got = row_sparse.adam_rows(
        jnp.asarray(table, jnp.float32),
        {"mu": jnp.asarray(mu, jnp.float32), "nu": jnp.asarray(nu, jnp.float32)},
        jnp.asarray(rows),
        jnp.asarray(grads, jnp.float32),
        jnp.asarray(4),
        0.01,
        weight_decay,
    )
    want_table, want_mu, want_nu = table.copy(), mu.copy(), nu.copy()
    for i, row in enumerate(rows[:3]):
        want_table[row], want_mu[row], want_nu[row] = numpy_adam(table[row], mu[row], nu[row], grads[i], 4, 0.01, weight_decay)
    np.testing.assert_allclose(np.asarray(got_table), want_table, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["mu"]), want_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got["nu"]), want_nu, rtol=1e-5, atol=1e-6)
    untouched = [1, 3, 4, 6]
    assert np.array_equal(np.asarray(got_table)[untouched], table[untouched].astype(np.float32))


def test_with_every_row_read_on_every_step_it_is_optax_adamw_schedule_and_weight_decay_included():
    import optax

    rng = np.random.default_rng(1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.01, 2, 5)
    optimizer = optax.adamw(schedule, weight_decay=0.05)
    table = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    want, state = table, optimizer.init(table)
    got, moments = table, row_sparse.init_moments(table)
    rows = jnp.array([0, 1, 2, 3, 4, 5, 6])  # every row, and one padding entry past the table
    for step in range(5):
        grads = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
        updates, state = optimizer.update(grads, state, want)
        want = optax.apply_updates(want, updates)
        block_grads = jnp.concatenate([grads, jnp.ones((1, 3))])  # the padding entry's gradient is dropped
        got, moments = row_sparse.adam_rows(got, moments, rows, block_grads, jnp.asarray(step), schedule(step), 0.05)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_touched_rows_are_sorted_distinct_with_the_padding_row_first_and_local_ids_index_them():
    items = jnp.array([[5, 3, 0], [9, 5, 0]], jnp.int32)
    candidates = jnp.array([3, 12, 9, 12], jnp.int32)
    rows, (local_items, local_candidates) = row_sparse.touched_rows([items, candidates], num_rows=13)
    assert rows.tolist() == [0, 3, 5, 9, 12] + [13] * 6  # 1 + 6 + 4 ids in all; padded with the out-of-range 13
    assert local_items.tolist() == [[2, 1, 0], [3, 2, 0]]
    assert local_candidates.tolist() == [1, 4, 3, 4]
    assert np.array_equal(np.asarray(rows)[np.asarray(local_candidates)], np.asarray(candidates))


def build(table_update: str):
    config = tiny_synthetic("teacher")
    config.train.table_update = table_update
    config.train.sampled.num_negatives = 50
    config.train.batch_size = 8
    data = data_lib.load_configured(config)
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    batches = data_lib.train_batches(data.train, config.train.batch_size, data_seed=0, epoch=0, buckets=buckets)
    placement = Placement.over_all_devices()
    return members.build_run(config, data, placement, None, len(batches)), batches, placement


def test_the_row_sparse_step_equals_the_dense_one_on_a_first_step_then_leaves_skipped_rows_alone():
    dense, batches, placement = build("dense")
    rows_run, _, _ = build("rows")
    first = placement.put_batch(batches[0])
    dense_state, dense_metrics = dense.step(dense.state, first)
    rows_state, rows_metrics = rows_run.step(rows_run.state, first)
    # Zero moments: dense Adam moves no row without a gradient, so both updates are the same.
    for got, want in zip(jax.tree.leaves(rows_state["params"]), jax.tree.leaves(dense_state["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=1e-6)
    assert float(rows_metrics["loss/total"][0]) == pytest.approx(float(dense_metrics["loss/total"][0]), rel=1e-6)
    assert float(rows_metrics["train/grad_norm"][0]) == pytest.approx(float(dense_metrics["train/grad_norm"][0]), rel=1e-5)

    # Second step: a row read on the first step but not on this one keeps its value and moments
    # under the row-sparse update; dense Adam moves it on its momentum.
    table_before = np.asarray(rows_state["params"]["model"]["item_embedding"])
    moments_before = jax.tree.map(np.asarray, rows_state["opt_state"]["table"])
    second = batches[1]
    rows_state, _ = rows_run.step(rows_state, placement.put_batch(second))
    dense_state, _ = dense.step(dense_state, placement.put_batch(second))
    read_first = set(np.unique(np.concatenate([batches[0]["items"].ravel(), batches[0]["targets"]])).tolist())
    read_second = set(np.unique(np.concatenate([second["items"].ravel(), second["targets"]])).tolist())
    table_after = np.asarray(rows_state["params"]["model"]["item_embedding"])
    moved = np.any(table_after != table_before, axis=1)
    # Sampled candidates are read too, so only rows read by neither batch nor any draw stay put;
    # every row the second batch reads moves, and at least one first-batch-only row does not.
    assert moved[sorted(read_second - {0})].all()
    skipped = [row for row in sorted(read_first - read_second - {0}) if not moved[row]]
    assert skipped, "some row read only by the first batch was not drawn on the second step"
    assert np.array_equal(np.asarray(rows_state["opt_state"]["table"]["mu"])[skipped], moments_before["mu"][skipped])
    dense_table = np.asarray(dense_state["params"]["model"]["item_embedding"])
    assert np.all(np.any(dense_table[skipped] != table_before[skipped], axis=1))


def test_bad_table_updates_fail_in_one_line_naming_the_field():
    config = tiny_synthetic("teacher")
    config.train.table_update = "sparse"
    with pytest.raises(ConfigError, match=r"^train.table_update='sparse': expected one of \('dense', 'rows'\)$"):
        row_sparse.table_update(config)
    with pytest.raises(ConfigError, match=r"^train.table_update='rows' needs train.loss='sampled' \(got 'full'\)"):
        row_sparse.check_rows_config("full", "dense")
    with pytest.raises(ConfigError, match=r"table.kind=sttd shares its parameters between items"):
        row_sparse.check_rows_config("sampled", "sttd")
