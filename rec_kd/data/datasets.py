"""Datasets by name or by format and path: which reader reads what, and the one loader a run config uses.

The named benchmarks live under a data directory (`load_dataset`). A dataset of the user's own is
a path read in one of four formats (`load_path`): the readers are the same ones the benchmarks
use, and this module only adds what a path given by hand needs: the path must exist and be a
folder or a file as the format expects, an empty file or a file that splits into no examples is
refused, and a reader's error on a file that looks like another format says which.
`load_configured(config)` is what a run calls, for either kind.
"""

from __future__ import annotations

import os

from rec_kd import defaults
from rec_kd.data import synthetic
from rec_kd.data.raw_events import load_raw_events
from rec_kd.data.sequences import load_inter, load_user_sequences, movielens_100k_path
from rec_kd.data.session_data import DataError, SessionData
from rec_kd.data.srgnn import load_srgnn

SRGNN_FOLDERS = {"tmall": "tmall", "retailrocket": "retailrocket", "yoochoose1_64": "yoochoose1_64"}
BEAUTY_FILE = os.path.join("amazon_beauty_5core", "Beauty.txt")
DATASET_NAMES = (*SRGNN_FOLDERS, "beauty", "ml-100k")

# Format name (the config's data.format, inspect's --format) -> reader of a path.
FORMAT_READERS = {"srgnn": load_srgnn, "user_sequences": load_user_sequences, "inter": load_inter, "events": load_raw_events}
# What each format reads, for error messages.
FORMAT_INPUTS = {
    "srgnn": "a folder holding train.txt and test.txt (SR-GNN pickles)",
    "user_sequences": "a text file of 'user item item ...' lines",
    "inter": "a RecBole .inter file (tab-separated, header of name:type fields)",
    "events": "a CSV file of clicks with a header (session or user id, item id, timestamp)",
}
# Raw-events options whose config value 0 means "no limit" (the reader's None).
EVENTS_ZERO_IS_NONE = ("max_session_keys", "session_gap_seconds", "max_session_length")


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    max_len: int = 50,
    valid_fraction: float = 0.1,
    hot_fraction: float = 0.2,
    hot_counting: str = "clicks",
) -> SessionData:
    """Loads a benchmark by its inspect name; data_dir holds the dataset folders (not for ml-100k).

    Any other name is read as an SR-GNN folder `data_dir/name`.
    """
    options = dict(
        max_len=max_len,
        valid_fraction=valid_fraction,
        hot_fraction=hot_fraction,
        hot_counting=hot_counting,
        name=name,
    )
    if name == "ml-100k":
        return load_inter(movielens_100k_path(), **options)
    if not data_dir:
        raise DataError(f"{name}: no data directory given (the folder that holds the dataset folders)")
    if name == "beauty":
        return load_user_sequences(os.path.join(data_dir, BEAUTY_FILE), **options)
    folder = os.path.join(data_dir, SRGNN_FOLDERS.get(name, name))
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such dataset folder (known datasets: {', '.join(DATASET_NAMES)})")
    return load_srgnn(folder, **options)


def guess_format(path: str) -> str | None:
    """The format a path looks like, from its kind and first line; None when it looks like none.

    Only a hint for error messages: a folder holding train.txt is 'srgnn'; a first line of
    tab-separated name:type fields is 'inter'; integers separated by blanks are 'user_sequences';
    a line with a comma and a non-integer field (a CSV header) is 'events'.
    """
    if os.path.isdir(path):
        has_train = any(os.path.isfile(os.path.join(path, name)) for name in ("train.txt", "train.txt.xz"))
        return "srgnn" if has_train else None
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line.strip() for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError):
        return None
    fields = first.split("\t")
    if len(fields) > 1 and all(":" in field for field in fields):
        return "inter"
    tokens = first.split()
    if len(tokens) > 1 and all(token.isdigit() for token in tokens):
        return "user_sequences"
    if "," in first and not all(token.strip().isdigit() for token in first.split(",")):
        return "events"
    return None


