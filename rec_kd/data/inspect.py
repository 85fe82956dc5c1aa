"""Prints one dataset's statistics as a single JSON object: `python -m rec_kd.data.inspect`.

    python -m rec_kd.data.inspect --dataset=tmall --data_dir=../shared/data
    python -m rec_kd.data.inspect --dataset=ml-100k
    python -m rec_kd.data.inspect --format=srgnn --path=DIR
    python -m rec_kd.data.inspect --format=events --path=clicks.csv --session_column=user_id --min_item_count=2

--format and --path are a run's data.format and data.path (configs/custom.py); for format
`events`, the raw-events rules are flags named like the config's data.events fields, with the same
defaults (rec_kd/defaults.py documents them). Stdout carries the JSON object and nothing else. Bad
input prints one line to stderr and exits 1.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from rec_kd import defaults
from rec_kd.data.datasets import FORMAT_READERS, load_dataset, load_path, raw_event_options
from rec_kd.data.session_data import HOT_COUNTING_RULES, DataError, SessionData, dataset_statistics

FLAG_DEFINERS = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float}

_DATASET = flags.DEFINE_string("dataset", None, "tmall, retailrocket, yoochoose1_64, beauty or ml-100k (or a folder in data_dir)")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder holding the dataset folders (not for ml-100k).")
_FORMAT = flags.DEFINE_enum("format", None, list(FORMAT_READERS), "Read --path in this format instead.")
_PATH = flags.DEFINE_string("path", None, "SR-GNN folder, user-sequence text, .inter file or event CSV for --format.")
_MAX_LEN = flags.DEFINE_integer("max_len", 50, "Prefixes keep their last max_len items.")
_VALID_FRACTION = flags.DEFINE_float("valid_fraction", 0.1, "Share of training sessions for validation.")
_HOT_FRACTION = flags.DEFINE_float("hot_fraction", 0.2, "Share of distinct training items that are hot.")
_HOT_COUNTING = flags.DEFINE_enum("hot_counting", "clicks", list(HOT_COUNTING_RULES), "Count each train click, or per prefix (authors').")
_EVENTS = {
    name: FLAG_DEFINERS[type(value)](name, value, f"--format=events: the config's data.events.{name} (rec_kd/defaults.py).")
    for name, value in defaults.get_config(defaults.CUSTOM).data.events.items()
}


def load_from_flags() -> SessionData:
    options = dict(
        max_len=_MAX_LEN.value,
        valid_fraction=_VALID_FRACTION.value,
        hot_fraction=_HOT_FRACTION.value,
        hot_counting=_HOT_COUNTING.value,
    )
    if _FORMAT.value:
        if not _PATH.value or _DATASET.value:
            raise app.UsageError("--format needs --path (and no --dataset)")
        events = raw_event_options({name: flag.value for name, flag in _EVENTS.items()})
        return load_path(_FORMAT.value, _PATH.value, events, **options)
    if not _DATASET.value:
        raise app.UsageError("give --dataset=NAME [--data_dir=ROOT] or --format=FORMAT --path=PATH")
    return load_dataset(_DATASET.value, _DATA_DIR.value, **options)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        statistics = dataset_statistics(load_from_flags())
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(statistics))


if __name__ == "__main__":
    app.run(main)
