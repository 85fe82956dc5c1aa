"""train.loss='sampled': the sampled softmax against a numpy reference and against the full softmax it
estimates, the candidates and their log Q, the model's sampled scores, the config checks, and a
teacher and a KD student that train on synthetic data."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd import defaults
from rec_kd.defaults import ConfigError
from rec_kd.models import SeqRecModel
from rec_kd.train import losses, sampling


def reference_sampled_ce(positive, candidates, ids, log_q, positive_log_q, targets, weights) -> float:
    """Loop reference: -log softmax of the target's corrected logit among [target, candidates that are not it nor padding]."""
    total, count = 0.0, 0.0
    for b, target in enumerate(targets):
        logits = [positive[b] - positive_log_q[b]]
        logits += [candidates[b, j] - log_q[j] for j, item in enumerate(ids) if item != target and item != 0]
        logits = np.asarray(logits, np.float64)
        log_norm = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
        total += weights[b] * (log_norm - logits[0])
        count += weights[b]
    return total / count


def sampled_outputs(rng, batch=6, drawn=9, num_items=12):
    targets = rng.integers(1, num_items + 1, size=batch)
    ids = np.concatenate([targets, rng.integers(0, num_items + 1, size=drawn)])  # in-batch, then drawn (0 must be dropped)
    return {
        "positive": rng.normal(size=batch).astype(np.float32),
        "candidates": rng.normal(size=(batch, len(ids))).astype(np.float32),
        "candidate_ids": ids,
        "candidate_log_q": rng.normal(size=len(ids)).astype(np.float32),
        "positive_log_q": rng.normal(size=batch).astype(np.float32),
    }, targets


def test_sampled_rec_loss_matches_the_reference():
    rng = np.random.default_rng(0)
    outputs, targets = sampled_outputs(rng)
    weights = np.array([1, 1, 1, 1, 0, 1], np.float32)
    loss, metrics = losses.sampled_rec_loss(
        jax.tree.map(jnp.asarray, outputs), {"targets": jnp.asarray(targets), "weights": jnp.asarray(weights)}
    )
    want = reference_sampled_ce(
        *(outputs[k] for k in ("positive", "candidates", "candidate_ids", "candidate_log_q", "positive_log_q")), targets, weights
    )
    assert float(loss) == pytest.approx(want, rel=1e-5) and metrics["loss/rec"] == loss


def test_with_every_item_a_candidate_and_no_correction_it_is_the_full_softmax():
    rng = np.random.default_rng(1)
    num_items, batch = 15, 5
    scores = rng.normal(size=(batch, num_items + 1)).astype(np.float32)
    targets = rng.integers(1, num_items + 1, size=batch)
    ids = np.arange(1, num_items + 1)
    outputs = {
        "positive": scores[np.arange(batch), targets],
        "candidates": scores[:, ids],
        "candidate_ids": ids,
        "candidate_log_q": np.zeros(num_items, np.float32),
        "positive_log_q": np.zeros(batch, np.float32),
    }
    batch_arrays = {"targets": jnp.asarray(targets), "weights": jnp.ones(batch)}
    sampled, _ = losses.sampled_rec_loss(jax.tree.map(jnp.asarray, outputs), batch_arrays)
    full, _ = losses.rec_loss({"scores": jnp.asarray(scores).at[:, 0].set(losses.MASKED_LOGIT)}, batch_arrays)
    assert float(sampled) == pytest.approx(float(full), rel=1e-6)
    teacher = {**outputs, "teacher_positive": outputs["positive"] * 0.5, "teacher_candidates": outputs["candidates"] * 0.5}
    sampled_kd, _ = losses.sampled_kd_loss(jax.tree.map(jnp.asarray, teacher), batch_arrays, temperature=2.0)
    full_kd, _ = losses.kd_loss(
        {
            "scores": jnp.asarray(scores).at[:, 0].set(losses.MASKED_LOGIT),
            "teacher_scores": jnp.asarray(scores * 0.5).at[:, 0].set(losses.MASKED_LOGIT),
        },
        batch_arrays,
        temperature=2.0,
    )
    assert float(sampled_kd) == pytest.approx(float(full_kd), rel=1e-5)