def check_path(data_format: str, path: str) -> None:
    """A DataError unless `path` exists and is the kind of thing `data_format` reads."""
    if data_format not in FORMAT_READERS:
        raise DataError(f"{path}: unknown data format {data_format!r}; expected one of {', '.join(FORMAT_READERS)}")
    if not path:
        raise DataError(f"no data path given for format {data_format!r}: set --config.data.path to {FORMAT_INPUTS[data_format]}")
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    wants_folder = data_format == "srgnn"
    if wants_folder != os.path.isdir(path):
        kind = "a folder" if os.path.isdir(path) else "a file"
        raise DataError(f"{path}: is {kind}, but format {data_format!r} reads {FORMAT_INPUTS[data_format]}")
    if not wants_folder and os.path.getsize(path) == 0:
        raise DataError(f"{path}: the file is empty")


def check_examples(data: SessionData, data_format: str, path: str) -> None:
    """A DataError when the data splits into no training or no test examples."""
    rule = {
        "user_sequences": "leave-one-out needs users with at least 4 items",
        "inter": "leave-one-out needs users with at least 4 items",
        "events": "see the data.events rules: min_session_length, min_item_count, test_window_seconds",
        "srgnn": "train.txt or test.txt holds no examples",
    }[data_format]
    for split in ("train", "test"):
        if len(getattr(data, split)) == 0:
            raise DataError(f"{path}: no {split} examples after reading it as {data_format!r} ({rule})")


def load_path(data_format: str, path: str, events: dict | None = None, **options) -> SessionData:
    """Reads a dataset of the user's own: `path` in `data_format` (FORMAT_READERS), checked.

    `events` holds the raw-events options (load_raw_events' keywords; format 'events' only);
    `options` are the common reader options (max_len, valid_fraction, hot_fraction, hot_counting).
    """
    check_path(data_format, path)
    reader_options = dict(options, **(events or {})) if data_format == "events" else options
    try:
        data = FORMAT_READERS[data_format](path, **reader_options)
    except DataError as error:
        guess = guess_format(path)
        if guess is None or guess == data_format:
            raise
        raise DataError(f"{error} (it looks like format {guess!r}: {FORMAT_INPUTS[guess]})") from None
    check_examples(data, data_format, path)
    return data


def raw_event_options(events) -> dict:
    """The config's data.events fields as load_raw_events keywords (0 -> None where 0 means no limit)."""
    options = dict(events.items())
    for name in EVENTS_ZERO_IS_NONE:
        options[name] = options[name] or None
    return options


def recorded_path(config) -> str:
    """A custom run's data path as its `dataset` field records it: 'custom:FORMAT:/absolute/path'.

    Absolute, so a run read back from its config.json (export, serving, benchmarks) finds its file
    from any working directory; data.path as written when `dataset` was set to something else.
    """
    prefix = f"{defaults.CUSTOM}:{config.data.format}:"
    return config.dataset[len(prefix) :] if config.dataset.startswith(prefix) else config.data.path


def load_configured(config) -> SessionData:
    """The dataset a run config names, sliced for smoke runs.

    A config with `data.format` (configs/custom.py) reads `data.path` in that format; any other
    reads the benchmark `dataset` under `data_dir`.
    """
    options = dict(
        max_len=config.data.max_len,
        valid_fraction=config.data.valid_fraction,
        hot_fraction=config.data.hot_fraction,
        hot_counting=config.data.hot_counting,
    )
    if config.data.get("format") == synthetic.NAME:
        data = synthetic.load_synthetic(synthetic.SyntheticSpec(**config.data.synthetic.to_dict()), **options)
    elif "format" in config.data:
        data = load_path(config.data.format, recorded_path(config), raw_event_options(config.data.events), **options)
    else:
        data = load_dataset(config.dataset, config.data_dir or None, **options)
    if config.data.max_train_examples or config.data.max_eval_examples:
        data = data.with_examples(config.data.max_train_examples or len(data.train), config.data.max_eval_examples or len(data.test))
    return data
