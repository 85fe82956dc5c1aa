"""Members: N models whose configs differ only in a few fields, trained by one vmapped step.

Which fields may differ (MEMBER_FIELDS), how the members' values enter the step (`member_inputs`:
seeds and traced hyperparameters), and `build_run`: the stacked initial state and the jitted,
member-mapped train and evaluation steps over the mesh. One model is the N = 1 case.
"""

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rec_kd import compress, evaluation
from rec_kd import data as data_lib
from rec_kd.compress import codes
from rec_kd.defaults import ConfigError
from rec_kd.experiments.runs import Teacher
from rec_kd.models import DistillHeads, build_model, table_kind
from rec_kd.train import row_sparse, sampling, sharding, step
from rec_kd.train.sharding import Placement

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


def member_inputs(configs: Sequence, hparam_fields: Sequence[str]) -> dict:
    """{'seed': (N,) int32, 'hparams': {field: (N,) float32}} as host arrays (keys are made on device)."""
    flats = [flatten_config(config) for config in configs]
    hparams = {name: np.asarray([flat[name] for flat in flats], np.float32) for name in hparam_fields}
    return {"seed": np.asarray([config.seed for config in configs], np.int32), "hparams": hparams}


def with_member_axis(tree):
    """A leading member axis of size 1 on every array (a single model's metrics, read as member 0)."""
    return jax.tree.map(lambda x: x[None], tree)


def over_members(fn, in_axes: tuple, num_members: int, single_outputs=lambda outputs: outputs):
    """`jax.vmap(fn, in_axes)` over the member axis; for one member, `fn` itself on unstacked inputs.

    A single model has no member axis at all (state and member inputs), so it compiles to the
    plain program; `single_outputs` gives its metrics a leading axis of 1, so callers read
    member i's values as `value[i]` for every N. Indexing a stacked axis away inside the program
    instead (x[0] in, x[None] out) cost three catalogue-sized copies a step: the reshape kept XLA
    from updating Adam's moments and the table in place (docs/performance.md).
    """
    if num_members > 1:
        return jax.vmap(fn, in_axes=in_axes)
    return lambda *args: single_outputs(fn(*args))


@dataclasses.dataclass
class Run:
    """Everything a training loop or a benchmark needs for a stack of N members.

    For N > 1 every array of `state` and `members` has a leading member axis; for N = 1 there is
    none (`over_members`). `train_step(state, batch, constants, teacher_params, members)` and
    `metric_sums(params, batch, constants)` are jitted and mapped over the members; their metrics
    always carry the member axis. The state is donated. `take_member` and `stack_members` convert
    between the run's state and one model's (what each member's checkpoints hold).
    """

    init_state: Any  # (table=None) -> a freshly initialised, replicated state (member axis only for N > 1)
    # The initial state: the first (donated) step deletes its buffers, so a loop keeps its own.
    state: Any
    train_step: Any
    metric_sums: Any
    constants: dict
    teacher_params: Any
    members: dict  # member_inputs(...), replicated: what train_step needs per member
    take_member: Any  # (tree, i) -> member i's model state
    stack_members: Any  # (*trees) -> the run's state from every member's

    def with_teacher_body(self, state):
        """`state` with every model parameter outside the item table taken from the teacher (model.init_from_teacher)."""
        return with_teacher_body(state, self.teacher_params, self.stack_members)

    def step(self, state, batch: dict[str, jax.Array]):
        return self.train_step(state, batch, self.constants, self.teacher_params, self.members)


def eval_chunk_items(config) -> int:
    """train.eval_chunk_items (runs from before the field: -1, by catalogue size; theirs were all below it)."""
    return config.train.get("eval_chunk_items", -1)


