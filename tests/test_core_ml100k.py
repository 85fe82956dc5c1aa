"""The core guarantees on MovieLens-100k, which ships in the RecBole wheel: proved by every clone.

tests/test_train.py, tests/test_launch.py and tests/test_members.py check these on Tmall (CI has
the benchmark files); a user's clone has none, so the same guarantees are checked here on
ml-100k, made small (a slice of the data, one length bucket, a narrow model) to stay fast:
1 and 4 devices train the same teacher and student, two processes of two devices equal one of
four, SIGTERM and SIGKILL resume to the uninterrupted result, the refit trains on train + valid
for the selected epochs, a missing or mismatched teacher and a misspelt override are refused
before training, and the reproduce grid and its report hold the runs' numbers.

Where the Tmall files are present (CI), the four device-count and preemption tests skip: their
twins in tests/test_train.py check the same on the real catalogue (conftest.unless_checked_on_tmall).
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launch import demo, report
from rec_kd.data import movielens_100k_path
from tests.test_train import (
    assert_refit_steps,
    main_env,
    results,
    resumed_step,
    run_main,
    run_two_processes,
    start_main,
    train_losses,
    wait_for_train_step,
)

REPO = Path(__file__).resolve().parents[1]
NO_DATA_DIR = ""  # ml-100k is read from the RecBole wheel
pytestmark = pytest.mark.slow

# One batch width (50), so step counts are ceil(examples / 100); every step logged.
ONE_BUCKET = ["--config.data.buckets=(50,)", "--config.train.log_every_steps=1"]
# 600 examples in batches of 100: 6 steps, one epoch, a narrow model.
SMALL = [
    *ONE_BUCKET,
    "--config.data.max_train_examples=600",
    "--config.data.max_eval_examples=300",
    "--config.model.hidden_dim=32",
    "--config.model.inner_dim=32",
    "--config.train.num_epochs=1",
]


def run_ml100k(arg: str, workdir: Path, *overrides: str, num_devices: int = 1, check: bool = True, base=SMALL):
    return run_main(f"ml_100k.py:{arg}", workdir, NO_DATA_DIR, *base, *overrides, num_devices=num_devices, check=check)


@pytest.fixture(scope="module")
def teacher(ml100k_teacher) -> Path:
    """One device; the suite's shared smoke teacher (tests/conftest.py) is exactly this run."""
    return ml100k_teacher


