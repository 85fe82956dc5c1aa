"""HR@20 / MRR@20 of trained models by kind of target: where it stands in time, and whether the session already holds it.

  python -m launch.studies.target_groups --data_dir=../shared/data --dataset=tmall \\
      --model=/work/runs/odrec/tmall/teacher_s0:select --model=/work/runs/odrec/tmall/teacher_s0:best

The groups and why: rec_kd/experiments/target_groups.py. On test: new_in_valid, rising, steady and unseen,
cut from the train and valid splits as `--valid_fraction` defines them, so models trained with
any valid split (or none) are scored on the same groups; and repeat / new_to_session. On valid
(`--split=valid`): repeat / new_to_session. `--top_clicked=N` cuts new_to_session once more, by
whether the target is among the N most clicked train items (what full rows for hot items could
win back). `--repeat_bonus=0,2,8` scores each model once per value of its ranking's bonus for the
items the session already holds (model.repeat_bonus; no retraining: the bonus is inference only).
Each model is WORKDIR or WORKDIR:CHECKPOINT (best, the default: the shipped model; select: a refit run's validation-selected one). Prints a
markdown table whose `all` column is the run's own HR@20 / MRR@20 on that split; `--json_out` also writes
the numbers.
"""

import json
import sys

from absl import app, flags

from rec_kd import data as data_lib
from rec_kd.defaults import ConfigError
from rec_kd.experiments import runs
from rec_kd.experiments import target_groups as groups_lib

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding the dataset's folder.")
_DATASET = flags.DEFINE_string("dataset", "tmall", "A benchmark dataset whose sessions are in time order.")
_VALID_FRACTION = flags.DEFINE_float("valid_fraction", 0.1, "Valid split that defines the groups (the grid's).")
_RISING_FACTOR = flags.DEFINE_float("rising_factor", 4.0, "A target is rising when its valid share is at least this times its train share.")
_MODELS = flags.DEFINE_multi_string("model", None, "WORKDIR or WORKDIR:CHECKPOINT; repeat for more (sweep workdir names hold commas).")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "valid"], "Split scored; valid gets the repeat groups only.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 500, "Examples scored at once.")
_TOP_CLICKED = flags.DEFINE_integer(
    "top_clicked", 0, "Also cut the new-to-session examples by whether the target is among this many most clicked train items (0: no)."
)
_REPEAT_BONUS = flags.DEFINE_list(
    "repeat_bonus",
    [],
    "Score every model with each of these model.repeat_bonus values instead of its own (the ranking's bonus for the "
    "session's own items, docs/findings.md, 'Repeat bonus'); empty: each model's own.",
)
_QUANTIZED = flags.DEFINE_string(
    "quantized_table",
    "",
    "METHOD:CODEBOOKS:SIZE (e.g. pq:16:128): also score each dense-table model with its item table replaced by its "
    "frequency-weighted quantization, untrained (what a codes student starts from).",
)
_JSON_OUT = flags.DEFINE_string("json_out", "", "Optional path for the numbers as JSON.")


def main(argv):
    del argv
    if not _MODELS.value:
        raise app.UsageError("--model: give at least one WORKDIR or WORKDIR:CHECKPOINT")
    try:
        models = [groups_lib.parse_model(spec) for spec in _MODELS.value]
        labels = groups_lib.model_labels(models)
        bonuses = groups_lib.parse_bonuses(_REPEAT_BONUS.value)
        quantized = groups_lib.parse_quantized(_QUANTIZED.value)
    except ConfigError as error:
        sys.exit(str(error))
    data = data_lib.load_dataset(_DATASET.value, _DATA_DIR.value, valid_fraction=_VALID_FRACTION.value)
    split = data.test if _SPLIT.value == "test" else data.valid
    groups = groups_lib.repeat_groups(split)
    if _TOP_CLICKED.value:
        groups |= groups_lib.most_clicked_new_groups(split, data.item_counts, _TOP_CLICKED.value)
    if _SPLIT.value == "test":
        targets = (data.train.targets, data.valid.targets, data.test.targets)
        groups = {**groups_lib.target_groups(*targets, data.num_items, _RISING_FACTOR.value), **groups}
    results = {}
    for (workdir, checkpoint), label in zip(models, labels, strict=True):
        try:
            trained = runs.load_trained(workdir, data.num_items, checkpoint=checkpoint)
        except ConfigError as error:
            sys.exit(str(error))
        scored = [(label, trained)]
        if quantized and trained.model.table_spec is None:  # the flag quantizes dense tables; others are scored as they are
            # Counts in the splits the model trained on: train, and valid too for a refit model.
            seen = [data.train, data.valid] if trained.refit else [data.train]
            counts = sum(data_lib.session_data.split_item_counts(part, data.num_items) for part in seen)
            num_bytes, quantized_model = groups_lib.with_quantized_table(trained, counts, quantized)
            scored.append((f"{label} quantized {_QUANTIZED.value} ({num_bytes:,} bytes)", quantized_model))
        for name_base, model in scored:
            for bonus, variant in groups_lib.with_repeat_bonuses(model, bonuses):
                name = name_base if bonus is None else f"{name_base} bonus {bonus:g}"
                results[name] = groups_lib.group_metrics(groups_lib.ranks_on_split(variant, split, _BATCH_SIZE.value), groups)
    print(
        f"{_SPLIT.value} HR@20 / MRR@20 by target group ({data.name}, valid_fraction={_VALID_FRACTION.value}, "
        f"rising_factor={_RISING_FACTOR.value}; each group's share of the examples in brackets)"
    )
    print(groups_lib.markdown_table(results))
    if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
