"""Readers for per-user sequences, split leave-one-out: text lines and RecBole `.inter` files.

- User-sequence text: `u i1 i2 ...` lines (Amazon Beauty as staged here) or SASRec's `u i` lines.
  Both are read the same way: each line appends its items to user u's sequence, in file order.
- RecBole atomic `.inter` files: a tab-separated header such as
  `user_id:token  item_id:token  rating:float  timestamp:float`, then one interaction per row;
  each user's items are sorted by timestamp (ties keep file order).

Leave-one-out, for a user with n items s[0..n-1]: test = (s[:n-1], s[n-1]), valid =
(s[:n-2], s[n-2]), train = (s[:k], s[k]) for k = 1 .. n-3, shortest prefix first. The training
split's clicks are s[:n-2]. Users come in order of first appearance; item ids are kept as written
(positive integers), never remapped.

The embedded default dataset is MovieLens-100k from the RecBole 1.2.1 wheel, found through package
metadata without importing recbole (which would pull in PyTorch).
"""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np

from rec_kd.data import session_data
from rec_kd.data.session_data import DataError, SessionData

MOVIELENS_100K_IN_WHEEL = "recbole/dataset_example/ml-100k/ml-100k.inter"
INTER_REQUIRED_FIELDS = ("user_id", "item_id", "timestamp")


def movielens_100k_path() -> str:
    """Path of ml-100k.inter inside the installed recbole wheel (recbole itself is not imported)."""
    install_hint = "install it with: pip install --no-deps recbole==1.2.1"
    try:
        distribution = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"{MOVIELENS_100K_IN_WHEEL}: recbole is not installed; {install_hint}") from None
    path = str(distribution.locate_file(MOVIELENS_100K_IN_WHEEL))
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found in recbole {distribution.version}; {install_hint}")
    return path


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def parse_item_id(token: str, path: str, line_number: int) -> int:
    """A positive integer item id, or a DataError naming the file and line."""
    try:
        item = int(token)
    except ValueError:
        raise DataError(f"{path}: line {line_number}: item id {token!r} is not an integer") from None
    if not 1 <= item <= session_data.INT32_MAX:
        raise DataError(f"{path}: line {line_number}: item id {item} must be >= 1 (0 is padding)")
    return item


