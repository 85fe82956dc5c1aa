"""rec_kd.runs.config_drift: a run made under another recipe than the one about to resume it is named, field by field.

launch/reproduce.py and launch/sweep.py use it on unresolved configs; rec_kd.main (train.check_resumed_recipe) on resolved ones.
"""

import json
import types

import pytest

from launch import reproduce
from rec_kd import defaults, runs, sweeps, train
from rec_kd.models import resolve_table_config


def write_run_config(workdir, config_dict: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config_dict))


def test_overrides_are_applied_as_rec_kd_main_reads_them():
    config = reproduce.config_from_overrides(
        "tmall", "student,ce", ("--config.train.learning_rate=0.003", "--config.data_dir=/data", "--config.table.dim_factors=(16,8)")
    )
    assert config.variant == "ce"
    assert config.train.learning_rate == 0.003
    assert config.data_dir == "/data"  # a bare string
    assert tuple(config.table.dim_factors) == (16, 8)
    assert config.train.early_stop_min_delta == 0.002  # Tmall's own default, untouched


def test_a_run_of_the_grids_recipe_has_no_drift(tmp_path):
    expected = reproduce.config_from_overrides("tmall", "teacher", ("--config.train.refit_on_valid=True",))
    write_run_config(tmp_path / "run", expected.to_dict())
    assert runs.config_drift(str(tmp_path / "run"), expected) == []


def test_a_run_from_before_a_new_default_is_named_field_by_field(tmp_path):
    expected = reproduce.config_from_overrides("tmall", "teacher", ("--config.seed=1",))
    ran = defaults.get_config("tmall", "teacher").to_dict()
    del ran["train"]["early_stop_min_delta"]  # recorded before the field existed
    ran["model"]["dropout_rate"] = 0.2
    write_run_config(tmp_path / "run", ran)
    assert runs.config_drift(str(tmp_path / "run"), expected) == [
        "model.dropout_rate: ran 0.2, the grid runs 0.5",
        "seed: ran 0, the grid runs 1",
        "train.early_stop_min_delta: ran '(absent)', the grid runs 0.002",
    ]


def test_a_student_run_before_the_shuffled_row_order_is_named(tmp_path):
    expected = reproduce.config_from_overrides("tmall", "student", ())
    assert expected.table.row_order == "shuffled"  # Tmall's default since part 3 of docs/method.md
    ran = expected.to_dict()
    del ran["table"]["row_order"]  # recorded before the field existed: the id order
    write_run_config(tmp_path / "run", ran)
    assert runs.config_drift(str(tmp_path / "run"), expected) == ["table.row_order_seed: ran None, the grid runs 0"]
    teacher = reproduce.config_from_overrides("tmall", "teacher", ())
    ran = teacher.to_dict()
    del ran["table"]["row_order"]
    write_run_config(tmp_path / "teacher", ran)
    assert runs.config_drift(str(tmp_path / "teacher"), teacher) == []  # a dense table has no row order


def test_a_started_run_with_drift_is_refused_and_a_finished_one_is_named(tmp_path):
    expected = reproduce.config_from_overrides("tmall", "student", ())
    ran = expected.to_dict()
    ran["distill"]["kd_weight"] = 0.5
    write_run_config(tmp_path / "run", ran)
    with pytest.raises(sweeps.SweepError, match=r"run was started under another recipe than the grid's \(distill.kd_weight: ran 0.5"):
        sweeps.check_recipe(str(tmp_path / "run"), expected, "the grid")
    (tmp_path / "run" / "results.json").write_text("{}")  # finished: kept and skipped, its drift named
    assert sweeps.check_recipe(str(tmp_path / "run"), expected, "the grid") == ["distill.kd_weight: ran 0.5, the grid runs 0.8"]
    assert sweeps.check_recipe(str(tmp_path / "never_started"), expected, "the grid") == []


def test_paths_and_intervals_are_not_drift_and_the_data_section_is(tmp_path):
    expected = reproduce.config_from_overrides("tmall", "teacher", ())
    ran = expected.to_dict()
    ran["data_dir"], ran["teacher_workdir"] = "/elsewhere", "/moved/teacher"
    ran["train"]["log_every_steps"], ran["train"]["checkpoint_every_steps"], ran["train"]["eval_batch_size"] = 7, 9, 1000
    write_run_config(tmp_path / "run", ran)
    assert runs.config_drift(str(tmp_path / "run"), expected) == []
    ran["data_seed"], ran["data"]["hot_fraction"] = 3, 0.1
    write_run_config(tmp_path / "run", ran)
    assert runs.config_drift(str(tmp_path / "run"), expected) == [
        "data.hot_fraction: ran 0.1, the grid runs 0.2",
        "data_seed: ran 3, the grid runs 0",
    ]


def test_a_tables_sizes_filled_by_the_run_are_drift_only_against_a_resolved_recipe(tmp_path):
    expected = reproduce.config_from_overrides("ml-100k", "student,qr", ())
    assert expected.table.qr.modulus == 0  # chosen from the catalogue when the run starts
    ran = expected.copy_and_resolve_references()
    resolve_table_config(ran, 1682)
    write_run_config(tmp_path / "run", ran.to_dict())
    assert runs.config_drift(str(tmp_path / "run"), expected) == []
    assert runs.config_drift(str(tmp_path / "run"), ran, resolved=True) == []
    other = ran.copy_and_resolve_references()
    other.table.qr.modulus += 1
    assert runs.config_drift(str(tmp_path / "run"), other, resolved=True) == [
        f"table.modulus: ran {ran.table.qr.modulus}, the grid runs {ran.table.qr.modulus + 1}"
    ]
    other = ran.copy_and_resolve_references()
    other.table.hash.buckets = 5  # another kind's option: not this run's table
    assert runs.config_drift(str(tmp_path / "run"), other, resolved=True) == []


def test_resuming_a_started_run_under_another_recipe_is_refused_before_anything_is_written(tmp_path):
    config = defaults.get_config("ml-100k", "teacher")
    workdir = tmp_path / "run"
    data = types.SimpleNamespace(num_items=1682, hot_mask=None)
    train.write_configs([config], [str(workdir)], data)  # a fresh run
    recorded = (workdir / "config.json").read_text()
    (workdir / "checkpoints" / "latest" / "10").mkdir(parents=True)  # it trained
    changed = config.copy_and_resolve_references()
    changed.train.learning_rate = 0.01
    changed.train.log_every_steps = 1  # not drift
    with pytest.raises(
        defaults.ConfigError,
        match=r"run/config.json: the run there started under another recipe \(train.learning_rate: ran 0.002, this command runs 0.01\)",
    ):
        train.write_configs([changed], [str(workdir)], data)
    assert (workdir / "config.json").read_text() == recorded
    changed.train.learning_rate = config.train.learning_rate
    train.write_configs([changed], [str(workdir)], data)  # only an interval changed: resumes
    assert json.loads((workdir / "config.json").read_text())["train"]["log_every_steps"] == 1
