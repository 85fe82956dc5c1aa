"""Copies of finished runs kept outside their workdirs (the repository's docs/results/).

Why: workdirs live on one machine, and a later session may start on another without them. A copy
is what the report needs to show the run again: its results.json as DATASET_RUN.json, and the eval
records of its metrics.jsonl (not the train-loss lines) as DATASET_RUN.evals.jsonl beside it.
`launch/reproduce.py --keep_results_in=DIR` keeps each run as it finishes; `launch/report.py`
keeps every run it reports and reads the copies back for runs its root no longer holds.
"""

import json
import os
import shutil

EVALS_SUFFIX = ".evals.jsonl"


def copy_name(dataset: str, run: str) -> str:
    return f"{dataset}_{run}"


def keep(workdir: str, folder: str) -> str:
    """Copies the finished run in `workdir` into `folder`; returns the results copy's path."""
    with open(os.path.join(workdir, "results.json")) as f:
        dataset = json.load(f)["dataset"]
    name = copy_name(dataset, os.path.basename(os.path.normpath(workdir)))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".json")
    shutil.copyfile(os.path.join(workdir, "results.json"), path)
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            evals = [line for line in f if json.loads(line)["split"] != "train"]
        with open(os.path.join(folder, name + EVALS_SUFFIX), "w") as f:
            f.writelines(evals)
    return path


def keep_copy(copy: dict, folder: str) -> str:
    """Keeps a copy (from read_kept) in `folder` too, unless it is there already; returns its path there."""
    path = os.path.join(folder, os.path.basename(copy["_copy"]))
    if os.path.abspath(path) != os.path.abspath(copy["_copy"]):
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(copy["_copy"], path)
        if os.path.exists(evals_path(copy)):
            shutil.copyfile(evals_path(copy), os.path.join(folder, os.path.basename(evals_path(copy))))
    return path


def read_kept(folder: str) -> list[dict]:
    """The run copies in `folder`, each results dict with `_run` (its run name) and `_copy` (its path).

    Other JSON files there (benchmarks) are not runs: a run's results name its dataset and variant,
    and its file is named after its dataset.
    """
    copies = []
    if not os.path.isdir(folder):
        return copies
    for file_name in sorted(os.listdir(folder)):
        if not file_name.endswith(".json"):
            continue
        path = os.path.join(folder, file_name)
        with open(path) as f:
            result = json.load(f)
        stem = file_name[: -len(".json")]
        if not (isinstance(result, dict) and {"dataset", "variant", "test"} <= result.keys() and stem.startswith(f"{result['dataset']}_")):
            continue
        copies.append({**result, "_run": stem[len(result["dataset"]) + 1 :], "_copy": path})
    return copies


def evals_path(copy: dict) -> str:
    """Where a copy (from read_kept) keeps its run's eval records."""
    return os.path.join(os.path.dirname(copy["_copy"]), copy_name(copy["dataset"], copy["_run"]) + EVALS_SUFFIX)
