"""Training objectives as pure functions: `loss(outputs, batch) -> (scalar, metrics)`.

`outputs` is a dict of plain arrays produced by the train step (the student's scores and table,
the frozen teacher's scores and table under stop_gradient, the recombined views of the
distillation heads); `batch` holds 'targets' (B,) and 'weights' (B,), 0 for padding rows. A new
loss is one function here and one weight in the config.

The objective is `(1 - lambda) rec + lambda kd + beta cl + alpha pred`; a weight of 0 switches a
loss off (it is then not computed at all).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[dict, dict], tuple[jax.Array, dict]]
# Large negative logit used to drop columns from a softmax without creating NaN or inf.
MASKED_LOGIT = -1e9


def _reduce(per_example: jax.Array, mask: jax.Array, reduction: str) -> jax.Array:
    """Mean (default) or sum of per-example values over the rows where mask > 0; 0 if none."""
    mask = mask.astype(per_example.dtype)
    total = jnp.sum(jnp.where(mask > 0, per_example, 0.0) * mask)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / jnp.maximum(jnp.sum(mask), 1.0)
    raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'sum'")


def cross_entropy(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy (B,) of full-catalogue scores (B, C) against int targets (B,)."""
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    return -jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(|x|, eps) along the last axis, with finite gradients at x = 0 (padding rows)."""
    squared_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(squared_norm, eps * eps))


def rec_loss(outputs, batch, reduction: str = "mean"):
    """Next-item cross-entropy of the trained model's scores over the full catalogue."""
    loss = _reduce(cross_entropy(outputs["scores"], batch["targets"]), batch["weights"], reduction)
    return loss, {"loss/rec": loss}


def soft_target_kl(teacher_logits: jax.Array, student_logits: jax.Array, batch, temperature: float, reduction: str):
    """T^2 * KL(p_teacher || p_student) at temperature T over the logits' last axis, reduced over the batch."""
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)  # (B,)
    return temperature**2 * _reduce(kl, batch["weights"], reduction)


def kd_loss(outputs, batch, temperature: float = 1.0, reduction: str = "mean"):
    """Soft targets: T^2 * KL(p_teacher || p_student) at temperature T over the full catalogue."""
    loss = soft_target_kl(outputs["teacher_scores"], outputs["scores"], batch, temperature, reduction)
    return loss, {"loss/kd": loss}


def info_nce(anchors: jax.Array, positives: jax.Array, valid: jax.Array, temperature: float) -> jax.Array:
    """Per-row InfoNCE (B,): anchor i against positive i, every valid positive j in the denominator.

    Vectors are L2-normalised first; invalid rows are dropped from the denominators (their own
    values are meaningless and must be masked by the caller).
    """
    logits = l2_normalize(anchors) @ l2_normalize(positives).T / temperature  # (B, B)
    logits = jnp.where(valid[None, :], logits, MASKED_LOGIT)
    return -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))


def contrastive_loss(outputs, batch, temperature: float = 0.2, reduction: str = "mean"):
    """InfoNCE between the recombined student view z_S (anchor) and teacher view z_T (positive)."""
    eligible = outputs["eligible"]
    per_example = info_nce(outputs["cl_student"], outputs["cl_teacher"], eligible, temperature)
    loss = _reduce(per_example, eligible, reduction)
    return loss, {"loss/cl": loss}


def predictive_loss(outputs, batch, reduction: str = "mean"):
    """z_S scored against the student table plus z_T against the teacher's, both against the target."""
    targets = batch["targets"]
    student_scores = l2_normalize(outputs["pred_student"]) @ outputs["table"].T  # (B, C)
    teacher_scores = l2_normalize(outputs["pred_teacher"]) @ outputs["teacher_table"].T  # (B, C)
    per_example = sum(cross_entropy(scores.at[:, 0].set(MASKED_LOGIT), targets) for scores in (student_scores, teacher_scores))
    loss = _reduce(per_example, outputs["eligible"], reduction)
    return loss, {"loss/pred": loss}


