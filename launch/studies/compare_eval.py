"""Does chunked evaluation rank as the full (B, N + 1) matrix does? One trained run, one split, both ways.

  python -m launch.studies.compare_eval --workdir=RUN [--checkpoint=best] [--split=valid] [--chunk_items=65536]

Why: past a catalogue size the trainer scores the catalogue in chunks (train.eval_chunk_items,
evaluation.chunked_target_ranks) instead of one matrix a batch. Both count ties against the target
and never rank the padding column, so with equal scores they give equal ranks (tests/test_evaluation.py).
The scores themselves come from matrix products of another shape, which a CPU may sum in another
order; this prints every metric both ways, how many examples' ranks differ, and the largest
difference, so the claim "the same metrics" is measured on real data, not assumed.
"""

import json

import jax
import numpy as np
from absl import app, flags

from rec_kd import data as data_lib
from rec_kd import evaluation
from rec_kd.experiments import runs
from rec_kd.models import SeqRecModel

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished (or checkpointed) run.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "The folder under checkpoints/ to score.")
_SPLIT = flags.DEFINE_enum("split", "valid", ["valid", "test"], "Split scored.")
_CHUNK = flags.DEFINE_integer("chunk_items", evaluation.EVAL_CHUNK_ITEMS, "Columns a chunk.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 500, "Examples a batch (the trainer's eval_batch_size).")
_JSON_OUT = flags.DEFINE_string("json_out", "", "Optional path for the result as JSON.")


def both_ranks(trained: runs.TrainedModel, split: data_lib.Split, batch_size: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(full-matrix ranks, chunked ranks) of every example of `split`, in its order."""
    variables = {"params": trained.params}
    model = trained.model

    @jax.jit
    def ranks(items, lengths, targets):
        ranking = model.apply(variables, items, lengths)["ranking"]
        chunked = model.apply(variables, items, lengths, targets, chunk_size, method=SeqRecModel.target_ranks)
        return evaluation.target_ranks(ranking, targets), chunked

    full, chunked = [], []
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, start + batch_size)
        real = rows < len(split)
        rows = np.where(real, rows, 0)  # padding rows repeat example 0 and are dropped
        got = jax.device_get(ranks(split.items[rows], split.lengths[rows], split.targets[rows]))
        full.append(got[0][real])
        chunked.append(got[1][real])
    return np.concatenate(full), np.concatenate(chunked)


def metrics_of(ranks: np.ndarray) -> dict[str, float]:
    return {name: float(np.mean(np.asarray(value, np.float64))) for name, value in evaluation.per_example_metrics(ranks).items()}


def main(argv):
    del argv
    data = runs.load_run_data(_WORKDIR.value)
    trained = runs.load_trained(_WORKDIR.value, data.num_items, checkpoint=_CHECKPOINT.value)
    split = getattr(data, _SPLIT.value)
    full, chunked = both_ranks(trained, split, _BATCH_SIZE.value, _CHUNK.value)
    result = {
        "workdir": _WORKDIR.value,
        "checkpoint": _CHECKPOINT.value,
        "split": _SPLIT.value,
        "examples": len(split),
        "num_items": data.num_items,
        "chunk_items": _CHUNK.value,
        "full": metrics_of(full),
        "chunked": metrics_of(chunked),
        "examples_with_other_ranks": int(np.sum(full != chunked)),
        "largest_rank_difference": int(np.max(np.abs(full - chunked))),
    }
    result["every_metric_equal"] = result["full"] == result["chunked"]
    print(json.dumps(result, indent=2))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
