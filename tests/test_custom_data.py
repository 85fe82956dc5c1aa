"""Your own data (configs/custom.py): a dataset given only by format and path, end to end.

One synthetic log of 300 users over items 1..300 is written in each of the four formats; each goes
teacher -> student -> ONNX export -> `rec_kd.serve.recommend`, through the same commands a user types
(docs/data.md). Around that: the STTD factors picked at a target compression (hand-computed),
the teacher check between two files, sweeps over a custom config, and bad input that stops a run
before training with one line naming the file.
"""

import inspect
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from rec_kd import defaults
from rec_kd.compress import sttd
from rec_kd.data import FORMAT_READERS, load_configured, load_raw_events
from rec_kd.data.datasets import raw_event_options
from rec_kd.models import resolve_table_config
from rec_kd.serve import export
from rec_kd.train import sweeps
from tests.test_train import main_env, results, run_main

REPO = Path(__file__).resolve().parents[1]
NUM_USERS, NUM_ITEMS = 300, 300
# Small and quick: one length bucket, short prefixes.
FAST = ["--config.data.max_len=16", "--config.data.buckets=(16,)", "--config.train.log_every_steps=1"]
# The events file names its columns its own way and keeps items seen twice.
EVENTS_OPTIONS = [
    "--config.data.events.session_column=user",
    "--config.data.events.item_column=sku",
    "--config.data.events.time_column=ts",
    "--config.data.events.min_item_count=2",
]


def synthetic_sequences() -> list[list[int]]:
    """300 users of 8..14 items; mostly item i is followed by i + 1, so there is something to learn."""
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(NUM_USERS):
        item, sequence = int(rng.integers(1, NUM_ITEMS + 1)), []
        for _ in range(int(rng.integers(8, 15))):
            sequence.append(item)
            item = item % NUM_ITEMS + 1 if rng.random() < 0.7 else int(rng.integers(1, NUM_ITEMS + 1))
        sequences.append(sequence)
    sequences[0][-1] = NUM_ITEMS  # the largest id occurs
    return sequences


def srgnn_expand(sessions: list[list[int]]) -> tuple[list, list]:
    """SR-GNN's prefix expansion, longest prefix first (as in shared/data/README.md)."""
    seqs, targets = [], []
    for s in sessions:
        for i in range(1, len(s)):
            seqs.append(s[:-i])
            targets.append(s[-i])
    return seqs, targets


def write_dataset(data_format: str, folder: Path, sequences: list[list[int]]) -> Path:
    """The sequences in `data_format`; returns the path a user would give as data.path."""
    folder.mkdir(parents=True, exist_ok=True)
    if data_format == "srgnn":
        split = len(sequences) * 85 // 100
        (folder / "train.txt").write_bytes(pickle.dumps(srgnn_expand(sequences[:split]), protocol=3))
        (folder / "test.txt").write_bytes(pickle.dumps(srgnn_expand(sequences[split:]), protocol=3))
        return folder
    if data_format == "user_sequences":
        path = folder / "sequences.txt"
        path.write_text("".join(f"{user} {' '.join(map(str, s))}\n" for user, s in enumerate(sequences, 1)))
        return path
    if data_format == "inter":
        path = folder / "log.inter"
        rows = [f"{user}\t{item}\t{1000 * user + t}" for user, s in enumerate(sequences, 1) for t, item in enumerate(s)]
        path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
        return path
    # events: user u's clicks at 2000 u + 60 t seconds; the last day's sessions are test.
    path = folder / "clicks.csv"
    rows = [f"u{user},sku{item},{2000 * user + 60 * t}" for user, s in enumerate(sequences, 1) for t, item in enumerate(s)]
    path.write_text("user,sku,ts\n" + "\n".join(rows) + "\n")
    return path


def custom_args(data_format: str, path: Path) -> list[str]:
    extra = EVENTS_OPTIONS if data_format == "events" else []
    return [f"--config.data.format={data_format}", f"--config.data.path={path}", *FAST, *extra]


