"""The codes table (rec_kd/compress/codes.py, quantize.py): rows, bytes, quantizers, and students end to end.

The unit tests check the table and the quantizers against plain numpy and hand-computed values.
The slow ones train a codes student per (method, source) on MovieLens-100k: the codes stay as
derived (untrained), the export's top-K equals JAX's, and a SIGTERM resume ends like a straight run.
"""

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd import defaults
from rec_kd.compress import codes, quantize
from rec_kd.defaults import ConfigError
from rec_kd.experiments import runs
from rec_kd.models import resolve_table_config, table_spec_from_config
from rec_kd.models.sasrec import SeqRecModel
from rec_kd.serve import export, serving
from rec_kd.train import members
from tests.test_core_ml100k import NO_DATA_DIR, SMALL, run_ml100k
from tests.test_train import resumed_step, start_main, wait_for_train_step


def random_params(spec: codes.CodesSpec, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = spec.param_shapes()
    return {
        "codes": rng.integers(0, spec.codebook_size, shapes["codes"].shape).astype(shapes["codes"].dtype),
        "codebooks": rng.standard_normal(shapes["codebooks"].shape).astype(np.float32),
    }


@pytest.mark.parametrize("method", ["pq", "rq"])
def test_rows_are_the_decoded_codes_with_a_zero_padding_row(method):
    spec = codes.CodesSpec(num_rows=11, dim=8, num_codebooks=4, codebook_size=4, method=method)
    params = random_params(spec)
    table = np.asarray(spec.materialize(params))
    assert table.shape == (11, 8) and np.all(table[0] == 0)
    for item in range(1, 11):
        chosen = [params["codebooks"][m, params["codes"][item - 1, m]] for m in range(4)]
        expected = np.concatenate(chosen) if method == "pq" else np.sum(chosen, axis=0)
        np.testing.assert_allclose(table[item], expected, rtol=1e-6)
    ids = jnp.asarray([[0, 3], [10, 1]])
    np.testing.assert_allclose(np.asarray(spec.rows(params, ids)), table[np.asarray(ids)], rtol=1e-6)


def test_bytes_count_codes_at_their_width_and_codebooks_in_fp32():
    # 1,000 items x 8 uint8 codes + 8 codebooks of 256 x (32 / 8) floats.
    assert codes.CodesSpec(1001, 32, 8, 256, "pq").num_bytes() == 1000 * 8 + 4 * 8 * 256 * 4
    # K = 512 needs uint16 codes; rq codebooks are full width.
    assert codes.CodesSpec(1001, 32, 2, 512, "rq").num_bytes() == 1000 * 2 * 2 + 4 * 2 * 512 * 32
    assert codes.CodesSpec(1001, 32, 8, 256, "pq").num_params() == 8 * 256 * 4


def test_a_byte_budget_takes_the_most_codebooks_that_fit():
    # pq at d = 32, K = 256: M uint8 codes for each of 1,000 items + 256 x 32 fp32 = 1000 M + 32,768 bytes.
    options = {"method": "pq", "num_codebooks": 0, "codebook_size": 256}
    assert codes.budget_options(1001, 32, 1000 * 8 + 32_768, options)["num_codebooks"] == 8
    assert codes.budget_options(1001, 32, 1000 * 15 + 32_768, options)["num_codebooks"] == 8  # 15 does not divide 32
    # rq: any M; each costs 1000 + 4 * 256 * 32 bytes.
    rq = {**options, "method": "rq"}
    assert codes.budget_options(1001, 32, 3 * (1000 + 32_768), rq)["num_codebooks"] == 3
    with pytest.raises(ValueError, match="below the smallest rq table"):
        codes.budget_options(1001, 32, 100, rq)


def student_config(**codes_options):
    config = defaults.get_config("ml-100k", "student,codes,smoke")
    with config.unlocked():
        config.table.codes.update(codes_options)
    return config


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"codebook_size": 100, "num_codebooks": 4}, "table.codes.codebook_size"),
        ({"codebook_size": 16, "num_codebooks": 3}, "table.codes.num_codebooks=3 must divide"),
        ({"codebook_size": 16, "num_codebooks": 4, "method": "opq"}, "table.codes.method"),
        ({"codebook_size": 16, "num_codebooks": 4, "source": "faiss"}, "table.codes.source"),
        ({"codebook_size": 16, "num_codebooks": 4, "beam": 0}, "table.codes.beam"),
    ],
)
def test_bad_codes_options_fail_in_one_line_naming_the_field(options, field):
    with pytest.raises(ConfigError) as error:
        table_spec_from_config(student_config(**options), 100)
    assert field in str(error.value) and "\n" not in str(error.value)


