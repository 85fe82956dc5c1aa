"""The trainer: `train_and_evaluate(config, workdir)` for the teacher and the student alike.

Read top to bottom: mesh, input, models and optimizer, the one jitted train step, evaluation,
checkpoints and resumption, the loop, results. The train step is a pure function of (state,
batch, constants, teacher params), jitted once per length bucket over a 1-D 'data' mesh of all
devices: the batch is sharded, everything else replicated, and the state donated. The losses see
the global batch, so results do not depend on the number of devices.
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rec_kd import checkpointing, evaluation, losses
from rec_kd import data as data_lib
from rec_kd.compress import sttd
from rec_kd.models import DistillHeads, build_model
from rec_kd.train_logging import MetricWriter, quiet_library_logs


class ConfigError(ValueError):
    """A config or teacher that cannot work, found before any training."""


# ----------------------------------------------------------------------------------------------
# Mesh and input.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Placement:
    """The 1-D 'data' mesh and the two shardings every array of a run uses."""

    mesh: Mesh
    replicated: NamedSharding
    batch: NamedSharding

    @classmethod
    def over_all_devices(cls) -> "Placement":
        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        return cls(mesh, NamedSharding(mesh, P()), NamedSharding(mesh, P("data")))

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Host batch -> global array sharded on 'data'. Each process passes its own rows."""
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch, x), batch)

    def replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, self.replicated)


def load_data(config) -> data_lib.SessionData:
    data = data_lib.load_dataset(
        config.dataset,
        config.data_dir or None,
        max_len=config.data.max_len,
        valid_fraction=config.data.valid_fraction,
        hot_fraction=config.data.hot_fraction,
        hot_counting=config.data.hot_counting,
    )
    if config.data.max_train_examples or config.data.max_eval_examples:
        data = data.with_examples(config.data.max_train_examples or len(data.train), config.data.max_eval_examples or len(data.test))
    return data


def check_batch_sizes(config, num_devices: int) -> None:
    for name in ("batch_size", "eval_batch_size"):
        size = config.train[name]
        if size <= 0 or size % num_devices:
            raise ConfigError(f"train.{name}={size} must be a positive multiple of the {num_devices} devices")


# ----------------------------------------------------------------------------------------------
# Models, teacher and optimizer.
# ----------------------------------------------------------------------------------------------


def resolve_table_config(config, num_items: int) -> None:
    """Fills empty STTD factors with a suggested factorisation of this catalogue (in place)."""
    table = config.table
    if config.stage != "student" or table.kind == "dense" or table.item_factors:
        return
    t = 1 if table.kind == "tt" else table.t
    spec = sttd.suggest_spec(num_items + 1, config.model.hidden_dim, table.ranks[0], t, table.num_cores)
    with config.unlocked():
        table.item_factors, table.dim_factors, table.ranks = spec.item_factors, spec.dim_factors, spec.ranks


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    train = config.train
    if train.schedule == "constant":
        learning_rate = train.learning_rate
    elif train.schedule == "cosine":
        learning_rate = optax.warmup_cosine_decay_schedule(
            0.0, train.learning_rate, train.warmup_steps, max(train.num_epochs * steps_per_epoch, train.warmup_steps + 1)
        )
    else:
        raise ConfigError(f"train.schedule={train.schedule!r}: expected 'constant' or 'cosine'")
    if train.weight_decay:
        return optax.adamw(learning_rate, weight_decay=train.weight_decay)
    return optax.adam(learning_rate)


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


def load_teacher(config, data: data_lib.SessionData, placement: Placement) -> Teacher:
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
    teacher = load_trained(workdir, data.num_items, placement.replicated)
    logging.info("Restored teacher from %s (selected step %d).", workdir, teacher.step)
    return teacher


def init_model_params(model, max_len: int, key):
    items = jnp.ones((1, max_len), jnp.int32)
    return model.init(key, items, jnp.ones((1,), jnp.int32), train=False)["params"]