def run_custom(arg: str, workdir: Path, data_format: str, path: Path, *overrides: str, check: bool = True):
    return run_main(f"custom.py:{arg}", workdir, "", *custom_args(data_format, path), *overrides, check=check)


def recommend(model_path: str, session: str, k: int) -> dict:
    command = [sys.executable, "-m", "rec_kd.serve.recommend", f"--model={model_path}", f"--session={session}", f"--k={k}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root, sequences = tmp_path_factory.mktemp("custom_data"), synthetic_sequences()
    return {data_format: write_dataset(data_format, root / data_format, sequences) for data_format in defaults.FORMATS}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, datasets) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("custom_teachers")
    for data_format, path in datasets.items():
        run_custom("teacher,smoke", root / data_format, data_format, path)
    return {data_format: root / data_format for data_format in datasets}


# ----------------------------------------------------------------------------------------------
# The STTD factors at a target compression.
# ----------------------------------------------------------------------------------------------


def test_target_compression_picks_the_largest_rank_that_reaches_it():
    # 1,683 rows: factors (36, 47) (sum 83, 9 rows of padding), widths (16, 8), t = 2. Parameters at
    # rank R: 36*16*R + 47*8*R/4 = 670 R; compression 1692*128 / (670 R): R = 10 -> 32.3x, R = 12 -> 26.9x.
    spec = sttd.suggest_spec_at_compression(1683, 128, 30, 2, 2)
    assert spec == sttd.STTDSpec((36, 47), (16, 8), (10,), 2)
    assert sttd.num_params(spec) == 6700 and sttd.compression_ratio(spec) == pytest.approx(1692 * 128 / 6700)
    # t = 1 (the tt variant): 36*16*R + 47*8*R = 952 R; R = 7 -> 32.5x, R = 8 -> 28.4x.
    assert sttd.suggest_spec_at_compression(1683, 128, 30, 1, 2).ranks == (7,)
    # 12 rows, (3, 4): even rank 2 is 3*16*2 + 4*8*2/4 = 112 parameters for 12*128: 13.7x.
    assert sttd.suggest_spec_at_compression(12, 128, 30, 2, 2) is None


def student_config(dataset: str, variant: str = "", **data):
    config = defaults.get_config(dataset, ",".join(["student", variant]).strip(","))
    for name, value in data.items():
        config.data[name] = value
    return config


def test_custom_students_get_factors_at_the_target_and_named_datasets_keep_theirs():
    custom = student_config(defaults.CUSTOM, format="inter", path="x.inter")
    resolve_table_config(custom, 1682)
    assert (custom.table.item_factors, custom.table.dim_factors, custom.table.ranks) == ((36, 47), (16, 8), (10,))
    # Named datasets as before: ml-100k at its fixed rank 16, Tmall at the paper's factors.
    ml = student_config("ml-100k")
    resolve_table_config(ml, 1682)
    assert (ml.table.item_factors, ml.table.ranks) == ((36, 47), (16,))
    tmall = student_config("tmall")
    resolve_table_config(tmall, 40727)
    assert (tmall.table.item_factors, tmall.table.dim_factors, tmall.table.ranks, tmall.table.t) == ((169, 241), (16, 8), (60,), 2)
    assert "target_compression" not in tmall.table and "format" not in tmall.data


def test_a_catalogue_too_small_to_compress_is_refused_naming_the_file():
    config = student_config(defaults.CUSTOM, format="user_sequences", path="/data/tiny.txt")
    with pytest.raises(defaults.ConfigError, match=r"^/data/tiny.txt: a catalogue of 11 items is too small to compress 30x \(.* 13.7x"):
        resolve_table_config(config, 11)
    dense = student_config(defaults.CUSTOM, "dense", format="user_sequences", path="/data/tiny.txt")
    resolve_table_config(dense, 11)  # the dense variant compresses nothing, so any catalogue will do
    assert dense.table.item_factors == ()