@pytest.fixture(scope="module")
def teacher_four_devices(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("ml100k") / "teacher_4dev"
    run_ml100k("teacher,smoke", workdir, num_devices=4)
    return workdir


def assert_same_losses(got: Path, expected: Path) -> None:
    got_losses, expected_losses = train_losses(got), train_losses(expected)
    assert got_losses.keys() == expected_losses.keys()
    for step, loss in expected_losses.items():
        assert got_losses[step] == pytest.approx(loss, abs=1e-5), step


def assert_same_metrics(got: Path, expected: Path, tolerance: float = 1e-5) -> None:
    for split in ("valid", "test", "test_cold"):
        for name, value in results(expected)[split].items():
            assert results(got)[split][name] == pytest.approx(value, abs=tolerance), (split, name)


def test_teacher_four_devices_equal_one(unless_checked_on_tmall, teacher, teacher_four_devices):
    assert len(train_losses(teacher)) == 6  # 600 examples / batch 100
    assert_same_losses(teacher_four_devices, teacher)
    assert_same_metrics(teacher_four_devices, teacher)
    one, four = results(teacher), results(teacher_four_devices)
    assert (one["num_devices"], four["num_devices"]) == (1, 4)
    assert one["dataset"] == "ml-100k" and one["num_items"] == 1682 and one["params"]["item_table"] == 1683 * 32


def test_two_processes_of_two_devices_equal_one_process_of_four(unless_checked_on_tmall, teacher_four_devices, tmp_path):
    workdir = tmp_path / "two_processes"
    run_two_processes("ml_100k.py:teacher,smoke", workdir, NO_DATA_DIR, *SMALL)
    assert results(workdir)["num_devices"] == 4
    assert_same_metrics(workdir, teacher_four_devices)
    assert_same_losses(workdir, teacher_four_devices)  # one writer: process 0 only


def test_student_four_devices_equal_one(unless_checked_on_tmall, teacher, ml100k_student, tmp_path):
    # One device: the suite's shared smoke student (tests/conftest.py), this teacher's.
    run_ml100k("student,smoke", tmp_path / "student_4", f"--config.teacher_workdir={teacher}", num_devices=4)
    assert_same_losses(tmp_path / "student_4", ml100k_student)
    student = results(ml100k_student)
    assert student["stage"] == "student" and student["variant"] == "full"
    # ml-100k's factors at rank 16 (width 32 = 8 x 4, t = 2): 36*8*16 + 47*4*16*1/4 = 4,608 + 752.
    assert student["params"]["item_table"] == 5360
    assert student["embedding_compression_authors"] == pytest.approx(36 * 47 * 32 / 5360)  # padded rows, parameters
    assert student["embedding_compression"] == pytest.approx(1683 * 32 / 5360)  # bytes of the 1,683 rows, fp32 both
    assert set(student["losses"]) == {"rec", "kd", "cl", "pred", "total"}


def test_student_with_a_missing_or_mismatched_teacher_fails_before_training(teacher, tmp_path):
    missing = run_ml100k("student,smoke", tmp_path / "s1", "--config.teacher_workdir=/nonexistent", check=False)
    assert missing.returncode == 1 and "no teacher config" in missing.stderr
    # The same MovieLens file, but given by path: another dataset as far as the check knows.
    other = run_main(
        "custom.py:student,smoke",
        tmp_path / "s2",
        NO_DATA_DIR,
        *SMALL,
        "--config.data.format=inter",
        f"--config.data.path={movielens_100k_path()}",
        f"--config.teacher_workdir={teacher}",
        check=False,
    )
    assert other.returncode == 1
    assert f"teacher was trained on 'ml-100k', the student is on 'custom:inter:{movielens_100k_path()}'" in other.stderr
    assert not (tmp_path / "s2" / "metrics.jsonl").exists()


def test_misspelt_override_is_an_error(tmp_path):
    result = run_ml100k("teacher,smoke", tmp_path / "w", "--config.train.lerning_rate=0.1", check=False)
    assert result.returncode != 0 and "lerning_rate" in result.stderr
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_sigterm_and_sigkill_end_like_an_uninterrupted_run(unless_checked_on_tmall, tmp_path):
    """2 epochs of 30 steps at the full width, checkpoints every 10 steps; each stop is followed by a rerun."""
    overrides = [*ONE_BUCKET, "--config.train.num_epochs=2", "--config.train.checkpoint_every_steps=10"]
    straight = tmp_path / "straight"
    run_ml100k("teacher,smoke", straight, *overrides, base=[])

    interrupted, resumes = tmp_path / "interrupted", []
    for sig, min_step in ((signal.SIGTERM, 5), (signal.SIGKILL, 35)):
        process = start_main("ml_100k.py:teacher,smoke", interrupted, NO_DATA_DIR, *overrides)
        wait_for_train_step(interrupted, min_step, process)
        process.send_signal(sig)
        code = process.wait(timeout=120)
        stderr = process.stderr.read()
        resumes.append(resumed_step(stderr))
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), stderr[-2000:]
        assert not (interrupted / "results.json").exists()
    killed_after = max(train_losses(interrupted))
    rerun = run_ml100k("teacher,smoke", interrupted, *overrides, base=[])
    resumes.append(resumed_step(rerun.stderr))

    assert resumes[0] is None and resumes[1] >= 5
    # SIGKILL loses at most the steps since the last periodic checkpoint (every 10 steps).
    assert killed_after - 10 <= resumes[2] <= killed_after
    assert results(interrupted)["resumed_from_step"] == resumes[2] and results(straight)["resumed_from_step"] is None
    assert results(interrupted)["selected_step"] == results(straight)["selected_step"]
    assert_same_metrics(interrupted, straight, tolerance=1e-6)


