"""The ONNX export (rec_kd.serve.export), serving API (rec_kd.serve.serving) and CLI (rec_kd.serve.recommend).

A tiny student (and a dense twin) is trained in-process for a few hundred Adam steps on a
synthetic next-item rule, exported, and run through ONNX Runtime; the JAX model is the reference.
The slow test does the same end to end on MovieLens-100k with the real trainer and the CLIs.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import optax
import pytest

from rec_kd.compress import hashing, lowrank, mixed_dim, qr, row_order, sttd
from rec_kd.models.sasrec import SeqRecModel
from rec_kd.serve import export, serving

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 400
MAX_LEN = 8
# 20 x 21 = 420 rows: rows 401..419 exist in the STTD table but are not items.
SPEC = sttd.STTDSpec(item_factors=(20, 21), dim_factors=(4, 4), ranks=(4,), t=2)


def next_item(items):
    """The synthetic rule the tiny models learn: a deterministic successor of each item."""
    return (items * 7 + 3) % NUM_ITEMS + 1


def make_batch(rng: np.random.Generator, batch: int):
    lengths = rng.integers(1, MAX_LEN + 1, batch).astype(np.int32)
    items = np.zeros((batch, MAX_LEN), np.int32)
    first = rng.integers(1, NUM_ITEMS + 1, batch)
    for b in range(batch):
        chain = [int(first[b])]
        for _ in range(lengths[b] - 1):
            chain.append(int(next_item(chain[-1])))
        items[b, : lengths[b]] = chain
    targets = next_item(items[np.arange(batch), lengths - 1]).astype(np.int32)
    return items, lengths, targets


def train_tiny(model: SeqRecModel, steps: int = 200):
    rng = np.random.default_rng(0)
    items, lengths, _ = make_batch(rng, 2)
    params = model.init(jax.random.key(0), items, lengths)["params"]
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, items, lengths, targets):
        def loss_fn(p):
            scores = model.apply({"params": p}, items, lengths)["scores"]
            return optax.softmax_cross_entropy_with_integer_labels(scores, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, *make_batch(rng, 64))
    assert float(loss) < 5.0  # it learnt something: uniform guessing is log 400 ~ 6.0
    return params


def tiny_model(spec, readout: str = "mean") -> SeqRecModel:
    return SeqRecModel(
        num_items=NUM_ITEMS, hidden_dim=16, num_heads=2, inner_dim=16, dropout_rate=0.0, max_len=MAX_LEN, readout=readout, table_spec=spec
    )


@pytest.fixture(scope="module")
def student():
    model = tiny_model(SPEC)
    return model, train_tiny(model)


@pytest.fixture(scope="module")
def teacher():
    model = tiny_model(None)
    return model, train_tiny(model)


@pytest.fixture(scope="module")
def queries():
    items, lengths, _ = make_batch(np.random.default_rng(1), 32)
    # Some sessions off the learnt chain, so scores are not all dominated by one item.
    items[16:] = np.where(items[16:] > 0, np.random.default_rng(2).integers(1, NUM_ITEMS + 1, (16, MAX_LEN)), 0)
    return items, lengths


def write_model(tmp_path, model, params, mode="materialized", quantize=None, k=20, name="model.onnx") -> str:
    path = str(tmp_path / name)
    onnx.save_model(export.build_onnx_model(model, params, NUM_ITEMS, mode, k, quantize), path)
    return path


def assert_same_top_k(ids, scores, ref_ids, ref_scores, atol=1e-4):
    """Same ids in the same order, except where two reference scores tie within atol."""
    np.testing.assert_allclose(scores, ref_scores, atol=atol)
    differ = ids != ref_ids
    # A swapped pair is only acceptable between near-equal reference scores.
    assert np.all(np.abs(np.diff(ref_scores, axis=1))[differ[:, 1:] | differ[:, :-1]] < atol)


@pytest.mark.parametrize("mode", ["materialized", "factored"])
def test_fp32_student_matches_jax(student, queries, tmp_path, mode):
    model, params = student
    recommender = serving.Recommender.load(write_model(tmp_path, model, params, mode))
    ids, scores = recommender.run(*queries)
    ref_ids, ref_scores = export.jax_top_k(model, params, *queries, 20)
    assert ids.shape == (32, 20)
    assert_same_top_k(ids, scores, ref_ids, ref_scores)


def reordered_rows(order: str) -> dict:
    """The SeqRecModel fields of a row order: a seeded shuffle, or a stored map (the clustered order's, of random points)."""
    if order == "shuffled":
        return {"row_order_seed": 1}
    points = np.random.default_rng(0).normal(size=(NUM_ITEMS + 1, 4))
    return {"row_map": row_order.encode_item_rows(row_order.clustered_rows(points, SPEC.item_factors))}


@pytest.mark.parametrize("order", ["shuffled", "stored map"])
@pytest.mark.parametrize("mode", ["materialized", "factored"])
def test_a_student_with_reordered_rows_matches_jax(student, queries, tmp_path, mode, order):
    _, params = student  # the same cores, read through another item -> row map
    model = SeqRecModel(
        num_items=NUM_ITEMS,
        hidden_dim=16,
        num_heads=2,
        inner_dim=16,
        dropout_rate=0.0,
        max_len=MAX_LEN,
        table_spec=SPEC,
        **reordered_rows(order),
    )
    rows = model.item_rows()
    assert rows is not None and not np.array_equal(rows, np.arange(NUM_ITEMS + 1))  # the model reads the map
    ids, scores = serving.Recommender.load(write_model(tmp_path, model, params, mode)).run(*queries)
    ref_ids, ref_scores = export.jax_top_k(model, params, *queries, 20)
    assert not np.array_equal(ref_ids, export.jax_top_k(tiny_model(SPEC), params, *queries, 20)[0])  # the order matters
    assert_same_top_k(ids, scores, ref_ids, ref_scores)


@pytest.mark.parametrize("mode", ["materialized", "factored"])
def test_fp32_student_with_the_summary_readout_matches_jax(queries, tmp_path, mode):
    model = tiny_model(SPEC, readout="mean+summary")
    params = train_tiny(model)
    ids, scores = serving.Recommender.load(write_model(tmp_path, model, params, mode)).run(*queries)
    assert_same_top_k(ids, scores, *export.jax_top_k(model, params, *queries, 20))


def test_fp32_teacher_matches_jax(teacher, queries, tmp_path):
    model, params = teacher
    ids, scores = serving.Recommender.load(write_model(tmp_path, model, params)).run(*queries)
    assert_same_top_k(ids, scores, *export.jax_top_k(model, params, *queries, 20))


@pytest.mark.parametrize("mode", ["materialized", "factored"])
def test_padding_and_rows_past_num_items_are_never_returned(student, queries, tmp_path, mode):
    model, params = student
    ids, scores = serving.Recommender.load(write_model(tmp_path, model, params, mode, k=NUM_ITEMS)).run(*queries)
    for row in ids:  # k = every item: exactly the ids 1..N, none of 0 or 401..419
        assert sorted(row.tolist()) == list(range(1, NUM_ITEMS + 1))
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("mode", ["materialized", "factored"])
def test_int8_top20_overlaps_fp32(student, queries, tmp_path, mode):
    model, params = student
    fp32 = serving.Recommender.load(write_model(tmp_path, model, params, mode, name="fp32.onnx")).run(*queries)[0]
    int8 = serving.Recommender.load(write_model(tmp_path, model, params, mode, "int8", name="int8.onnx")).run(*queries)[0]
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(fp32, int8, strict=False)])
    assert overlap >= 0.95


