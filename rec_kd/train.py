"""The trainer: `train_and_evaluate(config, workdir)` for the teacher and the student alike.

Read top to bottom: mesh, input, models and optimizer, the one jitted train step, evaluation,
checkpoints and resumption, the loop, results. The train step is a pure function of (state,
batch, constants, teacher params, member inputs), jitted once per length bucket over a 1-D 'data'
mesh of all devices: the batch is sharded, everything else replicated, and the state donated. The
losses see the global batch, so results do not depend on the number of devices.

Every run is a stack of N >= 1 *members* trained by one `jax.vmap`ped step:
`train_members(configs, workdirs)` trains models whose configs differ only in MEMBER_FIELDS (seed,
learning rate, loss weights, temperatures) at once on the same batches, each with its own
workdir, metrics, checkpoints and results.json; `train_and_evaluate` is the N = 1 case.
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
import types
from collections.abc import Sequence
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

    def process_rows(self, num_rows: int) -> slice:
        """The rows of a global batch that live on this process's devices (all rows in one process)."""
        indices = self.batch.addressable_devices_indices_map((num_rows,)).values()
        return slice(min(index[0].start or 0 for index in indices), max(index[0].stop or num_rows for index in indices))

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global host batch -> global array sharded on 'data'; only this process's rows are sent.

        Every process builds the same batch order (a function of data_seed and epoch) and passes
        only its own rows; `make_array_from_process_local_data` assembles the global batch.
        """
        rows = self.process_rows(len(batch["weights"]))
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.batch, x[rows]), batch)

    def replicate(self, tree: Any) -> Any:
        """Host values (the same in every process) -> global arrays replicated on every device."""
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)


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


def make_optimizer(config, steps_per_epoch: int, learning_rate=None) -> optax.GradientTransformation:
    """Adam(W) with the config's schedule; `learning_rate` (a member's traced value) replaces the config's."""
    train = config.train
    peak = train.learning_rate if learning_rate is None else learning_rate
    if train.schedule == "constant":
        learning_rate = peak
    elif train.schedule == "cosine":
        learning_rate = optax.warmup_cosine_decay_schedule(
            0.0, peak, train.warmup_steps, max(train.num_epochs * steps_per_epoch, train.warmup_steps + 1)
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


def distill_view(distill_config, hparams: dict) -> types.SimpleNamespace:
    """The distillation settings with a member's traced values (keys 'distill.NAME') in place."""
    values = distill_config.to_dict()
    values.update({name.split(".", 1)[1]: value for name, value in hparams.items() if name.startswith("distill.")})
    return types.SimpleNamespace(**values)


def make_loss_fn(model, heads, teacher_model, distill_config):
    """loss(params, batch, dropout_key, constants, teacher_params, hparams) -> (total, metrics).

    The weighted sum of `losses.objective_terms` (the teacher's when distill_config is None);
    `hparams` holds a member's values of the vectorised fields. A term whose weight is a literal 0
    is not computed, and the teacher forward and the heads run only if a term needs them.
    """

    def loss_fn(params, batch, dropout_key, constants, teacher_params, hparams):
        terms = losses.objective_terms(None if distill_config is None else distill_view(distill_config, hparams))
        names = {name for name, _, _ in terms}
        student = model.apply({"params": params["model"]}, batch["items"], batch["lengths"], train=True, rngs={"dropout": dropout_key})
        outputs = dict(student)
        if names & {"kd", "cl", "pred"}:
            teacher = teacher_model.apply({"params": teacher_params}, batch["items"], batch["lengths"], train=False)
            teacher = jax.lax.stop_gradient(teacher)
            outputs.update(teacher_scores=teacher["scores"], teacher_table=teacher["table"], teacher_session=teacher["session"])
        if names & {"cl", "pred"}:
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
        return losses.weighted_objective(terms)(outputs, batch)

    return loss_fn


def make_train_step(loss_fn, config, steps_per_epoch: int):
    """train_step(state, batch, constants, teacher_params, member) -> (state, metrics); pure.

    `member` = {'seed': the member's seed, 'hparams': its vectorised field values}. The
    optimizer is rebuilt from the member's learning rate on every call: optax transforms are pure
    and their state does not depend on the rate, so this costs nothing at run time.
    """

    def train_step(state, batch, constants, teacher_params, member):
        dropout_key = jax.random.fold_in(member_keys(member["seed"])[1], state["step"])
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state["params"], batch, dropout_key, constants, teacher_params, member["hparams"])
        optimizer = make_optimizer(config, steps_per_epoch, member["hparams"].get("train.learning_rate"))
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def make_metric_sums_fn(model, ks):
    """metric_sums(params, batch, constants) -> weighted sums of every rank metric (all and cold)."""

    def metric_sums(params, batch, constants):
        scores = model.apply({"params": params["model"]}, batch["items"], batch["lengths"], train=False)["scores"]
        return evaluation.weighted_metric_sums(scores, batch["targets"], batch["weights"], constants["cold_mask"], ks)

    return metric_sums


