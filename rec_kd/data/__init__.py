"""The data layer: readers for every format, all returning one `SessionData`, and fixed-shape batches.

Formats: SR-GNN pickles (`srgnn`), user sequences and RecBole `.inter` files (`sequences`), raw
event CSV (`raw_events`). `load_dataset` picks the reader by benchmark name, `load_path` reads a
dataset of the user's own by format and path, and `load_configured` does whichever a run config
asks for. `batching` turns a split into batches with one shape per length bucket.
`python -m rec_kd.data.inspect` prints a dataset's statistics as JSON.
"""

from rec_kd.data.batching import (
    DEFAULT_BUCKETS,
    Batch,
    bucket_lengths,
    eval_batches,
    num_train_batches,
    train_batches,
)
from rec_kd.data.datasets import DATASET_NAMES, FORMAT_READERS, load_configured, load_dataset, load_path
from rec_kd.data.raw_events import load_raw_events
from rec_kd.data.sequences import load_inter, load_user_sequences, movielens_100k_path
from rec_kd.data.session_data import DataError, SessionData, Split, concatenate_splits, dataset_statistics
from rec_kd.data.srgnn import load_srgnn

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_BUCKETS",
    "FORMAT_READERS",
    "Batch",
    "DataError",
    "SessionData",
    "Split",
    "bucket_lengths",
    "concatenate_splits",
    "dataset_statistics",
    "eval_batches",
    "load_configured",
    "load_dataset",
    "load_inter",
    "load_path",
    "load_raw_events",
    "load_srgnn",
    "load_user_sequences",
    "movielens_100k_path",
    "num_train_batches",
    "train_batches",
]
