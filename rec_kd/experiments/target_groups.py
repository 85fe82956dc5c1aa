"""Metrics of trained models by kind of target: in time, and repeat or not (flag-free; CLI: launch/studies/target_groups.py).

SR-GNN files list sessions in time order, and valid holds the most recent training sessions
(docs/findings.md, "Drift"). A refit on train + valid gains most on the test targets
that the valid period brought in or made popular, so scoring models group by group shows which kind
of target a model gained or missed. The groups come from the data alone, never from a model, so
every model is scored on the same groups:
- new_in_valid: never a train-split target, at least once a valid-split target;
- rising: a train-split target whose share of valid-split targets is at least `rising_factor`
  times its share of train-split targets;
- steady: every other target seen in the train split;
- unseen: a target in neither split.

A second split of any split's examples, `repeat_groups`: is the target already among the
session's own items? Tmall sessions repeat items often, and a model can score well by
re-recommending what the session holds; the two groups show how much of a model's HR@20 is that.
`most_clicked_new_groups` cuts the new-to-session examples once more, by the target's popularity.
"""

import dataclasses
import functools
import math
import os

import jax
import numpy as np

from rec_kd import evaluation
from rec_kd.compress import codes, dense
from rec_kd.data import session_data
from rec_kd.defaults import ConfigError
from rec_kd.experiments import runs
from rec_kd.models import sasrec

GROUPS = ("new_in_valid", "rising", "steady", "unseen")


def target_groups(train_targets, valid_targets, test_targets, num_items: int, rising_factor: float) -> dict[str, np.ndarray]:
    """{group: (n_test,) bool}, one group per test example, by its target's counts in train and valid.

    Shares are target counts over each split's size, so the two splits compare although valid is
    smaller. Every test example falls in exactly one group.
    """
    train_counts = np.bincount(train_targets, minlength=num_items + 1)  # (N + 1,)
    valid_counts = np.bincount(valid_targets, minlength=num_items + 1)  # (N + 1,)
    in_train = train_counts[test_targets] > 0  # (n_test,)
    in_valid = valid_counts[test_targets] > 0
    train_share = train_counts[test_targets] / max(len(train_targets), 1)
    valid_share = valid_counts[test_targets] / max(len(valid_targets), 1)
    rising = in_train & (valid_share >= rising_factor * train_share)
    return {
        "new_in_valid": ~in_train & in_valid,
        "rising": rising,
        "steady": in_train & ~rising,
        "unseen": ~in_train & ~in_valid,
    }


def repeat_groups(split: session_data.Split) -> dict[str, np.ndarray]:
    """{'repeat': the target is one of the example's own (kept) prefix items, 'new_to_session': it is not}."""
    repeat = np.any(split.items == split.targets[:, None], axis=1)  # padding 0 never equals a target >= 1
    return {"repeat": repeat, "new_to_session": ~repeat}


def most_clicked_new_groups(split: session_data.Split, item_counts: np.ndarray, top: int) -> dict[str, np.ndarray]:
    """The examples new to the session, cut by whether the target is among the `top` most clicked train items.

    Why: a table that gives full rows to its hottest items (a hot/cold split) can only win back
    the new-to-session targets among them. Ties in `item_counts` (SessionData.item_counts, the
    counts hot items are picked by) go to the lower id, as in data.hot_item_mask.
    """
    by_clicks = np.argsort(-item_counts, kind="stable")  # most clicked first, ties by id (as row_order ranks them)
    rank = np.empty(len(item_counts), np.int64)
    rank[by_clicks] = np.arange(len(item_counts))
    new = repeat_groups(split)["new_to_session"]
    top_clicked = rank[split.targets] < top
    return {f"new_top{top}": new & top_clicked, f"new_beyond{top}": new & ~top_clicked}


def group_metrics(ranks: np.ndarray, groups: dict[str, np.ndarray], k: int = 20) -> dict[str, dict[str, float]]:
    """{group or 'all': {'share', 'hr@k', 'mrr@k'}} from 0-based target ranks; an empty group scores 0."""
    ranks = np.asarray(ranks)
    hit = ranks < k
    reciprocal = np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    rows = {}
    for name, mask in {**groups, "all": np.ones(len(ranks), bool)}.items():
        count = int(mask.sum())
        rows[name] = {
            "share": count / len(ranks),
            f"hr@{k}": float(hit[mask].mean()) if count else 0.0,
            f"mrr@{k}": float(reciprocal[mask].mean()) if count else 0.0,
        }
    return rows


def parse_model(spec: str) -> tuple[str, str]:
    """'WORKDIR' or 'WORKDIR:CHECKPOINT' -> (workdir, checkpoint); the checkpoint defaults to best."""
    workdir, _, checkpoint = spec.rpartition(":") if spec.endswith((":best", ":select")) else (spec, "", "best")
    if not os.path.isdir(workdir):
        raise ConfigError(f"{workdir}: no such run folder (from --model={spec})")
    return workdir, checkpoint


