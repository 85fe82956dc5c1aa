"""The one value every reader returns: `SessionData`, and the shared code that builds it.

Every format (SR-GNN pickles, user sequences, RecBole `.inter`, raw event CSV) ends up as three
sets of (prefix, target) examples plus the clicks of the training split. This module turns those
into padded int32 arrays, the catalogue size and the hot-item mask, so the rules for truncation,
item ids and hot items live in exactly one place.

Item ids are never remapped: id 0 is padding, `num_items` is the largest id that occurs, and the
embedding table has `num_items + 1` rows.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import typing

import numpy as np

INT32_MAX = np.iinfo(np.int32).max
HOT_COUNTING_RULES = ("clicks", "prefixes")


class DataError(ValueError):
    """Bad input data: the message is one line that names the file and what is wrong with it."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """(prefix, target) examples, right-padded: example i's items are items[i, :lengths[i]]."""

    items: np.ndarray  # (n, max_len) int32, 0 after the real items; the last max_len items kept
    lengths: np.ndarray  # (n,) int32, real items after truncation, >= 1
    targets: np.ndarray  # (n,) int32 in [1, num_items]
    full_lengths: np.ndarray  # (n,) int32, prefix length before truncation

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.items.shape[1])

    def rows(self, selection: slice) -> Split:
        """The examples in `selection`, e.g. slice(start, stop)."""
        return Split(**{field.name: getattr(self, field.name)[selection] for field in dataclasses.fields(Split)})

    def head(self, n: int) -> Split:
        """The first n examples (smoke runs keep the real catalogue but fewer examples)."""
        return self.rows(slice(0, n))


def concatenate_splits(first: Split, second: Split) -> Split:
    """One split holding the examples of both (e.g. train + valid for a refit)."""
    if first.items.shape[1] != second.items.shape[1]:
        raise ValueError(f"splits of different max_len: {first.items.shape[1]} and {second.items.shape[1]}")
    return Split(
        **{field.name: np.concatenate([getattr(first, field.name), getattr(second, field.name)]) for field in dataclasses.fields(Split)}
    )


@dataclasses.dataclass(frozen=True, eq=False)
class SessionData:
    """A whole dataset: three splits, the catalogue size and the item statistics for distillation."""

    name: str  # the inspect name (tmall, retailrocket, yoochoose1_64, beauty, ml-100k) or folder name
    num_items: int  # largest item id in train or test; the table has num_items + 1 rows, row 0 = padding
    max_len: int
    train: Split
    valid: Split
    test: Split
    num_train_sessions: int  # sessions (or users) before the validation split
    item_counts: np.ndarray  # (num_items + 1,) int64, the counts the hot items were chosen by
    hot_mask: np.ndarray  # (num_items + 1,) bool, row 0 False

    @property
    def num_hot_items(self) -> int:
        return int(self.hot_mask.sum())

    def with_examples(self, num_train: int, num_eval: int) -> SessionData:
        """A smoke-sized slice: the first examples of each split, same catalogue and hot mask."""
        return dataclasses.replace(
            self,
            train=self.train.head(num_train),
            valid=self.valid.head(num_eval),
            test=self.test.head(num_eval),
        )


class Prefixes(typing.NamedTuple):
    """Ragged examples as windows into one flat array: prefix i is flat[starts[i]:starts[i] + lengths[i]].

    Windows let leave-one-out splits share one copy of each user's sequence instead of
    materialising every prefix.
    """

    flat: np.ndarray  # (total,) int64 item ids
    starts: np.ndarray  # (n,) int64
    lengths: np.ndarray  # (n,) int64, >= 1
    targets: np.ndarray  # (n,) int64

    def select(self, mask_or_index: np.ndarray) -> Prefixes:
        return Prefixes(
            self.flat,
            self.starts[mask_or_index],
            self.lengths[mask_or_index],
            self.targets[mask_or_index],
        )


def prefixes_from_sequences(sequences: list[np.ndarray], targets: np.ndarray) -> Prefixes:
    """Examples whose prefixes are given one by one (SR-GNN files, expanded raw sessions)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    flat = np.concatenate(sequences).astype(np.int64) if sequences else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if sequences else lengths
    return Prefixes(flat, starts, lengths, np.asarray(targets, dtype=np.int64))


def floor_fraction(fraction: float, n: int) -> int:
    """floor(fraction * n) on the decimal value the user wrote (0.29 * 100 is 29, not 28)."""
    return math.floor(decimal.Decimal(repr(float(fraction))) * n)


def window_positions(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For windows (start, length): the row of every covered position and its flat index."""
    rows = np.repeat(np.arange(len(lengths)), lengths)  # (total,)
    row_begin = np.repeat(np.cumsum(lengths) - lengths, lengths)
    offset_in_row = np.arange(rows.shape[0]) - row_begin
    return rows, np.repeat(starts, lengths) + offset_in_row


