"""Checkpoint save/restore and the fall-back past a damaged newest checkpoint."""

import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd import checkpointing


def make_state(value: float) -> dict:
    return {"step": jnp.asarray(int(value), jnp.int32), "params": {"w": jnp.full((3, 2), value), "b": jnp.arange(4.0) * value}}


def damage(step_dir: str) -> None:
    """Truncates every file of a saved step, as a crash mid-write or a bad disk would."""
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")


def test_save_then_restore_round_trips_state_and_meta(tmp_path):
    manager = checkpointing.manager(str(tmp_path / "ckpt"), max_to_keep=2)
    checkpointing.save(manager, 5, make_state(5.0), {"epoch": 1, "history": [{"hr@20": 0.25}]})
    [state], [meta] = checkpointing.restore_latest([manager], checkpointing.abstract_like(make_state(0.0)))
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 5.0))
    assert int(state["step"]) == 5
    assert meta == {"epoch": 1, "history": [{"hr@20": 0.25}]}


def test_empty_directory_restores_nothing(tmp_path):
    manager = checkpointing.manager(str(tmp_path / "empty"), max_to_keep=2)
    assert checkpointing.restore_latest([manager], checkpointing.abstract_like(make_state(0.0))) is None


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    manager = checkpointing.manager(str(directory), max_to_keep=2)
    checkpointing.save(manager, 1, make_state(1.0), {"epoch": 0})
    checkpointing.save(manager, 2, make_state(2.0), {"epoch": 1})
    damage(str(directory / "2"))
    manager = checkpointing.manager(str(directory), max_to_keep=2)  # a fresh process
    with caplog.at_level("WARNING"):
        [state], [meta] = checkpointing.restore_latest([manager], checkpointing.abstract_like(make_state(0.0)))
    assert int(state["step"]) == 1 and meta == {"epoch": 0}
    np.testing.assert_array_equal(state["params"]["b"], np.arange(4.0))
    assert any("step 2" in record.getMessage() and "falling back" in record.getMessage() for record in caplog.records)


def test_all_checkpoints_damaged_is_a_clear_error(tmp_path):
    directory = tmp_path / "ckpt"
    manager = checkpointing.manager(str(directory), max_to_keep=2)
    checkpointing.save(manager, 1, make_state(1.0), {"epoch": 0})
    damage(str(directory / "1"))
    manager = checkpointing.manager(str(directory), max_to_keep=2)
    with pytest.raises(checkpointing.CheckpointError, match="no checkpoint step common to every member restores"):
        checkpointing.restore_latest([manager], checkpointing.abstract_like(make_state(0.0)))


def test_members_restore_at_their_newest_common_step(tmp_path):
    """A kill between two members' saves leaves member a one step ahead: both resume at step 1."""
    managers = [checkpointing.manager(str(tmp_path / name), max_to_keep=2) for name in ("a", "b")]
    for step in (1, 2):
        checkpointing.save(managers[0], step, make_state(step), {"member": "a", "step": step})
    checkpointing.save(managers[1], 1, make_state(10.0), {"member": "b", "step": 1})
    states, metas = checkpointing.restore_latest(managers, checkpointing.abstract_like(make_state(0.0)))
    assert metas == [{"member": "a", "step": 1}, {"member": "b", "step": 1}]
    np.testing.assert_array_equal(states[1]["params"]["w"], np.full((3, 2), 10.0))


def test_members_without_a_common_step_is_a_clear_error(tmp_path):
    managers = [checkpointing.manager(str(tmp_path / name), max_to_keep=2) for name in ("a", "b")]
    checkpointing.save(managers[0], 3, make_state(3.0), {})
    with pytest.raises(checkpointing.CheckpointError, match=r"b \(steps \[\]\)"):
        checkpointing.restore_latest(managers, checkpointing.abstract_like(make_state(0.0)))


def test_params_digest_names_the_values_and_their_places():
    params = {"dense": {"bias": np.arange(3, dtype=np.float32), "kernel": np.ones((2, 3), np.float32)}}
    # An independent reference: SHA-256 over each leaf's path, dtype, shape and bytes, leaves in key order.
    reference = hashlib.sha256()
    for path, leaf in (("['dense']['bias']", params["dense"]["bias"]), ("['dense']['kernel']", params["dense"]["kernel"])):
        reference.update(f"{path}|float32|{leaf.shape}|".encode() + leaf.tobytes())
    assert checkpointing.params_digest(params) == reference.hexdigest()[:16]
    assert checkpointing.params_digest(jax.tree.map(jnp.asarray, params)) == reference.hexdigest()[:16]  # device arrays alike
    changed = {"dense": {**params["dense"], "bias": np.array([0, 1, 2.0001], np.float32)}}
    assert checkpointing.params_digest(changed) != checkpointing.params_digest(params)
    renamed = {"other": params["dense"]}
    assert checkpointing.params_digest(renamed) != checkpointing.params_digest(params)
