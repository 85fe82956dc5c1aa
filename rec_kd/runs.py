"""A workdir read back: its config, its selected model, its data, and the teacher a student needs.

Everything that uses a finished (or running) run without training it comes here: the student's
teacher, export, serving tools, benchmarks. Nothing here builds an optimizer or a train step.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from rec_kd import checkpointing
from rec_kd import data as data_lib
from rec_kd.defaults import ConfigError
from rec_kd.models import build_model, init_model_params


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A restored model: its module, its selected parameters, and where they came from."""

    model: Any
    params: Any
    step: int
    workdir: str
    config: Any


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


def load_trained(workdir: str, num_items: int, sharding=None) -> TrainedModel:
    """The model selected in `workdir` (checkpoints/best: the best-valid or the refit parameters).

    `num_items` must be the catalogue the run trained on; a mismatch is a ConfigError.
    """
    config = read_run_config(workdir)
    model = build_model(config, num_items)
    abstract = {"params": jax.eval_shape(lambda: init_model_params(model, config.data.max_len, jax.random.key(0)))}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    best = checkpointing.manager(os.path.join(workdir, "checkpoints", "best"), max_to_keep=1)
    step = best.latest_step()
    if step is None:
        raise ConfigError(f"{workdir}/checkpoints/best: no selected checkpoint (did the run finish an epoch?)")
    try:
        restored, _ = checkpointing.restore_step(best, step, abstract)
    except Exception as error:
        raise ConfigError(
            f"{workdir}/checkpoints/best/{step}: cannot restore a model of {num_items} items "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    return TrainedModel(model=model, params=restored["params"], step=step, workdir=workdir, config=config)


def load_teacher(config, data: data_lib.SessionData, sharding=None) -> Teacher:
    """Restores the teacher named by config.teacher_workdir; every mismatch is an error now."""
    workdir = config.teacher_workdir
    if not workdir:
        raise ConfigError("the student stage needs --config.teacher_workdir=DIR (a trained teacher's workdir)")
    teacher_config = read_run_config(workdir, role="teacher")
    config_path = os.path.join(workdir, "config.json")
    if teacher_config.stage != "teacher":
        raise ConfigError(f"{config_path}: stage is {teacher_config.stage!r}, not a teacher")
    if teacher_config.dataset != config.dataset:
        raise ConfigError(f"{config_path}: teacher was trained on {teacher_config.dataset!r}, the student is on {config.dataset!r}")
    if teacher_config.data.max_len != config.data.max_len:
        raise ConfigError(f"{config_path}: teacher max_len {teacher_config.data.max_len} != student {config.data.max_len}")
    teacher = load_trained(workdir, data.num_items, sharding)
    logging.info("Restored teacher from %s (selected step %d).", workdir, teacher.step)
    return teacher
