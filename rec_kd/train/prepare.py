"""A workdir before training: the table resolved for the catalogue, the clustered row map, the recipe check, config.json.

Also the commit of the code that trains (git_commit), which every run record lists.
"""

import os
import subprocess
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rec_kd import data as data_lib
from rec_kd.compress import row_order
from rec_kd.defaults import ConfigError
from rec_kd.experiments import result_copies, runs
from rec_kd.models import resolve_table_config, sasrec

# What a run's numbers depend on. Changes elsewhere (docs, and the results copies a grid writes into
# docs/results as its runs finish) do not make the code that trains a run "dirty".
CODE_PATHS = ("rec_kd", "configs", "launch", "setup.py", "requirements.txt")


def git_commit(repo: str | None = None) -> str:
    """HEAD of the checkout holding rec_kd, with '-dirty' when tracked code (CODE_PATHS) differs from it."""
    repo = repo or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS], cwd=repo, capture_output=True, text=True
        )
        # A status that cannot be read (a locked index) does not pass for clean.
        return commit + ("-dirty" if status.returncode != 0 or status.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        # A copy of the checkout without .git (e.g. on a lent GPU machine) is told its commit.
        return os.environ.get("REC_KD_COMMIT", "unknown")


def write_configs(configs: Sequence, workdirs: Sequence[str], data: data_lib.SessionData, sharding=None) -> None:
    """Resolves each member's table for this catalogue and writes its config.json (process 0).

    A workdir that already trained (a checkpoint or results.json) must be resumed under the recipe
    it started with (check_resumed_recipe), so nothing is written before every member is checked.
    `sharding`: where a teacher is restored to cluster its table (fill_clustered_rows).
    """
    maps = {}  # members share their teacher and table: one clustering for all
    for member_config, workdir in zip(configs, workdirs, strict=True):
        resolve_table_config(member_config, data.num_items, data.hot_mask)
        fill_clustered_rows(member_config, workdir, data, maps, sharding)
        check_resumed_recipe(workdir, member_config)
    if len({member_config.table.get("item_rows", "") for member_config in configs}) > 1:
        # One program reads one map (members.build_run builds the first member's model).
        raise ConfigError(
            f"members {list(workdirs)} hold different item -> row maps (table.item_rows, recorded when each started); "
            "resume them one at a time"
        )
    for member_config, workdir in zip(configs, workdirs, strict=True):
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:  # atomically: the other processes may be reading it in check_resumed_recipe
            result_copies.write_atomically(
                os.path.join(workdir, "config.json"), member_config.to_json_best_effort(indent=2, sort_keys=True)
            )


def fill_clustered_rows(config: ml_collections.ConfigDict, workdir: str, data: data_lib.SessionData, maps: dict, sharding=None) -> None:
    """Under table.row_order='clustered', sets table.item_rows (in place) to the run's item -> row map.

    A run that has trained keeps the map its config.json holds (its parameters were trained on
    those rows; a different map given for it is an error). A new run clusters its teacher's
    select-phase table (row_order.clustered_rows, seeded by table.row_order_seed), once for both
    phases. `maps` caches maps by seed and factors, for members. With several processes, process
    0 clusters and the others take its rows: the greedy balanced assignment could break a float
    tie differently on another host, and every process must bake the same rows into the program.
    """
    if sasrec.row_order(config) != "clustered":
        return
    recorded_config = runs.recorded_config(workdir) if runs.has_trained(workdir) else None
    if recorded_config is not None:
        recorded = recorded_config.table.get("item_rows", "")
        if recorded and config.table.item_rows and config.table.item_rows != recorded:
            raise ConfigError(
                f"{workdir}/config.json: the run there trained on another item -> row map than the table.item_rows given; "
                "resume it without --config.table.item_rows (it keeps its own), or use a new --workdir"
            )
        text = recorded  # '' when it trained under another order: check_resumed_recipe names that
    elif config.table.item_rows:
        return
    else:
        key = (int(config.table.row_order_seed), tuple(config.table.item_factors))
        if key not in maps:
            started = time.perf_counter()
            table = runs.teacher_item_table(config, data, sharding)  # every process: Orbax restores collectively
            rows = row_order.clustered_rows(table, key[1], seed=key[0]) if jax.process_index() == 0 else np.zeros(len(table), np.int64)
            if jax.process_count() > 1:
                rows = np.asarray(multihost_utils.broadcast_one_to_all(rows))
            maps[key] = row_order.encode_item_rows(rows)
            logging.info(
                "Clustered %d items onto %s table rows in %.0f s.",
                data.num_items,
                "x".join(map(str, key[1])),
                time.perf_counter() - started,
            )
        text = maps[key]
    with config.unlocked():
        config.table.item_rows = text


def check_resumed_recipe(workdir: str, config: ml_collections.ConfigDict) -> None:
    """A ConfigError when `workdir` already trained under another recipe than `config` (resolved).

    Why: resuming would train one run under two recipes (a default changed since it started, or an
    override was added or forgotten), and its results.json would claim the new one. Fields that do
    not change numbers (paths, logging and checkpoint intervals) may differ: runs.NOT_RECIPE.
    """
    drift = runs.drift_since_training(workdir, config, "this command")
    if drift:
        recorded = "config.json" if os.path.exists(os.path.join(workdir, "config.json")) else runs.SELECT_RECORD
        raise ConfigError(
            f"{workdir}/{recorded}: the run there started under another recipe ({'; '.join(drift)}); resuming it "
            "would mix the two. Rerun it with its recorded settings, use a new --workdir, or, to go on under the new "
            "settings on purpose, write them into its config.json first"
        )
