"""Which table row holds each item: the orders a structured item table (STTD, TT, QR) can be read in.

A compressed table builds row r from factor rows picked by r's digits (STTD: r // I_2 and r % I_2),
so the items that share factor rows are decided by the item -> row map. Benchmark ids number items
in order of first appearance, which puts popular early items on shared factor rows (docs/method.md,
"Where the student's HR@20 goes", part 3). Each function returns a (num_items + 1,) int array of
distinct rows, padding id 0 first.

- shuffled_item_rows: a seeded random map, independent of the data: the model's
  `table.row_order='shuffled'` (SeqRecModel.item_rows).
- popularity_rows, spread_rows: maps from the train split's clicks, measured by
  launch/row_order_probe.py and not (yet) a model option.
"""

import numpy as np

from rec_kd.data import session_data


def shuffled_item_rows(num_rows: int, num_items: int, seed: int) -> np.ndarray:
    """(num_items + 1,) int32 rows: padding id 0 keeps row 0, ids 1..N take distinct random rows in [1, num_rows).

    A numpy constant, so the jitted table gathers it like any index and export writes the same rows.
    """
    rows = np.random.default_rng(seed).permutation(np.arange(1, num_rows))[:num_items]
    return np.concatenate([[0], rows]).astype(np.int32)


def prefix_and_target_counts(data: session_data.SessionData) -> np.ndarray:
    """(N + 1,) occurrences of each item in the train split's prefixes, plus its count as a target.

    Not clicks: an item early in a session of n clicks appears in about n prefixes, so long
    sessions weigh more (`data.item_counts` with hot_counting='clicks' counts each click once).
    The probe's numbers in docs/method.md were measured with this count.
    """
    size = data.num_items + 1
    items = data.train.items[data.train.items > 0]
    return np.bincount(data.train.targets, minlength=size) + np.bincount(items, minlength=size)


def popularity_rows(counts: np.ndarray) -> np.ndarray:
    """(N + 1,) rows: the most clicked item on row 1, the next on row 2, ...; padding on row 0."""
    rows = np.empty(len(counts), np.int64)
    rows[np.argsort(-counts[1:], kind="stable") + 1] = np.arange(1, len(counts))
    rows[0] = 0
    return rows


def spread_rows(counts: np.ndarray, item_factors: tuple[int, int]) -> np.ndarray:
    """(N + 1,) rows of a 2-core table: the k-th most clicked id on core indices (k mod I_1, (k // I_1 + k mod I_1) mod I_2).

    Every run of I_1 consecutive popularity ranks gets distinct first and distinct second indices,
    so no two of the I_1 most clicked items share a factor row. Padding (id 0, no clicks) ranks
    first among the items without clicks (a stable sort); its row is never read for an item.
    """
    first, second = item_factors
    if len(counts) > first * second:
        raise ValueError(f"{len(counts)} ids do not fit a {first} x {second} table")
    by_count = np.argsort(-counts, kind="stable")
    k = np.arange(len(counts))
    rows = np.empty(len(counts), np.int64)
    rows[by_count] = (k % first) * second + (k // first + k % first) % second
    return rows
