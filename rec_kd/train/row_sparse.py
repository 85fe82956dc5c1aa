"""A row-sparse ("lazy") Adam update of a dense item table: train.table_update='rows'.

Why: with the sampled loss (train.loss='sampled') a step reads a few thousand rows of the table
(the batch's items, its targets and the sampled candidates), yet a dense update still builds the
(N + 1, d) gradient and runs Adam over the whole table and both of its moments, every step. At
Tmall's 40k items that is most of a sampled teacher step, and it grows with the catalogue. Here the
step gathers the rows it reads into a (U, d) block, differentiates the loss with respect to that
block alone, and applies Adam to those U rows only: the other rows and their moments stay as they
are (TensorFlow's LazyAdam; optax has no row-sparse Adam).

The semantics differ from dense Adam in one way: a row's moments decay only on the steps that read
it, so an untouched row does not keep drifting on its old momentum, and decoupled weight decay
reaches a row only when it is read. In a run whose every step reads every row the two updates are
the same, schedule and weight decay included; so is a run's first step without weight decay (zero
moments move no unread row) (tests/test_row_sparse.py).
"""

import jax
import jax.numpy as jnp

from rec_kd.defaults import ConfigError

TABLE_UPDATES = ("dense", "rows")
# optax.adam's defaults, which make_optimizer's dense update uses.
B1, B2, EPS = 0.9, 0.999, 1e-8


def table_update(config) -> str:
    """train.table_update ('dense' for runs from before the field)."""
    kind = config.train.get("table_update", "dense")
    if kind not in TABLE_UPDATES:
        raise ConfigError(f"train.table_update={kind!r}: expected one of {TABLE_UPDATES}")
    return kind


def check_rows_config(loss: str, table_kind: str) -> None:
    """A one-line ConfigError for a row-sparse update that cannot work (train.loss, the table's kind)."""
    if loss != "sampled":
        raise ConfigError(
            f"train.table_update='rows' needs train.loss='sampled' (got {loss!r}): the full softmax reads every row of the table"
        )
    if table_kind != "dense":
        raise ConfigError(
            f"train.table_update='rows' updates a dense item table row by row; table.kind={table_kind} shares its parameters "
            "between items: use train.table_update='dense'"
        )


def touched_rows(ids: list[jax.Array], num_rows: int) -> tuple[jax.Array, list[jax.Array]]:
    """((U,) the sorted distinct ids of `ids` plus row 0, padded with `num_rows`; each of `ids` in local ids).

    U is static (one more than the ids' count); its padding, `num_rows`, is a row past the table
    that gathers read as 0 and scatters drop. A local id is an id's position in the (U,) rows, so
    `block[local]` is `table[ids]` for the gathered block. Row 0 is always present and first: local
    id 0 is the padding id again, so the model's masks of id 0 mean the same in local ids.
    """
    flat = jnp.concatenate([jnp.zeros((1,), ids[0].dtype)] + [jnp.ravel(x) for x in ids])
    rows, inverse = jnp.unique(flat, size=flat.shape[0], fill_value=num_rows, return_inverse=True)
    inverse = inverse.astype(ids[0].dtype)
    sizes = [x.size for x in ids]
    starts = [1 + sum(sizes[:i]) for i in range(len(ids))]
    return rows, [inverse[start : start + x.size].reshape(x.shape) for start, x in zip(starts, ids, strict=True)]


def init_moments(table: jax.Array) -> dict:
    """Adam's first and second moments of every row of the table, zero."""
    return {"mu": jnp.zeros_like(table), "nu": jnp.zeros_like(table)}


def adam_rows(table, moments: dict, rows, grads, step, learning_rate, weight_decay: float):
    """(table, moments) after one Adam(W) update of `rows` (U,) with their gradients (U, d); other rows unchanged.

    `step` is the number of updates before this one (the run's step counter, as optax's count):
    the bias correction uses step + 1. Entries of `rows` past the table (touched_rows' padding) are
    dropped.
    """
    count = step + 1
    mu = B1 * moments["mu"].at[rows].get(mode="fill", fill_value=0.0) + (1.0 - B1) * grads
    nu = B2 * moments["nu"].at[rows].get(mode="fill", fill_value=0.0) + (1.0 - B2) * grads * grads
    mu_hat = mu / (1.0 - B1**count)
    nu_hat = nu / (1.0 - B2**count)
    update = mu_hat / (jnp.sqrt(nu_hat) + EPS)
    if weight_decay:
        update = update + weight_decay * table.at[rows].get(mode="fill", fill_value=0.0)
    table = table.at[rows].add(-learning_rate * update, mode="drop")
    return table, {"mu": moments["mu"].at[rows].set(mu, mode="drop"), "nu": moments["nu"].at[rows].set(nu, mode="drop")}


def learning_rate_at(schedule, step):
    """The learning rate of update number `step`: a schedule's value there, or the constant itself."""
    return schedule(step) if callable(schedule) else schedule