# ----------------------------------------------------------------------------------------------
# Members: models trained together by one vmapped step.
# ----------------------------------------------------------------------------------------------

# Config fields that may differ between the members of one run. `seed` enters through each
# member's keys, the others through its `hparams` (traced scalars); every other field shapes the
# program and must be equal.
HPARAM_FIELDS = (
    "train.learning_rate",
    "distill.kd_weight",
    "distill.cl_weight",
    "distill.pred_weight",
    "distill.kd_temperature",
    "distill.cl_temperature",
)
MEMBER_FIELDS = ("seed", *HPARAM_FIELDS)


def flatten_config(config) -> dict[str, Any]:
    """{'train.learning_rate': 0.001, ...}: every leaf field of a config under its dotted name."""
    flat = {}
    for key, value in config.items() if hasattr(config, "items") else []:
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            flat.update({f"{key}.{name}": leaf for name, leaf in flatten_config(value).items()})
        else:
            flat[key] = tuple(value) if isinstance(value, list) else value
    return flat


def differing_fields(configs: Sequence) -> list[str]:
    """The dotted fields whose values are not the same in every config."""
    flats = [flatten_config(config) for config in configs]
    names = sorted(set().union(*flats))
    return [name for name in names if len({repr(flat.get(name)) for flat in flats}) > 1]


def check_members(configs: Sequence, workdirs: Sequence[str]) -> None:
    """A ConfigError if these configs and workdirs cannot train together as one member stack."""
    if not configs or len(configs) != len(workdirs):
        raise ConfigError(f"need one workdir per member config, got {len(configs)} configs and {len(workdirs)} workdirs")
    if len({os.path.abspath(workdir) for workdir in workdirs}) != len(workdirs):
        raise ConfigError(f"members need distinct workdirs, got {list(workdirs)}")
    differing = differing_fields(configs)
    fixed = [name for name in differing if name not in MEMBER_FIELDS]
    if fixed:
        raise ConfigError(f"members of one vectorised run may differ only in {MEMBER_FIELDS}; these differ: {fixed}")
    if len(configs) > 1 and configs[0].train.refit_on_valid:
        raise ConfigError("train.refit_on_valid needs a run of its own: members would refit for different epoch counts")


def member_inputs(configs: Sequence, hparam_fields: Sequence[str]) -> dict:
    """{'seed': (N,) int32, 'hparams': {field: (N,) float32}} as host arrays (keys are made on device)."""
    flats = [flatten_config(config) for config in configs]
    hparams = {name: np.asarray([flat[name] for flat in flats], np.float32) for name in hparam_fields}
    return {"seed": np.asarray([config.seed for config in configs], np.int32), "hparams": hparams}


def member_keys(seed):
    """(init key, dropout key) of a member: both derived from its seed alone."""
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    return init_key, dropout_key


def over_members(fn, in_axes: tuple, num_members: int):
    """`jax.vmap(fn, in_axes)` over the member axis; for one member, that axis is indexed away instead.

    Same values either way, but a single model then compiles to plain (unbatched) ops: on this
    2-core CPU the Tmall student step ran at 592 examples/s vmapped over one member and 799 with
    the axis indexed away (`launch.bench --stages=student --members=1`, 2026-11-28).
    """
    if num_members > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def single_member(*args):
        args = [jax.tree.map(lambda x: x[0], arg) if axis == 0 else arg for arg, axis in zip(args, in_axes, strict=True)]
        return jax.tree.map(lambda x: x[None], fn(*args))

    return single_member