def test_quantize_symmetric_per_channel():
    array = np.asarray([[0.5, -2.0], [0.5, 0.1], [0.0, 0.0]], np.float32)
    quantized, scale = export.quantize_symmetric(array, axis=0)
    np.testing.assert_allclose(scale, [2 / 127, 0.5 / 127, 1.0], rtol=1e-6)
    # 0.5 / (2/127) = 31.75 -> 32; 0.1 / (0.5/127) = 25.4 -> 25; an all-zero row keeps scale 1.
    np.testing.assert_array_equal(quantized, [[32, -127], [127, 25], [0, 0]])
    assert export.quantization_axis((420, 16)) == 0 and export.quantization_axis((16, 16)) == 1
    # Tall and thin: a scale per row would outweigh the row's 4 (or 2) int8 values, so per column.
    assert export.quantization_axis((40728, 4)) == 1 and export.quantization_axis((40728, 2)) == 1
    assert export.quantization_axis((169, 16, 60)) == 0  # an STTD core: slices of 960


def test_the_file_keeps_the_table_compressed(student, teacher, tmp_path):
    model, params = student
    cores = sttd.core_list(params["sttd_cores"])
    core_params = sum(core.size for core in cores)
    other_params = sum(x.size for x in jax.tree.leaves(params)) - core_params
    dense_table_bytes = 4 * (NUM_ITEMS + 1) * 16
    vector_params = sum(x.size for x in jax.tree.leaves(params) if x.ndim == 1)  # biases, LayerNorm
    for mode in ("materialized", "factored"):
        onnx_model = onnx.load(write_model(tmp_path, model, params, mode, name=f"{mode}.onnx"))
        initializers = [onnx.numpy_helper.to_array(x) for x in onnx_model.graph.initializer]
        assert not any(x.size >= (NUM_ITEMS + 1) * 16 for x in initializers)  # no dense table stored
        # The stored weight matrices are exactly the cores and the dense layers' matrices.
        matrix_bytes = sum(x.nbytes for x in initializers if x.dtype == np.float32 and x.ndim >= 2)
        assert matrix_bytes == 4 * (core_params + other_params - vector_params)
    student_bytes = os.path.getsize(tmp_path / "materialized.onnx")
    teacher_bytes = os.path.getsize(write_model(tmp_path, *teacher, name="teacher.onnx"))
    assert teacher_bytes - student_bytes == pytest.approx(dense_table_bytes - 4 * core_params, abs=1024)


