"""results.json: what a finished run reports, built from its run record (schema: docs/architecture.md)."""

import json
import os
import shlex
import sys

import jax
import ml_collections
import numpy as np
from absl import logging

from rec_kd import compress
from rec_kd.compress import TABLE_PARAM_NAMES
from rec_kd.models import build_model, table_kind
from rec_kd.models.sasrec import row_order


def count_params(tree) -> int:
    """Trained (float) parameters; a codes table's integer codes are data, counted in bytes only."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype, np.inexact)))


def count_bytes(tree) -> int:
    """Bytes on device: fp32 for every float parameter, integer arrays at their width."""
    return int(
        sum(np.prod(x.shape) * (4 if np.issubdtype(x.dtype, np.inexact) else np.dtype(x.dtype).itemsize) for x in jax.tree.leaves(tree))
    )


def padding_params(model) -> int:
    """Parameters in a dense table's padding rows (train.shard_item_table pads it to a multiple of 1,024 rows).

    They are never read, scored or exported, so no size or compression ratio counts them.
    """
    return (model.spec.num_rows - (model.num_items + 1)) * model.spec.dim if model.table_spec is None else 0


def table_bytes(config, num_items: int) -> dict:
    """{'item_table': the table's bytes on device (its row map included), 'dense_item_table': fp32 (N + 1) x d}."""
    model = build_model(config, num_items)
    row_map = 4 * (num_items + 1) if row_order(config) != "id" else 0  # an int32 item -> row map in the export
    item_table = compress.table_bytes(model.spec) - 4 * padding_params(model) + row_map  # fp32 padding rows left out
    return {"item_table": item_table, "dense_item_table": 4 * (num_items + 1) * config.model.hidden_dim}


def recorded_table_bytes(result: dict) -> dict:
    """{'item_table', 'dense_item_table'} in bytes on device: as a results.json records them, else (runs
    from before results.json held them) from the run's config by table_bytes, the function that records them."""
    recorded = result.get("bytes", {})
    if "item_table" in recorded:
        return recorded
    return table_bytes(ml_collections.ConfigDict(result["config"]), result["num_items"])


def table_param_count(model_params) -> int:
    return count_params({key: value for key, value in model_params.items() if key in TABLE_PARAM_NAMES})


def protocol_name(refit: bool, selected: dict) -> str:
    if refit:
        return "refit on train+valid for the epochs selected on valid"
    return "selected on valid" if selected["valid"] is not None else "last epoch (no valid split)"


def build_results(config, data, record, state, teacher, resumed_from_step, num_devices: int, wall_s, command) -> dict:
    """The results dict of one model: `record` is its run record, `state` its final (unstacked) state."""
    selected = record["best"]
    if selected is None:
        raise RuntimeError("training finished without any evaluation; set train.eval_every_epochs <= train.num_epochs")
    refit = record["phase"] == "refit"
    # With a refit, the reported model is the one trained on train + valid for the selected epochs.
    reported = record["refit_history"][-1] if refit else selected
    history = record["refit_history"] if refit else record["history"]
    params = state["params"]
    padding = padding_params(build_model(config, data.num_items))
    inference_total = count_params(params["model"]) - padding
    item_table = table_param_count(params["model"]) - padding
    results = {
        "stage": config.stage,
        "variant": config.variant,
        "table_kind": table_kind(config),
        "dataset": config.dataset,
        "num_items": data.num_items,
        "seed": config.seed,
        "data_seed": config.data_seed,
        "num_devices": num_devices,
        "smoke": bool(config.smoke),
        "protocol": protocol_name(refit, selected),
        "selected_step": reported["step"],
        "selected_epoch": selected["epoch"],
        "resumed_from_step": resumed_from_step,
        "valid": selected["valid"],
        "test": reported["test"],
        "test_cold": reported["test_cold"],
        "paper_protocol_test": {
            "note": "best test value of each metric over all evaluated epochs (the authors' protocol; selected on test)",
            **{name: max(entry["test"][name] for entry in history) for name in reported["test"]},
        },
        "params": {"total": count_params(params) - padding, "item_table": item_table, "inference_total": inference_total},
        "embedding_compression": None,
        "model_compression": None,
        "bytes": {
            "params_fp32": 4 * inference_total,
            "model": count_bytes(params["model"]) - 4 * padding,
            **table_bytes(config, data.num_items),
        },
        "losses": {name.split("/", 1)[1]: value for name, value in reported["losses"].items() if name.startswith("loss/")},
        "wall_s": wall_s,
        "train_examples_per_s": record["train_examples"] / max(record["train_seconds"], 1e-9),
        "command": command or shlex.join(sys.argv),
        # Which parameters these numbers are of (checkpointing.params_digest); None for runs from before it.
        "params_digest": record.get("refit_params_digest") if refit else selected.get("params_digest"),
        "commit": record["commits"][0],
        "commits": record["commits"],
        "config": config.to_dict(),  # every field, as resolved for this run (the table factors included)
    }
    if refit:
        results["select_phase"] = {
            "step": selected["step"],
            "epoch": selected["epoch"],
            "test": selected["test"],
            "test_cold": selected["test_cold"],
            "params_digest": selected.get("params_digest"),
        }
        # The select_record.json the refit started from, when no checkpoint held the select phase (it ran elsewhere).
        results["refit_from_record"] = record.get("refit_from_record")
    if config.stage == "student":
        dim = config.model.hidden_dim
        # Every kind: the dense table's bytes over the table's on device (its row map included).
        results["embedding_compression"] = results["bytes"]["dense_item_table"] / results["bytes"]["item_table"]
        if config.table.kind in ("sttd", "tt"):
            # As the authors count: parameters, over the padded rows prod(I), no row map.
            results["embedding_compression_authors"] = int(np.prod(config.table.item_factors)) * dim / item_table
        if row_order(config) != "id":
            results["bytes"]["item_rows_int32"] = 4 * (data.num_items + 1)
        results["model_compression"] = (count_params(teacher.params) - padding_params(teacher.model)) / inference_total
        results["teacher_workdir"] = teacher.workdir
        results["teacher_step"] = teacher.step  # the reported model's teacher (the refit phase's, with a refit)
        results["teacher_checkpoint"] = teacher.checkpoint
        results["teachers"] = record.get("teachers", {})  # phase -> the teacher checkpoint, step and digest it used
        if refit:
            results["refit_teacher_as_recorded"] = refit_teacher_as_recorded(record)
        results["teacher_results"] = teacher_results(teacher.workdir, teacher.step, teacher.digest)
    return results


def refit_teacher_as_recorded(record: dict) -> bool | None:
    """Whether a student refit from a select record distilled from the teacher training its record names.

    True: this refit's teacher has the parameters of the refit teacher named where the select
    phase ran, so the selected epochs and the refit were paired with one training of the teacher
    (a teacher's refit is deterministic on one CPU model). False: another training (another CPU
    model, another commit). None: not refit from a record, or a record from before digests.
    """
    of_record, used = record.get("refit_teacher_of_record"), record.get("teachers", {}).get("refit")
    if not (of_record and of_record.get("digest") and used):
        return None
    return of_record["digest"] == used["digest"]


def teacher_results(workdir: str, step: int, digest: str = "") -> dict | None:
    """Which training of the teacher a student distilled from: its commits, wall time and test metrics.

    Why: a teacher trained again on another machine need not repeat its numbers, so students of one
    grid may distil from different trainings of one teacher run; the report pairs each student with
    its own. `step` and `digest` (checkpointing.params_digest) are those of the teacher model the
    student used last; `test` is that model's (the refit model's, or the select-phase one's). A
    results.json of no model at that step, or (where both sides have one) of another digest,
    belongs to another training, and like a missing or unreadable one gives None.
    """
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            teacher = json.load(f)
        # The reported model, and with a refit also the select-phase one (what a select-only student distils from).
        models = {teacher["selected_step"]: (teacher.get("params_digest"), teacher["test"])}
        if teacher.get("select_phase"):
            select = teacher["select_phase"]
            models.setdefault(select["step"], (select.get("params_digest"), select["test"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        logging.warning("%s: not read (%r); the student's results name no teacher training", path, error)
        return None
    if step not in models:
        logging.warning(
            "%s reports the teacher at steps %s, but the student used step %s; no teacher training named", path, sorted(models), step
        )
        return None
    reported_digest, test = models[step]
    if digest and reported_digest and reported_digest != digest:
        logging.warning(
            "%s reports another training of the teacher (digest %s, the student's %s); none named", path, reported_digest, digest
        )
        return None
    commits = teacher.get("commits", [teacher.get("commit")])
    return {"commits": commits, "wall_s": teacher.get("wall_s"), "step": step, "params_digest": reported_digest, "test": test}