@dataclasses.dataclass
class Run:
    """Everything a training loop or a benchmark needs for a stack of N members.

    Every array of `state` has a leading member axis. `train_step(state, batch, constants,
    teacher_params, members)` and `metric_sums(params, batch, constants)` are jitted and mapped
    over the members (`over_members`); the state is donated.
    """

    init_state: Any  # () -> a freshly initialised (N-stacked, replicated) state
    state: Any
    train_step: Any
    metric_sums: Any
    constants: dict
    teacher_params: Any
    members: dict  # member_inputs(...), replicated: what train_step needs per member
    take_member: Any  # (tree, i) -> member i's slice of an N-stacked tree (jitted)
    stack_members: Any  # (*trees) -> an N-stacked tree (jitted)

    def step(self, state, batch: dict[str, jax.Array]):
        return self.train_step(state, batch, self.constants, self.teacher_params, self.members)


def build_run(configs, data: data_lib.SessionData, placement: Placement, teacher: "Teacher | None", steps_per_epoch: int) -> Run:
    """Initialises N members' models and optimizer states and jits their vmapped steps.

    `configs` is one config or a list of member configs (equal outside MEMBER_FIELDS). Each step
    is compiled once per length bucket (the batch's padded width); the batch is sharded on 'data',
    everything else replicated, and the train state donated.
    """
    configs = [configs] if isinstance(configs, ml_collections.ConfigDict) else list(configs)
    hparam_fields = [name for name in differing_fields(configs) if name in HPARAM_FIELDS]
    config = configs[0]
    is_student = config.stage == "student"
    model = build_model(config, data.num_items)
    heads = DistillHeads(config.model.init_scheme) if is_student else None
    optimizer = make_optimizer(config, steps_per_epoch)
    members = placement.replicate(member_inputs(configs, hparam_fields))
    cold_mask = ~data.hot_mask & (np.arange(data.num_items + 1) > 0)
    constants = placement.replicate({"hot_mask": data.hot_mask, "cold_mask": cold_mask})

    def init_member(seed):
        params = init_params(config, model, heads, member_keys(seed)[0])
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}

    num_members = len(configs)
    init_state = jax.jit(lambda: over_members(init_member, (0,), num_members)(members["seed"]), out_shardings=placement.replicated)
    loss_fn = make_loss_fn(model, heads, teacher.model if teacher else None, config.distill if is_student else None)
    train_step = jax.jit(
        over_members(make_train_step(loss_fn, config, steps_per_epoch), (0, None, None, None, 0), num_members),
        in_shardings=(placement.replicated, placement.batch, placement.replicated, placement.replicated, placement.replicated),
        out_shardings=(placement.replicated, placement.replicated),
        donate_argnums=(0,),
    )
    metric_sums = jax.jit(
        over_members(make_metric_sums_fn(model, evaluation.DEFAULT_KS), (0, None, None), num_members),
        in_shardings=(placement.replicated, placement.batch, placement.replicated),
        out_shardings=placement.replicated,
    )
    take_member = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), out_shardings=placement.replicated)
    stack_members = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=placement.replicated)
    return Run(
        init_state, init_state(), train_step, metric_sums, constants, teacher.params if teacher else {}, members, take_member, stack_members
    )


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
    return train_members([config], [workdir], None if command is None else [command], data)[0]


@dataclasses.dataclass
class Member:
    """One model of a run: its config, workdir, checkpoint managers, log and run record."""

    config: Any
    workdir: str
    latest: Any
    best: Any
    record: dict
    writer: Any = None
    resumed_from_step: int | None = None


