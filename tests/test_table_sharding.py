"""train.shard_item_table: the teacher's table and its Adam moments split by rows over 4 (fake) devices.

Checked in a subprocess, since the fake device count is fixed when JAX starts: the padded table
and its moments live a quarter on each device, a step equals the replicated step, and a sharded
teacher trains, saves and evaluates through the training loop; its checkpoint then restores in
this one-device process, and its recommendations never name a padding row.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rec_kd.defaults import ConfigError
from rec_kd.models import SHARDED_TABLE_ROW_MULTIPLE, SeqRecModel
from rec_kd.train import sharding

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from rec_kd import data as data_lib
    from rec_kd.train import loop, members
    from rec_kd.train.sharding import Placement
    from tests.test_sampling import tiny_synthetic

    def build(shard, table_update):
        config = tiny_synthetic("teacher")
        config.train.loss = "sampled"
        config.train.table_update = table_update
        config.train.shard_item_table = shard
        config.train.batch_size = 8
        data = data_lib.load_configured(config)
        buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
        batches = data_lib.train_batches(data.train, 8, data_seed=0, epoch=0, buckets=buckets)
        placement = Placement.over_all_devices()
        return members.build_run(config, data, placement, None, len(batches)), batches, placement, config

    out = {"devices": jax.device_count(), "steps": {}}
    for update in ("dense", "rows"):
        sharded, batches, placement, _ = build(True, update)
        replicated, _, _, _ = build(False, update)
        table = sharded.state["params"]["model"]["item_embedding"]
        opt_state = sharded.state["opt_state"]
        moments = opt_state["table"]["mu"] if update == "rows" else opt_state[0].mu["model"]["item_embedding"]
        out[update] = {
            "table_shape": list(table.shape),
            "table_spec": str(table.sharding.spec),
            "moment_spec": str(moments.sharding.spec),
            "shard_rows": sorted({s.data.shape[0] for s in table.addressable_shards}),
            "position_spec": str(sharded.state["params"]["model"]["position_embedding"].sharding.spec),
        }
        s_state, r_state = sharded.state, replicated.state
        for batch in batches[:3]:
            s_state, s_metrics = sharded.step(s_state, placement.put_batch(batch))
            r_state, r_metrics = replicated.step(r_state, placement.put_batch(batch))
        rows = 3001  # num_items + 1: the padded rows past it are never read
        diffs = [
            float(np.max(np.abs(np.asarray(a)[:rows] - np.asarray(b)[:rows]))) if np.ndim(a) >= 2 and np.shape(a)[0] != np.shape(b)[0]
            else float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(s_state["params"]), jax.tree.leaves(r_state["params"]), strict=True)
        ]
        out["steps"][update] = {
            "max_param_diff": max(diffs),
            "loss": [float(s_metrics["loss/total"][0]), float(r_metrics["loss/total"][0])],
            "after_step_spec": str(s_state["params"]["model"]["item_embedding"].sharding.spec),
        }
    from rec_kd import checkpointing
    checkpointing.DIGEST_BLOCK_ROWS = 1000  # 3,072 rows: blocks of 1,000, 1,000, 1,000 and 72
    table = s_state["params"]["model"]["item_embedding"]  # the last run's, after its steps
    blocks = list(checkpointing.gathered_row_blocks(table))
    out["digest_blocks"] = [block.shape[0] for block in blocks]
    out["digest_blocks_equal"] = bool(np.array_equal(np.concatenate(blocks), np.asarray(table)))
    checkpointing.DIGEST_BLOCK_ROWS = 65536
    config = tiny_synthetic("teacher")
    config.train.shard_item_table = True
    config.train.table_update = "rows"
    loop.train_and_evaluate(config, sys.argv[1])
    print("RESULT " + json.dumps(out))
    """
)