def test_refit_trains_a_fresh_model_on_train_and_valid_for_the_selected_epochs(unless_checked_on_tmall, tmp_path):
    workdir = tmp_path / "refit"
    overrides = [*ONE_BUCKET, "--config.data.max_train_examples=300", "--config.data.max_eval_examples=200"]
    run_ml100k("teacher,smoke", workdir, *overrides, "--config.model.hidden_dim=32", "--config.train.refit_on_valid=True", base=[])
    assert_refit_steps(workdir)


def reproduce_command(root: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "launch.reproduce", f"--root={root}", "--datasets=ml-100k", *flags]


def test_reproduce_grid_then_report_holds_the_runs_numbers(unless_checked_on_tmall, tmp_path):
    """The select protocol, the quicker one (tests/test_refit_protocol.py covers the refit one on ml-100k).

    Its Tmall twin is tests/test_launch.py's smoke grid; the main row's sizes are also hand-counted in
    tests/test_reproduce_tables.py, which needs no training.
    """
    root, out = tmp_path / "runs", tmp_path / "report"
    command = reproduce_command(root, "--smoke", "--seeds=0", "--rows=teacher,main", "--protocol=select")
    subprocess.run(command, cwd=REPO, env=main_env(1), check=True, capture_output=True, timeout=900)
    assert sorted(path.parent.name for path in root.glob("ml-100k/*/results.json")) == ["main_s0", "teacher_s0"]
    again = subprocess.run(command, cwd=REPO, env=main_env(1), check=True, capture_output=True, text=True, timeout=300)
    assert "2 runs finished (skipped); running 0 teachers, then 0 students" in again.stderr
    text = report.write_report(report.load_runs(str(root)), str(out))
    teacher, main = (json.loads((root / "ml-100k" / name / "results.json").read_text()) for name in ("teacher_s0", "main_s0"))
    teacher_row = next(line for line in text.splitlines() if line.startswith("| teacher |"))
    assert f"{teacher['test']['hr@20']:.4f}" in teacher_row and f"{teacher['params']['inference_total']:,}" in teacher_row
    # ml-100k's main student: factors (36, 47) x (16, 8) at rank 16, t = 2: 36*16*16 + 47*8*16/4 = 10,720
    # fp32 parameters (42,880 bytes) against the dense fp32 table of the 1,682 items and the padding row,
    # 1,683 x 128 x 4 = 861,696 bytes: 20.1x (id row order, so no row map).
    main_row = next(line for line in text.splitlines() if line.startswith("| full | 20.1x |"))
    assert f"{main['test']['hr@20']:.4f}" in main_row and main["params"]["item_table"] == 10720
    assert main["bytes"]["item_table"] == 42880 and main["bytes"]["dense_item_table"] == 861696


def test_a_grid_refuses_a_run_made_under_the_other_protocol(tmp_path):
    workdir = tmp_path / "runs" / "ml-100k" / "teacher_s0"
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"train": {"refit_on_valid": True}}))
    command = reproduce_command(tmp_path / "runs", "--rows=teacher", "--protocol=select")
    result = subprocess.run(command, cwd=REPO, env=main_env(1), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"{workdir}/config.json: ran with train.refit_on_valid=True, but --protocol=select; use another --root"
    )


def test_the_demo_table_says_how_long_each_model_trained(tmp_path):
    lines = [{"split": "train", "epoch": 0}, {"split": "valid", "epoch": 1, "hr@20": 0.1}, {"split": "valid", "epoch": 2, "hr@20": 0.15}]
    # A resumed run may evaluate an epoch twice: the last entry counts.
    lines += [{"split": "valid", "epoch": 3, "hr@20": 0.3}, {"split": "test", "epoch": 3}, {"split": "valid", "epoch": 3, "hr@20": 0.16}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    curve = demo.valid_curve(str(tmp_path))
    assert curve == [0.1, 0.15, 0.16]
    # (0.16 - 0.15) / 0.15 = +6.7%.
    assert demo.training_note(curve) == "3 epochs; valid HR@20 0.1000 -> 0.1500 -> 0.1600 (+6.7% in the last epoch)"
    assert demo.training_note([0.2]) == "1 epoch; valid HR@20 0.2000"