def init_params(config, model, heads, key):
    """{'model': ..., 'heads': ...}: every trained parameter (heads only for students)."""
    model_key, heads_key = jax.random.split(key)
    params = {"model": init_model_params(model, config.data.max_len, model_key)}
    if heads is not None:
        dim = config.model.hidden_dim
        batch = {"items": jnp.ones((1, 2), jnp.int32), "lengths": jnp.full((1,), 2, jnp.int32), "weights": jnp.ones((1,))}
        table, session = jnp.zeros((3, dim)), jnp.zeros((1, dim))
        params["heads"] = heads.init(heads_key, batch, table, table, session, session, jnp.array([False, True, False]))["params"]
    return params


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------------------------
# The train step and the evaluation step.
# ----------------------------------------------------------------------------------------------


def make_loss_fn(model, heads, teacher_model, terms):
    """loss(params, batch, dropout_key, constants, teacher_params) -> (total, metrics).

    The weighted sum of `terms`; the teacher forward and the heads run only if a term needs them.
    """
    objective = losses.weighted_objective(terms)
    names = {name for name, _, _ in terms}
    needs_teacher = bool(names & {"kd", "cl", "pred"})
    needs_heads = bool(names & {"cl", "pred"})

    def loss_fn(params, batch, dropout_key, constants, teacher_params):
        student = model.apply({"params": params["model"]}, batch["items"], batch["lengths"], train=True, rngs={"dropout": dropout_key})
        outputs = dict(student)
        if needs_teacher:
            teacher = teacher_model.apply({"params": teacher_params}, batch["items"], batch["lengths"], train=False)
            teacher = jax.lax.stop_gradient(teacher)
            outputs.update(teacher_scores=teacher["scores"], teacher_table=teacher["table"], teacher_session=teacher["session"])
        if needs_heads:
            outputs.update(
                heads.apply(
                    {"params": params["heads"]},
                    batch,
                    student["table"],
                    outputs["teacher_table"],
                    student["session"],
                    outputs["teacher_session"],
                    constants["hot_mask"],
                )
            )
        return objective(outputs, batch)

    return loss_fn


def make_train_step(loss_fn, optimizer, base_key):
    """train_step(state, batch, constants, teacher_params) -> (state, metrics); pure."""

    def train_step(state, batch, constants, teacher_params):
        dropout_key = jax.random.fold_in(base_key, state["step"])
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"], batch, dropout_key, constants, teacher_params)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["train/grad_norm"] = optax.global_norm(grads)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def make_metric_sums_fn(model, ks):
    """metric_sums(params, batch, constants) -> weighted sums of every rank metric (all and cold)."""

    def metric_sums(params, batch, constants):
        scores = model.apply({"params": params["model"]}, batch["items"], batch["lengths"], train=False)["scores"]
        return evaluation.weighted_metric_sums(scores, batch["targets"], batch["weights"], constants["cold_mask"], ks)

    return metric_sums


@dataclasses.dataclass
class Run:
    """Everything a training loop or a benchmark needs: the initial state and the jitted steps."""

    init_state: Any  # () -> a freshly initialised state, replicated (jitted)
    state: Any
    train_step: Any  # (state, batch, constants, teacher_params) -> (state, metrics); state donated
    metric_sums: Any  # (params, batch, constants) -> weighted metric sums
    constants: dict
    teacher_params: Any


