"""Raw click logs (CSV of session or user id, item id, timestamp) -> sessions, SR-GNN style.

The preprocessing follows SR-GNN's `preprocess.py`, with its choices as parameters, in this order:

1. `max_session_keys`: keep only the events of the first N distinct session keys (file order).
2. Group events by session key, sort each group by time (ties keep file order); with
   `session_gap_seconds`, a gap longer than that starts a new session within a key.
3. Drop sessions shorter than `min_session_length`.
4. Drop the clicks on items seen fewer than `min_item_count` times (over the remaining sessions),
   then drop sessions shorter than `min_session_length` or longer than `max_session_length`.
5. A session's time is its last click. Sessions ending after `max_time - test_window_seconds` are
   test, the rest train. (SR-GNN drops a session ending exactly at the split time; here it is
   train.)
6. Sessions are sorted by time. Item ids are assigned from 1 in order of first appearance in the
   train sessions; test clicks on items unseen in train are dropped, and test sessions too short
   to give an example are dropped.
7. Prefix expansion: session s gives (s[:-i], s[-i]) for i = 1 .. len(s) - min_prefix_length,
   longest prefix first. The validation split is the last floor(valid_fraction * S) of the S train
   sessions that give an example.

Timestamps are numbers; `time_unit_seconds` converts them to seconds (0.001 for milliseconds).

Parameters believed to reproduce the staged benchmarks. UNVERIFIED: the raw Tmall and RetailRocket
files are not available here, so these are read from the upstream preprocessing descriptions, not
checked against the staged train/test files.

- Tmall (IJCAI-15 `dataset15.csv`, GCE-GNN `process_tmall.py`): session key = the SessionId
  column, `max_session_keys=120_000`, `session_gap_seconds=None`, `min_session_length=2`,
  `min_item_count=5`, `max_session_length=40`, `test_window_seconds=100`, `min_prefix_length=1`.
- RetailRocket (Kaggle `events.csv`, MTD preprocessing): keep `view` events only (filter the CSV
  first), session key = visitorid, `time_unit_seconds=0.001`, `session_gap_seconds=1800`,
  `min_session_length=3`, `min_item_count=5`, `max_session_length=None`,
  `test_window_seconds=7 * 86400`, `min_prefix_length=2`.
"""

from __future__ import annotations

import collections
import csv
import os

import numpy as np

from rec_kd.data import session_data
from rec_kd.data.session_data import DataError, SessionData

Session = tuple[float, list[str]]  # (time of the last click, raw item tokens in time order)


def read_events(path: str, session_column: str, item_column: str, time_column: str, delimiter: str) -> list[tuple[str, str, float]]:
    """(session key, item token, timestamp) per CSV row, in file order."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        try:
            rows = list(csv.reader(f, delimiter=delimiter))
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise DataError(f"{path}: malformed header: the file is empty")
    header = [name.strip() for name in rows[0]]
    wanted = {"session_column": session_column, "item_column": item_column, "time_column": time_column}
    missing = [f"{column} (the {option})" for option, column in wanted.items() if column not in header]
    if missing:
        raise DataError(f"{path}: malformed header: missing column {', '.join(missing)}; the header has {header}")
    key_col, item_col, time_col = (header.index(c) for c in (session_column, item_column, time_column))
    events = []
    for line_number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {line_number}: expected {len(header)} fields, got {len(row)}")
        try:
            timestamp = float(row[time_col])
        except ValueError:
            raise DataError(f"{path}: line {line_number}: timestamp {row[time_col]!r} is not a number") from None
        item = row[item_col].strip()
        if not item:
            raise DataError(f"{path}: line {line_number}: empty item id")
        events.append((row[key_col].strip(), item, timestamp))
    return events


def group_sessions(events: list[tuple[str, str, float]], session_gap_seconds: float | None) -> list[Session]:
    """Events -> sessions, in order of each key's first event; split on long gaps if asked."""
    by_key: dict[str, list[tuple[float, str]]] = {}
    for key, item, timestamp in events:
        by_key.setdefault(key, []).append((timestamp, item))
    sessions = []
    for clicks in by_key.values():
        clicks.sort(key=lambda c: c[0])  # stable: equal times keep file order
        current = [clicks[0]]
        for previous, click in zip(clicks, clicks[1:], strict=False):
            if session_gap_seconds is not None and click[0] - previous[0] > session_gap_seconds:
                sessions.append(current)
                current = []
            current.append(click)
        sessions.append(current)
    return [(s[-1][0], [item for _, item in s]) for s in sessions]