def sampled_config(**fields):
    config = defaults.get_config("ml-100k", "teacher")
    config.train.sampled.update(fields)
    return config


@pytest.mark.parametrize("proposal", ["uniform", "popularity"])
def test_candidates_their_draws_and_their_log_q(proposal):
    train_targets = np.array([1, 1, 1, 1, 2, 2, 3, 5])  # item 4 never a target: smoothed to count 1
    constants = jax.tree.map(jnp.asarray, sampling.sampling_constants(train_targets, 5))
    p = np.array([0, 5, 3, 2, 1, 2]) / 13.0
    np.testing.assert_allclose(np.asarray(constants["target_frequency"]), p, rtol=1e-6)
    sampled = sampled_config(num_negatives=20000, in_batch=True, proposal=proposal).train.sampled
    targets = jnp.array([2, 5, 0])  # the last row is padding
    ids, log_q, positive_log_q = sampling.candidates(jax.random.key(0), targets, sampled, constants)
    assert ids.shape == (3 + 20000,) and np.asarray(ids[:3]).tolist() == [2, 5, 0]
    drawn = np.asarray(ids[3:])
    assert drawn.min() >= 1 and drawn.max() <= 5
    q = np.full(6, 1 / 5) if proposal == "uniform" else p
    q[0] = 0
    np.testing.assert_allclose(np.bincount(drawn, minlength=6)[1:] / 20000, q[1:], atol=0.015)
    expected = 20000 * q + 3 * p  # log Q: the expected count in the candidate set
    np.testing.assert_allclose(np.asarray(log_q[3:]), np.log(expected[drawn]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(positive_log_q[:2]), np.log(expected[[2, 5]]), rtol=1e-5)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_negatives": 1682}, "train.sampled.num_negatives=1682: more sampled negatives than the catalogue's 1682 items"),
        ({"num_negatives": 0, "in_batch": False}, "train.sampled.num_negatives=0 with train.sampled.in_batch=False"),
        ({"proposal": "zipf"}, "train.sampled.proposal='zipf'"),
    ],
)
def test_bad_sampled_settings_fail_in_one_line_naming_the_field(fields, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as error:
        sampling.check_sampled_config(sampled_config(**fields), 1682)
    assert "\n" not in str(error.value)


def test_a_sampled_student_must_drop_the_losses_that_read_the_whole_table():
    config = defaults.get_config("ml-100k", "student")
    with pytest.raises(ConfigError, match=r"^distill.cl_weight=0.2, distill.pred_weight=0.001: train.loss='sampled'"):
        sampling.check_sampled_config(config, 1682)
    sampling.check_sampled_config(defaults.get_config("ml-100k", "student,kd"), 1682)  # the kd variant trains
    with pytest.raises(ConfigError, match=r"^train.loss='partial'"):
        config.train.loss = "partial"
        sampling.loss_kind(config)


def test_the_models_sampled_scores_are_its_catalogue_scores_at_those_ids():
    model = SeqRecModel(num_items=30, hidden_dim=8, inner_dim=8, max_len=5, copy_bonus=True, row_order_seed=None)
    rng = np.random.default_rng(2)
    items = jnp.asarray(rng.integers(1, 31, size=(4, 5)), jnp.int32)
    lengths = jnp.array([5, 3, 1, 2], jnp.int32)
    targets = jnp.concatenate([items[:2, 0], jnp.array([7, 30], jnp.int32)])  # two repeats: the copy bonus applies
    ids = jnp.array([0, 3, 7, 30, 12, int(items[1, 2])], jnp.int32)
    params = model.init(jax.random.key(1), items, lengths)["params"]
    params = {**params, "copy_bonus": jnp.asarray(0.9)}
    full = model.apply({"params": params}, items, lengths)
    got = model.apply({"params": params}, items, lengths, targets, ids, method=SeqRecModel.sampled_scores)
    np.testing.assert_allclose(np.asarray(got["session"]), np.asarray(full["session"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(got["positive"]), np.asarray(full["scores"])[np.arange(4), np.asarray(targets)], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(got["candidates"])[:, 1:], np.asarray(full["scores"])[:, np.asarray(ids)[1:]], rtol=1e-5, atol=1e-5
    )


def test_the_models_chunked_top_k_is_its_top_k_of_the_whole_ranking_bonuses_included():
    from rec_kd.serve import export

    model = SeqRecModel(num_items=30, hidden_dim=8, inner_dim=8, max_len=5, copy_bonus=True, repeat_bonus=0.7)
    rng = np.random.default_rng(5)
    items = np.asarray(rng.integers(1, 31, size=(4, 5)), np.int32)
    lengths = np.array([5, 3, 1, 2], np.int32)
    params = model.init(jax.random.key(1), jnp.asarray(items), jnp.asarray(lengths))["params"]
    params = {**params, "copy_bonus": jnp.asarray(0.9)}
    # A tie across chunks of 7: the best item session 0 does not hold (no bonus), and a twin row in another chunk.
    ranked = export.jax_top_k(model, params, items, lengths, 10, chunk_size=0)[0][0]
    best = next(int(item) for item in ranked if item not in items[0])
    twin = next(item for item in range(30, 0, -1) if item // 7 != best // 7 and item not in items[0])
    params["item_embedding"] = params["item_embedding"].at[twin].set(params["item_embedding"][best])
    want_ids, want_scores = export.jax_top_k(model, params, items, lengths, 10, chunk_size=0)  # one (B, N) matrix
    got_ids, got_scores = export.jax_top_k(model, params, items, lengths, 10, chunk_size=7)
    assert got_ids.tolist() == want_ids.tolist()
    first = got_ids[0].tolist().index(min(best, twin))
    assert got_ids[0, first : first + 2].tolist() == sorted([best, twin])  # side by side, the lower id first
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)


def tiny_synthetic(arg: str, teacher_workdir: str = ""):
    config = defaults.get_config(defaults.CUSTOM, arg)
    config.data.format = "synthetic"
    config.data.synthetic.update(num_items=3000, num_events=8_000, num_clusters=30, seed=5)
    config.data.max_len = 10
    config.data.buckets = (10,)
    config.model.hidden_dim = config.model.inner_dim = 16
    config.train.loss = "sampled"
    config.train.sampled.num_negatives = 200
    config.train.num_epochs = 1
    config.train.checkpoint_every_steps = 1000
    config.train.log_every_steps = 10
    config.teacher_workdir = teacher_workdir
    return config


@pytest.mark.slow
def test_a_sampled_teacher_and_kd_student_train_on_synthetic_data(tmp_path):
    from rec_kd.train import loop

    teacher_dir, student_dir = str(tmp_path / "teacher"), str(tmp_path / "student")
    loop.train_and_evaluate(tiny_synthetic("teacher"), teacher_dir)
    loop.train_and_evaluate(tiny_synthetic("student,kd", teacher_dir), student_dir)
    for workdir in (teacher_dir, student_dir):
        results = json.loads((tmp_path / workdir / "results.json").read_text())
        train_losses = [json.loads(line)["loss/total"] for line in open(f"{workdir}/metrics.jsonl") if '"train"' in line]
        assert results["config"]["train"]["loss"] == "sampled" and np.isfinite(train_losses).all()
        assert train_losses[-1] < train_losses[0]  # it learns
        assert results["test"]["hr@20"] > 0
    student = json.loads((tmp_path / "student" / "results.json").read_text())
    assert set(student["losses"]) >= {"rec", "kd"} and "cl" not in student["losses"]