def build_run(config, data: data_lib.SessionData, placement: Placement, teacher: "Teacher | None", steps_per_epoch: int) -> Run:
    """Initialises the model(s) and optimizer state and jits the steps over the mesh.

    Each step is compiled once per length bucket (the batch's padded width); the batch is sharded
    on 'data', everything else replicated, and the train state donated.
    """
    is_student = config.stage == "student"
    model = build_model(config, data.num_items)
    terms = losses.objective_terms(config.distill if is_student else None)
    heads = DistillHeads(config.model.init_scheme) if is_student else None
    optimizer = make_optimizer(config, steps_per_epoch)
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    cold_mask = ~data.hot_mask & (np.arange(data.num_items + 1) > 0)
    constants = placement.replicate({"hot_mask": jnp.asarray(data.hot_mask), "cold_mask": jnp.asarray(cold_mask)})

    def init_state():
        params = init_params(config, model, heads, init_key)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}

    init_state = jax.jit(init_state, out_shardings=placement.replicated)
    state = init_state()
    loss_fn = make_loss_fn(model, heads, teacher.model if teacher else None, terms)
    train_step = jax.jit(
        make_train_step(loss_fn, optimizer, dropout_key),
        in_shardings=(placement.replicated, placement.batch, placement.replicated, placement.replicated),
        out_shardings=(placement.replicated, placement.replicated),
        donate_argnums=(0,),
    )
    metric_sums = jax.jit(
        make_metric_sums_fn(model, evaluation.DEFAULT_KS),
        in_shardings=(placement.replicated, placement.batch, placement.replicated),
        out_shardings=placement.replicated,
    )
    return Run(init_state, state, train_step, metric_sums, constants, teacher.params if teacher else {})


# ----------------------------------------------------------------------------------------------
# Run record: what a checkpoint's meta holds, so a resumed run ends exactly like an unbroken one.
# ----------------------------------------------------------------------------------------------


def new_record() -> dict:
    return {
        "phase": "select",  # 'select' (train on train, select on valid), then optionally 'refit'
        "step": 0,  # optimizer steps taken, over both phases
        "epoch": 0,  # epoch in progress (of the current phase)
        "batch_in_epoch": 0,  # next batch of that epoch
        "history": [],  # one entry per evaluation: step, epoch, valid, test, test_cold, losses
        "best": None,  # the history entry selected on validation
        "refit_history": [],  # refit phase: one entry per evaluation (test only)
        "evals_since_best": 0,
        "epoch_loss_sums": {},  # running sums of this epoch's training losses
        "epoch_loss_steps": 0,
        "train_examples": 0,
        "train_seconds": 0.0,
        "finished": False,
        "commits": [],  # the code version of every process that trained this run, in order
    }


def update_selection(record: dict, entry: dict, train_config, state, best_checkpoints) -> bool:
    """Keeps the best-valid evaluation (and its parameters in best/); True when patience runs out.

    With an empty valid split (valid_fraction=0, the authors' setting) the newest evaluation wins.
    """
    metric = train_config.selection_metric
    if record["best"] is None or entry["valid"] is None or entry["valid"][metric] > record["best"]["valid"][metric]:
        record["best"], record["evals_since_best"] = entry, 0
        checkpointing.save(best_checkpoints, entry["step"], {"params": state["params"]["model"]}, {"valid": entry["valid"]})
    else:
        record["evals_since_best"] += 1
    patience = train_config.early_stop_patience
    if patience and record["evals_since_best"] >= patience:
        logging.info("No validation improvement in %d evaluations: stopping early.", patience)
        return True
    return False