def model_labels(models: list[tuple[str, str]]) -> list[str]:
    """Table labels of (workdir, checkpoint) pairs: 'PARENT/NAME:CHECKPOINT', or the whole path where two would collide.

    Why: results are keyed by label, and two runs named alike under different roots (the grid's
    main_s0 and an archived one, say) must not overwrite each other's row.
    """
    short = [f"{os.path.basename(os.path.dirname(w.rstrip('/')))}/{os.path.basename(w.rstrip('/'))}:{c}" for w, c in models]
    full = [f"{os.path.abspath(w)}:{c}" for w, c in models]
    labels = [full[i] if short.count(label) > 1 else label for i, label in enumerate(short)]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"--model names the same model twice: {sorted({label for label in labels if labels.count(label) > 1})}")
    return labels


def parse_bonuses(values: list[str]) -> list[float]:
    """--repeat_bonus's values as distinct finite numbers; anything else is an error naming the values."""
    try:
        bonuses = [float(value) for value in values]
    except ValueError:
        raise ConfigError(f"--repeat_bonus: numbers expected, got {values}") from None
    if not all(math.isfinite(bonus) for bonus in bonuses) or len(set(bonuses)) < len(bonuses):
        raise ConfigError(f"--repeat_bonus: distinct finite numbers expected, got {values} ({sasrec.FINITE_BONUS_HINT})")
    return bonuses


def with_repeat_bonuses(trained: runs.TrainedModel, bonuses: list[float]) -> list[tuple[float | None, runs.TrainedModel]]:
    """[(None, the model as trained)] when no bonus is asked for, else (bonus, the model ranking with it) for each.

    The bonus is inference only (SeqRecModel.repeat_bonus), so a trained run is scored at any
    bonus without retraining: the same parameters, another ranking.
    """
    if not bonuses:
        return [(None, trained)]
    return [(bonus, dataclasses.replace(trained, model=trained.model.clone(repeat_bonus=bonus))) for bonus in bonuses]


def parse_quantized(text: str) -> tuple[str, int, int] | None:
    """'pq:16:128' -> ('pq', 16, 128): method, codebooks and codebook size of --quantized_table; '' -> None."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in codes.METHODS or not all(part.isdigit() for part in parts[1:]):
        raise ConfigError(f"--quantized_table={text!r}: expected METHOD:CODEBOOKS:SIZE with METHOD in {codes.METHODS}, e.g. pq:16:128")
    return parts[0], int(parts[1]), int(parts[2])


def with_quantized_table(trained: runs.TrainedModel, counts: np.ndarray, quantized: tuple[str, int, int], seed: int = 0):
    """(bytes, the dense-table model scored with its item table replaced by its own quantization), untrained.

    The table is quantized as a codes student's start quantizes its teacher (members.derived_tables:
    k-means weighted by `counts`, the items' counts in the splits the model trained on; 25
    iterations, beam 8, `seed`), so this is what a codes table holds before any training.
    """
    if trained.model.table_spec is not None:
        raise ConfigError(
            f"--quantized_table: {trained.workdir} has a {type(trained.model.spec).__name__} table; quantize dense tables only"
        )
    method, num_codebooks, codebook_size = quantized
    table = np.asarray(trained.params[dense.PARAM_NAME])
    spec = codes.CodesSpec(table.shape[0], table.shape[1], num_codebooks, codebook_size, method)
    derived = codes.quantize_table(spec, table[1:], counts[1:].astype(np.float64), 25, seed, 8)
    quantized_table = np.array(spec.materialize(derived))  # a writable copy
    quantized_table[0] = table[0]  # the padding row is never scored nor read at a real position
    params = {**trained.params, dense.PARAM_NAME: quantized_table}
    return spec.num_bytes(), dataclasses.replace(trained, params=params)


@functools.partial(jax.jit, static_argnums=0)
def _batch_ranks(model, params, items, lengths, targets):
    """(B,) target ranks; the model (a hashable Flax module) is static, so one program serves every call."""
    ranking = model.apply({"params": params}, items, lengths)["ranking"]
    return evaluation.target_ranks(ranking, targets)


def ranks_on_split(trained: runs.TrainedModel, split: session_data.Split, batch_size: int) -> np.ndarray:
    """(n,) 0-based rank of each target over the whole catalogue, in the split's order.

    Batches keep the full max_len and a fixed size (the last one padded), so one program scores
    them all, for every split and every model of the same shape; the model masks the padding
    positions itself.
    """
    n = len(split)
    out = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        real = rows < n
        rows = np.where(real, rows, 0)  # padding rows repeat example 0 and are dropped below
        ranks = _batch_ranks(trained.model, trained.params, split.items[rows], split.lengths[rows], split.targets[rows])
        out.append(np.asarray(ranks)[real])
    return np.concatenate(out)


def markdown_table(results: dict[str, dict[str, dict[str, float]]], k: int = 20) -> str:
    """One row per model, one 'HR@k / MRR@k' cell per group; each header gives its group's share of the examples."""
    first = next(iter(results.values()))
    names = list(first)  # the groups in the order they were scored, then 'all'
    header = "| model | " + " | ".join(f"{name} ({first[name]['share']:.1%})" for name in names) + " |"
    lines = [header, "|---|" + "---:|" * len(names)]
    for model, rows in results.items():
        cells = " | ".join(f"{rows[name][f'hr@{k}']:.4f} / {rows[name][f'mrr@{k}']:.4f}" for name in names)
        lines.append(f"| {model} | {cells} |")
    return "\n".join(lines)