def build_run(configs, data: data_lib.SessionData, placement: Placement, teacher: Teacher | None, steps_per_epoch: int) -> Run:
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
    optimizer = step.make_optimizer(config, steps_per_epoch)
    num_members = len(configs)
    inputs = member_inputs(configs, hparam_fields)
    members = placement.replicate(inputs if num_members > 1 else jax.tree.map(lambda x: x[0], inputs))
    constants = placement.replicate(step_constants(config, data))
    table_name = model.spec.param_name
    row_sparse_table = row_sparse.table_update(config) == "rows"
    if row_sparse_table:  # before anything is built for a table it cannot update
        row_sparse.check_rows_config(sampling.loss_kind(config), table_kind(config))

    def init_member(seed):
        params = step.init_params(config, model, heads, step.model_keys(seed)[0])
        opt_state = step.init_opt_state(optimizer, params, table_name if row_sparse_table else None)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}

    init_members = lambda: over_members(init_member, (0,), num_members)(members["seed"])  # noqa: E731
    sharded_table = sharded_table_shape(config, model, placement)
    state_sharding = sharding.state_shardings(jax.eval_shape(init_members), placement, sharded_table)
    init_program = jax.jit(init_members, out_shardings=state_sharding)

    def init_state(table=None):
        """A fresh state; `table` (derived_tables: the item table's parameters, stacked for N > 1) replaces the drawn one."""
        state = init_program()
        if table is not None:
            state["params"]["model"][table_name] = placement.replicate(table)
        return state

    train_step = jax.jit(
        over_members(
            one_model_step(config, model, heads, teacher, steps_per_epoch),
            (0, None, None, None, 0),
            num_members,
            lambda outputs: (outputs[0], with_member_axis(outputs[1])),
        ),
        in_shardings=(state_sharding, placement.batch, placement.replicated, placement.replicated, placement.replicated),
        out_shardings=(state_sharding, placement.replicated),
        donate_argnums=(0,),
    )
    eval_chunk_size = evaluation.eval_chunk_size(eval_chunk_items(config), model.num_items + 1)
    metric_sums = jax.jit(
        over_members(
            step.make_metric_sums_fn(model, evaluation.DEFAULT_KS, eval_chunk_size),
            (0, None, None),
            num_members,
            with_member_axis,
        ),
        in_shardings=(state_sharding["params"], placement.batch, placement.replicated),
        out_shardings=placement.replicated,
    )
    take_member, stack_members = member_converters(num_members, jax.eval_shape(lambda: init_member(0)), placement, sharded_table)
    return Run(
        init_state, init_state(), train_step, metric_sums, constants, teacher.params if teacher else {}, members, take_member, stack_members
    )


def step_constants(config, data: data_lib.SessionData) -> dict:
    """The step's constant arrays: the hot and cold item masks, and the sampled loss's frequencies."""
    constants = {"hot_mask": data.hot_mask, "cold_mask": ~data.hot_mask & (np.arange(data.num_items + 1) > 0)}
    if sampling.loss_kind(config) == "sampled":
        sampling.check_sampled_config(config, data.num_items)
        constants.update(sampling.sampling_constants(data.train.targets, data.num_items))
    return constants


def one_model_step(config, model, heads, teacher: Teacher | None, steps_per_epoch: int):
    """The train step of one model (step.make_train_step, or its row-sparse form), before vmap and jit."""
    teacher_model, distill = (teacher.model if teacher else None), (config.distill if config.stage == "student" else None)
    if sampling.loss_kind(config) == "sampled":
        loss_fn = step.make_sampled_loss_fn(model, teacher_model, distill, config.train.sampled)
    else:
        loss_fn = step.make_loss_fn(model, heads, teacher_model, distill)
    if row_sparse.table_update(config) == "dense":
        return step.make_train_step(loss_fn, config, steps_per_epoch)
    return step.make_row_sparse_train_step(loss_fn, config, steps_per_epoch, model.spec.param_name, config.train.sampled)


def member_converters(num_members: int, member_shapes, placement: Placement, sharded_table):
    """(take_member, stack_members): between the run's state and one member's, placed as the run places them."""
    if num_members == 1:
        # The live state itself: safe to save because Orbax saves synchronously here (checkpointing.manager).
        return (lambda tree, i: tree), (lambda tree: tree)
    member_sharding = sharding.state_shardings(member_shapes, placement, sharded_table)
    take_member = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), out_shardings=member_sharding)

    def stack(*trees):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

    def stack_members(*trees):
        """The members' trees (whole states, or a part of one) stacked, placed as the run's state places them."""
        stacked = sharding.state_shardings(jax.eval_shape(stack, *trees), placement, sharded_table)
        return jax.jit(stack, out_shardings=stacked)(*trees)

    return take_member, stack_members


