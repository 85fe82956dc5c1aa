"""How much of the teacher can the student's table hold, under each item -> row order? A probe, no training.

  python -m launch.studies.row_order_probe --data_dir=../shared/data --dataset=tmall \\
      --teacher=/work/runs/odrec/tmall/teacher_s0 --orders=id,shuffled,popularity,spread

For each order, fits the cores of the dataset's main STTD table (configs/DATASET.py:student) to
the teacher's select-phase item table (trained on train only), minimising the squared error
weighted by each item's frequency in the train split (`row_order.prefix_and_target_counts`, plus one), then puts the fitted table into the
teacher's network in place of its own and scores valid and test. Prints one line per order: the
weighted relative error, valid HR@20 / MRR@20 and HR@20 on repeats and on targets new to the
session, and test HR@20 overall and on steady targets (rec_kd/experiments/target_groups.py); with
`--repeat_bonus=...`, once more per value of the ranking's bonus for the session's own items.

Why: the student's lost HR@20 is on steady targets (docs/findings.md, "Where STTD loses"), and an STTD row is a
product of factor rows that items share by their ids' digits. Which items share them is the
order's choice, and this measures it without the hours a trained student takes. Orders:
- id: item i on row i (the paper's; ids follow first appearance);
- shuffled: the model's `table.row_order='shuffled'` rows (seed 0);
- popularity: most frequent on the first rows (the most frequent share first-core rows);
- spread: no two of the I_1 most frequent items share a factor row;
- clustered: items close in the teacher's own (select-phase) table share first-core rows, and
  items whose offsets from their cluster's centre are alike share second-core rows (the model's
  `table.row_order='clustered'` rows at `table.row_order_seed=0`).
The maps are rec_kd/compress/row_order.py's.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from rec_kd import data as data_lib
from rec_kd import defaults
from rec_kd.compress import row_order, sttd
from rec_kd.defaults import ConfigError
from rec_kd.experiments import runs, target_groups

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding the dataset's folder.")
_DATASET = flags.DEFINE_string("dataset", "tmall", "A dataset with a main STTD table (rec_kd/defaults.py MAIN_TABLES).")
_TEACHER = flags.DEFINE_string("teacher", None, "A refit teacher's workdir (its checkpoints/select/ is fitted).")
_ORDERS = flags.DEFINE_list("orders", "id,shuffled,popularity,spread", "Orders to fit, of id, shuffled, popularity, spread, clustered.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Adam steps of each fit (full batch, cosine-decayed from 3e-3).")
_REPEAT_BONUS = flags.DEFINE_list(
    "repeat_bonus", [], "Also score each fitted table with these model.repeat_bonus values (docs/findings.md, 'Repeat bonus'); empty: none."
)


ORDERS = ("id", "shuffled", "popularity", "spread", "clustered")


def item_rows(order: str, counts: np.ndarray, spec: sttd.STTDSpec, embeddings: np.ndarray) -> np.ndarray:
    if order == "id":
        return np.arange(len(counts))
    if order == "shuffled":
        return row_order.shuffled_item_rows(spec.num_rows, len(counts) - 1, seed=0)
    if order == "popularity":
        return row_order.popularity_rows(counts)
    if order == "spread":
        return row_order.spread_rows(counts, spec.item_factors)
    if order == "clustered":
        return row_order.clustered_rows(embeddings, spec.item_factors)
    raise ValueError(f"unknown order {order!r}")


def fit_table(target: np.ndarray, weights: np.ndarray, rows: np.ndarray, spec: sttd.STTDSpec, steps: int):
    """STTD cores whose rows `rows` approximate `target` (N + 1, d) in weighted squared error.

    Returns the fitted table in item order and its error relative to the target's weighted energy.
    """
    cores = sttd.init_cores(jax.random.key(0), spec, target_std=float(target[1:].std()))
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    weights, target_j, rows_j = jnp.asarray(weights, jnp.float32), jnp.asarray(target), jnp.asarray(rows)

    def loss_fn(c):
        table = sttd.materialize(c, spec)[rows_j]
        return jnp.sum(weights * jnp.sum((table - target_j) ** 2, axis=1))

    @jax.jit
    def step(c, state):
        loss, grads = jax.value_and_grad(loss_fn)(c)
        updates, state = optimizer.update(grads, state, c)
        return optax.apply_updates(c, updates), state, loss

    state = optimizer.init(cores)
    for _ in range(steps):
        cores, state, loss = step(cores, state)
    energy = float(np.sum(np.asarray(weights) * np.sum(target**2, axis=1)))
    return np.asarray(sttd.materialize(cores, spec))[rows], float(loss) / energy


def main(argv):
    del argv
    if not _TEACHER.value:
        raise app.UsageError("--teacher: give the workdir of a refit teacher")
    unknown = sorted(set(_ORDERS.value) - set(ORDERS))
    if unknown:
        raise app.UsageError(f"--orders: unknown {unknown}; expected some of {ORDERS}")
    try:
        bonuses = target_groups.parse_bonuses(_REPEAT_BONUS.value)
    except ConfigError as error:
        raise app.UsageError(str(error)) from None
    data = data_lib.load_dataset(_DATASET.value, _DATA_DIR.value)
    table_config = defaults.get_config(_DATASET.value, "student").table
    spec = sttd.STTDSpec(tuple(table_config.item_factors), tuple(table_config.dim_factors), tuple(table_config.ranks), table_config.t)
    if spec.num_cores != 2:
        raise app.UsageError(f"{_DATASET.value}: the probe's spread order is written for 2 cores, the main table has {spec.num_cores}")
    teacher = runs.load_trained(_TEACHER.value, data.num_items, checkpoint="select")
    counts = row_order.prefix_and_target_counts(data)
    weights = (counts + 1.0) / (counts + 1.0).sum()
    groups = target_groups.target_groups(data.train.targets, data.valid.targets, data.test.targets, data.num_items, 4.0)
    valid_groups = target_groups.repeat_groups(data.valid)
    print(f"{_DATASET.value}: teacher {_TEACHER.value} (select), table {spec}, {_STEPS.value} steps a fit")
    teacher_table = np.asarray(teacher.params["item_embedding"])
    for order in _ORDERS.value:
        start = time.time()
        rows = item_rows(order, counts, spec, teacher_table)
        table, relative_error = fit_table(teacher_table, weights, rows, spec, _STEPS.value)
        fitted = runs.TrainedModel(
            model=teacher.model, params={**teacher.params, "item_embedding": jnp.asarray(table)}, step=0, workdir="", config=teacher.config
        )
        scorings = [(None, fitted)] + (target_groups.with_repeat_bonuses(fitted, bonuses) if bonuses else [])
        for bonus, scored in scorings:
            valid = target_groups.group_metrics(target_groups.ranks_on_split(scored, data.valid, 500), valid_groups)
            test = target_groups.group_metrics(target_groups.ranks_on_split(scored, data.test, 500), groups)
            name = order if bonus is None else f"{order}, repeat bonus {bonus:g}"
            print(
                f"{name}: weighted relative error {relative_error:.4f}; valid HR@20 {valid['all']['hr@20']:.4f} "
                f"MRR@20 {valid['all']['mrr@20']:.4f}, on repeats {valid['repeat']['hr@20']:.4f}, on targets new to the session "
                f"{valid['new_to_session']['hr@20']:.4f}; test HR@20 {test['all']['hr@20']:.4f}, on steady targets "
                f"{test['steady']['hr@20']:.4f} ({time.time() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