def train_members(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    commands: Sequence[str] | None = None,
    data: data_lib.SessionData | None = None,
) -> list[dict]:
    """Trains N members at once with one vmapped step; returns each member's results (see above).

    The configs may differ only in MEMBER_FIELDS. The members share every batch (the data order
    depends on data_seed alone) and the loop position; each has its own metrics.jsonl,
    checkpoints, early stopping and results.json in its workdir, and ends as it would alone.
    Resuming restores every member at the newest step that all of their checkpoints hold.
    """
    started = time.time()
    quiet_library_logs()
    configs = list(configs)
    check_members(configs, workdirs)
    num_members = len(configs)
    placement = Placement.over_all_devices()
    config = configs[0]
    check_batch_sizes(config, placement.num_devices)

    # Input.
    data = data if data is not None else load_data(config)
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    steps_per_epoch = data_lib.num_train_batches(data.train, config.train.batch_size, buckets=buckets)
    for member_config, workdir in zip(configs, workdirs, strict=True):
        resolve_table_config(member_config, data.num_items)
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(member_config.to_json_best_effort(indent=2, sort_keys=True))
    logging.info(
        "%s: %d items, %d/%d/%d train/valid/test examples, %d steps an epoch, %d devices in %d processes, %d member(s).",
        data.name,
        data.num_items,
        len(data.train),
        len(data.valid),
        len(data.test),
        steps_per_epoch,
        placement.num_devices,
        jax.process_count(),
        num_members,
    )

    # Models, optimizer and the jitted steps.
    teacher = load_teacher(config, data, placement) if config.stage == "student" else None
    run = build_run(configs, data, placement, teacher, steps_per_epoch)
    state = run.state
    ks = evaluation.DEFAULT_KS

    def evaluate(split) -> list[tuple[dict | None, dict | None]]:
        """(metrics, cold-target metrics) of every member on `split`."""
        if len(split) == 0:  # e.g. valid_fraction=0: nothing to measure
            return [(None, None)] * num_members
        batches = data_lib.eval_batches(split, config.train.eval_batch_size, buckets=buckets)
        totals = evaluation.split_totals(lambda batch: run.metric_sums(state["params"], batch, run.constants), batches, placement.put_batch)
        member_totals = [{name: float(value[i]) for name, value in totals.items()} for i in range(num_members)]
        return [(evaluation.means_from_sums(t, "all", ks), evaluation.means_from_sums(t, "cold", ks)) for t in member_totals]

    # Checkpoints: resume from the members' newest common checkpoint, else start from scratch.
    members = [
        Member(
            config=member_config,
            workdir=workdir,
            latest=checkpointing.manager(os.path.join(workdir, "checkpoints", "latest"), max_to_keep=2),
            best=checkpointing.manager(os.path.join(workdir, "checkpoints", "best"), max_to_keep=1),
            record=new_record(),
        )
        for member_config, workdir in zip(configs, workdirs, strict=True)
    ]
    commit = git_commit()  # now, before any later checkout can change the files on disk
    restored = checkpointing.restore_latest([member.latest for member in members], checkpointing.abstract_like(run.take_member(state, 0)))
    if restored is not None:
        member_states, records = restored
        state = run.stack_members(*member_states)
        for member, record in zip(members, records, strict=True):
            member.record, member.resumed_from_step = record, int(record["step"])
        lead = members[0].record
        logging.info("Resumed from step %d (epoch %d, batch %d).", lead["step"], lead["epoch"], lead["batch_in_epoch"])
    for member in members:
        member.record.setdefault("commits", [])  # runs started before this field existed
        if not member.record["commits"] or member.record["commits"][-1] != commit:
            member.record["commits"].append(commit)
        member.writer = MetricWriter(member.workdir, enabled=jax.process_index() == 0)
    # The loop position (phase, step, epoch, batch_in_epoch) is the same in every record.
    lead = members[0].record

    def save_latest():
        for i, member in enumerate(members):
            checkpointing.save(member.latest, lead["step"], run.take_member(state, i), member.record)

    def log_pending(pending, seconds):
        fetched = jax.device_get([metrics for metrics, _ in pending])  # every value (N,)
        examples = sum(count for _, count in pending)
        for i, member in enumerate(members):
            if not member.record["finished"]:
                member.record["train_seconds"] += seconds
                member_metrics = [{name: value[i] for name, value in metrics.items()} for metrics in fetched]
                member.writer.log_train(lead["step"], lead["epoch"], member_metrics, examples, member.record)

    # The loop. Phase 'select' trains on train and selects on valid; with train.refit_on_valid, phase
    # 'refit' then trains a fresh model on train + valid for the selected number of epochs.
    train_and_valid = data_lib.concatenate_splits(data.train, data.valid) if config.train.refit_on_valid else None
    with checkpointing.PreemptionFlag() as preemption:
        while not all(member.record["finished"] for member in members):
            refit = lead["phase"] == "refit"
            epoch = lead["epoch"]
            num_epochs = lead["best"]["epoch"] if refit else config.train.num_epochs
            split = train_and_valid if refit else data.train
            batches = data_lib.train_batches(split, config.train.batch_size, data_seed=config.data_seed, epoch=epoch, buckets=buckets)
            pending, epoch_started = [], time.time()
            progress = members[0].writer.progress(
                len(batches), initial=lead["batch_in_epoch"], desc=f"{'refit ' if refit else ''}epoch {epoch}"
            )
            for index in range(lead["batch_in_epoch"], len(batches)):
                batch = batches[index]
                state, metrics = run.step(state, placement.put_batch(batch))
                pending.append((metrics, int(batch["weights"].sum())))
                for member in members:
                    member.record["batch_in_epoch"], member.record["step"] = index + 1, member.record["step"] + 1
                step = lead["step"]
                if len(pending) >= config.train.log_every_steps or index + 1 == len(batches):
                    log_pending(pending, time.time() - epoch_started)
                    epoch_started = time.time()
                    progress.update(len(pending))
                    pending = []
                if config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
                    save_latest()
                if preemption.should_stop(step):
                    if pending:
                        log_pending(pending, time.time() - epoch_started)
                    save_latest()
                    progress.close()
                    for member in members:
                        member.writer.close()
                    logging.warning("Preempted at step %d; rerun the same command to continue.", step)
                    return [{"preempted": True, "step": step}] * num_members
            progress.close()

            # End of epoch: evaluate, select on validation (select phase), checkpoint.
            for member in members:
                member.record["epoch"], member.record["batch_in_epoch"] = epoch + 1, 0
            is_last_epoch = epoch + 1 >= num_epochs
            stops = [is_last_epoch] * num_members
            if (epoch + 1) % config.train.eval_every_epochs == 0 or is_last_epoch:
                valid = [(None, None)] * num_members if refit else evaluate(data.valid)
                test = evaluate(data.test)
                for i, member in enumerate(members):
                    if member.record["finished"]:
                        continue
                    record = member.record
                    entry = {"step": lead["step"], "epoch": epoch + 1, "valid": valid[i][0], "test": test[i][0], "test_cold": test[i][1]}
                    entry["losses"] = {
                        name: value / max(record["epoch_loss_steps"], 1) for name, value in record["epoch_loss_sums"].items()
                    }
                    member.writer.log_eval(entry)
                    record["refit_history" if refit else "history"].append(entry)
                    if not refit:
                        stops[i] |= update_selection(record, entry, config.train, run.take_member(state, i), member.best)
            for i, member in enumerate(members):
                record = member.record
                record["epoch_loss_sums"], record["epoch_loss_steps"] = {}, 0
                if record["finished"]:
                    continue
                if stops[i] and refit:
                    # The refit model is the one to ship and to distil from: it replaces best/.
                    member_params = run.take_member(state, i)["params"]["model"]
                    checkpointing.save(member.best, record["step"], {"params": member_params}, {"refit": True})
                    record["finished"] = True
                elif stops[i] and config.train.refit_on_valid:  # a run of one member (check_members)
                    logging.info("Selected epoch %d on valid; refitting a fresh model on train + valid.", record["best"]["epoch"])
                    state = dict(run.init_state(), step=placement.replicate(np.full((num_members,), record["step"], np.int32)))
                    record.update(phase="refit", epoch=0, batch_in_epoch=0)
                else:
                    record["finished"] = stops[i]
            save_latest()

    all_results = []
    for i, member in enumerate(members):
        member.writer.close()
        command = commands[i] if commands else None
        results = build_results(
            member.config,
            data,
            member.record,
            run.take_member(state, i),
            teacher,
            member.resumed_from_step,
            placement,
            time.time() - started,
            command,
        )
        if jax.process_index() == 0:
            with open(os.path.join(member.workdir, "results.json"), "w") as f:
                json.dump(results, f, indent=2, sort_keys=True)
        all_results.append(results)
    return all_results


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