def test_the_config_names_every_reader_and_every_raw_events_rule():
    assert defaults.FORMATS == tuple(FORMAT_READERS)
    events = defaults.get_config(defaults.CUSTOM).data.events
    rules = inspect.signature(load_raw_events).parameters
    common = {"csv_path", "max_len", "valid_fraction", "hot_fraction", "hot_counting", "name"}  # the run's data fields
    assert set(events) == set(rules) - common
    # 0 stands for the reader's None ("no limit"); every other default is the reader's.
    options = raw_event_options(events)
    assert options == {name: rules[name].default for name in events}


def test_the_dataset_field_follows_format_and_path_overrides(tmp_path):
    config = defaults.get_config(defaults.CUSTOM, "teacher")
    config.lock()
    config.data.format, config.data.path = "inter", "some/log.inter"
    assert config.dataset == "custom:inter:" + os.path.join(os.getcwd(), "some", "log.inter")
    config.data.path = str(tmp_path / "b.inter")
    assert config.dataset == f"custom:inter:{tmp_path}/b.inter"
    assert json.loads(config.to_json())["dataset"] == f"custom:inter:{tmp_path}/b.inter"


def test_a_run_config_read_back_from_json_finds_its_file_from_any_directory(tmp_path, datasets, monkeypatch):
    config = defaults.get_config(defaults.CUSTOM, "teacher")
    config.data.format, config.data.path = "inter", os.path.relpath(datasets["inter"])  # relative to this directory
    saved = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
    monkeypatch.chdir(tmp_path)
    data = load_configured(saved)
    # Leave-one-out: a user of n items gives n - 3 training examples, one valid and one test.
    assert data.num_items == NUM_ITEMS and len(data.train) == sum(len(s) - 3 for s in synthetic_sequences())
    assert len(data.valid) == len(data.test) == NUM_USERS


def test_a_sweep_over_custom_data_builds_ordinary_runs(tmp_path, datasets):
    path = tmp_path / "sweep.py"
    base = {"data.format": "inter", "data.path": str(datasets["inter"])}
    spec = {"config": "configs/custom.py:teacher,smoke", "base": base, "product": {"seed": [0, 1]}}
    path.write_text(f"def get_sweep():\n    return {spec!r}\n")
    sweep = sweeps.load_sweep(str(path))
    runs = sweeps.expand(sweep)
    config = sweeps.build_config(sweep, runs[1])
    assert config.dataset == f"custom:inter:{datasets['inter']}" and config.seed == 1
    assert [len(group) for group in sweeps.vmap_groups(sweep, runs)] == [2]  # the seeds train as one vmapped program
    assert f"--config.data.path={datasets['inter']}" in sweeps.main_command(sweep, runs[0], str(tmp_path))


# ----------------------------------------------------------------------------------------------
# End to end, one format at a time.
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("data_format", defaults.FORMATS)
def test_teacher_student_export_recommend(data_format, datasets, teachers, tmp_path):
    """A teacher on every format; the student, its export and recommend on two of them (the README's
    inter, and events): past the reader, every format trains the same arrays."""
    path, teacher_dir, student_dir = datasets[data_format], teachers[data_format], tmp_path / "student"
    teacher = results(teacher_dir)
    assert teacher["dataset"] == f"custom:{data_format}:{path}" and teacher["stage"] == "teacher"
    assert 0 < teacher["test"]["hr@20"] <= 1
    if data_format in ("user_sequences", "inter"):
        assert teacher["num_items"] == NUM_ITEMS  # ids kept as written
    if data_format not in ("inter", "events"):
        return
    run_custom("student,smoke", student_dir, data_format, path, f"--config.teacher_workdir={teacher_dir}")
    student = results(student_dir)
    assert student["stage"] == "student" and student["teacher_workdir"] == str(teacher_dir)
    assert student["embedding_compression_authors"] >= 30 and student["num_items"] == teacher["num_items"]

    model = export.export_workdir(str(student_dir), str(tmp_path / "student.onnx"), k=10)
    answer = recommend(model, "1,2,3", k=5)
    assert len(answer["items"]) == 5 and len(set(answer["items"])) == 5
    assert all(1 <= item <= student["num_items"] for item in answer["items"])
    assert answer["scores"] == sorted(answer["scores"], reverse=True)


