"""The real benchmark files in ../shared/data: exact counts, and splits and hot items checked against
an independent plain-Python reading of each folder's all_train_seq.txt (the raw training sessions
that train.txt was expanded from; the reader itself uses train.txt only).
"""

import collections
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rec_kd.data import load_dataset, num_train_batches, train_batches

REPO = Path(__file__).resolve().parents[1]

# name: (num_items, train + valid, test, sessions, train, valid, min prefix length)
EXPECTED = {
    "tmall": (40727, 351268, 25898, 65286, 290192, 61076, 1),
    "retailrocket": (36968, 433648, 15132, 126168, 393729, 39919, 2),
    "yoochoose1_64": (37483, 369859, 55898, 116167, 326660, 43199, 1),
}


@pytest.fixture(scope="module")
def datasets(data_dir):
    return {name: load_dataset(name, data_dir) for name in EXPECTED}


@pytest.fixture(scope="module")
def raw(data_dir):
    """name -> the raw training sessions (the staged all_train_seq.txt, trusted: see SHA256SUMS)."""
    sessions = {}
    for name in EXPECTED:
        with open(Path(data_dir) / name / "all_train_seq.txt", "rb") as f:
            sessions[name] = pickle.load(f)
    return sessions


def expand(sessions, min_prefix_length):
    """SR-GNN's prefix expansion as (full prefix length, target) pairs, longest prefix first."""
    return [(len(s) - i, s[-i]) for s in sessions for i in range(1, len(s) - min_prefix_length + 1)]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_counts(datasets, name):
    data = datasets[name]
    num_items, train_and_valid, test, sessions, train, valid, _ = EXPECTED[name]
    assert data.num_items == num_items
    assert len(data.train) + len(data.valid) == train_and_valid
    assert len(data.test) == test
    assert data.num_train_sessions == sessions
    assert (len(data.train), len(data.valid)) == (train, valid)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_validation_is_the_last_tenth_of_sessions(datasets, raw, name):
    data = datasets[name]
    sessions = raw[name]
    assert len(sessions) == EXPECTED[name][3]
    num_valid = len(sessions) // 10
    for split, chosen in ((data.train, sessions[:-num_valid]), (data.valid, sessions[-num_valid:])):
        full_lengths, targets = zip(*expand(chosen, EXPECTED[name][6]), strict=False)
        np.testing.assert_array_equal(split.targets, targets)
        np.testing.assert_array_equal(split.full_lengths, full_lengths)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_hot_items_match_a_plain_count(datasets, raw, name):
    data = datasets[name]
    train_sessions = raw[name][: len(raw[name]) - len(raw[name]) // 10]
    counts = collections.Counter(i for s in train_sessions for i in s)
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    np.testing.assert_array_equal(np.flatnonzero(data.hot_mask), sorted(ranked[: len(counts) // 5]))
    for item in (ranked[0], ranked[-1]):
        assert data.item_counts[item] == counts[item]
    assert int(data.item_counts.sum()) == sum(map(len, train_sessions))


def test_authors_prefix_counting(data_dir, raw):
    data = load_dataset("tmall", data_dir, hot_counting="prefixes")
    train_sessions = raw["tmall"][: len(raw["tmall"]) - len(raw["tmall"]) // 10]
    counts = collections.Counter(i for s in train_sessions for k in range(1, len(s)) for i in s[:k])
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    np.testing.assert_array_equal(np.flatnonzero(data.hot_mask), sorted(ranked[: len(counts) // 5]))


def test_retailrocket_truncation(datasets, raw):
    data = datasets["retailrocket"]
    full = np.concatenate([data.train.full_lengths, data.valid.full_lengths])
    assert int((full > 50).sum()) == 11931
    assert int((data.test.full_lengths > 50).sum()) == 228
    assert data.train.lengths.max() == 50 and data.train.full_lengths.max() == 284
    # The longest prefix (284 items, from the one 285-click session) keeps its last 50 items.
    k = int(np.argmax(data.train.full_lengths))
    (session,) = [s for s in raw["retailrocket"] if len(s) == 285]
    np.testing.assert_array_equal(data.train.items[k], session[-51:-1])
    assert data.train.targets[k] == session[-1]
    first = raw["retailrocket"][0]
    np.testing.assert_array_equal(data.train.items[0], first[:-1] + [0] * (51 - len(first)))


def test_yoochoose_keeps_test_items_unseen_in_train(datasets):
    data = datasets["yoochoose1_64"]
    train_items = set(np.unique(np.concatenate([data.train.items.ravel(), data.valid.items.ravel()])))
    train_items |= set(data.train.targets.tolist()) | set(data.valid.targets.tolist())
    train_items.discard(0)
    test_items = set(np.unique(data.test.items)) | set(data.test.targets.tolist())
    test_items.discard(0)
    assert len(train_items) == 17376
    assert len(test_items - train_items) == 369


def test_tmall_epoch_batches(datasets):
    split = datasets["tmall"].train
    batches = train_batches(split, 100, data_seed=0, epoch=0)
    assert len(batches) == num_train_batches(split, 100)
    assert int(sum(b["weights"].sum() for b in batches)) == len(split)
    assert {b["items"].shape[1] for b in batches} == {8, 16, 32, 50}


def run_inspect(*args):
    result = subprocess.run(
        [sys.executable, "-m", "rec_kd.data.inspect", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # the whole of stdout is one JSON object


def test_inspect_tmall(data_dir):
    stats = run_inspect("--dataset=tmall", f"--data_dir={data_dir}")
    assert stats == {
        "num_items": 40727,
        "num_train": 290192,
        "num_valid": 61076,
        "num_test": 25898,
        "num_train_sessions": 65286,
        "avg_prefix_len": 6.4705,  # 6.47 in the data README
        "max_prefix_len": 39,
        "num_hot_items": 7856,
        "hot_click_share": pytest.approx(0.5174, abs=1e-4),
    }


def test_inspect_srgnn_format_path(data_dir):
    stats = run_inspect("--format=srgnn", f"--path={Path(data_dir) / 'yoochoose1_64'}")
    assert stats["num_items"] == 37483
    assert stats["num_train"] + stats["num_valid"] == 369859 and stats["num_test"] == 55898
    assert stats["max_prefix_len"] == 145


def test_inspect_movielens():
    stats = run_inspect("--dataset=ml-100k")
    counts = (stats["num_items"], stats["num_train"], stats["num_valid"], stats["num_test"])
    assert counts == (1682, 97171, 943, 943)
