"""rec_kd/data/synthetic.py: the generated sessions have the structure the docstring promises, are
deterministic from their seed, split like a benchmark, and are learnable (an oracle of the hidden
transitions beats popularity)."""

import numpy as np
import pytest

from rec_kd import defaults
from rec_kd.data import DataError, load_configured
from rec_kd.data import synthetic as sy

SMALL = sy.SyntheticSpec(num_items=500, num_events=20_000, num_clusters=10, successors=2, seed=3)


def transitions(flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(previous item, next item, whether the next item is already in the session) of every click after a first."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    previous, following, repeat = [], [], []
    for start, length in zip(starts, lengths, strict=True):
        session = flat[start : start + length]
        for k in range(1, length):
            previous.append(session[k - 1])
            following.append(session[k])
            repeat.append(session[k] in session[:k])
    return np.array(previous), np.array(following), np.array(repeat)


def test_exact_clicks_lengths_and_ids():
    flat, lengths, _ = sy.generate_sessions(SMALL)
    assert len(flat) == lengths.sum() == SMALL.num_events
    assert lengths.min() >= 2 and lengths.max() <= SMALL.max_session_length
    assert abs(lengths.mean() - SMALL.mean_length) < 0.3
    assert flat.min() >= 1 and flat.max() <= SMALL.num_items


def test_the_same_seed_gives_the_same_sessions_and_another_seed_others():
    first, lengths, _ = sy.generate_sessions(SMALL)
    again, lengths_again, _ = sy.generate_sessions(SMALL)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(lengths, lengths_again)
    other, _, _ = sy.generate_sessions(sy.SyntheticSpec(**{**SMALL.__dict__, "seed": 4}))
    assert not np.array_equal(first[:1000], other[:1000])


def test_without_repeats_every_transition_goes_to_a_successor_cluster():
    spec = sy.SyntheticSpec(**{**SMALL.__dict__, "repeat_prob": 0.0})
    flat, lengths, catalogue = sy.generate_sessions(spec)
    previous, following, _ = transitions(flat, lengths)
    successors = catalogue.successor_clusters[catalogue.cluster_of[previous]]  # (T, S)
    assert np.all((successors == catalogue.cluster_of[following][:, None]).any(axis=1))


def test_repeats_come_at_their_rate_and_popularity_is_a_power_law():
    spec = sy.SyntheticSpec(**{**SMALL.__dict__, "repeat_prob": 0.5, "num_clusters": 1, "successors": 1})
    flat, lengths, _ = sy.generate_sessions(spec)
    _, _, repeat = transitions(flat, lengths)
    assert repeat.mean() >= 0.5  # drawn repeats, plus fresh draws that happen to hit a held item
    counts = np.sort(np.bincount(flat, minlength=spec.num_items + 1)[1:])[::-1]
    # Zipf with exponent 1: the top item's weight is 1 / H_500 = 15% of all; the 100th's 100 times less.
    assert counts[0] / len(flat) == pytest.approx(1 / np.sum(1 / np.arange(1, 501)), rel=0.2)
    assert counts[0] > 30 * counts[99]


def test_splits_follow_time_and_every_target_is_the_next_click():
    data = sy.load_synthetic(SMALL, max_len=50, valid_fraction=0.1)
    flat, lengths, _ = sy.generate_sessions(SMALL)
    assert data.num_items == SMALL.num_items and data.item_counts.shape == (SMALL.num_items + 1,)
    num_sessions = len(lengths)
    num_test_sessions = int(SMALL.test_fraction * num_sessions)
    assert len(data.test) == int(np.sum(lengths[-num_test_sessions:] - 1))  # one example per click after the first
    assert len(data.train) + len(data.valid) + len(data.test) == SMALL.num_events - num_sessions
    first_test_start = int(np.sum(lengths[:-num_test_sessions]))
    test_session = flat[first_test_start : first_test_start + lengths[-num_test_sessions]]
    assert data.test.items[0, : data.test.lengths[0]].tolist() == test_session[:1].tolist()  # the first test prefix
    assert data.test.targets[0] == test_session[1]


def test_an_oracle_of_the_transitions_beats_popularity():
    """HR@20 on test: ranking the items of the last item's successor clusters by popularity, against
    popularity alone. The structure is there for a model to learn."""
    spec = sy.SyntheticSpec(num_items=2000, num_events=40_000, num_clusters=50, successors=2, repeat_prob=0.0, seed=1)
    data = sy.load_synthetic(spec)
    _, _, catalogue = sy.generate_sessions(spec)
    popularity = data.item_counts.astype(np.float64)
    popularity[0] = -1
    top_popular = np.argsort(-popularity)[:20]
    last = data.test.items[np.arange(len(data.test)), data.test.lengths - 1]
    popular_hits = np.isin(data.test.targets, top_popular).mean()
    oracle_hits = []
    for item, target in zip(last[:2000], data.test.targets[:2000], strict=True):
        allowed = np.isin(catalogue.cluster_of, catalogue.successor_clusters[catalogue.cluster_of[item]])
        oracle_hits.append(target in np.argsort(-np.where(allowed, popularity, -1))[:20])
    assert np.mean(oracle_hits) > 2 * popular_hits


@pytest.mark.parametrize(
    "field, value",
    [("num_items", 1), ("num_clusters", 0), ("successors", 11), ("repeat_prob", 1.0), ("mean_length", 1.5), ("test_fraction", 0.0)],
)
def test_bad_fields_are_refused_by_name(field, value):
    with pytest.raises(DataError, match=rf"^data\.synthetic\.{field}={value!r}: expected"):
        sy.generate_sessions(sy.SyntheticSpec(**{**SMALL.__dict__, field: value}))


def test_a_run_config_with_format_synthetic_reads_the_generated_data():
    config = defaults.get_config(defaults.CUSTOM, "teacher")
    config.data.format = "synthetic"
    config.data.synthetic.update(num_items=300, num_events=5000, num_clusters=5, seed=2)
    data = load_configured(config)
    assert data.name == "synthetic" and data.num_items == 300
    spec = sy.SyntheticSpec(**config.data.synthetic.to_dict())
    np.testing.assert_array_equal(data.test.targets, sy.load_synthetic(spec).test.targets)
