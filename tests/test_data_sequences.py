"""User-sequence and RecBole .inter readers: leave-one-out on tiny fixtures, and MovieLens-100k."""

from pathlib import Path

import numpy as np

from rec_kd.data import load_dataset, load_inter, load_user_sequences, movielens_100k_path

FIXTURES = Path(__file__).parent / "fixtures"


def check_tiny_user_sequences(data):
    # Users: 10 -> [3, 1, 3, 4, 1, 5]; 20 -> [9, 2] + [6] (two lines); 30 -> [6, 5, 3].
    assert data.num_items == 9
    assert data.num_train_sessions == 3
    np.testing.assert_array_equal(data.train.items, [[3, 0, 0], [3, 1, 0], [3, 1, 3]])
    np.testing.assert_array_equal(data.train.targets, [1, 3, 4])
    np.testing.assert_array_equal(data.train.lengths, [1, 2, 3])
    np.testing.assert_array_equal(data.valid.items, [[1, 3, 4], [9, 0, 0], [6, 0, 0]])
    np.testing.assert_array_equal(data.valid.targets, [1, 2, 5])
    np.testing.assert_array_equal(data.valid.full_lengths, [4, 1, 1])
    np.testing.assert_array_equal(data.test.items, [[3, 4, 1], [9, 2, 0], [6, 5, 0]])
    np.testing.assert_array_equal(data.test.lengths, [3, 2, 2])
    np.testing.assert_array_equal(data.test.full_lengths, [5, 2, 2])
    np.testing.assert_array_equal(data.test.targets, [5, 6, 3])


def test_user_sequence_lines():
    data = load_user_sequences(str(FIXTURES / "tiny_user_sequences.txt"), max_len=3, hot_fraction=0.5)
    assert data.name == "tiny_user_sequences"
    check_tiny_user_sequences(data)
    # Train-split clicks (all but the last two items): [3, 1, 3, 4], [9], [6].
    np.testing.assert_array_equal(data.item_counts, [0, 1, 0, 2, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(np.flatnonzero(data.hot_mask), [1, 3])  # floor(0.5 * 5) = 2


def test_user_sequences_prefix_counting():
    path = str(FIXTURES / "tiny_user_sequences.txt")
    data = load_user_sequences(path, max_len=3, hot_fraction=0.5, hot_counting="prefixes")
    # Train prefixes [3], [3, 1], [3, 1, 3].
    np.testing.assert_array_equal(data.item_counts, [0, 2, 0, 4, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.flatnonzero(data.hot_mask), [3])  # floor(0.5 * 2) = 1


def test_sasrec_pair_lines_give_the_same_split(tmp_path):
    pairs = tmp_path / "pairs.txt"
    lines = [f"{u} {i}" for u, items in [(10, [3, 1, 3, 4]), (20, [9]), (30, [6, 5, 3])] for i in items]
    lines += ["10 1", "20 2", "10 5", "20 6"]  # interleaved users keep their own order
    pairs.write_text("\n".join(lines) + "\n")
    check_tiny_user_sequences(load_user_sequences(str(pairs), max_len=3))


def test_inter_sorted_by_timestamp():
    data = load_inter(str(FIXTURES / "tiny.inter"), max_len=5)
    # User 1: (300, 10) (100, 11) (200, 12) (200, 13) -> 11 12 13 10 (the tie keeps file order).
    # User 2: (50, 7) (60, 8) (10, 9) -> 9 7 8.
    assert data.num_items == 13
    assert data.num_train_sessions == 2
    np.testing.assert_array_equal(data.train.items, [[11, 0, 0, 0, 0]])
    np.testing.assert_array_equal(data.train.targets, [12])
    np.testing.assert_array_equal(data.valid.items, [[11, 12, 0, 0, 0], [9, 0, 0, 0, 0]])
    np.testing.assert_array_equal(data.valid.targets, [13, 7])
    np.testing.assert_array_equal(data.test.items, [[11, 12, 13, 0, 0], [9, 7, 0, 0, 0]])
    np.testing.assert_array_equal(data.test.targets, [10, 8])
    np.testing.assert_array_equal(np.flatnonzero(data.item_counts), [9, 11, 12])


def test_movielens_100k_from_the_recbole_wheel():
    path = movielens_100k_path()
    assert path.endswith("recbole/dataset_example/ml-100k/ml-100k.inter")
    data = load_dataset("ml-100k")
    # 943 users, 1,682 items, 100,000 ratings: every user has >= 20, so 100000 - 3 * 943 train.
    assert data.name == "ml-100k"
    assert data.num_items == 1682
    assert data.num_train_sessions == 943
    assert (len(data.train), len(data.valid), len(data.test)) == (97171, 943, 943)
    assert int(data.item_counts.sum()) == 100000 - 2 * 943


def test_beauty_matches_a_plain_reading(data_dir):
    data = load_dataset("beauty", data_dir)
    sequences = []
    with open(Path(data_dir) / "amazon_beauty_5core" / "Beauty.txt") as f:
        for line in f:
            sequences.append([int(t) for t in line.split()[1:]])
    assert data.num_items == 12101
    assert data.num_train_sessions == len(sequences) == 22363
    assert len(data.train) == 198502 - 3 * 22363
    np.testing.assert_array_equal(data.test.targets, [s[-1] for s in sequences])
    np.testing.assert_array_equal(data.valid.targets, [s[-2] for s in sequences])
    np.testing.assert_array_equal(data.test.full_lengths, [len(s) - 1 for s in sequences])
    longest = int(np.argmax([len(s) for s in sequences]))
    np.testing.assert_array_equal(data.test.items[longest], sequences[longest][-51:-1])
