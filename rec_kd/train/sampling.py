"""The candidate set of a sampled-softmax step (train.loss='sampled') and each candidate's log Q.

Why: past a few hundred thousand items a full softmax's (B, N + 1) logits dominate a step (400 MB
at 1M items and batch 100). The sampled softmax scores each session's target against a shared set
of candidates: the batch's other targets (in-batch negatives, free: their rows are gathered anyway)
and `num_negatives` ids drawn from a proposal (uniform, or by training-target popularity). The
log-Q correction subtracts from every logit the log of that item's expected count in the set,

    log Q(j) = log(B p(j) [in_batch] + M q(j)),

p the training targets' frequencies (the distribution in-batch negatives come from), q the
proposal, so popular items are not over-punished for being sampled more often (Yi et al., RecSys
2019; Bengio and Senecal 2008).
"""

import jax
import jax.numpy as jnp
import numpy as np

from rec_kd.defaults import ConfigError

PROPOSALS = ("uniform", "popularity")
LOSSES = ("full", "sampled")
# fold_in stream of the step's dropout key that draws the negatives (the dropout stream is untouched).
SAMPLING_STREAM = 1


def loss_kind(config) -> str:
    """train.loss ('full' for runs from before the field)."""
    kind = config.train.get("loss", "full")
    if kind not in LOSSES:
        raise ConfigError(f"train.loss={kind!r}: expected one of {LOSSES}")
    return kind


def check_sampled_config(config, num_items: int) -> None:
    """A ConfigError, in one line naming the field, for a sampled softmax that cannot work."""
    sampled = config.train.sampled
    if sampled.proposal not in PROPOSALS:
        raise ConfigError(f"train.sampled.proposal={sampled.proposal!r}: expected one of {PROPOSALS}")
    if sampled.num_negatives < 0:
        raise ConfigError(f"train.sampled.num_negatives={sampled.num_negatives}: expected 0 or more")
    if sampled.num_negatives >= num_items:
        raise ConfigError(
            f"train.sampled.num_negatives={sampled.num_negatives}: more sampled negatives than the catalogue's {num_items} "
            "items (use train.loss='full')"
        )
    if sampled.num_negatives == 0 and not sampled.in_batch:
        raise ConfigError("train.sampled.num_negatives=0 with train.sampled.in_batch=False: the softmax would have no negatives")
    if config.stage == "student" and (config.distill.cl_weight or config.distill.pred_weight):
        raise ConfigError(
            f"distill.cl_weight={config.distill.cl_weight}, distill.pred_weight={config.distill.pred_weight}: train.loss='sampled' "
            "trains the rec and KD losses only (the other two read the whole table); set both to 0 (the 'kd' variant)"
        )


def target_frequency(train_targets: np.ndarray, num_items: int) -> np.ndarray:
    """(N + 1,) float32 p(j): training-target counts plus one (no item has Q = 0), row 0 (padding) 0, summing to 1."""
    counts = np.bincount(train_targets, minlength=num_items + 1).astype(np.float64) + 1.0
    counts[0] = 0.0
    return (counts / counts.sum()).astype(np.float32)


def sampling_constants(train_targets: np.ndarray, num_items: int) -> dict[str, np.ndarray]:
    """The step's constants for train.loss='sampled': p and its running sum (the popularity proposal's CDF)."""
    frequency = target_frequency(train_targets, num_items)
    return {"target_frequency": frequency, "target_cdf": np.cumsum(frequency, dtype=np.float64).astype(np.float32)}


def candidates(key, targets: jax.Array, sampled, constants: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(candidate ids (M',), their log Q (M',), each target's log Q (B,)) for one step.

    M' = B in-batch targets (if sampled.in_batch) + sampled.num_negatives drawn with replacement.
    """
    frequency = constants["target_frequency"]
    num_items = frequency.shape[0] - 1
    batch, drawn = targets.shape[0], sampled.num_negatives
    if sampled.proposal == "uniform":
        negatives = jax.random.randint(key, (drawn,), 1, num_items + 1, dtype=targets.dtype)
        proposal = jnp.full_like(frequency, 1.0 / num_items).at[0].set(0.0)
    else:
        cdf = constants["target_cdf"]
        negatives = jnp.searchsorted(cdf, jax.random.uniform(key, (drawn,)) * cdf[-1], side="right").astype(targets.dtype)
        negatives = jnp.clip(negatives, 1, num_items)
        proposal = frequency
    expected_count = drawn * proposal + (batch * frequency if sampled.in_batch else 0.0)
    log_q = jnp.log(jnp.maximum(expected_count, 1e-30)) if sampled.log_q_correction else jnp.zeros_like(expected_count)
    ids = jnp.concatenate([targets, negatives]) if sampled.in_batch else negatives
    return ids, log_q[ids], log_q[targets]