def test_a_teacher_table_of_another_shape_fails_naming_the_field():
    class Teacher:
        workdir = "/runs/teacher"
        model = SeqRecModel(num_items=50, hidden_dim=16, inner_dim=16, max_len=4)
        params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1,), jnp.int32))["params"]

    with pytest.raises(
        ConfigError, match=r"table.codes.source='teacher': /runs/teacher's item table is 51 x 16, the student needs 51 x 32"
    ):
        members.teacher_vectors(Teacher(), 50, 32)


def test_an_unset_codebook_count_is_resolved_from_the_byte_budget():
    config = student_config(codebook_size=16, num_codebooks=0)
    with config.unlocked():
        config.model.hidden_dim = 32
        # pq, 1,682 items: M uint8 codes each plus 16 x 32 fp32 codebook entries, whatever M.
        config.table.budget_bytes = 1682 * 4 + 4 * 16 * 32
    resolve_table_config(config, 1682)
    assert config.table.codes.num_codebooks == 4  # exactly fits; M = 8 would not


def test_weighted_kmeans_puts_one_centroid_at_the_weighted_mean():
    x = np.asarray([[0.0, 0.0], [4.0, 0.0]], np.float32)
    centroid = quantize.kmeans(x, np.asarray([3.0, 1.0]), 1, iterations=5, seed=0)
    np.testing.assert_allclose(centroid, [[1.0, 0.0]], atol=1e-6)


