"""rec_kd.experiments.runs.config_drift: a run made under another recipe than the one about to resume it is named, field by field.

launch/reproduce.py, launch/sweep.py and launch/studies/compare_tables.py check a run through
sweeps.check_recipe (their recipe resolved for the catalogue first); rec_kd.main through
prepare.check_resumed_recipe.
"""

import json
import types

import pytest

from launch import reproduce
from rec_kd import defaults
from rec_kd.experiments import runs
from rec_kd.train import prepare, sweeps


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
    assert expected.table.row_order == "shuffled"  # Tmall's default (docs/findings.md, "Row order")
    ran = expected.to_dict()
    del ran["table"]["row_order"]  # recorded before the field existed: the id order
    write_run_config(tmp_path / "run", ran)
    assert runs.config_drift(str(tmp_path / "run"), expected) == [
        "table.row_order: ran 'id', the grid runs 'shuffled'",
        "table.row_order_seed: ran None, the grid runs 0",
    ]
    ran["table"]["row_order"] = "clustered"  # another order of the same seed is a drift too
    write_run_config(tmp_path / "run", ran)
    assert runs.config_drift(str(tmp_path / "run"), expected) == ["table.row_order: ran 'clustered', the grid runs 'shuffled'"]
    teacher = reproduce.config_from_overrides("tmall", "teacher", ())
    ran = teacher.to_dict()
    del ran["table"]["row_order"]
    write_run_config(tmp_path / "teacher", ran)
    assert runs.config_drift(str(tmp_path / "teacher"), teacher) == []  # a dense table has no row order


def test_a_run_from_before_the_repeat_bonus_ran_without_one(tmp_path):
    expected = reproduce.config_from_overrides("tmall", "student", ())
    ran = expected.to_dict()
    del ran["model"]["repeat_bonus"]  # recorded before the field existed: ranked by the scores alone
    write_run_config(tmp_path / "run", ran)
    assert runs.config_drift(str(tmp_path / "run"), expected) == []
    boosted = reproduce.config_from_overrides("tmall", "student", ("--config.model.repeat_bonus=8.0",))
    assert runs.config_drift(str(tmp_path / "run"), boosted) == ["model.repeat_bonus: ran 0.0, the grid runs 8.0"]


def test_a_started_run_with_drift_is_refused_and_a_finished_one_is_named(tmp_path):
    expected = reproduce.config_from_overrides("tmall", "student", ())
    ran = expected.to_dict()
    ran["distill"]["kd_weight"] = 0.5
    write_run_config(tmp_path / "run", ran)
    assert sweeps.check_recipe(str(tmp_path / "run"), expected, "the grid") == []  # never saved: it starts afresh
    (tmp_path / "run" / "checkpoints" / "latest" / "10").mkdir(parents=True)
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


ML100K = types.SimpleNamespace(num_items=1682, hot_mask=None)  # 1,683 table rows with padding


def finished_run(workdir, config) -> None:
    """A finished run's config.json, resolved as rec_kd.main writes it."""
    write_run_config(workdir, runs.with_resolved_table(config, lambda: ML100K).to_dict())
    (workdir / "results.json").write_text("{}")


def test_a_launchers_recipe_is_resolved_for_the_catalogue_before_it_is_compared(tmp_path, monkeypatch):
    monkeypatch.setattr(sweeps, "catalogue", lambda config: ML100K)
    grid = reproduce.config_from_overrides("ml-100k", "student,lowrank", ())
    assert grid.table.lowrank.rank == 0  # chosen when the run starts
    finished_run(tmp_path / "same", grid)
    assert sweeps.check_recipe(str(tmp_path / "same"), grid, "the grid") == []
    # The budget is not recorded as a size: 5,000 parameters give rank 5000 // (1683 + 128) = 2,
    # the main STTD budget of 10,720 gives 10720 // 1811 = 5.
    smaller = reproduce.config_from_overrides("ml-100k", "student,lowrank", ("--config.table.budget=5000",))
    finished_run(tmp_path / "smaller", smaller)
    assert sweeps.check_recipe(str(tmp_path / "smaller"), grid, "the grid") == ["table.lowrank.rank: ran 2, the grid runs 5"]
    # Suggested factors at another rank.
    rank8 = reproduce.config_from_overrides("ml-100k", "student", ("--config.table.ranks=(8,)",))
    finished_run(tmp_path / "rank8", rank8)
    assert sweeps.check_recipe(str(tmp_path / "rank8"), reproduce.config_from_overrides("ml-100k", "student", ()), "the grid") == [
        "table.ranks: ran [8], the grid runs [16]"
    ]


def test_only_the_kinds_own_fields_are_compared_under_their_config_paths(tmp_path):
    qr = runs.with_resolved_table(defaults.get_config("ml-100k", "student,qr"), lambda: ML100K)
    # The smallest modulus whose tables fit 10,720: (ceil(1683 / 36) + 36) * 128 = 10,624 (35: 10,752).
    assert runs.table_recipe(qr) == {
        "table.kind": "qr",
        "table.qr.combine": "mult",
        "table.qr.modulus": 36,
        "table.row_order": "id",
        "table.row_order_seed": None,
    }
    write_run_config(tmp_path / "qr", qr.to_dict())
    other = qr.copy_and_resolve_references()
    other.table.hash.buckets = 5  # another kind's option: not this run's table
    assert runs.config_drift(str(tmp_path / "qr"), other) == []
    hashed = runs.with_resolved_table(defaults.get_config("ml-100k", "student,hash"), lambda: ML100K)
    write_run_config(tmp_path / "hash", hashed.to_dict())
    plain = hashed.copy_and_resolve_references()
    plain.table.hash.item_weights = False  # a bool is a setting, not a size
    assert runs.config_drift(str(tmp_path / "hash"), plain) == ["table.hash.item_weights: ran True, the grid runs False"]
    dense = runs.with_resolved_table(defaults.get_config("ml-100k", "student,dense"), lambda: ML100K)
    # The recipe's own fields are compared: the kind names the change, not the QR sizes dense lacks.
    assert runs.config_drift(str(tmp_path / "qr"), dense) == [
        "table.kind: ran 'qr', the grid runs 'dense'",
        "variant: ran 'qr', the grid runs 'dense'",
    ]


def test_resuming_a_started_run_under_another_recipe_is_refused_before_anything_is_written(tmp_path):
    config = defaults.get_config("ml-100k", "teacher")
    workdirs = [tmp_path / "a", tmp_path / "b"]
    prepare.write_configs([config, config], [str(w) for w in workdirs], ML100K)  # fresh runs
    recorded = [(w / "config.json").read_text() for w in workdirs]
    for workdir in workdirs:
        (workdir / "checkpoints" / "latest" / "10").mkdir(parents=True)  # they trained
    quieter = config.copy_and_resolve_references()
    quieter.train.log_every_steps = 1  # not drift
    faster = config.copy_and_resolve_references()
    faster.train.learning_rate = 0.01
    refused = r"b/config.json: the run there started under another recipe \(train.learning_rate: ran 0.002, this command runs 0.01\)"
    with pytest.raises(defaults.ConfigError, match=refused):
        prepare.write_configs([quieter, faster], [str(w) for w in workdirs], ML100K)
    assert [(w / "config.json").read_text() for w in workdirs] == recorded  # member a's too
    prepare.write_configs([quieter, quieter], [str(w) for w in workdirs], ML100K)  # only an interval changed: resumes
    assert json.loads((workdirs[1] / "config.json").read_text())["train"]["log_every_steps"] == 1
