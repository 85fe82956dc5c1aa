"""The functional core: the optimizer, the loss, the one train step and the evaluation step.

Read it next to `losses.py`. Every function here builds or is a pure function of arrays:
`train_step(state, batch, constants, teacher_params, member) -> (state, metrics)` computes the
recommendation, distillation, contrastive and predictive losses of one model and applies one
optimizer update; `members.build_run` maps it over a stack of models and jits it over the mesh.
"""

import types

import jax
import jax.numpy as jnp
import optax

from rec_kd import evaluation
from rec_kd.defaults import ConfigError
from rec_kd.models import init_model_params
from rec_kd.train import losses, row_sparse, sampling


def learning_rate_schedule(config, steps_per_epoch: int, learning_rate=None):
    """The config's learning rate: a float (schedule 'constant') or an optax schedule of the update count.

    `learning_rate` (a member's traced value) replaces the config's peak.
    """
    train = config.train
    peak = train.learning_rate if learning_rate is None else learning_rate
    if train.schedule == "constant":
        return peak
    if train.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, train.warmup_steps, max(train.num_epochs * steps_per_epoch, train.warmup_steps + 1)
        )
    raise ConfigError(f"train.schedule={train.schedule!r}: expected 'constant' or 'cosine'")


def make_optimizer(config, steps_per_epoch: int, learning_rate=None) -> optax.GradientTransformation:
    """Adam(W) with the config's schedule; `learning_rate` (a member's traced value) replaces the config's."""
    schedule = learning_rate_schedule(config, steps_per_epoch, learning_rate)
    if config.train.weight_decay:
        return optax.adamw(schedule, weight_decay=config.train.weight_decay)
    return optax.adam(schedule)


def model_keys(seed):
    """(init key, dropout key) of a model: both derived from its seed alone."""
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    return init_key, dropout_key


def is_trained(leaf) -> bool:
    """Float leaves are trained; integer leaves (a codes table's codes) are fixed data kept with the parameters."""
    return jnp.issubdtype(leaf.dtype, jnp.inexact)


def trained_params(params):
    """`params` with every fixed (integer) leaf replaced by None: what gradients and the optimizer see.

    For a model without integer leaves this is `params` itself, so its optimizer state has the
    structure it always had (checkpoints of earlier runs restore).
    """
    return jax.tree.map(lambda leaf: leaf if is_trained(leaf) else None, params)


def with_trained(params, trained):
    """`params` with its trained leaves taken from `trained` (trained_params' structure)."""
    return jax.tree.map(lambda new, old: old if new is None else new, trained, params, is_leaf=lambda x: x is None)


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


def distill_view(distill_config, hparams: dict) -> types.SimpleNamespace:
    """The distillation settings with a member's traced values (keys 'distill.NAME') in place."""
    values = distill_config.to_dict()
    values.update({name.split(".", 1)[1]: value for name, value in hparams.items() if name.startswith("distill.")})
    return types.SimpleNamespace(**values)


def sampled_candidates(dropout_key, batch, constants, sampled):
    """(ids, log Q, targets' log Q) of a sampled step (sampling.candidates), from the step's dropout key.

    The negatives are drawn from that key folded with sampling.SAMPLING_STREAM, so a step's
    candidates are a function of (seed, step) like its dropout, and a resumed run draws the same.
    """
    return sampling.candidates(jax.random.fold_in(dropout_key, sampling.SAMPLING_STREAM), batch["targets"], sampled, constants)