@pytest.mark.slow
def test_a_teacher_trained_on_another_file_is_refused(teachers, datasets, tmp_path):
    other = write_dataset("inter", tmp_path / "other", synthetic_sequences()[::-1])
    result = run_custom("student,smoke", tmp_path / "s", "inter", other, f"--config.teacher_workdir={teachers['inter']}", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and lines[-1] == (
        f"error: {teachers['inter'] / 'config.json'}: teacher was trained on 'custom:inter:{datasets['inter']}', "
        f"the student is on 'custom:inter:{other}'"
    )
    assert not (tmp_path / "s" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# Bad input stops `rec_kd.main` before training, in one line naming the file.
# ----------------------------------------------------------------------------------------------


def bad_input_cases(tmp_path: Path, datasets: dict[str, Path]) -> list[tuple[str, Path, str]]:
    empty = tmp_path / "empty.inter"
    empty.write_text("")
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("user,sku\nu1,sku1\n")
    return [
        ("inter", tmp_path / "missing.inter", "no such file or folder"),
        ("inter", empty, "the file is empty"),
        ("user_sequences", datasets["inter"], r"is not an integer \(it looks like format 'inter'"),
        ("srgnn", datasets["inter"], "is a file, but format 'srgnn' reads a folder"),
        ("events", no_time, r"missing column ts \(the time_column\)"),
    ]


@pytest.mark.slow
def test_bad_input_is_one_line_naming_the_file(tmp_path, datasets):
    for data_format, path, message in bad_input_cases(tmp_path, datasets):
        result = run_custom("teacher,smoke", tmp_path / "w", data_format, path, check=False)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 1 and last.startswith(f"error: {path}") and re.search(message, last), last
        assert not (tmp_path / "w" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_a_student_on_a_catalogue_too_small_to_compress_stops_before_training(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("".join(f"{u} {' '.join(str((u + t) % 11 + 1) for t in range(6))}\n" for u in range(1, 21)))
    run_custom("teacher,smoke", tmp_path / "t", "user_sequences", path)
    result = run_custom("student,smoke", tmp_path / "s", "user_sequences", path, f"--config.teacher_workdir={tmp_path / 't'}", check=False)
    assert result.returncode == 1 and f"error: {path}: a catalogue of 11 items is too small to compress 30x" in result.stderr
    assert not (tmp_path / "s" / "metrics.jsonl").exists()


def test_inspect_reads_a_path_in_each_format_with_the_event_rules_as_flags():
    fixture = REPO / "tests" / "fixtures" / "tiny_events.csv"
    rules = ["--session_gap_seconds=1800", "--min_item_count=2", "--max_session_length=5", "--test_window_seconds=1000"]
    command = [sys.executable, "-m", "rec_kd.data.inspect", "--format=events", f"--path={fixture}", "--valid_fraction=0.34", *rules]
    stats = json.loads(subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True, env=main_env(1)).stdout)
    # tests/test_data_raw_events.py works this log out by hand: train A1 [a b c], B [b c d]; valid A2
    # [a b]; test E [c a b], G [d a]; items a b c d.
    # Prefix lengths 2 1 2 1 (train) and 1 (valid); 4 distinct training items, floor(0.2 * 4) = 0 hot.
    assert stats == {
        "num_items": 4,
        "num_train": 4,
        "num_valid": 1,
        "num_test": 3,
        "num_train_sessions": 3,
        "avg_prefix_len": 1.4,
        "max_prefix_len": 2,
        "num_hot_items": 0,
        "hot_click_share": 0.0,
    }