def test_kmeans_finds_separated_clusters_and_repeats_itself_for_a_seed():
    rng = np.random.default_rng(0)
    means = np.asarray([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    x = np.concatenate([m + 0.1 * rng.standard_normal((50, 2)) for m in means]).astype(np.float32)
    centroids = quantize.kmeans(x, np.ones(len(x)), 4, iterations=10, seed=3)
    found = centroids[np.argsort(centroids @ np.asarray([1.0, 100.0]))]
    np.testing.assert_allclose(found, means, atol=0.1)
    np.testing.assert_array_equal(centroids, quantize.kmeans(x, np.ones(len(x)), 4, iterations=10, seed=3))


def test_quantized_tables_reproduce_their_vectors_better_than_random_codes():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((400, 4)) @ rng.standard_normal((4, 16))).astype(np.float32)  # a rank-4 table
    weights = np.ones(400)
    pq_codes, pq_books = quantize.product_quantize(x, weights, 4, 16, 10, seed=0)
    rq_greedy = quantize.residual_quantize(x, weights, 3, 16, 10, seed=0, beam=1)
    rq_beam = quantize.residual_quantize(x, weights, 3, 16, 10, seed=0, beam=8)

    def error(rows):
        return float(np.mean(np.sum((rows - x) ** 2, 1)))

    random_rows = quantize.pq_decode(rng.integers(0, 16, (400, 4)), pq_books)
    assert error(quantize.pq_decode(pq_codes, pq_books)) < 0.25 * error(random_rows)
    assert error(quantize.rq_decode(*rq_beam)) <= error(quantize.rq_decode(*rq_greedy)) + 1e-6
    assert error(quantize.rq_decode(*rq_beam)) < 0.5 * float(np.mean(np.sum(x**2, 1)))


def test_svd_vectors_put_items_of_the_same_sessions_close():
    # Items 1 and 2 always share a session, as do 3 and 4; 5 is everywhere.
    sessions = [np.asarray(s) for s in ([1, 2, 5], [2, 1], [3, 4, 5], [4, 3], [1, 2], [3, 4])]
    vectors = codes.svd_item_vectors(sessions, num_items=5, dim=2, seed=0)

    def cosine(a, b):
        return float(vectors[a - 1] @ vectors[b - 1] / np.linalg.norm(vectors[a - 1]) / np.linalg.norm(vectors[b - 1]))

    assert cosine(1, 2) > 0.99 and cosine(3, 4) > 0.99 and abs(cosine(1, 3)) < 0.1


def test_the_teacher_body_replaces_every_parameter_but_the_table():
    state = {"step": jnp.zeros(()), "params": {"model": {"code_table": {"codes": 1}, "block_0": {"w": jnp.zeros((2, 2))}}}}
    teacher = {"item_embedding": jnp.ones((3, 2)), "block_0": {"w": jnp.full((2, 2), 5.0)}}
    model = members.with_teacher_body(state, teacher, lambda tree: tree)["params"]["model"]
    assert model["code_table"] == {"codes": 1} and float(model["block_0"]["w"][0, 0]) == 5.0
    with pytest.raises(ConfigError, match="model.init_from_teacher: the teacher's 'block_0'"):
        members.with_teacher_body(state, {"block_0": {"w": jnp.ones((3, 2))}}, lambda tree: tree)


def test_the_learned_copy_bonus_adds_to_the_scores_of_the_sessions_items():
    model = SeqRecModel(num_items=6, hidden_dim=8, inner_dim=8, max_len=4, copy_bonus=True)
    items, lengths = jnp.asarray([[2, 5, 0, 0]]), jnp.asarray([2])
    params = model.init(jax.random.key(0), items, lengths)["params"]
    plain = model.apply({"params": {**params, "copy_bonus": jnp.zeros(())}}, items, lengths)["scores"]
    bonused = model.apply({"params": {**params, "copy_bonus": jnp.asarray(1.5)}}, items, lengths)["scores"]
    np.testing.assert_allclose(np.asarray(bonused - plain)[0, 1:], [0, 1.5, 0, 0, 1.5, 0], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Students end to end on MovieLens-100k.
# ----------------------------------------------------------------------------------------------

SMALL_CODES = ["--config.table.codes.codebook_size=16", "--config.table.codes.kmeans_iterations=5"]


@pytest.fixture(scope="module")
def teacher(ml100k_teacher):
    return ml100k_teacher  # the suite's shared small smoke teacher (tests/conftest.py)


def assert_codes_as_derived_and_export_equals_jax(student_dir, teacher_dir, tmp_path):
    trained = runs.load_trained(str(student_dir), 1682)
    data = runs.load_run_data(str(student_dir))
    teacher = runs.load_trained(str(teacher_dir), 1682, checkpoint="best")
    derived = members.derived_tables([trained.config], data, data.train, teacher)
    stored = np.asarray(trained.params[codes.PARAM_NAME]["codes"])
    assert stored.dtype == np.uint8
    if derived is not None:  # teacher and svd codes: exactly what the start derived, never trained
        np.testing.assert_array_equal(stored, derived["codes"])
    path = tmp_path / f"{student_dir.name}.onnx"
    export.export_workdir(str(student_dir), str(path), k=10)
    recommender = serving.Recommender.load(str(path))
    items = np.asarray(data.test.items[:8], np.int32)
    lengths = np.asarray(data.test.lengths[:8], np.int32)
    ids, scores = recommender.run(items, lengths)
    jax_ids, jax_scores = export.jax_top_k(trained.model, trained.params, items, lengths, 10)
    np.testing.assert_array_equal(ids, jax_ids)
    np.testing.assert_allclose(scores, jax_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "source", "extra"),
    [
        # Every source and every method, each method with two sources: the source decides the vectors
        # the quantizer reads and the method how it quantizes them, two independent steps.
        ("pq", "teacher", ["--config.model.init_from_teacher=True", "--config.model.copy_bonus=True"]),
        ("pq", "svd", []),
        ("rq", "teacher", []),
        ("rq", "random", []),
    ],
)
def test_a_codes_student_trains_keeps_its_codes_and_exports(teacher, tmp_path, method, source, extra):
    student = tmp_path / f"{method}_{source}"
    overrides = [*SMALL_CODES, f"--config.table.codes.method={method}", f"--config.table.codes.source={source}", *extra]
    if method == "rq":
        overrides.append("--config.table.codes.num_codebooks=2")
    run_ml100k("student,codes,smoke", student, f"--config.teacher_workdir={teacher}", *overrides)
    result = json.loads((student / "results.json").read_text())
    assert result["table_kind"] == "codes" and result["bytes"]["dense_item_table"] == 4 * 1683 * 32
    assert result["embedding_compression"] == pytest.approx(result["bytes"]["dense_item_table"] / result["bytes"]["item_table"])
    assert_codes_as_derived_and_export_equals_jax(student, teacher, tmp_path)


@pytest.mark.slow
def test_a_codes_student_resumed_after_sigterm_ends_like_a_straight_run(teacher, tmp_path):
    """pq: the codes ride in the checkpointed state as integer leaves whatever the method (rq's own
    arrays are trained, saved and exported in test_a_codes_student_trains_keeps_its_codes_and_exports)."""
    overrides = [
        f"--config.teacher_workdir={teacher}",
        *SMALL_CODES,
        "--config.table.codes.method=pq",
        "--config.table.codes.num_codebooks=2",
        "--config.train.num_epochs=2",
        "--config.train.checkpoint_every_steps=2",
    ]
    straight = tmp_path / "straight"
    run_ml100k("student,codes,smoke", straight, *overrides)
    interrupted = tmp_path / "interrupted"
    process = start_main("ml_100k.py:student,codes,smoke", interrupted, NO_DATA_DIR, *SMALL, *overrides)
    wait_for_train_step(interrupted, 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    rerun = run_ml100k("student,codes,smoke", interrupted, *overrides)
    assert resumed_step(rerun.stderr) >= 3
    got = json.loads((interrupted / "results.json").read_text())
    expected = json.loads((straight / "results.json").read_text())
    assert got["params_digest"] == expected["params_digest"]
    assert got["test"] == pytest.approx(expected["test"], abs=1e-6)