def make_split(prefixes: Prefixes, max_len: int) -> Split:
    """Pads the examples to (n, max_len) on the right, keeping each prefix's last max_len items."""
    n = len(prefixes.lengths)
    kept = np.minimum(prefixes.lengths, max_len)  # (n,)
    kept_starts = prefixes.starts + prefixes.lengths - kept
    rows, sources = window_positions(kept_starts, kept)
    columns = sources - np.repeat(kept_starts, kept)
    items = np.zeros((n, max_len), dtype=np.int32)
    items[rows, columns] = prefixes.flat[sources]
    return Split(
        items=items,
        lengths=kept.astype(np.int32),
        targets=prefixes.targets.astype(np.int32),
        full_lengths=prefixes.lengths.astype(np.int32),
    )


def count_items(train: Prefixes, train_clicks: np.ndarray, num_items: int, rule: str) -> np.ndarray:
    """Item frequencies for the hot/cold split.

    "clicks": every click of the training split once (our rule). "prefixes": every occurrence in
    every training prefix, targets not counted (the authors' `count_hot`), which over-weights the
    early items of long sessions.
    """
    if rule == "clicks":
        counted = train_clicks
    elif rule == "prefixes":
        counted = train.flat[window_positions(train.starts, train.lengths)[1]]
    else:
        raise ValueError(f"hot_counting must be one of {HOT_COUNTING_RULES}, got {rule!r}")
    return np.bincount(counted, minlength=num_items + 1).astype(np.int64)


def hot_item_mask(item_counts: np.ndarray, hot_fraction: float) -> np.ndarray:
    """The floor(hot_fraction * D) most frequent of the D counted items, ties to the lower id."""
    counted_ids = np.flatnonzero(item_counts[1:] > 0) + 1  # (D,) ascending ids
    num_hot = floor_fraction(hot_fraction, len(counted_ids))
    # lexsort: last key is primary; ascending id breaks ties between equal counts.
    by_frequency = counted_ids[np.lexsort((counted_ids, -item_counts[counted_ids]))]
    mask = np.zeros(item_counts.shape[0], dtype=bool)
    mask[by_frequency[:num_hot]] = True
    return mask


def check_common_args(max_len: int, valid_fraction: float, hot_fraction: float, hot_counting: str):
    if not (isinstance(max_len, (int, np.integer)) and max_len >= 1):
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    if not 0.0 <= hot_fraction <= 1.0:
        raise ValueError(f"hot_fraction must be in [0, 1], got {hot_fraction!r}")
    if hot_counting not in HOT_COUNTING_RULES:
        raise ValueError(f"hot_counting must be one of {HOT_COUNTING_RULES}, got {hot_counting!r}")


def build_session_data(
    name: str,
    *,
    train: Prefixes,
    valid: Prefixes,
    test: Prefixes,
    train_clicks: np.ndarray,
    num_train_sessions: int,
    max_len: int,
    hot_fraction: float,
    hot_counting: str,
) -> SessionData:
    """Assembles a `SessionData` from already-split examples (ids checked by the reader)."""
    id_arrays = [train.flat, valid.flat, test.flat, train.targets, valid.targets, test.targets]
    num_items = max((int(a.max()) for a in id_arrays if a.size), default=0)
    item_counts = count_items(train, train_clicks, num_items, hot_counting)
    return SessionData(
        name=name,
        num_items=num_items,
        max_len=max_len,
        train=make_split(train, max_len),
        valid=make_split(valid, max_len),
        test=make_split(test, max_len),
        num_train_sessions=int(num_train_sessions),
        item_counts=item_counts,
        hot_mask=hot_item_mask(item_counts, hot_fraction),
    )


def check_item_ids(ids: np.ndarray, path: str, what: str) -> None:
    """Item ids must be in [1, 2**31 - 1]: 0 is padding and the arrays are int32."""
    bad = np.flatnonzero((ids < 1) | (ids > INT32_MAX))
    if bad.size:
        raise DataError(f"{path}: {what} has item id {int(ids[bad[0]])}; ids must be in 1..{INT32_MAX}")


def dataset_statistics(data: SessionData) -> dict:
    """The `inspect` summary as a JSON-ready dict.

    Prefix lengths are over train + valid, before truncation; the hot click share is the hot
    items' part of `item_counts`.
    """
    train_valid_lengths = np.concatenate([data.train.full_lengths, data.valid.full_lengths])
    total_count = int(data.item_counts.sum())
    hot_count = int(data.item_counts[data.hot_mask].sum())
    return {
        "num_items": data.num_items,
        "num_train": len(data.train),
        "num_valid": len(data.valid),
        "num_test": len(data.test),
        "num_train_sessions": data.num_train_sessions,
        "avg_prefix_len": round(float(train_valid_lengths.mean()), 4) if train_valid_lengths.size else 0.0,
        "max_prefix_len": int(train_valid_lengths.max(initial=0)),
        "num_hot_items": data.num_hot_items,
        "hot_click_share": round(hot_count / total_count, 4) if total_count else 0.0,
    }


def split_item_counts(split: Split, num_items: int) -> np.ndarray:
    """(N + 1,) how often each item occurs in a split's examples: its prefixes' real positions and its targets.

    What a codes table's k-means weights items by (the phase's training split: train, or train + valid).
    """
    real = np.arange(split.items.shape[1])[None, :] < split.lengths[:, None]
    return np.bincount(np.concatenate([split.items[real], split.targets]), minlength=num_items + 1).astype(np.int64)