def sampled_logits(outputs, batch) -> jax.Array:
    """(B, 1 + M) log-Q corrected logits: column 0 each session's target, then the shared candidates.

    A candidate equal to the session's target (an accidental hit: another row's target, or a sampled
    copy of it) or the padding id is dropped, so the target is never its own negative.
    """
    positive = outputs["positive"] - outputs["positive_log_q"]  # (B,)
    negatives = outputs["candidates"] - outputs["candidate_log_q"][None, :]  # (B, M)
    ids = outputs["candidate_ids"][None, :]
    negatives = jnp.where((ids == batch["targets"][:, None]) | (ids == 0), MASKED_LOGIT, negatives)
    return jnp.concatenate([positive[:, None], negatives], axis=1)


def sampled_rec_loss(outputs, batch, reduction: str = "mean"):
    """Sampled softmax (Yi et al., RecSys 2019): the target against the candidates, log-Q corrected.

    Why: the full softmax costs a (B, N + 1) matrix a step; this costs (B, 1 + M). Subtracting log Q
    (the log of each item's expected count in the candidate set) makes it an estimate of the full
    softmax's gradient instead of a popularity-biased one.
    """
    per_example = -jax.nn.log_softmax(sampled_logits(outputs, batch), axis=-1)[:, 0]
    loss = _reduce(per_example, batch["weights"], reduction)
    return loss, {"loss/rec": loss}


def sampled_kd_loss(outputs, batch, temperature: float = 1.0, reduction: str = "mean"):
    """kd_loss over the sampled set: T^2 KL(teacher || student) over each session's target and the candidates."""
    teacher = {**outputs, "positive": outputs["teacher_positive"], "candidates": outputs["teacher_candidates"]}
    loss = soft_target_kl(sampled_logits(teacher, batch), sampled_logits(outputs, batch), batch, temperature, reduction)
    return loss, {"loss/kd": loss}


def enabled(terms: list[tuple[str, float, LossFn]]) -> list[tuple[str, float, LossFn]]:
    """`terms` without those whose weight is a literal 0 (a traced member weight always keeps its term)."""
    return [term for term in terms if not (isinstance(term[1], (int, float)) and term[1] == 0.0)]


def sampled_objective_terms(distill_config=None) -> list[tuple[str, float, LossFn]]:
    """objective_terms for train.loss='sampled': the rec and KD losses over the candidate set.

    The contrastive and predictive losses read the whole table (hot/cold recombination, catalogue
    scores), so they are refused with this loss (check_sampled_config) rather than silently dropped.
    """
    if distill_config is None:
        return [("rec", 1.0, sampled_rec_loss)]
    lam = distill_config.kd_weight
    terms = [
        ("rec", 1.0 - lam, sampled_rec_loss),
        ("kd", lam, functools.partial(sampled_kd_loss, temperature=distill_config.kd_temperature, reduction=distill_config.reduction)),
    ]
    return enabled(terms)


def objective_terms(distill_config=None) -> list[tuple[str, float, LossFn]]:
    """(name, weight, loss_fn) for every enabled loss; the teacher trains on 'rec' alone.

    A term whose weight is a literal 0 is left out (never computed). A weight that is a traced
    array (a member of a vectorised run) always keeps its term: a member with weight 0 then
    computes the term and multiplies it by 0, which adds exactly nothing to its gradient.
    """
    if distill_config is None:
        return [("rec", 1.0, rec_loss)]
    reduction = distill_config.reduction
    lam = distill_config.kd_weight
    terms = [
        ("rec", 1.0 - lam, functools.partial(rec_loss, reduction="mean")),
        ("kd", lam, functools.partial(kd_loss, temperature=distill_config.kd_temperature, reduction=reduction)),
        (
            "cl",
            distill_config.cl_weight,
            functools.partial(contrastive_loss, temperature=distill_config.cl_temperature, reduction=reduction),
        ),
        ("pred", distill_config.pred_weight, functools.partial(predictive_loss, reduction="mean")),
    ]
    return enabled(terms)


def weighted_objective(terms: list[tuple[str, float, LossFn]]) -> LossFn:
    """One loss function: the weighted sum of `terms`, with every term's metrics and the total."""

    def objective(outputs, batch):
        total, metrics = 0.0, {}
        for _, weight, loss_fn in terms:
            value, term_metrics = loss_fn(outputs, batch)
            total = total + weight * value
            metrics.update(term_metrics)
        metrics["loss/total"] = total
        return total, metrics

    return objective
