"""The real `rec_kd.main`, end to end: data parallelism, preemption and resumption, students.

Each run is a subprocess because the fake device count (XLA_FLAGS) is fixed when JAX starts. The
runs share the persistent compilation cache (.jax_cache), and trained fixtures are shared across
tests, to keep this file to a few minutes on 2 cores.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rec_kd.compress import row_order
from rec_kd.experiments import runs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# A short Tmall run: the real data and full catalogue, few examples.
TMALL_SMOKE = [
    "--config.data.max_train_examples=600",
    "--config.data.max_eval_examples=300",
    "--config.train.num_epochs=1",
    "--config.train.log_every_steps=1",
]


def main_env(num_devices: int) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    return env


def main_command(config: str, workdir: Path, data_dir: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rec_kd.main",
        f"--config={REPO / 'configs' / config}",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        *overrides,
    ]


def run_main(config, workdir, data_dir, *overrides, num_devices=1, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        main_command(config, workdir, data_dir, *overrides),
        cwd=REPO,
        env=main_env(num_devices),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"rec_kd.main failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def train_losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss/total"] for line in lines if line["split"] == "train"}


def results(workdir: Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module")
def tmall_teacher(tmp_path_factory, data_dir) -> Path:
    workdir = tmp_path_factory.mktemp("runs") / "tmall_teacher_1dev"
    run_main("tmall.py:teacher,smoke", workdir, data_dir, *TMALL_SMOKE)
    return workdir


@pytest.fixture(scope="module")
def tmall_teacher_four_devices(tmp_path_factory, data_dir) -> Path:
    workdir = tmp_path_factory.mktemp("runs") / "tmall_teacher_4dev"
    run_main("tmall.py:teacher,smoke", workdir, data_dir, *TMALL_SMOKE, num_devices=4)
    return workdir


def test_teacher_four_devices_equal_one(tmall_teacher, tmall_teacher_four_devices):
    four = tmall_teacher_four_devices
    one_losses, four_losses = train_losses(tmall_teacher), train_losses(four)
    assert len(one_losses) == 6 and one_losses.keys() == four_losses.keys()  # 600 examples / batch 100
    for step in one_losses:
        assert four_losses[step] == pytest.approx(one_losses[step], abs=1e-5), step
    assert results(tmall_teacher)["num_devices"] == 1 and results(four)["num_devices"] == 4
    teacher = results(tmall_teacher)
    assert teacher["stage"] == "teacher" and teacher["num_items"] == 40727 and teacher["smoke"] is True
    assert teacher["params"]["item_table"] == 40728 * 128
    for name in ("hr@20", "mrr@20", "ndcg@20"):
        assert results(four)["test"][name] == pytest.approx(teacher["test"][name], abs=1e-5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(config_arg: str, workdir: Path, data_dir: str, *overrides: str) -> None:
    """One `rec_kd.main` run as two processes of two fake devices each, coordinated on 127.0.0.1."""
    port, processes = free_port(), []
    for process_id in range(2):
        env = main_env(2)
        env.update(REC_KD_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", REC_KD_NUM_PROCESSES="2", REC_KD_PROCESS_ID=str(process_id))
        command = main_command(config_arg, workdir, data_dir, *overrides)
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]


def test_two_processes_of_two_devices_equal_one_process_of_four(tmall_teacher_four_devices, tmp_path, data_dir):
    """jax.distributed on 127.0.0.1: each process feeds its half of every batch; Orbax saves collectively."""
    workdir = tmp_path / "two_processes"
    run_two_processes("tmall.py:teacher,smoke", workdir, data_dir, *TMALL_SMOKE)
    expected, got = results(tmall_teacher_four_devices), results(workdir)
    assert got["num_devices"] == 4
    for split in ("valid", "test", "test_cold"):
        for name, value in expected[split].items():
            assert got[split][name] == pytest.approx(value, abs=1e-5), (split, name)
    four_losses, two_process_losses = train_losses(tmall_teacher_four_devices), train_losses(workdir)
    assert two_process_losses.keys() == four_losses.keys()  # one writer: process 0 only
    for step, loss in four_losses.items():
        assert two_process_losses[step] == pytest.approx(loss, abs=1e-5), step
    assert (workdir / "checkpoints" / "best").is_dir() and len(list((workdir / "checkpoints" / "latest").glob("[0-9]*"))) >= 1


def test_student_four_devices_equal_one(tmall_teacher, tmp_path, data_dir):
    losses = {}
    for devices in (1, 4):
        workdir = tmp_path / f"student_{devices}"
        run_main(
            "tmall.py:student,smoke",
            workdir,
            data_dir,
            *TMALL_SMOKE,
            f"--config.teacher_workdir={tmall_teacher}",
            "--config.table.row_order=shuffled",  # the full-data default; smoke runs keep the id order
            num_devices=devices,
        )
        losses[devices] = train_losses(workdir)
        student = results(workdir)
    for step in losses[1]:
        assert losses[4][step] == pytest.approx(losses[1][step], abs=1e-5), step
    assert student["stage"] == "student" and student["variant"] == "full"
    assert student["params"]["item_table"] == 191_160
    # In bytes: the dense table of the 40,728 rows over the cores' fp32 bytes and the int32 row map.
    assert student["bytes"]["item_table"] == 4 * 191_160 + 4 * 40_728
    assert student["bytes"]["dense_item_table"] == 4 * 40_728 * 128
    assert student["embedding_compression"] == pytest.approx(40_728 * 128 / (191_160 + 40_728))
    assert student["embedding_compression_authors"] == pytest.approx(40729 * 128 / 191_160)
    assert student["bytes"]["item_rows_int32"] == 4 * 40_728
    assert set(student["losses"]) == {"rec", "kd", "cl", "pred", "total"}
    assert student["model_compression"] > 10


def test_a_clustered_student_in_two_processes_takes_process_0s_map_of_its_teachers_table(tmall_teacher, tmp_path, data_dir):
    """Process 0 clusters the teacher's table and process 1 takes its rows (multihost broadcast): a
    process left without them would fail to build its model (an all-zero map is refused)."""
    workdir = tmp_path / "clustered"
    teacher = f"--config.teacher_workdir={tmall_teacher}"
    # Only the map is checked: one training step on 100 examples, 100 to evaluate.
    few = ["--config.data.max_train_examples=100", "--config.data.max_eval_examples=100"]
    run_two_processes("tmall.py:student,smoke", workdir, data_dir, *TMALL_SMOKE, *few, teacher, "--config.table.row_order=clustered")
    student = results(workdir)
    assert student["num_devices"] == 4 and student["bytes"]["item_rows_int32"] == 4 * 40_728
    rows = row_order.decode_item_rows(student["config"]["table"]["item_rows"], 40_727, 169 * 241)
    teacher_table = np.asarray(runs.load_trained(str(tmall_teacher), 40_727).params["item_embedding"])  # no valid-selected model: best/
    np.testing.assert_array_equal(rows, row_order.clustered_rows(teacher_table, (169, 241), seed=0))


def test_student_with_a_missing_or_mismatched_teacher_fails_before_training(tmall_teacher, tmp_path, data_dir):
    missing = run_main("tmall.py:student,smoke", tmp_path / "s1", data_dir, "--config.teacher_workdir=/nonexistent", check=False)
    assert missing.returncode == 1 and "no teacher config" in missing.stderr
    other = run_main("retailrocket.py:student,smoke", tmp_path / "s2", data_dir, f"--config.teacher_workdir={tmall_teacher}", check=False)
    assert other.returncode == 1 and "trained on 'tmall'" in other.stderr
    assert not (tmp_path / "s2" / "metrics.jsonl").exists()


def test_misspelt_override_is_an_error(tmp_path, data_dir):
    result = run_main("ml_100k.py:teacher,smoke", tmp_path / "w", data_dir, "--config.train.lerning_rate=0.1", check=False)
    assert result.returncode != 0 and "lerning_rate" in result.stderr


def wait_for_train_step(workdir: Path, min_step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended before step {min_step}: {process.stderr.read()[-2000:]}")
        metrics = workdir / "metrics.jsonl"
        if metrics.exists() and any(step >= min_step for step in train_losses(workdir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no training step >= {min_step} within {timeout} s")


def start_main(config, workdir, data_dir, *overrides) -> subprocess.Popen:
    command = main_command(config, workdir, data_dir, *overrides)
    return subprocess.Popen(command, cwd=REPO, env=main_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resumed_step(stderr: str) -> int | None:
    match = re.search(r"Resumed from step (\d+)", stderr)
    return int(match.group(1)) if match else None


def test_sigterm_at_three_steps_and_a_sigkill_end_like_an_uninterrupted_run(tmp_path, data_dir):
    """3 epochs of 32 steps, periodic checkpoints every 10 steps (smoke); each stop is followed by a rerun."""
    overrides = ["--config.train.num_epochs=3", "--config.train.log_every_steps=1"]
    straight = tmp_path / "straight"
    run_main("ml_100k.py:teacher,smoke", straight, data_dir, *overrides)

    interrupted = tmp_path / "interrupted"
    resumes = []
    for sig, min_step in ((signal.SIGTERM, 5), (signal.SIGTERM, 40), (signal.SIGKILL, 62), (signal.SIGTERM, 80)):
        process = start_main("ml_100k.py:teacher,smoke", interrupted, data_dir, *overrides)
        wait_for_train_step(interrupted, min_step, process)
        process.send_signal(sig)
        code = process.wait(timeout=120)
        stderr = process.stderr.read()
        resumes.append(resumed_step(stderr))
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), stderr[-2000:]
        assert not (interrupted / "results.json").exists()
        if sig == signal.SIGKILL:
            killed_after = max(train_losses(interrupted))
    rerun = run_main("ml_100k.py:teacher,smoke", interrupted, data_dir, *overrides)
    resumes.append(resumed_step(rerun.stderr))

    assert resumes[0] is None and all(step is not None for step in resumes[1:])
    assert resumes[1:] == sorted(resumes[1:])
    # SIGKILL loses at most the steps since the last periodic checkpoint (every 10 steps).
    after_kill = resumes[3]
    assert killed_after - 10 <= after_kill <= killed_after
    resumed, expected = results(interrupted), results(straight)
    assert resumed["resumed_from_step"] == resumes[-1] and expected["resumed_from_step"] is None
    assert resumed["selected_step"] == expected["selected_step"]
    for split in ("valid", "test", "test_cold"):
        for name, value in expected[split].items():
            assert resumed[split][name] == pytest.approx(value, abs=1e-6), (split, name)


def test_refit_trains_a_fresh_model_on_train_and_valid_for_the_selected_epochs(tmp_path, data_dir):
    workdir = tmp_path / "refit"
    run_main(
        "tmall.py:teacher,smoke",
        workdir,
        data_dir,
        "--config.data.max_train_examples=300",
        "--config.data.max_eval_examples=200",
        "--config.train.refit_on_valid=True",
    )
    assert_refit_steps(workdir)


def assert_refit_steps(workdir: Path) -> None:
    """A smoke refit run of 300 train / 200 valid examples (batch 100, 2 select epochs) logged the right steps."""
    result = results(workdir)
    assert result["protocol"] == "refit on train+valid for the epochs selected on valid"
    selected_epoch = result["selected_epoch"]
    # Select phase: 2 epochs x 3 batches of 100; refit: selected_epoch x (300 + 200 examples) / 100.
    assert result["select_phase"]["step"] == 3 * selected_epoch
    assert result["selected_step"] == 6 + 5 * selected_epoch
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "valid"] == [3, 6]  # no valid in the refit
    assert [line["step"] for line in lines if line["split"] == "test"] == [3, 6] + [6 + 5 * e for e in range(1, selected_epoch + 1)]
