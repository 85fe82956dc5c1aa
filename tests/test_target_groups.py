"""rec_kd/experiments/target_groups.py: the groups and their metrics by hand, and the batched ranks against one plain-numpy pass."""

import jax
import numpy as np
import pytest

from rec_kd import defaults
from rec_kd.data import session_data
from rec_kd.defaults import ConfigError
from rec_kd.experiments import runs, target_groups
from rec_kd.models import build_model, init_model_params


def test_each_test_target_falls_in_its_group_by_its_train_and_valid_shares():
    # item 1: train share 3/6, never in valid -> steady; item 2: 2/6 vs 1/5 -> steady;
    # item 3: 1/6 vs 2/5 >= 2 x 1/6 -> rising; item 4: valid only -> new_in_valid; item 5: neither -> unseen.
    groups = target_groups.target_groups(
        train_targets=np.array([1, 1, 1, 2, 2, 3]),
        valid_targets=np.array([2, 4, 4, 3, 3]),
        test_targets=np.array([1, 2, 3, 4, 5, 3]),
        num_items=5,
        rising_factor=2.0,
    )
    assert {name: mask.tolist() for name, mask in groups.items()} == {
        "new_in_valid": [False, False, False, True, False, False],
        "rising": [False, False, True, False, False, True],
        "steady": [True, True, False, False, False, False],
        "unseen": [False, False, False, False, True, False],
    }


def test_group_metrics_by_hand():
    groups = {"a": np.array([True, True, False, False, False]), "b": np.array([False, False, True, True, True]), "empty": np.zeros(5, bool)}
    rows = target_groups.group_metrics(np.array([0, 25, 4, 19, 3]), groups, k=20)
    # hits at ranks 0, 4, 19, 3; reciprocal ranks 1, 0, 1/5, 1/20, 1/4.
    assert rows["a"] == pytest.approx({"share": 0.4, "hr@20": 0.5, "mrr@20": 0.5})
    assert rows["b"] == pytest.approx({"share": 0.6, "hr@20": 1.0, "mrr@20": (0.2 + 0.05 + 0.25) / 3})
    assert rows["empty"] == {"share": 0.0, "hr@20": 0.0, "mrr@20": 0.0}
    assert rows["all"] == pytest.approx({"share": 1.0, "hr@20": 0.8, "mrr@20": 1.5 / 5})


def untrained_model() -> runs.TrainedModel:
    """The smoke teacher over 30 items, freshly initialised: ranks to check, not to be good."""
    config = defaults.get_config("ml-100k", "teacher,smoke")
    model = build_model(config, 30)
    params = init_model_params(model, config.data.max_len, jax.random.key(3))
    return runs.TrainedModel(model=model, params=params, step=0, workdir="", config=config)


def test_batched_ranks_match_one_numpy_pass_over_every_example():
    trained = untrained_model()
    model, params, num_items, max_len = trained.model, trained.params, 30, trained.config.data.max_len
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6, size=7).astype(np.int32)
    items = np.zeros((7, max_len), np.int32)
    for row, length in enumerate(lengths):
        items[row, :length] = rng.integers(1, num_items + 1, size=length)
    targets = rng.integers(1, num_items + 1, size=7).astype(np.int32)
    split = session_data.Split(items=items, lengths=lengths, targets=targets, full_lengths=lengths)

    ranks = target_groups.ranks_on_split(trained, split, batch_size=4)  # two batches, the second padded

    scores = np.asarray(model.apply({"params": params}, items, lengths)["scores"])  # (7, N + 1)
    expected = []
    for row, target in enumerate(targets):
        others = np.delete(scores[row, 1:], target - 1)  # real items other than the target
        expected.append(int(np.sum(others >= scores[row, target])))
    np.testing.assert_array_equal(ranks, expected)


