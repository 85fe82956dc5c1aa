"""Fixed-shape batches: examples grouped by length bucket, padded with zero-weight rows.

Every batch has exactly `batch_size` rows and `L` columns, where L is the smallest bucket length
that holds its longest example, so the train step compiles once per bucket and short sessions do
not pay for `max_len`. A bucket's last partial batch is filled with padding rows (items 0,
length 0, target 0, weight 0) instead of being dropped, so every example counts exactly once.

The training order is a pure function of (`data_seed`, `epoch`), independent of the model seed,
so models that differ only in their seed see the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from rec_kd.data.session_data import Split

DEFAULT_BUCKETS = (8, 16, 32, 50)

Batch = dict[str, np.ndarray]  # items (B, L) int32, lengths/targets (B,) int32, weights (B,) float32


def bucket_lengths(max_len: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The bucket lengths below max_len, ascending, with max_len always last."""
    return tuple(sorted({int(b) for b in buckets if 0 < b < max_len})) + (int(max_len),)


def bucket_of_each_example(lengths: np.ndarray, lengths_by_bucket: tuple[int, ...]) -> np.ndarray:
    """(n,) index of the smallest bucket that holds each example."""
    return np.searchsorted(np.asarray(lengths_by_bucket), lengths, side="left")


def _batch_rows(example_ids: np.ndarray, batch_size: int) -> np.ndarray:
    """(num_batches, batch_size) example ids, the last row padded with -1."""
    num_batches = -(-len(example_ids) // batch_size)
    rows = np.full(num_batches * batch_size, -1, dtype=np.int64)
    rows[: len(example_ids)] = example_ids
    return rows.reshape(num_batches, batch_size)


def gather_batch(split: Split, example_ids: np.ndarray, length: int) -> Batch:
    """One batch of the given example ids (-1 = padding row), cut to `length` columns."""
    real = example_ids >= 0  # (B,)
    real_ids = example_ids[real]
    items = np.zeros((len(example_ids), length), dtype=np.int32)
    lengths = np.zeros(len(example_ids), dtype=np.int32)
    targets = np.zeros(len(example_ids), dtype=np.int32)
    items[real] = split.items[real_ids, :length]
    lengths[real] = split.lengths[real_ids]
    targets[real] = split.targets[real_ids]
    return {"items": items, "lengths": lengths, "targets": targets, "weights": real.astype(np.float32)}


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def num_train_batches(split: Split, batch_size: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Batches per epoch: the sum over buckets of ceil(examples in the bucket / batch_size)."""
    _check_batch_size(batch_size)
    lengths_by_bucket = bucket_lengths(split.max_len, buckets)
    per_bucket = np.bincount(bucket_of_each_example(split.lengths, lengths_by_bucket), minlength=len(lengths_by_bucket))
    return int(np.sum(-(-per_bucket // batch_size)))


def train_batches(
    split: Split,
    batch_size: int,
    *,
    data_seed: int,
    epoch: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> list[Batch]:
    """One epoch of shuffled batches: each example once, each batch from a single bucket.

    The examples are shuffled, grouped by bucket (keeping the shuffled order within a bucket), cut
    into batches, and the batches of all buckets are shuffled together.
    """
    _check_batch_size(batch_size)
    rng = np.random.default_rng([int(data_seed), int(epoch)])
    lengths_by_bucket = bucket_lengths(split.max_len, buckets)
    order = rng.permutation(len(split))  # (n,)
    buckets_in_order = bucket_of_each_example(split.lengths[order], lengths_by_bucket)  # (n,)
    planned = []  # (bucket, example ids) per batch
    for bucket in range(len(lengths_by_bucket)):
        ids = order[buckets_in_order == bucket]  # still in shuffled order
        planned.extend((bucket, row) for row in _batch_rows(ids, batch_size))
    batch_order = rng.permutation(len(planned))
    return [gather_batch(split, planned[i][1], lengths_by_bucket[planned[i][0]]) for i in batch_order]


def eval_batches(split: Split, batch_size: int, *, buckets: Sequence[int] = DEFAULT_BUCKETS) -> Iterator[Batch]:
    """Every example exactly once, bucket by bucket in file order, padded like training batches."""
    _check_batch_size(batch_size)
    lengths_by_bucket = bucket_lengths(split.max_len, buckets)
    bucket_ids = bucket_of_each_example(split.lengths, lengths_by_bucket)
    for bucket, length in enumerate(lengths_by_bucket):
        for row in _batch_rows(np.flatnonzero(bucket_ids == bucket), batch_size):
            yield gather_batch(split, row, length)
