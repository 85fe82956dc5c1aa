"""Each distillation loss against values computed by hand (plain numpy), masks included."""

import math
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd.models.distill_heads import example_kinds, sub_session_masks
from rec_kd.train import losses


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.max(x, -1, keepdims=True) - np.log(np.sum(np.exp(x - np.max(x, -1, keepdims=True)), -1, keepdims=True))


SCORES = np.array([[-1e9, 1.0, 2.0, 0.5], [-1e9, 0.0, 0.0, 3.0], [-1e9, 1.0, 1.0, 1.0]], np.float32)
TEACHER = np.array([[-1e9, 2.0, 0.0, 0.0], [-1e9, 1.0, 2.0, 3.0], [-1e9, 5.0, 0.0, 0.0]], np.float32)
TARGETS = np.array([2, 3, 1])
WEIGHTS = np.array([1.0, 1.0, 0.0], np.float32)  # row 2 is a padding row


def test_rec_loss_is_weighted_mean_cross_entropy():
    value, metrics = losses.rec_loss({"scores": jnp.asarray(SCORES)}, {"targets": jnp.asarray(TARGETS), "weights": jnp.asarray(WEIGHTS)})
    # Row 0: -log(e^2 / (e^1 + e^2 + e^0.5)); row 1: -log(e^3 / (1 + 1 + e^3)).
    row0 = -(2.0 - math.log(math.e + math.e**2 + math.e**0.5))
    row1 = -(3.0 - math.log(2 + math.e**3))
    assert float(value) == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert float(metrics["loss/rec"]) == pytest.approx(float(value))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kd_loss_is_tempered_kl_with_t_squared(temperature, reduction):
    outputs = {"scores": jnp.asarray(SCORES), "teacher_scores": jnp.asarray(TEACHER)}
    value, _ = losses.kd_loss(outputs, {"weights": jnp.asarray(WEIGHTS)}, temperature=temperature, reduction=reduction)
    kls = []
    for row in range(2):
        p = np.exp(log_softmax(TEACHER[row, 1:] / temperature))
        q = np.exp(log_softmax(SCORES[row, 1:] / temperature))
        kls.append(float(np.sum(p * np.log(p / q))))
    want = temperature**2 * (sum(kls) if reduction == "sum" else sum(kls) / 2)
    assert float(value) == pytest.approx(want, rel=1e-5)


def test_kd_loss_is_zero_when_student_equals_teacher():
    outputs = {"scores": jnp.asarray(TEACHER), "teacher_scores": jnp.asarray(TEACHER)}
    value, _ = losses.kd_loss(outputs, {"weights": jnp.ones(3)})
    assert abs(float(value)) < 1e-6


def test_contrastive_loss_hand_computed_with_ineligible_rows_dropped():
    anchors = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], np.float32)
    positives = np.array([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], np.float32)
    eligible = np.array([True, True, False])
    value, _ = losses.contrastive_loss(
        {"cl_student": jnp.asarray(anchors), "cl_teacher": jnp.asarray(positives), "eligible": jnp.asarray(eligible)}, {}, temperature=0.2
    )
    # Normalised: a0=(1,0), a1=(0,1); p0=(1,0), p1=(1,1)/sqrt2; p2 is ineligible and leaves the denominators.
    s = 1 / math.sqrt(2)
    row0 = -(1 / 0.2 - math.log(math.exp(1 / 0.2) + math.exp(s / 0.2)))
    row1 = -(s / 0.2 - math.log(math.exp(0 / 0.2) + math.exp(s / 0.2)))
    assert float(value) == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_predictive_loss_scores_each_view_against_its_own_table():
    student_table = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    teacher_table = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, -1.0]], np.float32)
    outputs = {
        "pred_student": jnp.asarray([[3.0, 0.0], [0.0, 0.0]]),
        "pred_teacher": jnp.asarray([[0.0, 4.0], [1.0, 1.0]]),
        "table": jnp.asarray(student_table),
        "teacher_table": jnp.asarray(teacher_table),
        "eligible": jnp.asarray([True, False]),
    }
    value, _ = losses.predictive_loss(outputs, {"targets": jnp.asarray([2, 1])})
    # Row 0 only: student view (1, 0) scores items 1, 2 as (1, 0); teacher view (0, 1) scores (0, -1).
    student_ce = -(0.0 - math.log(math.e + 1))
    teacher_ce = -(-1.0 - math.log(1 + math.exp(-1)))
    assert float(value) == pytest.approx(student_ce + teacher_ce, rel=1e-5)


def test_objective_weights_and_switched_off_terms():
    distill = SimpleNamespace(kd_weight=0.8, cl_weight=0.0, pred_weight=0.0, kd_temperature=1.0, cl_temperature=0.2, reduction="mean")
    terms = losses.objective_terms(distill)
    assert [name for name, _, _ in terms] == ["rec", "kd"]
    outputs = {"scores": jnp.asarray(SCORES), "teacher_scores": jnp.asarray(TEACHER)}
    batch = {"targets": jnp.asarray(TARGETS), "weights": jnp.asarray(WEIGHTS)}
    total, metrics = losses.weighted_objective(terms)(outputs, batch)
    rec, _ = losses.rec_loss(outputs, batch)
    kd, _ = losses.kd_loss(outputs, batch)
    assert float(total) == pytest.approx(0.2 * float(rec) + 0.8 * float(kd), rel=1e-6)
    assert set(metrics) == {"loss/rec", "loss/kd", "loss/total"}


def test_sub_session_masks_and_example_kinds():
    hot_mask = jnp.asarray([False, True, True, False, False])  # items 1, 2 hot; 3, 4 cold
    items = jnp.asarray([[1, 3, 0], [1, 2, 0], [3, 4, 4], [2, 0, 0], [0, 0, 0]])
    lengths = jnp.asarray([2, 2, 3, 1, 0])
    weights = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])
    hot, cold = sub_session_masks(items, lengths, hot_mask)
    np.testing.assert_array_equal(hot, [[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(cold, [[0, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0], [0, 0, 0]])
    kinds = example_kinds(hot, cold, lengths, weights)
    # mixed, hot-only, cold-only, single item, padding row.
    np.testing.assert_array_equal(kinds["eligible"], [True, True, True, False, False])
    np.testing.assert_array_equal(kinds["mixed"], [True, False, False, False, False])
    np.testing.assert_array_equal(kinds["single_kind"], [False, True, True, False, False])
