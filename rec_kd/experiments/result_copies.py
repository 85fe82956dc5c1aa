"""Copies of finished runs kept outside their workdirs (the repository's docs/results/).

Why: workdirs live on one machine, and a later session may start on another without them. A copy
is what the report needs to show the run again: its results.json as DATASET_RUN.json, and the eval
records of its metrics.jsonl (not the train-loss lines) as DATASET_RUN.evals.jsonl beside it. A
copy replaced by another training of the same run with other numbers moves to archive/.
`launch/reproduce.py --keep_results_in=DIR` keeps each run as it finishes (and skips the runs kept
under its recipe); `launch/report.py` keeps every run it reports and reads the copies back for runs
its root no longer holds.

A refit run's select record (runs.SELECT_RECORD, written as its refit starts) is kept too, in
FOLDER/select_records/DATASET_RUN.json, as soon as it exists: a session may end during the refit,
and a later one, on another machine, then refits from the record instead of selecting again.
"""

import json
import os
import re

EVALS_SUFFIX = ".evals.jsonl"
SELECT_RECORDS = "select_records"  # FOLDER/select_records/: the kept select records of refit runs
SELECT_RECORD = "select_record.json"  # its name in a workdir (runs.SELECT_RECORD)
# What a training measured: two copies that agree on these hold the same numbers.
MEASURED_FIELDS = ("valid", "test", "test_cold", "select_phase", "paper_protocol_test")
ARCHIVE = "archive"  # FOLDER/archive/: earlier trainings of a kept run, and runs dropped from the grid
# What tells two runs of one name apart at a glance: a smoke grid or another protocol must not
# replace the copy of a real run (it may be the only record left of it).
IDENTITY_FIELDS = ("smoke", "protocol", "variant")


class CopyError(ValueError):
    """A copy that cannot be read, or would replace the copy of another kind of run."""


def copy_name(dataset: str, run: str) -> str:
    """DATASET_RUN, with anything but letters, digits, '-' and '.' in the dataset as '_' (a custom dataset names a path)."""
    return f"{re.sub(r'[^A-Za-z0-9.-]+', '_', dataset)}_{run}"