def test_a_repeat_bonus_ranks_each_held_item_that_much_higher_against_a_numpy_pass():
    trained = untrained_model()
    model, params, max_len = trained.model, trained.params, trained.config.data.max_len
    items = np.zeros((3, max_len), np.int32)
    items[0, :3], items[1, :2], items[2, :1] = [4, 9, 4], [7, 2], [5]
    lengths = np.array([3, 2, 1], np.int32)
    targets = np.array([9, 11, 5], np.int32)  # held, not held, held
    split = session_data.Split(items=items, lengths=lengths, targets=targets, full_lengths=lengths)
    scores = np.asarray(model.apply({"params": params}, items, lengths)["scores"])
    assert model.repeat_bonus == 0.0
    assert [bonus for bonus, _ in target_groups.with_repeat_bonuses(trained, [])] == [None]
    for bonus, boosted in target_groups.with_repeat_bonuses(trained, [0.5, 3.0]):
        assert boosted.model.repeat_bonus == bonus and boosted.params is params
        ranking = scores.copy()
        for row in range(3):
            ranking[row, np.unique(items[row, : lengths[row]])] += bonus
        expected = [int(np.sum(np.delete(ranking[row, 1:], t - 1) >= ranking[row, t])) for row, t in enumerate(targets)]
        np.testing.assert_array_equal(target_groups.ranks_on_split(boosted, split, batch_size=2), expected)
    assert target_groups.parse_bonuses(["0", "2.5"]) == [0.0, 2.5]
    with pytest.raises(ConfigError, match="numbers expected"):
        target_groups.parse_bonuses(["two"])
    for values in (["inf"], ["nan"], ["1", "1.0"]):  # a nan ranking, or two rows under one label
        with pytest.raises(ConfigError, match="distinct finite numbers expected"):
            target_groups.parse_bonuses(values)


def test_a_model_spec_names_its_checkpoint_or_defaults_to_best(tmp_path):
    assert target_groups.parse_model(f"{tmp_path}:select") == (str(tmp_path), "select")
    assert target_groups.parse_model(str(tmp_path)) == (str(tmp_path), "best")
    with pytest.raises(ConfigError, match="no such run folder"):
        target_groups.parse_model(f"{tmp_path}/missing:best")


def test_runs_named_alike_under_two_roots_keep_their_own_labels():
    models = [("/runs/odrec/tmall/main_s0", "best"), ("/archive/tmall/main_s0", "best"), ("/runs/odrec/tmall/main_s0", "select")]
    assert target_groups.model_labels(models) == ["/runs/odrec/tmall/main_s0:best", "/archive/tmall/main_s0:best", "tmall/main_s0:select"]
    with pytest.raises(ConfigError, match=r"the same model twice: \['/runs/odrec/tmall/main_s0:best'\]"):
        target_groups.model_labels([("/runs/odrec/tmall/main_s0", "best"), ("/runs/odrec/tmall/main_s0/", "best")])


def test_a_repeat_is_a_target_among_the_examples_own_items():
    items = np.array([[3, 5, 0, 0], [2, 0, 0, 0], [4, 4, 1, 0]], np.int32)
    lengths = np.array([2, 1, 3], np.int32)
    split = session_data.Split(items=items, lengths=lengths, targets=np.array([5, 3, 4], np.int32), full_lengths=lengths)
    groups = target_groups.repeat_groups(split)
    assert groups["repeat"].tolist() == [True, False, True]
    assert groups["new_to_session"].tolist() == [False, True, False]


def test_new_to_session_targets_are_cut_by_their_click_rank_with_ties_to_the_lower_id():
    items = np.array([[3, 0], [2, 0], [1, 0], [4, 0]], np.int32)
    lengths = np.array([1, 1, 1, 1], np.int32)
    split = session_data.Split(items=items, lengths=lengths, targets=np.array([3, 1, 4, 2], np.int32), full_lengths=lengths)
    counts = np.array([0, 5, 9, 5, 1])  # by clicks: item 2, then 1 and 3 tied (1 first), then 4
    groups = target_groups.most_clicked_new_groups(split, counts, top=2)
    # Example 0 repeats its item; the others' targets rank 1 (item 1), 3 (item 4) and 0 (item 2).
    assert groups["new_top2"].tolist() == [False, True, False, True]
    assert groups["new_beyond2"].tolist() == [False, False, True, False]
