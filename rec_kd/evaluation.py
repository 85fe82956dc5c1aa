"""Full-ranking evaluation: exact ranks of the target among every catalogue item, on device.

Ties count against the target (a constant scorer scores zero) and column 0, the padding item, is
never ranked. The evaluator streams a split through a jitted scorer batch by batch, so the
(examples x items) score matrix is never materialised whole, and keeps running sums of the
per-example metrics, weighted so that padding rows count for nothing.
"""

from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (5, 10, 20)
# train.eval_chunk_items=-1: catalogues up to this many columns are scored in one (B, N + 1) matrix
# (500 x 262,144 fp32 is 0.5 GB), larger ones in chunks of EVAL_CHUNK_ITEMS columns.
EVAL_FULL_MATRIX_MAX_ITEMS = 262_144
EVAL_CHUNK_ITEMS = 65_536


def eval_chunk_size(setting: int, num_columns: int) -> int:
    """Columns a chunk for train.eval_chunk_items = `setting` (0: the whole matrix, no chunks)."""
    if setting < -1:
        raise ValueError(f"train.eval_chunk_items={setting}: expected -1 (by catalogue size), 0 (no chunks) or a chunk size")
    if setting == -1:
        return EVAL_CHUNK_ITEMS if num_columns > EVAL_FULL_MATRIX_MAX_ITEMS else 0
    return setting