def read_user_sequence_lines(path: str) -> list[list[int]]:
    """`u i1 i2 ...` or `u i` lines -> one item list per user, users in order of first appearance."""
    by_user: dict[str, list[int]] = {}
    for line_number, line in enumerate(_read_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue  # blank lines carry nothing
        if len(tokens) == 1:
            raise DataError(f"{path}: line {line_number}: user {tokens[0]} has no items")
        items = [parse_item_id(t, path, line_number) for t in tokens[1:]]
        by_user.setdefault(tokens[0], []).extend(items)
    return list(by_user.values())


def _parse_inter_header(line: str, path: str) -> dict[str, int]:
    """Column index of each field name in a RecBole header (`name:type` fields, tab-separated)."""
    columns = {}
    for index, field in enumerate(line.split("\t")):
        name, colon, kind = field.strip().partition(":")
        if not colon or not name or not kind:
            raise DataError(f"{path}: malformed header: field {field!r} is not name:type")
        columns[name] = index
    missing = [f for f in INTER_REQUIRED_FIELDS if f not in columns]
    if missing:
        raise DataError(f"{path}: malformed header: missing {', '.join(missing)} (got {line.strip()!r})")
    return columns


def read_inter_sequences(path: str) -> list[list[int]]:
    """A RecBole `.inter` file -> one item list per user, sorted by timestamp (stable)."""
    lines = _read_lines(path)
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: malformed header: the file is empty")
    columns = _parse_inter_header(lines[0], path)
    num_fields = len(lines[0].split("\t"))
    user_col, item_col, time_col = (columns[f] for f in INTER_REQUIRED_FIELDS)
    events: dict[str, list[tuple[float, int]]] = {}
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != num_fields:
            raise DataError(f"{path}: line {line_number}: expected {num_fields} tab-separated fields, got {len(fields)}")
        item = parse_item_id(fields[item_col].strip(), path, line_number)
        try:
            timestamp = float(fields[time_col])
        except ValueError:
            raise DataError(f"{path}: line {line_number}: timestamp {fields[time_col]!r} is not a number") from None
        events.setdefault(fields[user_col].strip(), []).append((timestamp, item))
    # sorted() is stable, so equal timestamps keep their file order.
    return [[item for _, item in sorted(user_events, key=lambda e: e[0])] for user_events in events.values()]


def leave_one_out(
    name: str,
    sequences: list[list[int]],
    *,
    max_len: int,
    hot_fraction: float,
    hot_counting: str,
) -> SessionData:
    """Splits every user's sequence: last item test, second to last valid, the rest train."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)  # (U,)
    flat = np.fromiter((i for s in sequences for i in s), np.int64, int(lengths.sum()))
    user_starts = np.cumsum(lengths) - lengths  # (U,)

    def examples_at(users: np.ndarray, prefix_lengths: np.ndarray) -> session_data.Prefixes:
        starts = user_starts[users]
        return session_data.Prefixes(flat, starts, prefix_lengths, flat[starts + prefix_lengths])

    has_test, has_valid = lengths >= 2, lengths >= 3
    test = examples_at(np.flatnonzero(has_test), lengths[has_test] - 1)
    valid = examples_at(np.flatnonzero(has_valid), lengths[has_valid] - 2)
    train_counts = np.maximum(lengths - 3, 0)  # (U,) training examples per user
    train_users = np.repeat(np.arange(len(lengths)), train_counts)
    # Prefix lengths 1 .. n-3 for each user, in order.
    train_prefix_lengths = np.arange(train_users.shape[0]) - np.repeat(np.cumsum(train_counts) - train_counts, train_counts) + 1
    train = examples_at(train_users, train_prefix_lengths)
    click_lengths = np.maximum(lengths - 2, 0)
    train_clicks = flat[session_data.window_positions(user_starts, click_lengths)[1]]
    return session_data.build_session_data(
        name,
        train=train,
        valid=valid,
        test=test,
        train_clicks=train_clicks,
        num_train_sessions=len(sequences),
        max_len=max_len,
        hot_fraction=hot_fraction,
        hot_counting=hot_counting,
    )


def _default_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def load_user_sequences(
    path: str,
    *,
    max_len: int = 50,
    valid_fraction: float = 0.1,
    hot_fraction: float = 0.2,
    hot_counting: str = "clicks",
    name: str | None = None,
) -> SessionData:
    """Reads `u i1 i2 ...` (or SASRec `u i`) lines and splits them leave-one-out.

    valid_fraction is accepted for a uniform signature; leave-one-out does not use it.
    """
    session_data.check_common_args(max_len, valid_fraction, hot_fraction, hot_counting)
    return leave_one_out(
        name or _default_name(path),
        read_user_sequence_lines(path),
        max_len=max_len,
        hot_fraction=hot_fraction,
        hot_counting=hot_counting,
    )


def load_inter(
    path: str,
    *,
    max_len: int = 50,
    valid_fraction: float = 0.1,
    hot_fraction: float = 0.2,
    hot_counting: str = "clicks",
    name: str | None = None,
) -> SessionData:
    """Reads a RecBole `.inter` file and splits each user's time-ordered items leave-one-out.

    valid_fraction is accepted for a uniform signature; leave-one-out does not use it.
    """
    session_data.check_common_args(max_len, valid_fraction, hot_fraction, hot_counting)
    return leave_one_out(
        name or _default_name(path),
        read_inter_sequences(path),
        max_len=max_len,
        hot_fraction=hot_fraction,
        hot_counting=hot_counting,
    )