def sharded_table_shape(config, model, placement: Placement) -> tuple[int, int] | None:
    """(rows, d) of the dense item table that train.shard_item_table splits over the devices; None: replicated."""
    if not config.train.get("shard_item_table", False):
        return None
    if table_kind(config) != "dense":
        raise ConfigError(f"train.shard_item_table=True shards a dense item table; table.kind={table_kind(config)} is compressed")
    sharding.check_table_sharding(model.spec.num_rows, placement.num_devices)
    return model.spec.num_rows, model.spec.dim


def derived_tables(configs: Sequence, data: data_lib.SessionData, split: data_lib.Split, teacher: Teacher | None):
    """The item-table parameters a `codes` student starts from, stacked over members; None for every other table.

    Each member quantizes with its own seed. The codes come from the phase's teacher (the
    select-phase model while selecting, the refit model while refitting, so neither phase sees a
    table trained on its test data) or from `split`, the phase's training examples (svd); the
    k-means weights items by their count in `split`.
    """
    config = configs[0]
    if table_kind(config) != "codes" or config.table.codes.source == "random":
        return None
    options = config.table.codes
    spec = build_model(config, data.num_items).spec
    if options.source == "teacher":
        vectors = teacher_vectors(teacher, data.num_items, spec.dim)
    else:
        sessions = [
            np.append(items[:length], target) for items, length, target in zip(split.items, split.lengths, split.targets, strict=True)
        ]
        vectors = codes.svd_item_vectors(sessions, data.num_items, spec.dim, int(config.seed))
    weights = data_lib.session_data.split_item_counts(split, data.num_items)[1:].astype(np.float64)
    tables = []
    for member in configs:
        table = codes.quantize_table(spec, vectors, weights, int(options.kmeans_iterations), int(member.seed), int(options.beam))
        if options.source == "svd":
            table["codebooks"] = codes.rescaled(table["codebooks"], spec, table["codes"], config.model.hidden_dim**-0.5)
        tables.append(table)
    logging.info(
        "codes table: %d items quantized (%s, source %s) for %d member(s).", data.num_items, spec.method, options.source, len(configs)
    )
    if len(tables) == 1:
        return tables[0]
    return jax.tree.map(lambda *xs: np.stack(xs), *tables)


def teacher_vectors(teacher: Teacher | None, num_items: int, dim: int) -> np.ndarray:
    """(N, dim) rows 1..N of the teacher's item table; a ConfigError naming the field when it cannot give them."""
    if teacher is None:
        raise ConfigError("table.codes.source='teacher' needs a teacher (config.teacher_workdir); use source 'svd' or 'random' without one")
    table = np.asarray(teacher.model.apply({"params": teacher.params}, method=lambda model: model.item_table()))
    if table.shape != (num_items + 1, dim):
        raise ConfigError(
            f"table.codes.source='teacher': {teacher.workdir}'s item table is {table.shape[0]} x {table.shape[1]}, "
            f"the student needs {num_items + 1} x {dim} (model.hidden_dim); train the teacher at the student's width"
        )
    return table[1:]


def with_teacher_body(state, teacher_params, stack_members):
    """The state with its model's non-table parameters replaced by the teacher's (same shapes), for every member."""
    count = member_count(state)
    model = dict(state["params"]["model"])
    body = {name: value for name, value in teacher_params.items() if name not in compress.TABLE_PARAM_NAMES}
    for name, value in body.items():
        mine = jax.tree.map(lambda leaf: leaf.shape[1:] if count > 1 else leaf.shape, model.get(name))
        theirs = jax.tree.map(lambda leaf: leaf.shape, value)
        if mine != theirs:
            raise ConfigError(f"model.init_from_teacher: the teacher's {name!r} is {theirs}, the student's {mine}; train them at one size")
    # Copies: the state is donated to the step, and the teacher's own buffers must outlive it.
    model.update(stack_members(*([jax.tree.map(jnp.copy, body)] * count)))
    return {**state, "params": {**state["params"], "model": model}}


def member_count(state) -> int:
    """Members in a state: its step's leading axis (a single model's step is a scalar)."""
    return 1 if state["step"].ndim == 0 else int(state["step"].shape[0])
