"""rank_metrics and the split-level evaluator against a plain-numpy reference."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd import evaluation


def reference_metrics(scores: np.ndarray, targets: np.ndarray, ks=(5, 10, 20)) -> dict[str, float]:
    """Loop-per-example reference: rank = number of real non-target items scoring >= the target."""
    per_example = {f"{m}@{k}": [] for k in ks for m in ("hr", "mrr", "ndcg")}
    for row, target in zip(scores, targets, strict=False):
        rank = sum(1 for item in range(1, len(row)) if item != target and row[item] >= row[target])
        for k in ks:
            hit = rank < k
            per_example[f"hr@{k}"].append(1.0 if hit else 0.0)
            per_example[f"mrr@{k}"].append(1.0 / (rank + 1) if hit else 0.0)
            per_example[f"ndcg@{k}"].append(1.0 / math.log2(rank + 2) if hit else 0.0)
    return {name: float(np.mean(values)) for name, values in per_example.items()}


def test_rank_metrics_matches_reference_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(64, 40)).astype(np.float32)
    targets = rng.integers(1, 40, size=64)
    got = evaluation.rank_metrics(scores, targets)
    want = reference_metrics(scores, targets)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


def test_rank_metrics_ties_count_against_the_target():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 3, size=(50, 30)).astype(np.float32)  # many ties
    targets = rng.integers(1, 30, size=50)
    got = evaluation.rank_metrics(scores, targets)
    want = reference_metrics(scores, targets)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


def test_constant_scorer_scores_zero_and_padding_column_is_ignored():
    scores = np.zeros((4, 30), np.float32)
    scores[:, 0] = -100.0  # padding below everything: still must not matter
    got = evaluation.rank_metrics(scores, np.array([1, 5, 17, 29]))
    assert all(value == 0.0 for value in got.values())
    # Padding scored above the target does not push the target down.
    scores = np.zeros((1, 4), np.float32)
    scores[0] = [100.0, 3.0, 2.0, 1.0]
    got = evaluation.rank_metrics(scores, np.array([1]), ks=(1,))
    assert got == {"hr@1": 1.0, "mrr@1": 1.0, "ndcg@1": 1.0}


def test_hand_computed_ranks():
    scores = np.array([[0.0, 0.1, 0.9, 0.5, 0.7]], np.float32)  # target 3 has two items above it: rank 2
    got = evaluation.rank_metrics(scores, np.array([3]), ks=(2, 3))
    assert got == pytest.approx({"hr@2": 0.0, "mrr@2": 0.0, "ndcg@2": 0.0, "hr@3": 1.0, "mrr@3": 1 / 3, "ndcg@3": 0.5})


def test_weighted_sums_give_exact_split_means_and_cold_subset():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(12, 20)).astype(np.float32)
    targets = rng.integers(1, 20, size=12)
    weights = np.array([1.0] * 9 + [0.0] * 3, np.float32)  # last three are padding rows
    cold_mask = np.zeros(20, bool)
    cold_mask[10:] = True
    batches = [slice(0, 5), slice(5, 12)]
    sums = [
        evaluation.weighted_metric_sums(
            evaluation.target_ranks(jnp.asarray(scores[b]), jnp.asarray(targets[b])),
            jnp.asarray(targets[b]),
            jnp.asarray(weights[b]),
            jnp.asarray(cold_mask),
        )
        for b in batches
    ]
    totals = {key: float(sum(np.asarray(s[key]) for s in sums)) for key in sums[0]}
    overall = evaluation.means_from_sums(totals, "all")
    cold = evaluation.means_from_sums(totals, "cold")
    want_all = reference_metrics(scores[:9], targets[:9])
    cold_rows = [i for i in range(9) if cold_mask[targets[i]]]
    want_cold = reference_metrics(scores[cold_rows], targets[cold_rows])
    for name in want_all:
        assert overall[name] == pytest.approx(want_all[name], abs=1e-6)
        assert cold[name] == pytest.approx(want_cold[name], abs=1e-6)


def reference_ranks(scores: np.ndarray, targets: np.ndarray) -> list[int]:
    return [
        sum(1 for item in range(1, len(row)) if item != target and row[item] >= row[target])
        for row, target in zip(scores, targets, strict=True)
    ]


@pytest.mark.parametrize("chunk_size", [1, 7, 20, 64])  # one column a chunk, chunks that do not divide 20, one chunk, one larger chunk
def test_chunked_ranks_equal_the_reference_ties_included(chunk_size):
    rng = np.random.default_rng(3)
    scores = rng.integers(-3, 4, size=(9, 20)).astype(np.float32)  # integer scores: many ties
    scores[:, 0] = 100.0  # the padding column, above everything: never ranked
    targets = rng.integers(1, 20, size=9)
    padded = np.pad(scores, ((0, 0), (0, 64)), constant_values=1e9)  # columns past the catalogue score above all: never counted

    def column_scores(ids):
        return jnp.asarray(padded)[:, ids]

    got = evaluation.chunked_target_ranks(column_scores, jnp.asarray(targets), 20, chunk_size)
    assert np.asarray(got).tolist() == reference_ranks(scores, targets)
    assert np.asarray(got).tolist() == np.asarray(evaluation.target_ranks(jnp.asarray(scores), jnp.asarray(targets))).tolist()


def reference_top_k(scores: np.ndarray, k: int) -> list[list[int]]:
    """Loop reference: columns 1..C-1 by score, highest first, the lower id first among equal scores."""
    return [sorted(range(1, scores.shape[1]), key=lambda j: (-row[j], j))[:k] for row in scores]


@pytest.mark.parametrize("chunk_size", [1, 7, 20, 64])
def test_chunked_top_k_equals_the_reference_ties_included(chunk_size):
    rng = np.random.default_rng(4)
    scores = rng.integers(-3, 4, size=(9, 20)).astype(np.float32)  # integer scores: many ties
    scores[:, 0] = 100.0  # the padding column: never returned
    padded = np.pad(scores, ((0, 0), (0, 64)), constant_values=1e9)  # past the catalogue: never returned

    def column_scores(ids):
        return jnp.asarray(padded)[:, ids]

    got_scores, got_ids = evaluation.chunked_top_k(column_scores, 9, 20, chunk_size, 6)
    want = reference_top_k(scores, 6)
    assert np.asarray(got_ids).tolist() == want
    assert np.asarray(got_scores).tolist() == [[float(scores[b, j]) for j in row] for b, row in enumerate(want)]


def test_eval_chunk_size_by_catalogue_size_and_bad_settings():
    assert evaluation.eval_chunk_size(-1, evaluation.EVAL_FULL_MATRIX_MAX_ITEMS) == 0
    assert evaluation.eval_chunk_size(-1, evaluation.EVAL_FULL_MATRIX_MAX_ITEMS + 1) == evaluation.EVAL_CHUNK_ITEMS
    assert evaluation.eval_chunk_size(0, 10**7) == 0 and evaluation.eval_chunk_size(4096, 100) == 4096
    with pytest.raises(ValueError, match="train.eval_chunk_items=-2"):
        evaluation.eval_chunk_size(-2, 100)
