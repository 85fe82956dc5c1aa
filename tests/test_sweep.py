"""Sweeps end to end: expand, run 2 at a time, interrupt, resume, collect; the vmapped sweep agrees."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rec_kd.train import sweeps

REPO = Path(__file__).resolve().parents[1]

SWEEP = """
def get_sweep():
    return {
        "config": "configs/ml_100k.py:teacher,smoke",
        "base": {"data.max_train_examples": 800, "data.max_eval_examples": 300, "model.hidden_dim": 32,
                 "model.inner_dim": 32, "train.checkpoint_every_steps": 2, "train.log_every_steps": 1,
                 "data.buckets": (50,)},
        "product": {"seed": [0, 1], "train.learning_rate": [0.001, 0.003]},
    }
"""
RUN_NAMES = [f"seed={s},train.learning_rate={lr}" for s in (0, 1) for lr in (0.001, 0.003)]


def sweep_env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return env


def sweep_command(sweep_file: Path, root: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "launch.sweep", f"--sweep={sweep_file}", f"--root={root}", *flags]


def results(root: Path, name: str) -> dict:
    return json.loads((root / name / "results.json").read_text())


def test_expand_names_every_combination_and_zip_walks_lists_together(tmp_path):
    path = tmp_path / "s.py"
    path.write_text(
        'def get_sweep():\n    return {"config": "configs/ml_100k.py:teacher", "product": {"seed": [0, 1]},'
        ' "zip": {"distill.kd_weight": [0.5, 0.8], "distill.kd_temperature": [1.0, 2.0]}}\n'
    )
    runs = sweeps.expand(sweeps.load_sweep(str(path)))
    assert [run.name for run in runs] == [
        "seed=0,distill.kd_weight=0.5,distill.kd_temperature=1.0",
        "seed=0,distill.kd_weight=0.8,distill.kd_temperature=2.0",
        "seed=1,distill.kd_weight=0.5,distill.kd_temperature=1.0",
        "seed=1,distill.kd_weight=0.8,distill.kd_temperature=2.0",
    ]


@pytest.mark.parametrize(
    "body,message",
    [
        ('{"product": {"seed": [0]}}', "with a 'config' entry"),
        ('{"config": "configs/ml_100k.py:teacher", "grid": {}}', "unknown sweep entries"),
        ('{"config": "configs/ml_100k.py:teacher", "zip": {"seed": [0, 1], "train.learning_rate": [0.1]}}', "zip lists differ"),
        ('{"config": "configs/ml_100k.py:teacher", "product": {"seed": []}}', "non-empty list"),
    ],
)
def test_bad_sweep_files_are_named_errors(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(f"def get_sweep():\n    return {body}\n")
    with pytest.raises(sweeps.SweepError, match=message) as error:
        sweeps.expand(sweeps.load_sweep(str(path)))
    assert str(path) in str(error.value)


def test_misspelt_field_is_an_error_naming_the_sweep_file(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text('def get_sweep():\n    return {"config": "configs/ml_100k.py:teacher", "product": {"train.learning_rat": [0.1]}}\n')
    sweep = sweeps.load_sweep(str(path))
    with pytest.raises(sweeps.SweepError, match=r"typo.py: 'train.learning_rat' is not a config field"):
        sweeps.build_config(sweep, sweeps.expand(sweep)[0])


def test_vmap_groups_split_on_fields_that_shape_the_program(tmp_path):
    path = tmp_path / "s.py"
    path.write_text(
        'def get_sweep():\n    return {"config": "configs/ml_100k.py:teacher", '
        '"product": {"model.hidden_dim": [32, 64], "seed": [0, 1], "train.learning_rate": [0.1, 0.2]}}\n'
    )
    sweep = sweeps.load_sweep(str(path))
    groups = sweeps.vmap_groups(sweep, sweeps.expand(sweep))
    assert [[run.swept["model.hidden_dim"] for run in group] for group in groups] == [[32] * 4, [64] * 4]


@pytest.mark.slow
def test_sweep_interrupted_resumes_collects_and_matches_its_vmapped_twin(tmp_path):
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(SWEEP)
    root = tmp_path / "root"

    # Two runs at a time; SIGTERM the runner once a run has saved a checkpoint.
    runner = subprocess.Popen(
        sweep_command(sweep_file, root, "--novmap", "--parallel=2"), cwd=REPO, env=sweep_env(), stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not any(list((root / name / "checkpoints" / "latest").glob("[0-9]*")) for name in RUN_NAMES):
        assert runner.poll() is None and time.time() < deadline, runner.stderr.read() if runner.poll() is not None else "timeout"
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=300) == 0, runner.stderr.read()
    unfinished = [name for name in RUN_NAMES if not (root / name / "results.json").exists()]
    assert unfinished, "the interruption came too late to test anything"
    finished_before = {name: (root / name / "results.json").stat().st_mtime for name in RUN_NAMES if name not in unfinished}

    # Rerun: finished runs are skipped, interrupted ones resume from their checkpoints.
    subprocess.run(sweep_command(sweep_file, root, "--novmap", "--parallel=2"), cwd=REPO, env=sweep_env(), check=True, capture_output=True)
    assert all((root / name / "results.json").exists() for name in RUN_NAMES)
    assert {name: (root / name / "results.json").stat().st_mtime for name in finished_before} == finished_before
    assert any(results(root, name)["resumed_from_step"] for name in unfinished)

    # collect: one row a run, the swept fields as columns, sorted by valid hr@20 (best first).
    subprocess.run([sys.executable, "-m", "launch.collect", f"--root={root}"], cwd=REPO, check=True, capture_output=True)
    with open(root / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == sorted(RUN_NAMES, key=lambda name: -results(root, name)["valid"]["hr@20"])
    for row in rows:
        result = results(root, row["run"])
        assert (int(row["seed"]), float(row["train.learning_rate"])) == (result["seed"], float(row["run"].split("=")[-1]))
        assert float(row["valid"]) == pytest.approx(result["valid"]["hr@20"])
        assert float(row["test mrr@20"]) == pytest.approx(result["test"]["mrr@20"])
    assert "| run | seed | train.learning_rate |" in (root / "summary.md").read_text()

    # The same sweep vmapped (the default): one program for the four runs, the same results.
    vmapped = tmp_path / "vmapped"
    subprocess.run(sweep_command(sweep_file, vmapped), cwd=REPO, env=sweep_env(), check=True, capture_output=True)
    for name in RUN_NAMES:
        for metric, value in results(root, name)["test"].items():
            assert results(vmapped, name)["test"][metric] == pytest.approx(value, abs=1e-5), (name, metric)


@pytest.mark.parametrize("mode,script", [("slurm", "sweep.slurm"), ("tpu", "sweep_tpu.sh")])
def test_cluster_modes_write_a_valid_script_with_one_job_per_run(tmp_path, mode, script):
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(SWEEP)
    root = tmp_path / "root"
    command = sweep_command(sweep_file, root, f"--mode={mode}", "--novmap")
    result = subprocess.run(command, cwd=REPO, env=sweep_env(), check=True, capture_output=True, text=True)
    assert f"({len(RUN_NAMES)} jobs)" in result.stdout
    text = (root / script).read_text()
    subprocess.run(["bash", "-n", str(root / script)], check=True)  # parses
    for name in RUN_NAMES:
        assert text.count(f"--workdir={root / name}") == 1
    if mode == "slurm":
        assert f"#SBATCH --array=0-{len(RUN_NAMES) - 1}" in text and "--signal=TERM@120" in text
    else:
        assert text.count("--worker=all") == len(RUN_NAMES) and "REC_KD_DISTRIBUTED=auto" in text
    # Vmapped, the four runs are one job.
    subprocess.run(sweep_command(sweep_file, root, f"--mode={mode}"), cwd=REPO, env=sweep_env(), check=True, capture_output=True)
    assert "--members=" in (root / script).read_text()


def test_a_sweep_file_reads_a_machine_path_from_the_environment(monkeypatch):
    path = os.path.join(sweeps.REPO, "configs", "sweeps", "tmall_row_order.py")
    monkeypatch.delenv("TMALL_TEACHER", raising=False)
    with pytest.raises(sweeps.SweepError, match=r"tmall_row_order.py: set TMALL_TEACHER to the grid's Tmall teacher workdir"):
        sweeps.load_sweep(path)
    monkeypatch.setenv("TMALL_TEACHER", "/runs/tmall/teacher_s0")
    sweep = sweeps.load_sweep(path)
    assert sweep.base["teacher_workdir"] == "/runs/tmall/teacher_s0"
    assert [run.name for run in sweeps.expand(sweep)] == ["table.row_order=shuffled"]


def test_a_started_run_of_another_recipe_is_refused_before_anything_trains(tmp_path):
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(SWEEP)
    root = tmp_path / "runs"
    sweep = sweeps.load_sweep(str(sweep_file))
    run = sweeps.expand(sweep)[0]
    started = sweeps.build_config(sweep, run)
    started.train.learning_rate = 0.01  # the sweep's recipe has changed since this run started
    (root / run.name / "checkpoints" / "latest" / "5").mkdir(parents=True)  # it trained 5 steps
    (root / run.name / "config.json").write_text(json.dumps(started.to_dict()))

    result = subprocess.run(sweep_command(sweep_file, root, "--novmap"), cwd=REPO, env=sweep_env(), capture_output=True, text=True)

    assert result.returncode == 1
    assert f"{root / run.name} was started under another recipe than the sweep's" in result.stderr
    assert "train.learning_rate: ran 0.01, the sweep runs 0.001" in result.stderr
    assert sorted(path.name for path in root.iterdir()) == [run.name]  # nothing else started
