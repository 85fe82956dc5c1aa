"""Raw event CSV -> sessions with SR-GNN's preprocessing rules, on a hand-made log.

tests/fixtures/tiny_events.csv, key by key (item:time):
  A  a:0 b:10 c:20, then after a long gap a:5000 b:5010
  B  b:100 c:110 d:120
  C  x:200                      (one click: dropped before items are counted)
  D  e:300 a:310                (e is seen once: dropped, leaving one click)
  H  a b c d a b at 400..450    (six clicks: over max_session_length=5)
  E  c:9000 a:9010 z:9020 b:9030 (z is seen once)
  F  y:9100 y:9110 c:9120       (y is never in train: one click left)
  G  d:9200 y:9210 a:9220
With test_window_seconds=1000 the split time is 9220 - 1000: E, F, G are test.
"""

from pathlib import Path

import numpy as np
import pytest

from rec_kd.data import DataError, load_raw_events

EVENTS = str(Path(__file__).parent / "fixtures" / "tiny_events.csv")
RULES = dict(
    session_gap_seconds=1800,
    min_item_count=2,
    min_session_length=2,
    max_session_length=5,
    test_window_seconds=1000,
)


def test_sessions_split_renumbered_and_expanded():
    data = load_raw_events(EVENTS, **RULES, valid_fraction=0.34, max_len=3)
    # Train sessions by time: A1 [a b c] (20), B [b c d] (120), A2 [a b] (5010); a=1 b=2 c=3 d=4.
    # floor(0.34 * 3) = 1: A2 is validation.
    assert data.name == "tiny_events"
    assert data.num_train_sessions == 3
    np.testing.assert_array_equal(data.train.items, [[1, 2, 0], [1, 0, 0], [2, 3, 0], [2, 0, 0]])
    np.testing.assert_array_equal(data.train.targets, [3, 2, 4, 3])
    np.testing.assert_array_equal(data.valid.items, [[1, 0, 0]])
    np.testing.assert_array_equal(data.valid.targets, [2])
    # Test: E -> [c a b] = [3 1 2]; G -> [d a] = [4 1]; F is dropped (only c is left).
    np.testing.assert_array_equal(data.test.items, [[3, 1, 0], [3, 0, 0], [4, 0, 0]])
    np.testing.assert_array_equal(data.test.targets, [2, 1, 1])
    assert data.num_items == 4
    np.testing.assert_array_equal(data.item_counts, [0, 1, 2, 2, 1])  # clicks of A1 and B


def test_min_prefix_length_two():
    data = load_raw_events(EVENTS, **RULES, valid_fraction=0.5, min_prefix_length=2)
    # A2 [a b] gives no prefix of length 2, so only A1 and B count as sessions; B is validation.
    assert data.num_train_sessions == 2
    np.testing.assert_array_equal(data.train.items[:, :2], [[1, 2]])
    np.testing.assert_array_equal(data.train.targets, [3])
    np.testing.assert_array_equal(data.valid.targets, [4])
    np.testing.assert_array_equal(data.test.items[:, :2], [[3, 1]])  # G [d a] is too short
    np.testing.assert_array_equal(data.test.targets, [2])


def test_without_session_gap():
    rules = dict(RULES, session_gap_seconds=None)
    data = load_raw_events(EVENTS, **rules, valid_fraction=0.0)
    # B [b c d] (120) then A [a b c a b] (5010): b=1 c=2 d=3 a=4.
    assert data.num_train_sessions == 2
    np.testing.assert_array_equal(data.train.targets, [3, 2, 1, 4, 2, 1])
    np.testing.assert_array_equal(data.train.items[3], [4, 1, 2] + [0] * 47)


def test_max_session_keys_and_default_item_count():
    rules = dict(RULES, max_session_keys=2)
    data = load_raw_events(EVENTS, **rules)
    # Keys A and B only; the last time is 5010, so A2 [a b] is the test session.
    assert data.num_train_sessions == 2
    np.testing.assert_array_equal(data.test.items[:, :1], [[1]])
    np.testing.assert_array_equal(data.test.targets, [2])
    with pytest.raises(DataError, match="no session is left"):
        load_raw_events(EVENTS, **dict(RULES, min_item_count=5, max_session_keys=2))


def test_time_unit(tmp_path):
    csv = tmp_path / "ms.csv"
    rows = ["timestamp,visitorid,itemid", "0,u,1", "1000,u,2", "2000,u,1", "3000,u,2"]
    csv.write_text("\n".join(rows + ["9000000,v,1", "9001000,v,2"]) + "\n")
    data = load_raw_events(
        str(csv),
        session_column="visitorid",
        item_column="itemid",
        time_column="timestamp",
        time_unit_seconds=0.001,
        min_item_count=1,
        test_window_seconds=3600,
        valid_fraction=0.0,
    )
    np.testing.assert_array_equal(data.train.targets, [2, 1, 2])
    np.testing.assert_array_equal(data.test.targets, [2])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "malformed header: the file is empty"),
        ("session_id,item_id\nA,a\n", "missing column timestamp"),
        ("session_id,item_id,timestamp\nA,a,soon\n", "line 2: timestamp 'soon' is not a number"),
        ("session_id,item_id,timestamp\nA,a\n", "line 2: expected 3 fields, got 2"),
    ],
)
def test_bad_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        load_raw_events(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_raw_events(str(tmp_path / "none.csv"))
