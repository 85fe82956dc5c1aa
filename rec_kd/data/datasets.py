"""Datasets by name: where each benchmark lives under the data directory and which reader reads it."""

from __future__ import annotations

import os

from rec_kd.data.sequences import load_inter, load_user_sequences, movielens_100k_path
from rec_kd.data.session_data import DataError, SessionData
from rec_kd.data.srgnn import load_srgnn

SRGNN_FOLDERS = {"tmall": "tmall", "retailrocket": "retailrocket", "yoochoose1_64": "yoochoose1_64"}
BEAUTY_FILE = os.path.join("amazon_beauty_5core", "Beauty.txt")
DATASET_NAMES = (*SRGNN_FOLDERS, "beauty", "ml-100k")


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


def load_configured(config) -> SessionData:
    """The dataset a run config names (its `dataset`, `data_dir` and `data` fields), sliced for smoke runs."""
    data = load_dataset(
        config.dataset,
        config.data_dir or None,
        max_len=config.data.max_len,
        valid_fraction=config.data.valid_fraction,
        hot_fraction=config.data.hot_fraction,
        hot_counting=config.data.hot_counting,
    )
    if config.data.max_train_examples or config.data.max_eval_examples:
        data = data.with_examples(config.data.max_train_examples or len(data.train), config.data.max_eval_examples or len(data.test))
    return data
