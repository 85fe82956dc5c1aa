"""A workdir read back: its config, its selected model, its data, and the teacher a student needs.

Everything that uses a finished (or running) run without training it comes here: the student's
teacher, export, serving tools, benchmarks. Nothing here builds an optimizer or a train step.
"""

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from rec_kd import checkpointing, compress
from rec_kd import data as data_lib
from rec_kd.defaults import ConfigError
from rec_kd.experiments import result_copies
from rec_kd.models import build_model, init_model_params, resolve_table_config
from rec_kd.models.sasrec import row_order, table_kind, table_options


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A restored model: its module, its selected parameters, and where they came from."""

    model: Any
    params: Any
    step: int
    workdir: str
    config: Any
    checkpoint: str = "best"  # the folder under checkpoints/ it came from
    refit: bool = False  # trained on train + valid (a refit run's shipped model)
    digest: str = ""  # checkpointing.params_digest of `params`: which training this model is


# The student's frozen teacher is a trained model restored from the teacher's workdir.
Teacher = TrainedModel  # noqa: N816 (an alias, read as a class name)


def read_run_config(workdir: str, role: str = "run") -> ml_collections.ConfigDict:
    """A workdir's config.json; `role` names what the caller expected there, for the error."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise ConfigError(f"{config_path}: no {role} config; train a {role} into {workdir} first")
    with open(config_path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run_data(workdir: str) -> data_lib.SessionData:
    """The dataset a run trained on, as its config.json names it (smoke slices included)."""
    return data_lib.load_configured(read_run_config(workdir))


def load_trained(workdir: str, num_items: int, sharding=None, checkpoint: str = "best") -> TrainedModel:
    """The model a run saved in checkpoints/`checkpoint` (default best/: the best-valid or the refit parameters).

    `checkpoint` 'select' is a refit run's validation-selected model, trained on train alone.
    `num_items` must be the catalogue the run trained on; a mismatch is a ConfigError.
    `sharding` places the parameters (None: on this process's first device, whatever layout the
    run saved them in, e.g. a table split over 4 devices by train.shard_item_table).
    """
    config = read_run_config(workdir)
    model = build_model(config, num_items)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {"params": jax.eval_shape(lambda: init_model_params(model, config.data.max_len, jax.random.key(0)))}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    manager = checkpointing.manager(os.path.join(workdir, "checkpoints", checkpoint), max_to_keep=1)
    step = manager.latest_step()
    if step is None:
        raise ConfigError(f"{workdir}/checkpoints/{checkpoint}: no selected checkpoint (did the run finish an epoch?)")
    try:
        restored, meta = checkpointing.restore_step(manager, step, abstract)
    except Exception as error:
        raise ConfigError(
            f"{workdir}/checkpoints/{checkpoint}/{step}: cannot restore a model of {num_items} items "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    return TrainedModel(
        model=model,
        params=restored["params"],
        step=step,
        workdir=workdir,
        config=config,
        checkpoint=checkpoint,
        refit=bool(meta.get("refit")),
        digest=checkpointing.params_digest(restored["params"]),
    )


def has_checkpoint(workdir: str, checkpoint: str) -> bool:
    """True when workdir/checkpoints/`checkpoint` holds a finished save (without creating the folder)."""
    folder = os.path.join(workdir, "checkpoints", checkpoint)
    return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


def teacher_checkpoint(workdir: str, phase: str, selects_on_valid: bool = True) -> str:
    """Which of the teacher's models a student distils from in `phase` ('select' or 'refit').

    A model selected on valid must never have seen valid, not even through its teacher: a
    student's select phase that selects on valid takes the teacher's select-phase model
    (checkpoints/select/, kept by a refit teacher); a refit phase (trained on train + valid), or
    a student with no valid split, takes the teacher's shipped model (best/, the refit one where
    the teacher was refit).
    """
    if phase == "select" and selects_on_valid and has_checkpoint(workdir, "select"):
        return "select"
    return "best"


def load_teacher(config, data: data_lib.SessionData, sharding=None, phase: str = "select") -> Teacher:
    """Restores the teacher named by config.teacher_workdir for the student's `phase`; every mismatch is an error now."""
    workdir = config.teacher_workdir
    if not workdir:
        raise ConfigError("the student stage needs --config.teacher_workdir=DIR (a trained teacher's workdir)")
    teacher_config = read_run_config(workdir, role="teacher")
    config_path = os.path.join(workdir, "config.json")
    if teacher_config.stage != "teacher":
        raise ConfigError(f"{config_path}: stage is {teacher_config.stage!r}, not a teacher")
    if teacher_config.dataset != config.dataset:
        raise ConfigError(f"{config_path}: teacher was trained on {teacher_config.dataset!r}, the student is on {config.dataset!r}")
    generated = (teacher_config.data.get("synthetic", {}), config.data.get("synthetic", {}))
    if config.data.get("format") == data_lib.synthetic.NAME and generated[0] != generated[1]:  # one dataset name, many datasets
        teacher_data, student_data = (dict(fields) for fields in generated)
        raise ConfigError(f"{config_path}: teacher was trained on data.synthetic {teacher_data}, the student is on {student_data}")
    if teacher_config.data.max_len != config.data.max_len:
        raise ConfigError(f"{config_path}: teacher max_len {teacher_config.data.max_len} != student {config.data.max_len}")
    selects_on_valid = len(data.valid) > 0
    teacher = load_trained(workdir, data.num_items, sharding, teacher_checkpoint(workdir, phase, selects_on_valid))
    if phase == "refit" and teacher_config.train.get("refit_on_valid", False) and not teacher.refit:
        raise ConfigError(f"{workdir}: the teacher's refit on train + valid has not finished; finish the teacher first")
    if phase == "select" and selects_on_valid and teacher_config.data.valid_fraction < config.data.valid_fraction:
        raise ConfigError(
            f"{config_path}: the teacher held out valid_fraction={teacher_config.data.valid_fraction}, less than the "
            f"student's {config.data.valid_fraction}, so it trained on part of the student's valid split"
        )
    if phase == "select" and teacher.refit and selects_on_valid:
        raise ConfigError(
            f"{workdir}/checkpoints/best: the teacher was refit on train + valid and keeps no select-phase model "
            "(checkpoints/select/), so a student selected on valid would see valid through it; retrain the teacher "
            "(refit runs now keep checkpoints/select/) or give the student an empty valid split (data.valid_fraction=0)"
        )
    logging.info("Restored teacher from %s (checkpoints/%s, step %d) for the %s phase.", workdir, teacher.checkpoint, teacher.step, phase)
    return teacher


def teacher_item_table(config, data: data_lib.SessionData, sharding=None) -> np.ndarray:
    """(N + 1, D) item table of the teacher a student's select phase distils from (load_teacher's checks included).

    What the 'clustered' row order clusters: when the student selects on valid, the model that
    never saw valid, so a map used in both phases leaks nothing into the selection (without a
    valid split, the shipped model both phases distil from).
    """
    teacher = load_teacher(config, data, sharding, phase="select")
    return np.asarray(teacher.model.apply({"params": teacher.params}, method=lambda model: model.item_table()))


# Fields left out of a run's recipe. Where it reads and writes (`data_dir`; `teacher_workdir`, as
# roots move: the trainer checks the teacher's checkpoint, step and digest itself, use_phase_teacher), how
# often it logs and saves, how it spreads over processes, how many examples one evaluation batch
# holds: none changes its numbers. `data.path` is in `dataset` (absolute). The table is compared
# by `table_recipe`, not field by field.
NOT_RECIPE = (
    "data_dir",
    "teacher_workdir",
    "distributed",
    "table",
    "data.path",
    "train.checkpoint_every_steps",
    "train.log_every_steps",
    "train.eval_batch_size",
    "train.eval_chunk_items",
)


# Fields added after runs were made, with the value that gives those runs' numbers: a run whose
# config.json has no such field ran under this value, so its recipe holds it (no drift to name).
ADDED_FIELDS = {
    "model.repeat_bonus": 0.0,
    "model.copy_bonus": False,
    "model.init_from_teacher": False,
    "train.loss": "full",
    "train.sampled.num_negatives": 1000,
    "train.sampled.in_batch": True,
    "train.sampled.proposal": "popularity",
    "train.sampled.log_q_correction": True,
    "train.table_update": "dense",
    "train.shard_item_table": False,
}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def table_recipe(config: ml_collections.ConfigDict) -> dict:
    """The table fields that decide a run's numbers, by config path: its kind, that kind's own fields, the row order.

    A teacher's table is dense whatever its table section says, and a kind ignores the other
    kinds' options, so only these are compared. `config` must be resolved (with_resolved_table):
    then the sizes are explicit and the fields they were chosen from (budget, target_compression)
    add nothing. `row_order` and `row_order_seed` are the effective ones ('id' and None also for
    kinds that have no row order). A clustered order's map (table.item_rows) is not compared: it
    follows from the seed and the teacher, whose checkpoint, step and digest the trainer checks itself.
    """
    kind = table_kind(config)
    fields = {"table.kind": kind}
    if kind == "dense":
        return fields
    options = table_options(config.table, kind)
    # Redundant once resolved: the factors give the cores, and the hot rows follow the data fields.
    options.pop("num_cores", None)
    options.pop("hot_rows", None)
    prefix = f"table.{kind}." if kind in compress.OPTION_KINDS else "table."
    fields.update({prefix + name: value for name, value in options.items()})
    order = row_order(config)
    fields["table.row_order"] = order
    fields["table.row_order_seed"] = None if order == "id" else int(config.table.row_order_seed)
    return fields


def recipe(config: ml_collections.ConfigDict) -> dict:
    """What decides a run's numbers, flat ('train.learning_rate' -> value, sorted by name), in JSON's types (tuples as lists)."""
    flat = ADDED_FIELDS | flatten(json.loads(json.dumps(config.to_dict())))
    kept = {name: value for name, value in flat.items() if not any(name == f or name.startswith(f + ".") for f in NOT_RECIPE)}
    return dict(sorted((kept | json.loads(json.dumps(table_recipe(config)))).items()))


def with_resolved_table(config: ml_collections.ConfigDict, load_data: Callable[[], data_lib.SessionData]) -> ml_collections.ConfigDict:
    """A copy of `config` with its table sizes filled as its run fills them (models.resolve_table_config).

    Why: a run's config.json holds the resolved table, so a launcher's recipe must be resolved
    the same way before the two compare. `load_data()` gives the catalogue; it is called only for
    a table whose sizes come from it (not a dense one, nor STTD / TT with explicit factors).
    """
    resolved = config.copy_and_resolve_references()
    kind = table_kind(resolved)
    if kind == "dense" or (kind in ("sttd", "tt") and resolved.table.item_factors):
        return resolved
    data = load_data()
    resolve_table_config(resolved, data.num_items, data.hot_mask)
    return resolved


def has_trained(workdir: str) -> bool:
    """A run has trained in `workdir` (a resumable checkpoint, its results, or its select record): resuming it continues that training."""
    return any(os.path.exists(os.path.join(workdir, name)) for name in ("results.json", SELECT_RECORD)) or has_checkpoint(workdir, "latest")


# A refit run's state as its refit starts: the run record (the select phase's history, the epochs it
# selected, the teachers of both phases, with their digests) and the resolved config, as JSON. The refit trains fresh
# parameters, so nothing else is needed: a process on another machine, without the checkpoints,
# refits from this file alone (train.adopt_select_records), and a grid keeps it in the repository.
SELECT_RECORD = result_copies.SELECT_RECORD


def read_select_record(workdir: str) -> dict | None:
    """{'record', 'config'} of workdir/select_record.json, or None where there is none (read_select_record_file)."""
    path = os.path.join(workdir, SELECT_RECORD)
    return read_select_record_file(path) if os.path.exists(path) else None


def read_select_record_file(path: str) -> dict:
    """{'record', 'config'} of a select record; a file that is not a refit's start is a ConfigError naming it."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except ValueError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("record"), dict) or not isinstance(payload.get("config"), dict):
        raise ConfigError(f"{path}: expected a JSON object with a 'record' and a 'config' object")
    record = payload["record"]
    position = {name: record.get(name) for name in ("phase", "epoch", "batch_in_epoch", "finished")}
    at_start = position == {"phase": "refit", "epoch": 0, "batch_in_epoch": 0, "finished": False} and not record.get("refit_history")
    selected = isinstance(record.get("best"), dict) and isinstance(record["best"].get("epoch"), int) and record.get("history")
    if not (at_start and selected and isinstance(record.get("step"), int)):
        raise ConfigError(f"{path}: not a record of a refit's start ({position}; a step, a selected epoch and the select history expected)")
    return payload


def recorded_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The resolved config `workdir` records: its config.json, else (before a process wrote one) its select record's; None if neither."""
    if os.path.exists(os.path.join(workdir, "config.json")):
        return read_run_config(workdir)
    payload = read_select_record(workdir)
    return None if payload is None else ml_collections.ConfigDict(payload["config"])


def drift_since_training(workdir: str, expected: ml_collections.ConfigDict, launcher: str) -> list[str]:
    """recipe_drift of a run that has trained in `workdir` against the config it records; [] where none has."""
    recorded = recorded_config(workdir) if has_trained(workdir) else None
    return [] if recorded is None else recipe_drift(recorded, expected, launcher)


def config_drift(workdir: str, expected: ml_collections.ConfigDict, launcher: str = "the grid") -> list[str]:
    """Where the run recorded in `workdir`/config.json differs from `expected` (resolved), field by field.

    Why: a launcher (launch/reproduce.py, launch/sweep.py, launch/studies/compare_tables.py) skips a
    finished run and resumes an unfinished one, and `rec_kd.main` resumes whatever workdir it is
    given, so after a default changed (a new early-stopping rule, say) they would silently mix
    runs of two recipes, or two recipes in one run. Every field of `recipe` is compared, so
    `expected` must have its table resolved as config.json has (with_resolved_table). `launcher`
    names the caller in the messages.
    """
    return recipe_drift(read_run_config(workdir), expected, launcher)


def recipe_drift(ran_config: ml_collections.ConfigDict, expected: ml_collections.ConfigDict, launcher: str = "the grid") -> list[str]:
    """config_drift of a run's resolved config held anywhere (config.json, or the `config` of a results.json copy)."""
    ran = recipe(ran_config)
    return [
        f"{name}: ran {ran.get(name, '(absent)')!r}, {launcher} runs {value!r}"
        for name, value in recipe(expected).items()
        if ran.get(name, "(absent)") != value
    ]