def test_recommend_api_truncates_and_slices(student, tmp_path):
    model, params = student
    recommender = serving.Recommender.load(write_model(tmp_path, model, params))
    long_session = list(range(1, 21))  # longer than MAX_LEN: the last MAX_LEN items are kept
    ids, scores = recommender.recommend(long_session, k=5)
    last_ids, last_scores = recommender.recommend(long_session[-MAX_LEN:], k=20)
    np.testing.assert_array_equal(ids, last_ids[:5])
    np.testing.assert_allclose(scores, last_scores[:5])
    ref_ids, _ = export.jax_top_k(model, params, *serving.pad_session(np.arange(13, 21), MAX_LEN), 5)
    np.testing.assert_array_equal(ids, ref_ids[0])


@pytest.mark.parametrize(
    "session, k, message",
    [
        ([], 5, "empty session"),
        ([3, 0], 5, "unknown item ids [0]"),
        ([NUM_ITEMS + 1], 5, f"unknown item ids [{NUM_ITEMS + 1}]"),
        ([3], 21, "k = 21 must be an integer in [1, 20]"),
        ([3], 0, "k = 0"),
        ([3, 4.5], 5, "item ids must be integers, got [4.5]"),
    ],
)
def test_recommend_rejects_bad_requests(student, tmp_path, session, k, message):
    recommender = serving.Recommender.load(write_model(tmp_path, *student))
    with pytest.raises(serving.ServingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        recommender.recommend(session, k)


def test_load_rejects_missing_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(serving.ServingError, match="no such model file"):
        serving.Recommender.load(str(tmp_path / "absent.onnx"))
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(serving.ServingError, match="notes.onnx: not a loadable ONNX model"):
        serving.Recommender.load(str(text))
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    foreign = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [x],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    foreign.ir_version = 8
    onnx.save_model(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(serving.ServingError, match="not a rec_kd export"):
        serving.Recommender.load(str(tmp_path / "foreign.onnx"))


def run_cli(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, check=False)


def test_cli_prints_one_json_object(student, tmp_path):
    path = write_model(tmp_path, *student)
    result = run_cli("rec_kd.serve.recommend", f"--model={path}", "--session=3,17,42", "--k=7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    answer = json.loads(result.stdout)
    assert set(answer) == {"items", "scores"}
    ids, scores = serving.Recommender.load(path).recommend([3, 17, 42], 7)
    assert answer["items"] == ids.tolist()
    np.testing.assert_allclose(answer["scores"], scores, rtol=1e-6)


@pytest.mark.parametrize(
    "session, model_name, message",
    [
        ("3,99999", "model.onnx", "unknown item ids [99999]"),
        (",", "model.onnx", "empty session"),
        ("3,x", "model.onnx", "expected comma-separated integer item ids"),
        ("3", "notes.txt", "not a loadable ONNX model"),
    ],
)
def test_cli_bad_input_is_one_line_on_stderr(student, tmp_path, session, model_name, message):
    write_model(tmp_path, *student)
    (tmp_path / "notes.txt").write_text("hello")
    result = run_cli("rec_kd.serve.recommend", f"--model={tmp_path / model_name}", f"--session={session}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_serving_does_not_import_jax():
    code = "import sys, rec_kd.serve.serving, rec_kd.serve.recommend; print('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"


def test_factored_scoring_needs_two_cores(tmp_path):
    spec = sttd.STTDSpec(item_factors=(5, 9, 9), dim_factors=(4, 2, 2), ranks=(2, 2), t=1)
    model = tiny_model(spec)
    params = model.init(jax.random.key(0), jnp.ones((1, MAX_LEN), jnp.int32), jnp.ones((1,), jnp.int32))["params"]
    with pytest.raises(export.ExportError, match="K = 2 cores"):
        export.build_onnx_model(model, params, NUM_ITEMS, "factored")
    # K = 3 still exports with the table materialised at load, and matches JAX.
    ids, scores = serving.Recommender.load(write_model(tmp_path, model, params)).run(*make_batch(np.random.default_rng(3), 4)[:2])
    ref = export.jax_top_k(model, params, *make_batch(np.random.default_rng(3), 4)[:2], 20)
    assert_same_top_k(ids, scores, *ref)


@pytest.mark.slow
def test_end_to_end_ml_100k_smoke_export_and_cli(ml100k_teacher, ml100k_student, tmp_path):
    # The suite's shared small smoke runs (tests/conftest.py), trained by `python -m rec_kd.main`.
    teacher_dir, student_dir = ml100k_teacher, ml100k_student
    jax_answer = json.loads(run_cli("rec_kd.serve.recommend", f"--workdir={student_dir}", "--session=3,17,42").stdout)
    for mode in ("materialized", "factored"):
        result = run_cli("rec_kd.serve.export", f"--workdir={student_dir}", f"--out={tmp_path / mode}", f"--mode={mode}")
        assert result.returncode == 0, result.stderr[-2000:]
        path = json.loads(result.stdout)["path"]
        answer = json.loads(run_cli("rec_kd.serve.recommend", f"--model={path}", "--session=3,17,42").stdout)
        assert answer["items"] == jax_answer["items"]
        np.testing.assert_allclose(answer["scores"], jax_answer["scores"], atol=1e-4)
    bench = run_cli(
        "launch.bench_device",
        f"--teacher_workdir={teacher_dir}",
        f"--student_workdir={student_dir}",
        f"--out_dir={tmp_path / 'bench'}",
        "--calls=200",
        "--warmup=10",
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    models = json.loads(bench.stdout)["models"]
    assert set(models) == {
        "teacher_dense_fp32",
        "teacher_dense_int8",
        "student_materialized_fp32",
        "student_materialized_int8",
        "student_factored_fp32",
        "student_factored_int8",
    }
    for name, entry in models.items():
        assert entry["file_bytes"] == os.path.getsize(tmp_path / "bench" / f"{name}.onnx")
        assert 0 < entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"] and entry["cpu_affinity"] == [0]


# ----------------------------------------------------------------------------------------------
# Every compressor exports its compressed parameters and answers as JAX does (rec_kd/compress).
# ----------------------------------------------------------------------------------------------

HOT_ROWS = np.arange(NUM_ITEMS + 1) % 5 == 2  # 80 hot items
COMPRESSED_SPECS = {
    "lowrank": lowrank.LowRankSpec(NUM_ITEMS + 1, 16, rank=6),
    "hash": hashing.HashSpec(NUM_ITEMS + 1, 16, buckets=120),
    "qr": qr.QRSpec(NUM_ITEMS + 1, 16, modulus=21),
    "qr_concat": qr.QRSpec(NUM_ITEMS + 1, 16, modulus=21, combine="concat"),
    "mixed_dim": mixed_dim.MixedDimSpec(NUM_ITEMS + 1, 16, hot_dim=8, cold_dim=4, hot_rows=mixed_dim.encode_rows(HOT_ROWS)),
}


@pytest.fixture(scope="module", params=sorted(COMPRESSED_SPECS))
def compressed_student(request):
    model = tiny_model(COMPRESSED_SPECS[request.param])
    return request.param, model, train_tiny(model, steps=150)


def test_every_kind_matches_jax_in_fp32_and_int8(compressed_student, queries, tmp_path):
    kind, model, params = compressed_student
    ref_ids, ref_scores = export.jax_top_k(model, params, *queries, 20)
    fp32_path = write_model(tmp_path, model, params, name=f"{kind}.onnx")
    ids, scores = serving.Recommender.load(fp32_path).run(*queries)
    assert_same_top_k(ids, scores, ref_ids, ref_scores)
    int8 = serving.Recommender.load(write_model(tmp_path, model, params, quantize="int8", name=f"{kind}_int8.onnx")).run(*queries)[0]
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ref_ids, int8, strict=True)])
    assert overlap >= 0.9, f"{kind}: int8 top-20 overlaps JAX's by {overlap:.3f}"


def test_every_kind_stores_only_its_compressed_parameters(compressed_student, tmp_path):
    kind, model, params = compressed_student
    table_params = params[model.spec.param_name]
    initializers = onnx.load(write_model(tmp_path, model, params, name=f"{kind}.onnx")).graph.initializer
    stored = {x.name: onnx.numpy_helper.to_array(x) for x in initializers}
    assert not any(x.size >= (NUM_ITEMS + 1) * 16 for x in stored.values())  # no dense table
    for name, leaf in table_params.items():
        np.testing.assert_array_equal(stored[f"{model.spec.param_name}.{name}"], np.asarray(leaf))
    int_bytes = sum(x.nbytes for x in stored.values() if x.dtype.kind in "iu" and x.size > 8)  # not the bool causal mask
    assert int_bytes == (math.ceil((NUM_ITEMS + 1) / 8) if kind == "mixed_dim" else 0)  # the packed hot mask, no index arrays


def test_factored_mode_is_for_sttd_only(compressed_student):
    _, model, params = compressed_student
    with pytest.raises(export.ExportError, match="'factored' is for STTD tables"):
        export.build_onnx_model(model, params, NUM_ITEMS, "factored")


@pytest.mark.parametrize("mode", ["materialized", "factored"])
def test_a_repeat_bonus_is_exported_and_puts_the_sessions_items_first(student, queries, tmp_path, mode):
    plain, params = student  # the same parameters on shuffled rows, ranked with a bonus for the session's own items
    bonus = 100.0  # above any score gap of this model (checked below): the session's items come before all others
    shuffled = plain.clone(row_order_seed=1)
    model = shuffled.clone(repeat_bonus=bonus)
    items, lengths = queries
    items = np.where(items > 0, items, 5)  # ids past each length are not the session's: neither JAX nor ONNX may boost them
    ids, scores = serving.Recommender.load(write_model(tmp_path, model, params, mode)).run(items, lengths)
    ref_ids, ref_scores = export.jax_top_k(model, params, items, lengths, 20)
    assert_same_top_k(ids, scores, ref_ids, ref_scores)
    shuffled_scores = shuffled.apply({"params": params}, items, lengths)["scores"][:, 1:]
    assert float(jnp.max(shuffled_scores) - jnp.min(shuffled_scores)) < bonus
    plain_ids = export.jax_top_k(shuffled, params, items, lengths, 20)[0]
    for row, plain_row, session, length in zip(ids, plain_ids, items, lengths, strict=True):
        held = set(session[:length].tolist())
        assert set(row[: len(held)].tolist()) == held  # the distinct session items fill the first places
        rest = [i for i in plain_row.tolist() if i not in held][: 20 - len(held)]
        assert row[len(held) : len(held) + len(rest)].tolist() == rest  # then the model's own order