def make_sampled_loss_fn(model, teacher_model, distill_config, sampled):
    """make_loss_fn's loss for train.loss='sampled': the rec and KD losses over a candidate set, no catalogue.

    `table_rows`, for a row-sparse update (make_row_sparse_train_step): {'drawn': the step's
    sampled_candidates, drawn once by the step, 'block': the (U, d) rows the step reads, 'items',
    'targets', 'candidates': the batch's ids and the candidates' as local ids into the block
    (row_sparse.touched_rows)}; the model then reads its item vectors from the block.
    """

    def loss_fn(params, batch, dropout_key, constants, teacher_params, hparams, table_rows=None):
        terms = losses.sampled_objective_terms(None if distill_config is None else distill_view(distill_config, hparams))
        drawn = sampled_candidates(dropout_key, batch, constants, sampled) if table_rows is None else table_rows["drawn"]
        ids, log_q, positive_log_q = drawn
        inputs = (batch["items"], batch["lengths"], batch["targets"], ids)
        variables, rngs, method = {"params": params["model"]}, {"dropout": dropout_key}, type(model).sampled_scores
        if table_rows is None:
            student = model.apply(variables, *inputs, train=True, rngs=rngs, method=method)
        else:
            local = (table_rows["items"], batch["lengths"], table_rows["targets"], table_rows["candidates"])
            student = model.apply(variables, *local, train=True, rows=table_rows["block"], rngs=rngs, method=method)
        outputs = dict(student, candidate_ids=ids, candidate_log_q=log_q, positive_log_q=positive_log_q)
        if any(name == "kd" for name, _, _ in terms):
            teacher = teacher_model.apply({"params": teacher_params}, *inputs, train=False, method=type(teacher_model).sampled_scores)
            teacher = jax.lax.stop_gradient(teacher)
            outputs.update(teacher_positive=teacher["positive"], teacher_candidates=teacher["candidates"])
        return losses.weighted_objective(terms)(outputs, batch)

    return loss_fn


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

    `member` = {'seed': the model's seed, 'hparams': its vectorised field values}. The
    optimizer is rebuilt from the member's learning rate on every call: optax transforms are pure
    and their state does not depend on the rate, so this costs nothing at run time.
    """

    def train_step(state, batch, constants, teacher_params, member):
        dropout_key = jax.random.fold_in(model_keys(member["seed"])[1], state["step"])
        trained = trained_params(state["params"])

        def loss_of_trained(trained):
            return loss_fn(with_trained(state["params"], trained), batch, dropout_key, constants, teacher_params, member["hparams"])

        grads, metrics = jax.grad(loss_of_trained, has_aux=True)(trained)
        optimizer = make_optimizer(config, steps_per_epoch, member["hparams"].get("train.learning_rate"))
        updates, opt_state = optimizer.update(grads, state["opt_state"], trained)
        params = with_trained(state["params"], optax.apply_updates(trained, updates))
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def without_table(trained, table_name: str):
    """trained_params' tree with the item table's leaf set to None as well (the row-sparse update owns it)."""
    return {**trained, "model": {**trained["model"], table_name: None}}


def init_opt_state(optimizer, params, table_name: str | None = None):
    """The optimizer state of fresh `params`: optax's over every trained leaf; with `table_name` (a
    row-sparse table, train.table_update='rows') {'body': optax's over the rest, 'table': its moments}."""
    trained = trained_params(params)
    if table_name is None:
        return optimizer.init(trained)
    return {"body": optimizer.init(without_table(trained, table_name)), "table": row_sparse.init_moments(params["model"][table_name])}


def make_row_sparse_train_step(loss_fn, config, steps_per_epoch: int, table_name: str, sampled):
    """make_train_step for train.table_update='rows': the dense table's read rows get a row-sparse Adam update.

    The step gathers the rows it reads (the batch's items and targets and the sampled candidates:
    row_sparse.touched_rows) into a (U, d) block, takes the loss's gradient with respect to that
    block and the other trained parameters, updates the block's rows with row_sparse.adam_rows and
    the rest with make_optimizer's Adam: no (N + 1, d) gradient and no whole-table update.
    `loss_fn` is make_sampled_loss_fn's; the step's candidates reach it in `table_rows`.
    """

    def train_step(state, batch, constants, teacher_params, member):
        dropout_key = jax.random.fold_in(model_keys(member["seed"])[1], state["step"])
        params = state["params"]
        table = params["model"][table_name]
        drawn = sampled_candidates(dropout_key, batch, constants, sampled)
        rows, local = row_sparse.touched_rows([batch["items"], batch["targets"], drawn[0]], table.shape[0])
        block = table.at[rows].get(mode="fill", fill_value=0.0)
        body = without_table(trained_params(params), table_name)

        def loss_of(body, block):
            table_rows = dict(zip(("items", "targets", "candidates"), local, strict=True), block=block, drawn=drawn)
            return loss_fn(with_trained(params, body), batch, dropout_key, constants, teacher_params, member["hparams"], table_rows)

        (body_grads, block_grads), metrics = jax.grad(loss_of, argnums=(0, 1), has_aux=True)(body, block)
        learning_rate = member["hparams"].get("train.learning_rate")
        optimizer = make_optimizer(config, steps_per_epoch, learning_rate)
        updates, body_state = optimizer.update(body_grads, state["opt_state"]["body"], body)
        params = with_trained(params, optax.apply_updates(body, updates))
        rate = row_sparse.learning_rate_at(learning_rate_schedule(config, steps_per_epoch, learning_rate), state["step"])
        table, moments = row_sparse.adam_rows(
            table, state["opt_state"]["table"], rows, block_grads, state["step"], rate, config.train.weight_decay
        )
        params = {**params, "model": {**params["model"], table_name: table}}
        metrics["train/grad_norm"] = optax.tree.norm((body_grads, block_grads))
        return {"step": state["step"] + 1, "params": params, "opt_state": {"body": body_state, "table": moments}}, metrics

    return train_step


def make_metric_sums_fn(model, ks, chunk_size: int = 0):
    """metric_sums(params, batch, constants) -> weighted sums of every rank metric (all and cold).

    chunk_size > 0 ranks the catalogue that many columns at a time (evaluation.chunked_target_ranks),
    never holding the batch's (B, N + 1) scores; 0 scores it in one matrix.
    """

    def metric_sums(params, batch, constants):
        variables = {"params": params["model"]}
        if chunk_size:
            ranks = model.apply(variables, batch["items"], batch["lengths"], batch["targets"], chunk_size, method=type(model).target_ranks)
        else:
            ranking = model.apply(variables, batch["items"], batch["lengths"], train=False)["ranking"]
            ranks = evaluation.target_ranks(ranking, batch["targets"])
        return evaluation.weighted_metric_sums(ranks, batch["targets"], batch["weights"], constants["cold_mask"], ks)

    return metric_sums