def git_commit() -> str:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# train_and_evaluate.
# ----------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, command: str | None = None, data: data_lib.SessionData | None = None
) -> dict:
    """Trains the stage named by the config in `workdir` (resuming if it holds a checkpoint).

    Returns the results dict also written to workdir/results.json, or {'preempted': True, ...}
    when SIGTERM stopped the run (a checkpoint was saved; rerun the same command to continue).
    `command` is recorded in results.json as how to reproduce the run (default: this process's argv).
    `data` replaces the dataset the config names, for experiments on a modified copy of it (a
    resumed run must be given the same data).
    """
    started = time.time()
    quiet_library_logs()
    os.makedirs(workdir, exist_ok=True)
    placement = Placement.over_all_devices()
    check_batch_sizes(config, placement.num_devices)
    is_student = config.stage == "student"

    # Input.
    data = data if data is not None else load_data(config)
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    steps_per_epoch = data_lib.num_train_batches(data.train, config.train.batch_size, buckets=buckets)
    resolve_table_config(config, data.num_items)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    logging.info(
        "%s: %d items, %d/%d/%d train/valid/test examples, %d steps an epoch, %d devices.",
        data.name,
        data.num_items,
        len(data.train),
        len(data.valid),
        len(data.test),
        steps_per_epoch,
        placement.num_devices,
    )

    # Models, optimizer and the jitted steps.
    teacher = load_teacher(config, data, placement) if is_student else None
    run = build_run(config, data, placement, teacher, steps_per_epoch)
    state, train_step, metric_sums, constants, teacher_params = (
        run.state,
        run.train_step,
        run.metric_sums,
        run.constants,
        run.teacher_params,
    )
    ks = evaluation.DEFAULT_KS

    def evaluate(split):
        if len(split) == 0:  # e.g. valid_fraction=0: nothing to measure
            return None, None
        batches = data_lib.eval_batches(split, config.train.eval_batch_size, buckets=buckets)
        return evaluation.evaluate_batches(lambda batch: metric_sums(state["params"], batch, constants), batches, placement.put_batch, ks)

    # Checkpoints: resume order is existing checkpoint, else scratch.
    latest = checkpointing.manager(os.path.join(workdir, "checkpoints", "latest"), max_to_keep=2)
    best_checkpoints = checkpointing.manager(os.path.join(workdir, "checkpoints", "best"), max_to_keep=1)
    record, resumed_from_step = new_record(), None
    commit = git_commit()  # now, before any later checkout can change the files on disk
    restored = checkpointing.restore_latest(latest, checkpointing.abstract_like(state))
    if restored is not None:
        state, record = restored
        resumed_from_step = int(state["step"])
        logging.info("Resumed from step %d (epoch %d, batch %d).", resumed_from_step, record["epoch"], record["batch_in_epoch"])
    record.setdefault("commits", [])  # runs started before this field existed
    if not record["commits"] or record["commits"][-1] != commit:
        record["commits"].append(commit)

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)

    def save_latest():
        checkpointing.save(latest, int(state["step"]), state, record)

    # The loop. Phase 'select' trains on train and selects on valid; with train.refit_on_valid, phase
    # 'refit' then trains a fresh model on train + valid for the selected number of epochs.
    train_and_valid = data_lib.concatenate_splits(data.train, data.valid) if config.train.refit_on_valid else None
    with checkpointing.PreemptionFlag() as preemption:
        while not record["finished"]:
            refit = record["phase"] == "refit"
            epoch = record["epoch"]
            num_epochs = record["best"]["epoch"] if refit else config.train.num_epochs
            split = train_and_valid if refit else data.train
            batches = data_lib.train_batches(split, config.train.batch_size, data_seed=config.data_seed, epoch=epoch, buckets=buckets)
            pending, epoch_started = [], time.time()
            progress = writer.progress(len(batches), initial=record["batch_in_epoch"], desc=f"{'refit ' if refit else ''}epoch {epoch}")
            for index in range(record["batch_in_epoch"], len(batches)):
                batch = batches[index]
                state, metrics = train_step(state, placement.put_batch(batch), constants, teacher_params)
                pending.append((metrics, int(batch["weights"].sum())))
                record["batch_in_epoch"], record["step"] = index + 1, record["step"] + 1
                step = record["step"]
                if len(pending) >= config.train.log_every_steps or index + 1 == len(batches):
                    record["train_seconds"] += time.time() - epoch_started
                    epoch_started = time.time()
                    writer.log_train(step, epoch, pending, record)
                    progress.update(len(pending))
                    pending = []
                if config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
                    save_latest()
                if preemption.should_stop(step):
                    record["train_seconds"] += time.time() - epoch_started
                    if pending:
                        writer.log_train(step, epoch, pending, record)
                    save_latest()
                    progress.close()
                    writer.close()
                    logging.warning("Preempted at step %d; rerun the same command to continue.", step)
                    return {"preempted": True, "step": step}
            progress.close()

            # End of epoch: evaluate, select on validation (select phase), checkpoint.
            record["epoch"], record["batch_in_epoch"] = epoch + 1, 0
            is_last_epoch = epoch + 1 >= num_epochs
            if (epoch + 1) % config.train.eval_every_epochs == 0 or is_last_epoch:
                entry = {"step": record["step"], "epoch": epoch + 1, "valid": None}
                if not refit:
                    entry["valid"], _ = evaluate(data.valid)
                entry["test"], entry["test_cold"] = evaluate(data.test)
                entry["losses"] = {name: value / max(record["epoch_loss_steps"], 1) for name, value in record["epoch_loss_sums"].items()}
                writer.log_eval(entry)
                record["refit_history" if refit else "history"].append(entry)
                if not refit:
                    is_last_epoch |= update_selection(record, entry, config.train, state, best_checkpoints)
            record["epoch_loss_sums"], record["epoch_loss_steps"] = {}, 0
            if is_last_epoch and refit:
                # The refit model is the one to ship and to distil from: it replaces best/.
                checkpointing.save(best_checkpoints, record["step"], {"params": state["params"]["model"]}, {"refit": True})
                record["finished"] = True
            elif is_last_epoch and config.train.refit_on_valid:
                logging.info("Selected epoch %d on valid; refitting a fresh model on train + valid.", record["best"]["epoch"])
                state = dict(run.init_state(), step=jnp.asarray(record["step"], jnp.int32))
                record.update(phase="refit", epoch=0, batch_in_epoch=0)
            else:
                record["finished"] = is_last_epoch
            save_latest()

    writer.close()
    results = build_results(config, data, record, state, teacher, resumed_from_step, placement, time.time() - started, command)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return results


