"""SR-GNN reader on tiny hand-made pickles: exact arrays, session recovery, validation split, hot items."""

import lzma
import pickle

import numpy as np
import pytest

from rec_kd.data import load_srgnn, session_data
from rec_kd.data.srgnn import session_starts


def expand(sessions, min_prefix_length=1):
    """SR-GNN's expansion, written out as in the staged data's README."""
    seqs, targets = [], []
    for s in sessions:
        for i in range(1, len(s) - min_prefix_length + 1):
            seqs.append(s[:-i])
            targets.append(s[-i])
    return seqs, targets


def write_folder(folder, train, test, *, as_list=False, xz=False, protocol=3):
    folder.mkdir(parents=True, exist_ok=True)
    train_obj = list(train) if as_list else tuple(train)
    data = pickle.dumps(train_obj, protocol=protocol)
    if xz:
        (folder / "train.txt.xz").write_bytes(lzma.compress(data))
    else:
        (folder / "train.txt").write_bytes(data)
    (folder / "test.txt").write_bytes(pickle.dumps(tuple(test), protocol=protocol))
    return str(folder)


TRAIN_SESSIONS = [[1, 2, 3], [4, 2], [5, 1, 5, 6], [2, 3]]
TEST = ([[3, 1], [2]], [7, 4])


@pytest.fixture
def tiny(tmp_path):
    return write_folder(tmp_path / "tiny", expand(TRAIN_SESSIONS), TEST)


def test_expand_matches_readme_rule():
    assert expand([[1, 2, 3], [4, 2]]) == ([[1, 2], [1], [4]], [3, 2, 2])


def test_splits_exact_arrays(tiny):
    data = load_srgnn(tiny, max_len=2, valid_fraction=0.5, hot_fraction=0.5)
    assert data.name == "tiny"
    assert data.num_items == 7
    assert data.max_len == 2
    assert data.num_train_sessions == 4
    # floor(0.5 * 4) = 2 valid sessions: [5, 1, 5, 6] and [2, 3].
    np.testing.assert_array_equal(data.train.items, [[1, 2], [1, 0], [4, 0]])
    np.testing.assert_array_equal(data.train.lengths, [2, 1, 1])
    np.testing.assert_array_equal(data.train.targets, [3, 2, 2])
    np.testing.assert_array_equal(data.train.full_lengths, [2, 1, 1])
    # [5, 1, 5] keeps its last 2 items.
    np.testing.assert_array_equal(data.valid.items, [[1, 5], [5, 1], [5, 0], [2, 0]])
    np.testing.assert_array_equal(data.valid.lengths, [2, 2, 1, 1])
    np.testing.assert_array_equal(data.valid.targets, [6, 5, 1, 3])
    np.testing.assert_array_equal(data.valid.full_lengths, [3, 2, 1, 1])
    np.testing.assert_array_equal(data.test.items, [[3, 1], [2, 0]])
    np.testing.assert_array_equal(data.test.targets, [7, 4])
    for split in (data.train, data.valid, data.test):
        assert split.items.dtype == np.int32 and split.lengths.dtype == np.int32
        assert split.targets.dtype == np.int32 and split.full_lengths.dtype == np.int32


def test_hot_items_count_each_train_click(tiny):
    data = load_srgnn(tiny, valid_fraction=0.5, hot_fraction=0.5)
    # Train-split sessions [1, 2, 3] and [4, 2]: item 2 twice, items 1, 3, 4 once.
    np.testing.assert_array_equal(data.item_counts, [0, 1, 2, 1, 1, 0, 0, 0])
    # floor(0.5 * 4 distinct) = 2 hot: item 2, then the lowest id of the tied items, 1.
    np.testing.assert_array_equal(np.flatnonzero(data.hot_mask), [1, 2])
    assert data.item_counts.dtype == np.int64 and data.hot_mask.dtype == bool


def test_hot_items_authors_prefix_counting(tiny):
    data = load_srgnn(tiny, valid_fraction=0.5, hot_fraction=0.5, hot_counting="prefixes")
    # Train prefixes [1, 2], [1], [4]: item 1 twice, 2 and 4 once; targets are not counted.
    np.testing.assert_array_equal(data.item_counts, [0, 2, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.flatnonzero(data.hot_mask), [1])  # floor(0.5 * 3) = 1


def test_no_validation_and_list_layout_and_xz(tmp_path):
    folder = write_folder(tmp_path / "rr", expand(TRAIN_SESSIONS), TEST, as_list=True, xz=True)
    data = load_srgnn(folder, valid_fraction=0.0)
    assert len(data.valid) == 0 and data.valid.items.shape == (0, 50)
    assert len(data.train) == 7
    np.testing.assert_array_equal(data.train.targets, [3, 2, 2, 6, 5, 1, 3])


def test_valid_sessions_never_straddle(tmp_path):
    sessions = [[i, i + 1, i + 2, i + 3][: 2 + i % 3] for i in range(1, 21)]
    folder = write_folder(tmp_path / "s", expand(sessions), TEST)
    data = load_srgnn(folder, valid_fraction=0.3)
    num_valid = 6  # floor(0.3 * 20)
    expected_train = expand(sessions[:-num_valid])
    expected_valid = expand(sessions[-num_valid:])
    np.testing.assert_array_equal(data.train.targets, expected_train[1])
    np.testing.assert_array_equal(data.valid.targets, expected_valid[1])
    assert data.num_train_sessions == 20


def test_session_starts_on_lookalike_sessions():
    # Two identical sessions, and a chain broken by its target.
    seqs = [[1, 2], [1], [1, 2], [1], [1, 2], [1]]
    targets = [3, 2, 3, 2, 3, 5]
    np.testing.assert_array_equal(session_starts(seqs, targets), [1, 0, 1, 0, 1, 1])


def test_session_starts_min_prefix_two():
    # RetailRocket keeps prefixes of length >= 2: [1, 2, 3, 4] then [1, 2, 3].
    seqs, targets = expand([[1, 2, 3, 4], [1, 2, 3], [7, 8, 9]], min_prefix_length=2)
    assert seqs == [[1, 2, 3], [1, 2], [1, 2], [7, 8]]
    np.testing.assert_array_equal(session_starts(seqs, targets), [1, 0, 1, 1])


def test_protocol_4_pickles(tmp_path):
    folder = write_folder(tmp_path / "p4", expand(TRAIN_SESSIONS), TEST, protocol=4)
    assert load_srgnn(folder, valid_fraction=0.5).num_train_sessions == 4


def test_floor_fraction_uses_the_written_decimal():
    assert 0.29 * 100 < 29  # the float product would floor to 28
    assert session_data.floor_fraction(0.29, 100) == 29
    assert session_data.floor_fraction(0.1, 65286) == 6528


def test_with_examples_keeps_catalogue(tiny):
    data = load_srgnn(tiny, valid_fraction=0.5)
    small = data.with_examples(num_train=2, num_eval=1)
    assert (len(small.train), len(small.valid), len(small.test)) == (2, 1, 1)
    assert small.num_items == data.num_items
    np.testing.assert_array_equal(small.hot_mask, data.hot_mask)
    np.testing.assert_array_equal(small.train.targets, data.train.targets[:2])