def target_ranks(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """0-based rank of each target: how many other real items score at least as high.

    Args:
      scores: (B, C) float; column 0 is padding and is ignored.
      targets: (B,) int in [1, C).
    Returns:
      (B,) int32; 0 means the target is strictly above every other item.
    """
    target_scores = jnp.take_along_axis(scores, targets[:, None], axis=1)  # (B, 1)
    item_ids = jnp.arange(scores.shape[1])[None, :]  # (1, C)
    competitors = (item_ids != 0) & (item_ids != targets[:, None])  # (B, C)
    return jnp.sum(competitors & (scores >= target_scores), axis=1, dtype=jnp.int32)


def chunked_target_ranks(column_scores: Callable, targets: jax.Array, num_columns: int, chunk_size: int) -> jax.Array:
    """target_ranks without a (B, C) matrix: the catalogue scanned in chunks of `chunk_size` columns.

    Why: at a million items and more, one batch's (B, C) scores no longer fit beside the model.
    Each chunk's scores are computed, used and dropped, so memory is (B, chunk_size).

    Args:
      column_scores: ids (chunk_size,) int32 -> (B, chunk_size) scores of those columns; ids past
        the catalogue (>= num_columns, in the last chunk) may score anything, they are never counted.
      targets: (B,) int in [1, num_columns).
      num_columns: C, the padding column 0 included.
    Returns:
      (B,) int32, target_ranks' ranks for the same scores: ties count against the target, column 0 is
      never ranked. Two passes: the target's score is read from the chunk that scores its
      competitors, the same computation, so a tie in the scores is a tie here.
    """
    num_chunks = -(-num_columns // chunk_size)
    offsets = jnp.arange(chunk_size, dtype=jnp.int32)
    batch = targets.shape[0]

    def target_score(total, chunk):
        ids = chunk * chunk_size + offsets
        scores = column_scores(ids)
        return total + jnp.sum(jnp.where(ids[None, :] == targets[:, None], scores, 0.0), axis=1), None

    target_scores, _ = jax.lax.scan(target_score, jnp.zeros((batch,), jnp.float32), jnp.arange(num_chunks))

    def count_above(count, chunk):
        ids = chunk * chunk_size + offsets
        scores = column_scores(ids)
        competitors = (ids[None, :] != 0) & (ids[None, :] < num_columns) & (ids[None, :] != targets[:, None])
        return count + jnp.sum(competitors & (scores >= target_scores[:, None]), axis=1, dtype=jnp.int32), None

    ranks, _ = jax.lax.scan(count_above, jnp.zeros((batch,), jnp.int32), jnp.arange(num_chunks))
    return ranks


def chunked_top_k(column_scores: Callable, batch: int, num_columns: int, chunk_size: int, k: int) -> tuple[jax.Array, jax.Array]:
    """((B, k) scores, (B, k) column ids) of the k best columns 1..C-1, the catalogue scanned `chunk_size` at a time.

    What `lax.top_k` over the whole (B, C) matrix gives, without that matrix: a running top-k is
    merged with each chunk's scores. The running entries come first in each merge and hold lower
    ids, so among equal scores the lower id wins, as in one top_k over the whole row. `column_scores`
    as in chunked_target_ranks; column 0 and ids past the catalogue are never returned.
    """
    if not 1 <= k <= num_columns - 1:
        raise ValueError(f"k = {k} must lie in [1, {num_columns - 1}], the catalogue's items")
    num_chunks = -(-num_columns // chunk_size)
    offsets = jnp.arange(chunk_size, dtype=jnp.int32)

    def merge(best, chunk):
        ids = chunk * chunk_size + offsets
        real = (ids != 0) & (ids < num_columns)
        scores = jnp.where(real[None, :], column_scores(ids), -jnp.inf)
        merged_scores = jnp.concatenate([best[0], scores], axis=1)
        merged_ids = jnp.concatenate([best[1], jnp.broadcast_to(ids, scores.shape)], axis=1)
        top_scores, index = jax.lax.top_k(merged_scores, k)
        return (top_scores, jnp.take_along_axis(merged_ids, index, axis=1)), None

    start = (jnp.full((batch, k), -jnp.inf, jnp.float32), jnp.zeros((batch, k), jnp.int32))
    (scores, ids), _ = jax.lax.scan(merge, start, jnp.arange(num_chunks))
    return scores, ids


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    return [f"{name}@{k}" for k in ks for name in ("hr", "mrr", "ndcg")]


def per_example_metrics(ranks: jax.Array, ks: Sequence[int] = DEFAULT_KS) -> dict[str, jax.Array]:
    """HR, MRR and NDCG at each k for every example, from 0-based ranks: {'hr@5': (B,), ...}."""
    ranks = ranks.astype(jnp.float32)
    metrics = {}
    for k in ks:
        hit = ranks < k
        metrics[f"hr@{k}"] = hit.astype(jnp.float32)
        metrics[f"mrr@{k}"] = jnp.where(hit, 1.0 / (ranks + 1.0), 0.0)
        metrics[f"ndcg@{k}"] = jnp.where(hit, 1.0 / jnp.log2(ranks + 2.0), 0.0)
    return metrics


def rank_metrics(scores, targets, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Batch means of HR/MRR/NDCG@k (fractions) for full-ranking scores.

    Args:
      scores: (B, C) float; column 0 is padding and never ranked.
      targets: (B,) int in [1, C).
    Returns:
      {'hr@5': ..., 'mrr@5': ..., 'ndcg@5': ..., ...} as Python floats.
    """
    ranks = target_ranks(jnp.asarray(scores), jnp.asarray(targets))
    return {name: float(jnp.mean(value)) for name, value in per_example_metrics(ranks, ks).items()}


def weighted_metric_sums(ranks, targets, weights, cold_mask, ks=DEFAULT_KS) -> dict[str, jax.Array]:
    """Weighted per-batch sums of every metric from the targets' 0-based ranks, overall and over cold-target examples.

    Returns scalars keyed 'all/hr@5', ..., 'cold/hr@5', ..., plus 'all/count' and 'cold/count';
    summing these over batches and dividing by the counts gives exact split-level means.
    """
    per_example = per_example_metrics(ranks, ks)
    cold_weights = weights * cold_mask[targets].astype(weights.dtype)
    sums = {"all/count": jnp.sum(weights), "cold/count": jnp.sum(cold_weights)}
    for name, value in per_example.items():
        sums[f"all/{name}"] = jnp.sum(weights * value)
        sums[f"cold/{name}"] = jnp.sum(cold_weights * value)
    return sums


def means_from_sums(totals: dict[str, float], prefix: str, ks=DEFAULT_KS) -> dict[str, float]:
    """Split-level means from accumulated sums; NaN where no example qualified (e.g. no cold targets)."""
    count = totals[f"{prefix}/count"]
    return {name: (totals[f"{prefix}/{name}"] / count if count > 0 else float("nan")) for name in metric_names(ks)}


def split_totals(
    metric_sums_fn: Callable[..., dict[str, jax.Array]],
    batches: Iterable[dict[str, np.ndarray]],
    put_batch: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]],
) -> dict[str, np.ndarray]:
    """Sums of a jitted `metric_sums_fn(batch) -> sums` over a whole split, in float64.

    Each value keeps the shape of one batch's sums (a scalar, or (N,) for N vmapped members).
    Device results are fetched once at the end so the host never waits on the device between batches.
    """
    device_sums = jax.device_get([metric_sums_fn(put_batch(batch)) for batch in batches])
    return {key: np.sum([np.asarray(sums[key], np.float64) for sums in device_sums], axis=0) for key in device_sums[0]}