# ----------------------------------------------------------------------------------------------
# results.json (schema: docs/architecture.md).
# ----------------------------------------------------------------------------------------------


def table_param_count(model_params) -> int:
    return count_params({key: value for key, value in model_params.items() if key in ("item_embedding", "sttd_cores")})


def protocol_name(refit: bool, selected: dict) -> str:
    if refit:
        return "refit on train+valid for the epochs selected on valid"
    return "selected on valid" if selected["valid"] is not None else "last epoch (no valid split)"


def build_results(config, data, record, state, teacher, resumed_from_step, placement, wall_s, command) -> dict:
    selected = record["best"]
    if selected is None:
        raise RuntimeError("training finished without any evaluation; set train.eval_every_epochs <= train.num_epochs")
    refit = record["phase"] == "refit"
    # With a refit, the reported model is the one trained on train + valid for the selected epochs.
    reported = record["refit_history"][-1] if refit else selected
    history = record["refit_history"] if refit else record["history"]
    params = state["params"]
    inference_total = count_params(params["model"])
    item_table = table_param_count(params["model"])
    results = {
        "stage": config.stage,
        "variant": config.variant,
        "dataset": config.dataset,
        "num_items": data.num_items,
        "seed": config.seed,
        "data_seed": config.data_seed,
        "num_devices": placement.num_devices,
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
        "params": {"total": count_params(params), "item_table": item_table, "inference_total": inference_total},
        "embedding_compression": None,
        "model_compression": None,
        "bytes": {"params_fp32": 4 * inference_total},
        "losses": {name.split("/", 1)[1]: value for name, value in reported["losses"].items() if name.startswith("loss/")},
        "wall_s": wall_s,
        "train_examples_per_s": record["train_examples"] / max(record["train_seconds"], 1e-9),
        "command": command or shlex.join(sys.argv),
        "commit": record["commits"][0],
        "commits": record["commits"],
    }
    if refit:
        results["select_phase"] = {
            "step": selected["step"],
            "epoch": selected["epoch"],
            "test": selected["test"],
            "test_cold": selected["test_cold"],
        }
    if config.stage == "student":
        dim = config.model.hidden_dim
        dense_rows = data.num_items + 1 if config.table.kind == "dense" else int(np.prod(config.table.item_factors))
        results["embedding_compression"] = dense_rows * dim / item_table
        results["model_compression"] = count_params(teacher.params) / inference_total
        results["teacher_workdir"] = teacher.workdir
        results["teacher_step"] = teacher.step
    return results