def run_script(workdir: Path, num_devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_a_sharded_teacher_table_lives_a_quarter_on_each_device_and_steps_as_the_replicated_one(tmp_path):
    out = run_script(tmp_path / "teacher", 4)
    assert out["devices"] == 4
    for update in ("dense", "rows"):
        placed = out[update]
        assert placed["table_shape"] == [3072, 16]  # 3,001 rows padded to a multiple of 1,024
        assert placed["shard_rows"] == [768]  # 3,072 / 4 on every device
        assert placed["table_spec"] == placed["moment_spec"] == "P('data', None)"
        assert placed["position_spec"] == "P()"
        steps = out["steps"][update]
        assert steps["after_step_spec"] == "P('data', None)"  # the step keeps it split
        assert steps["max_param_diff"] < 1e-5
        assert steps["loss"][0] == pytest.approx(steps["loss"][1], rel=1e-5)
    assert out["digest_blocks"] == [1000, 1000, 1000, 72] and out["digest_blocks_equal"]
    results = json.loads((tmp_path / "teacher" / "results.json").read_text())
    assert results["config"]["train"]["shard_item_table"] is True and results["num_devices"] == 4
    # Sizes leave the padding rows out: 3,001 rows of 16.
    assert results["params"]["item_table"] == 3001 * 16
    assert results["bytes"]["item_table"] == results["bytes"]["dense_item_table"] == 3001 * 16 * 4
    assert 0 < results["test"]["hr@20"] <= 1
    from rec_kd.serve import export

    trained, num_items = export.load_workdir(str(tmp_path / "teacher"))
    assert num_items == 3000 and trained.params["item_embedding"].shape == (3072, 16)
    items, lengths = np.array([[5, 9, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32), np.array([2], np.int32)
    ids, _ = export.jax_top_k(trained.model, trained.params, items, lengths, 20)
    assert ids.shape == (1, 20) and 1 <= ids.min() and ids.max() <= num_items
    import onnx

    from rec_kd.serve import serving

    path = export.export_workdir(str(tmp_path / "teacher"), str(tmp_path / "teacher.onnx"))
    (table,) = [init for init in onnx.load(path).graph.initializer if init.name == "item_embedding"]
    assert list(table.dims) == [3001, 16]  # the padding rows are not shipped
    onnx_ids, _ = serving.Recommender.load(path).run(items, lengths)
    assert onnx_ids.tolist() == ids.tolist()


def test_the_padded_rows_change_no_score():
    small = SeqRecModel(num_items=30, hidden_dim=8, inner_dim=8, max_len=5)
    padded = SeqRecModel(num_items=30, hidden_dim=8, inner_dim=8, max_len=5, table_row_multiple=SHARDED_TABLE_ROW_MULTIPLE)
    assert small.spec.num_rows == 31 and padded.spec.num_rows == 1024
    import jax
    import jax.numpy as jnp

    items, lengths = jnp.array([[3, 7, 0, 0, 0]], jnp.int32), jnp.array([2], jnp.int32)
    params = small.init(jax.random.key(0), items, lengths)["params"]
    table = params["item_embedding"]
    padding = jax.random.normal(jax.random.key(1), (1024 - 31, 8)) * 100.0  # large: any read of them would show
    padded_params = {**params, "item_embedding": jnp.concatenate([table, padding])}
    want = small.apply({"params": params}, items, lengths)
    got = padded.apply({"params": padded_params}, items, lengths)
    np.testing.assert_allclose(np.asarray(got["ranking"]), np.asarray(want["ranking"]), rtol=1e-6)
    ranks = padded.apply({"params": padded_params}, items, lengths, jnp.array([7]), 8, method=SeqRecModel.target_ranks)
    assert ranks.tolist() == small.apply({"params": params}, items, lengths, jnp.array([7]), 8, method=SeqRecModel.target_ranks).tolist()


def test_a_device_count_that_does_not_divide_the_rows_is_refused_in_one_line():
    sharding.check_table_sharding(1024, 4)
    with pytest.raises(ConfigError, match=r"^train.shard_item_table=True: the item table.s 1024 rows .* do not split over 3 devices"):
        sharding.check_table_sharding(1024, 3)
