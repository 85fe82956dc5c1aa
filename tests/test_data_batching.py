"""Bucketed, padded batches: shapes, padding rows, every example exactly once, determinism."""

import collections

import numpy as np
import pytest

from rec_kd.data import bucket_lengths, eval_batches, num_train_batches, session_data, train_batches

BUCKETS = (4, 8)
MAX_LEN = 12


def make_split(lengths, max_len=MAX_LEN):
    """Example k has length lengths[k], items 100k + 1 .. 100k + length, target k + 1."""
    sequences = [np.arange(1, n + 1) + 100 * k for k, n in enumerate(lengths)]
    targets = np.arange(1, len(lengths) + 1)
    return session_data.make_split(session_data.prefixes_from_sequences(sequences, targets), max_len)


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    return make_split(rng.integers(1, 16, size=37))


def real_rows(batches):
    """Target -> (length, items) of every real row; also checks the padding rows."""
    rows = collections.Counter()
    for batch in batches:
        weights = batch["weights"]
        assert set(np.unique(weights)) <= {0.0, 1.0}
        pad = weights == 0
        assert not batch["items"][pad].any() and not batch["lengths"][pad].any()
        assert not batch["targets"][pad].any()
        for row in np.flatnonzero(~pad):
            rows[int(batch["targets"][row])] += 1
    return rows


def check_shapes(batches, batch_size, lengths_by_bucket):
    for batch in batches:
        B, L = batch["items"].shape
        assert B == batch_size and L in lengths_by_bucket
        assert batch["items"].dtype == np.int32 and batch["weights"].dtype == np.float32
        assert batch["lengths"].shape == batch["targets"].shape == batch["weights"].shape == (B,)
        real = batch["lengths"][batch["weights"] > 0]
        # L is the smallest bucket that holds the longest example in the batch.
        assert L == min(b for b in lengths_by_bucket if b >= real.max())


def test_bucket_lengths():
    assert bucket_lengths(50) == (8, 16, 32, 50)
    assert bucket_lengths(20) == (8, 16, 20)
    assert bucket_lengths(16) == (8, 16)
    assert bucket_lengths(5) == (5,)
    assert bucket_lengths(12, (8, 4, 4, 30)) == (4, 8, 12)


def test_make_split_keeps_last_items():
    split = make_split([3, 14], max_len=5)
    np.testing.assert_array_equal(split.items, [[1, 2, 3, 0, 0], [110, 111, 112, 113, 114]])
    np.testing.assert_array_equal(split.lengths, [3, 5])
    np.testing.assert_array_equal(split.full_lengths, [3, 14])


def test_train_batches_cover_every_example_once(split):
    batches = train_batches(split, 5, data_seed=3, epoch=0, buckets=BUCKETS)
    check_shapes(batches, 5, (4, 8, 12))
    assert real_rows(batches) == collections.Counter(range(1, 38))
    per_bucket = np.bincount(np.searchsorted([4, 8, 12], split.lengths), minlength=3)
    assert len(batches) == sum(-(-n // 5) for n in per_bucket)
    assert len(batches) == num_train_batches(split, 5, BUCKETS)
    assert sum(int(b["weights"].sum()) for b in batches) == 37


def test_batch_rows_are_the_split_rows(split):
    for batch in train_batches(split, 4, data_seed=0, epoch=1, buckets=BUCKETS):
        L = batch["items"].shape[1]
        for row in np.flatnonzero(batch["weights"]):
            k = batch["targets"][row] - 1
            np.testing.assert_array_equal(batch["items"][row], split.items[k, :L])
            assert not split.items[k, L:].any()
            assert batch["lengths"][row] == split.lengths[k]


def test_order_depends_only_on_data_seed_and_epoch(split):
    def order(**kw):
        return [b["targets"].tolist() for b in train_batches(split, 4, buckets=BUCKETS, **kw)]

    assert order(data_seed=1, epoch=2) == order(data_seed=1, epoch=2)
    assert order(data_seed=1, epoch=2) != order(data_seed=1, epoch=3)
    assert order(data_seed=1, epoch=2) != order(data_seed=2, epoch=2)


def test_single_bucket_and_exact_multiple():
    split = make_split([1, 2, 3, 4])
    batches = train_batches(split, 2, data_seed=0, epoch=0, buckets=(4,))
    assert len(batches) == 2 and all(b["weights"].all() for b in batches)
    assert all(b["items"].shape == (2, 4) for b in batches)


def test_eval_batches_in_order_with_padding(split):
    batches = list(eval_batches(split, 6, buckets=BUCKETS))
    check_shapes(batches, 6, (4, 8, 12))
    assert real_rows(batches) == collections.Counter(range(1, 38))
    seen = [int(t) for b in batches for t, w in zip(b["targets"], b["weights"], strict=False) if w]
    bucket = np.searchsorted([4, 8, 12], split.lengths)
    expected = [k + 1 for b in range(3) for k in np.flatnonzero(bucket == b)]
    assert seen == expected  # bucket by bucket, file order within a bucket


def test_eval_batch_size_larger_than_split():
    split = make_split([2, 9])
    batches = list(eval_batches(split, 8, buckets=BUCKETS))
    assert [b["items"].shape for b in batches] == [(8, 4), (8, 12)]
    assert [b["weights"].tolist() for b in batches] == [[1.0] + [0.0] * 7] * 2


def test_empty_split():
    split = make_split([])
    assert train_batches(split, 4, data_seed=0, epoch=0) == []
    assert list(eval_batches(split, 4)) == []
    assert num_train_batches(split, 4) == 0
