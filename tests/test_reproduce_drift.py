"""rec_kd.runs.config_drift, as launch/reproduce.py uses it: a run made under another recipe than the grid's is named, field by field."""

import json

import pytest

from launch import reproduce
from rec_kd import defaults, runs, sweeps


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
        "seed: ran 0, the grid runs 1",
        "train.early_stop_min_delta: ran '(absent)', the grid runs 0.002",
        "model.dropout_rate: ran 0.2, the grid runs 0.5",
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
