"""Every Orbax call of rec_kd lives here, so an Orbax API change is one file's change.

A checkpoint holds two items: `state` (params, optimizer state, step: a pytree of arrays) and
`meta` (JSON: epoch, position in the epoch, the evaluation history, the best score). Saves are
atomic (Orbax writes to a temporary directory and renames). `restore_latest` walks back from the
newest step when one fails to restore, warning loudly, so a checkpoint damaged by a crash mid-write
or a bad disk costs the steps since the previous one, never the run.

Managers serve a run: `latest/` (the resumable state, a few kept), `best/` (the best-validation
parameters, or the refit ones after a refit; one kept; a student restores its teacher from there)
and, in refit runs, `select/` (the best-validation parameters, kept after the refit).
`params_digest` names the parameters a save holds, so a run can tell two trainings apart.
"""

import hashlib
import os
import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored."""


def params_digest(params: Any) -> str:
    """16 hex digits of SHA-256 over every leaf's path, dtype, shape and bytes, in tree order.

    Why: a checkpoint's step says where a training stopped, not which training it was; a teacher
    trained again (another machine, another CPU model) saves at the same steps with other values.
    The digest tells them apart, so a student can prove which teacher training it distilled from.
    Each process hashes a full copy of every leaf (a leaf split over several processes, such as a
    sharded item table, is gathered first), so every process gets the same digest. The paths are jax.tree_util.keystr's:
    a JAX or Flax upgrade that renamed them would change every digest (a student resumed across it
    would be refused its teacher).
    """
    digest = hashlib.sha256()
    for path, leaf in jax.tree.flatten_with_path(params)[0]:
        blocks = [leaf]
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            blocks = [leaf.addressable_shards[0].data] if leaf.sharding.is_fully_replicated else gathered_row_blocks(leaf)
        header = f"{jax.tree_util.keystr(path)}|{np.dtype(leaf.dtype).name}|{tuple(leaf.shape)}|"
        digest.update(header.encode())
        for block in blocks:
            digest.update(np.ascontiguousarray(np.asarray(block)).tobytes())
    return digest.hexdigest()[:16]


# Rows of a leaf split over processes that params_digest gathers at a time.
DIGEST_BLOCK_ROWS = 65_536


def gathered_row_blocks(leaf: jax.Array):
    """A leaf split over processes (a sharded item table) as host arrays of DIGEST_BLOCK_ROWS rows, in order.

    Their bytes, concatenated, are the whole array's in C order. One block at a time is gathered,
    so no device ever holds the whole table. Every process takes part, in the same order.
    """
    for start in range(0, leaf.shape[0], DIGEST_BLOCK_ROWS):
        yield multihost_utils.process_allgather(leaf[start : start + DIGEST_BLOCK_ROWS], tiled=True)


def manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "meta"))


def save(checkpoints: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    """Saves `state` (arrays) and `meta` (JSON-able) at `step`, blocking until it is on disk.

    Saving a step again (an epoch-end save right after a periodic one, with a newer meta) replaces
    it; the previous step stays on disk meanwhile, so a crash in between loses nothing.
    """
    if step in checkpoints.all_steps():
        checkpoints.delete(step)
    checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    checkpoints.wait_until_finished()


def restore_step(checkpoints: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, meta) at `step`; `abstract_state` gives the structure, shapes and shardings."""
    restored = checkpoints.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    )
    return restored["state"], restored["meta"]


def restore_latest(managers: list[ocp.CheckpointManager], abstract_state: Any) -> tuple[list, list[dict]] | None:
    """([state], [meta]), one per manager, at the newest step that every manager holds and restores.

    One manager per member of a run; all of them save at the same steps. None when no manager has a
    checkpoint. A step that fails to restore anywhere is skipped with a warning and an earlier
    common step is tried; CheckpointError when checkpoints exist but no common step restores.
    """
    step_sets = [set(checkpoints.all_steps()) for checkpoints in managers]
    if not any(step_sets):
        return None
    steps = sorted(set.intersection(*step_sets), reverse=True)
    for step in steps:
        try:
            restored = [restore_step(checkpoints, step, abstract_state) for checkpoints in managers]
            return [state for state, _ in restored], [meta for _, meta in restored]
        except Exception as error:  # Orbax raises many types for damaged files.
            logging.warning(
                "Checkpoint at step %d failed to restore (%s: %s); falling back to an earlier one.",
                step,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
    directories = ", ".join(
        f"{checkpoints.directory} (steps {sorted(found)})" for checkpoints, found in zip(managers, step_sets, strict=True)
    )
    raise CheckpointError(f"no checkpoint step common to every member restores: {directories}")


def latest_phase(directory: str) -> str:
    """The run phase ('select' or 'refit') in the newest `latest/` checkpoint's meta; 'select' if none.

    Reads the meta alone (no arrays), before the program that the state needs exists. A
    checkpoint that cannot be read counts as none here; the full restore decides what to do.
    """
    if not os.path.isdir(directory):
        return "select"
    checkpoints = manager(directory, max_to_keep=2)
    step = checkpoints.latest_step()
    if step is None:
        return "select"
    try:
        meta = checkpoints.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # Orbax raises many types for damaged files.
        return "select"
    return meta.get("phase", "select")


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing `tree`, for a restore into the same layout."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class PreemptionFlag:
    """Set by SIGTERM; the training loop polls it after every step, saves and exits cleanly.

    Single-process runs install their own handler (Orbax's preemption check needs JAX's
    multi-host preemption service); multi-host runs use `jax.distributed`'s sync point instead.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1:  # in multi-host runs JAX's preemption service owns SIGTERM
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping after this step.")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # Every process must stop at the same step, so only the shared sync point decides.
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.requested