def write_atomically(path: str, text: str) -> None:
    """A reader (a report, a later grid) never sees half a file, even if this process is killed mid-write."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as error:
        raise CopyError(f"{path}: not valid JSON ({error})") from None


def _check_replaceable(path: str, result: dict) -> None:
    if not os.path.exists(path):
        return
    old = _read_json(path)
    if not isinstance(old, dict):
        raise CopyError(f"{path}: not a run's results; move it away to keep a run there")
    differ = [f"{name} {old.get(name)!r} -> {result.get(name)!r}" for name in IDENTITY_FIELDS if old.get(name) != result.get(name)]
    if differ:
        raise CopyError(f"{path}: kept from another kind of run ({'; '.join(differ)}); move it away to replace it")


def short_commit(commit: str | None) -> str:
    """'abc1234' for a full commit, 'abc1234-dirty' when it was dirty: the short form keeps the mark."""
    commit = str(commit or "unknown")
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def same_numbers(a: dict, b: dict) -> bool:
    """Whether two results hold the same measurements (the same training, or a bit-identical one).

    Where both name their parameters (`params_digest`, and the select phase's, since 2026-12-03)
    those must match too; a copy from before digests is compared by its numbers alone.
    """

    def measured(result: dict, field: str):
        value = result.get(field)
        return {k: v for k, v in value.items() if k != "params_digest"} if isinstance(value, dict) else value

    def digests(result: dict) -> tuple:
        select = result.get("select_phase")
        return result.get("params_digest"), select.get("params_digest") if isinstance(select, dict) else None

    if any(x and y and x != y for x, y in zip(digests(a), digests(b), strict=True)):
        return False
    return all(measured(a, field) == measured(b, field) for field in MEASURED_FIELDS)


def archive_name(folder: str, name: str, result: dict) -> str:
    """FOLDER/archive/NAME_COMMIT7 (then _2, _3, ...: one commit may train a run twice), without the suffix; free for both files."""
    base = os.path.join(folder, ARCHIVE, f"{name}_{short_commit(result.get('commit'))}")
    path, n = base, 1
    while os.path.exists(path + ".json") or os.path.exists(path + EVALS_SUFFIX):
        n += 1
        path = f"{base}_{n}"
    return path


def archived(folder: str, name: str) -> list[dict]:
    """The results archived for run NAME in FOLDER/archive/ (NAME.json or NAME_*.json)."""
    directory = os.path.join(folder, ARCHIVE)
    if not os.path.isdir(directory):
        return []
    found = []
    for file_name in sorted(os.listdir(directory)):
        if file_name.endswith(".json") and (file_name == name + ".json" or file_name.startswith(name + "_")):
            result = _read_json(os.path.join(directory, file_name))
            if isinstance(result, dict):
                found.append(result)
    return found


def _archive_other_training(path: str, evals_file: str, result: dict, folder: str, name: str) -> None:
    """Moves the copy being replaced, when it holds other numbers, to FOLDER/archive/.

    Why: a run trained again on another machine (a teacher whose checkpoints stayed on the old one)
    need not repeat the first training's numbers, and the students kept beside it distilled from
    that one: its record must not be overwritten. A copy with the same numbers (the same training
    kept again, or a bit-identical retraining) is simply replaced, and so is one whose training the
    archive already holds (two machines that each still hold a training keep it in turn: the
    current copy is the one kept last, and each training is archived once).
    """
    if not os.path.exists(path):
        return
    old = _read_json(path)
    if same_numbers(old, result) or any(same_numbers(old, kept) for kept in archived(folder, name)):
        return
    target = archive_name(folder, name, old)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(path, target + ".json")
    if os.path.exists(evals_file):
        os.replace(evals_file, target + EVALS_SUFFIX)


def _write_copy(result_text: str, evals: str | None, folder: str, name: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".json")
    result = json.loads(result_text)
    _check_replaceable(path, result)
    evals_file = os.path.join(folder, name + EVALS_SUFFIX)
    _archive_other_training(path, evals_file, result, folder, name)
    write_atomically(path, result_text)
    if evals is not None:
        write_atomically(evals_file, evals)
    elif os.path.exists(evals_file):
        os.remove(evals_file)  # an older run's curve must not pass for this one's
    return path


def keep(workdir: str, folder: str) -> str:
    """Copies the finished run in `workdir` into `folder`; returns the results copy's path."""
    with open(os.path.join(workdir, "results.json")) as f:
        result_text = f.read()
    evals = None
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            evals = "".join(line for line in f if json.loads(line)["split"] != "train")
    name = copy_name(json.loads(result_text)["dataset"], os.path.basename(os.path.normpath(workdir)))
    return _write_copy(result_text, evals, folder, name)


def keep_copy(copy: dict, folder: str) -> str:
    """Keeps a copy (from read_kept) in `folder` too, unless it is there already; returns its path there."""
    name = copy_name(copy["dataset"], copy["_run"])
    if os.path.realpath(os.path.join(folder, name + ".json")) == os.path.realpath(copy["_copy"]):
        return copy["_copy"]
    with open(copy["_copy"]) as f:
        result_text = f.read()
    evals = None
    if os.path.exists(evals_path(copy)):
        with open(evals_path(copy)) as f:
            evals = f.read()
    return _write_copy(result_text, evals, folder, name)


def read_kept(folder: str) -> list[dict]:
    """The run copies in `folder`, each results dict with `_run` (its run name) and `_copy` (its path).

    Other JSON files there (benchmarks) are not runs: a run's results name its dataset and variant,
    and its file is named after its dataset. A file that is not JSON is an error naming it.
    """
    copies = []
    if not os.path.isdir(folder):
        return copies
    for file_name in sorted(os.listdir(folder)):
        if not file_name.endswith(".json"):
            continue
        path = os.path.join(folder, file_name)
        result = _read_json(path)
        if not (isinstance(result, dict) and {"dataset", "variant", "test"} <= result.keys()):
            continue
        prefix = copy_name(result["dataset"], "")
        stem = file_name[: -len(".json")]
        if stem.startswith(prefix) and len(stem) > len(prefix):
            copies.append({**result, "_run": stem[len(prefix) :], "_copy": path})
    return copies


def evals_path(copy: dict) -> str:
    """Where a copy (from read_kept) keeps its run's eval records."""
    return os.path.join(os.path.dirname(copy["_copy"]), copy_name(copy["dataset"], copy["_run"]) + EVALS_SUFFIX)


def select_record_copy(folder: str, dataset: str, run: str) -> str:
    """Where `folder` keeps the select record of run `run` of `dataset`."""
    return os.path.join(folder, SELECT_RECORDS, copy_name(dataset, run) + ".json")


def keep_select_record(workdir: str, folder: str) -> str | None:
    """Copies workdir's select record into `folder` unless it is kept there already; the copy's path when written.

    A record that is not JSON, or names no dataset, is a CopyError naming it (and nothing is written).
    """
    source = os.path.join(workdir, SELECT_RECORD)
    if not os.path.exists(source):
        return None
    with open(source) as f:
        text = f.read()
    try:
        dataset = json.loads(text)["config"]["dataset"]
    except (ValueError, KeyError, TypeError) as error:
        raise CopyError(f"{source}: not a select record ({error!r})") from None
    target = select_record_copy(folder, dataset, os.path.basename(os.path.normpath(workdir)))
    if os.path.exists(target):
        with open(target) as f:
            if f.read() == text:
                return None
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_atomically(target, text)
    return target