def drop_rare_items(sessions: list[Session], min_item_count: int) -> list[Session]:
    counts = collections.Counter(item for _, items in sessions for item in items)
    return [(t, [i for i in items if counts[i] >= min_item_count]) for t, items in sessions]


def keep_lengths(sessions: list[Session], min_length: int, max_length: int | None) -> list[Session]:
    return [(t, items) for t, items in sessions if len(items) >= min_length and (max_length is None or len(items) <= max_length)]


def expand_prefixes(sessions: list[list[int]], min_prefix_length: int) -> tuple[session_data.Prefixes, np.ndarray]:
    """SR-GNN expansion, longest prefix first; also returns each example's session index."""
    prefixes, targets, session_index = [], [], []
    for index, s in enumerate(sessions):
        for i in range(1, len(s) - min_prefix_length + 1):
            prefixes.append(np.asarray(s[:-i], dtype=np.int64))
            targets.append(s[-i])
            session_index.append(index)
    examples = session_data.prefixes_from_sequences(prefixes, np.asarray(targets, dtype=np.int64))
    return examples, np.asarray(session_index, dtype=np.int64)


def load_raw_events(
    csv_path: str,
    *,
    session_column: str = "session_id",
    item_column: str = "item_id",
    time_column: str = "timestamp",
    delimiter: str = ",",
    time_unit_seconds: float = 1.0,
    max_session_keys: int | None = None,
    session_gap_seconds: float | None = None,
    min_session_length: int = 2,
    min_item_count: int = 5,
    max_session_length: int | None = None,
    test_window_seconds: float = 86400.0,
    min_prefix_length: int = 1,
    max_len: int = 50,
    valid_fraction: float = 0.1,
    hot_fraction: float = 0.2,
    hot_counting: str = "clicks",
    name: str | None = None,
) -> SessionData:
    """Preprocesses a raw event CSV into sessions (steps in the module docstring) and splits them."""
    session_data.check_common_args(max_len, valid_fraction, hot_fraction, hot_counting)
    if min_prefix_length < 1:
        raise ValueError(f"min_prefix_length must be >= 1, got {min_prefix_length}")
    events = read_events(csv_path, session_column, item_column, time_column, delimiter)
    events = [(key, item, t * time_unit_seconds) for key, item, t in events]
    if max_session_keys is not None:
        kept_keys = set(list(dict.fromkeys(key for key, _, _ in events))[:max_session_keys])
        events = [e for e in events if e[0] in kept_keys]

    sessions = keep_lengths(group_sessions(events, session_gap_seconds), min_session_length, None)
    sessions = drop_rare_items(sessions, min_item_count)
    sessions = keep_lengths(sessions, min_session_length, max_session_length)
    if not sessions:
        raise DataError(f"{csv_path}: no session is left after preprocessing")

    split_time = max(t for t, _ in sessions) - test_window_seconds
    by_time = sorted(sessions, key=lambda s: s[0])  # stable
    min_example_length = min_prefix_length + 1
    train_tokens = [items for t, items in by_time if t <= split_time and len(items) >= min_example_length]
    item_ids: dict[str, int] = {}
    for items in train_tokens:
        for item in items:
            item_ids.setdefault(item, len(item_ids) + 1)
    train_sessions = [[item_ids[i] for i in items] for items in train_tokens]
    test_sessions = [[item_ids[i] for i in items if i in item_ids] for t, items in by_time if t > split_time]
    test_sessions = [s for s in test_sessions if len(s) >= min_example_length]

    train_and_valid, session_index = expand_prefixes(train_sessions, min_prefix_length)
    test, _ = expand_prefixes(test_sessions, min_prefix_length)
    num_sessions = len(train_sessions)
    num_valid = session_data.floor_fraction(valid_fraction, num_sessions)
    is_valid = session_index >= num_sessions - num_valid
    train_clicks = np.asarray([i for s in train_sessions[: num_sessions - num_valid] for i in s], dtype=np.int64)
    return session_data.build_session_data(
        name or os.path.splitext(os.path.basename(csv_path))[0],
        train=train_and_valid.select(~is_valid),
        valid=train_and_valid.select(is_valid),
        test=test,
        train_clicks=train_clicks,
        num_train_sessions=num_sessions,
        max_len=max_len,
        hot_fraction=hot_fraction,
        hot_counting=hot_counting,
    )
