"""The leak-free protocol: refit runs as vmapped members, and students whose teacher never saw valid.

A model selected on valid must not have seen valid, not even through its teacher: a refit teacher
keeps its validation-selected model in checkpoints/select/, the student's select phase distils
from that one and its refit phase from the refit teacher (best/). In process, on MovieLens-100k
(shipped in the RecBole wheel) cut to a few thousand examples.
"""

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from rec_kd import checkpointing, defaults
from rec_kd.compress import row_order
from rec_kd.data import load_configured
from rec_kd.experiments import runs
from rec_kd.train import loop, prepare
from tests.test_members import assert_same_metrics, small_config, train_losses

pytestmark = pytest.mark.slow


def refit_config(stage: str, **fields):
    config = small_config(stage, **fields)
    config.model.hidden_dim = config.model.inner_dim = 32
    config.train.refit_on_valid = True
    config.train.num_epochs = 3
    return config


def read_results(workdir: Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module")
def refit_teachers(tmp_path_factory):
    """Two refit teachers as vmapped members (one never learns: lr 0, so it selects epoch 1), then each alone."""
    root = tmp_path_factory.mktemp("refit")
    fields = [dict(seed=0, train__learning_rate=3e-3), dict(seed=1, train__learning_rate=0.0)]
    member_dirs = [root / f"member_{i}" for i in range(2)]
    loop.train_members([refit_config("teacher", **f) for f in fields], [str(d) for d in member_dirs])
    solo_dirs = [root / f"solo_{i}" for i in range(2)]
    for f, solo_dir in zip(fields, solo_dirs, strict=True):
        loop.train_and_evaluate(refit_config("teacher", **f), str(solo_dir))
    return member_dirs, solo_dirs


def test_vmapped_refit_members_each_refit_for_their_own_selected_epochs(refit_teachers):
    member_dirs, solo_dirs = refit_teachers
    members = [read_results(d) for d in member_dirs]
    assert [m["protocol"] for m in members] == ["refit on train+valid for the epochs selected on valid"] * 2
    # lr 0 never improves on epoch 1's valid metric; the other member selects a later epoch.
    assert members[1]["selected_epoch"] == 1 and members[0]["selected_epoch"] > 1
    for member_dir, solo_dir in zip(member_dirs, solo_dirs, strict=True):
        assert_same_metrics(member_dir, solo_dir)
        member, solo = read_results(member_dir), read_results(solo_dir)
        assert member["select_phase"]["test"] == pytest.approx(solo["select_phase"]["test"], abs=1e-5)
        assert len(member_refit_evaluations(member_dir)) == member["selected_epoch"] == solo["selected_epoch"]


def member_refit_evaluations(workdir: Path) -> list[dict]:
    """The test evaluations logged after the select phase's last one."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last_valid = max(line["step"] for line in lines if line["split"] == "valid")
    return [line for line in lines if line["split"] == "test" and line["step"] > last_valid]


def test_a_refit_teacher_keeps_its_validation_selected_model(refit_teachers):
    member_dirs, _ = refit_teachers
    result = read_results(member_dirs[0])
    selected = runs.load_trained(str(member_dirs[0]), result["num_items"], checkpoint="select")
    shipped = runs.load_trained(str(member_dirs[0]), result["num_items"])
    assert (selected.step, selected.refit) == (result["select_phase"]["step"], False)
    assert (shipped.step, shipped.refit) == (result["selected_step"], True)
    assert runs.teacher_checkpoint(str(member_dirs[0]), "select") == "select"
    assert runs.teacher_checkpoint(str(member_dirs[0]), "refit") == "best"


def test_a_refit_student_distils_from_the_select_teacher_then_the_refit_teacher(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    teacher = read_results(member_dirs[0])
    config = refit_config("student", teacher_workdir=str(member_dirs[0]))
    config.train.num_epochs = 2
    result = loop.train_and_evaluate(config, str(tmp_path / "student"))
    # Each phase names the teacher model by its parameters too: the digests the teacher reported for them.
    assert result["teachers"] == {
        "select": {"checkpoint": "select", "step": teacher["select_phase"]["step"], "digest": teacher["select_phase"]["params_digest"]},
        "refit": {"checkpoint": "best", "step": teacher["selected_step"], "digest": teacher["params_digest"]},
    }
    assert (result["teacher_checkpoint"], result["teacher_step"]) == ("best", teacher["selected_step"])
    assert result["teacher_results"]["params_digest"] == teacher["params_digest"]
    assert result["refit_teacher_as_recorded"] is None  # refit here, not from a record
    # The digests are of the saved models: what a reader of the checkpoints gets back.
    shipped, selected = (runs.load_trained(str(member_dirs[0]), teacher["num_items"], checkpoint=c) for c in ("best", "select"))
    assert (shipped.digest, selected.digest) == (teacher["params_digest"], teacher["select_phase"]["params_digest"])
    assert shipped.digest != selected.digest
    student = runs.load_trained(str(tmp_path / "student"), result["num_items"])
    assert student.digest == result["params_digest"] != result["select_phase"]["params_digest"]
    # results.json records every resolved field, the suggested STTD factors included.
    assert result["config"]["train"]["refit_on_valid"] is True
    assert result["config"]["table"]["item_factors"] and result["config"]["teacher_workdir"] == str(member_dirs[0])


def test_a_student_selected_on_valid_refuses_a_teacher_that_saw_valid(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    old_style = tmp_path / "teacher_without_select"  # a refit teacher from before select/ was kept
    shutil.copytree(member_dirs[0], old_style)
    shutil.rmtree(old_style / "checkpoints" / "select")
    config = refit_config("student", teacher_workdir=str(old_style))
    with pytest.raises(defaults.ConfigError, match=r"checkpoints/best: the teacher was refit on train \+ valid"):
        loop.train_and_evaluate(config, str(tmp_path / "student"))
    # Without a valid split nothing is selected on valid, so the refit teacher is the one to use
    # (MovieLens is split leave-one-out, so its valid split is emptied by hand here).
    data = load_configured(config)
    no_valid = dataclasses.replace(data, valid=data.valid.head(0))
    teacher = runs.load_teacher(config, no_valid, phase="select")
    assert (teacher.checkpoint, teacher.refit) == ("best", True)
    # The same holds for a teacher that keeps select/: a student that selects nothing on valid
    # distils from the shipped (refit) model in every phase.
    config.teacher_workdir = str(member_dirs[0])
    assert runs.load_teacher(config, no_valid, phase="select").checkpoint == "best"


def test_a_resumed_student_refuses_a_teacher_that_changed_under_it(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    teacher_dir = tmp_path / "teacher"
    shutil.copytree(member_dirs[0], teacher_dir)
    config = refit_config("student", teacher_workdir=str(teacher_dir))
    config.train.refit_on_valid, config.train.num_epochs = False, 1
    loop.train_and_evaluate(config, str(tmp_path / "student"))
    (tmp_path / "student" / "results.json").unlink()  # the finished run will resume once more
    # The teacher "retrained": its select/ now holds another step (member 1 selected epoch 1).
    shutil.rmtree(teacher_dir / "checkpoints" / "select")
    shutil.copytree(member_dirs[1] / "checkpoints" / "select", teacher_dir / "checkpoints" / "select")
    with pytest.raises(defaults.ConfigError, match=r"the teacher changed under a running student"):
        loop.train_and_evaluate(config, str(tmp_path / "student"))
    # Trained again to the same step with other values (here: the select model nudged and saved at
    # its step): the step alone would pass, the digest tells the two trainings apart.
    shutil.rmtree(teacher_dir / "checkpoints" / "select")
    shutil.copytree(member_dirs[0] / "checkpoints" / "select", teacher_dir / "checkpoints" / "select")
    loop.train_and_evaluate(config, str(tmp_path / "student"))  # the teacher it started with: resumes
    (tmp_path / "student" / "results.json").unlink()
    selected = runs.load_trained(str(teacher_dir), read_results(member_dirs[0])["num_items"], checkpoint="select")
    nudged = jax.tree.map(lambda x: x + 1e-3, selected.params)
    manager = checkpointing.manager(str(teacher_dir / "checkpoints" / "select"), max_to_keep=1)
    checkpointing.save(manager, selected.step, {"params": nudged}, {"valid": None})
    with pytest.raises(defaults.ConfigError, match=r"'digest': '[0-9a-f]{16}'.*the teacher changed under a running student"):
        loop.train_and_evaluate(config, str(tmp_path / "student"))


def test_a_teacher_that_held_out_less_valid_is_refused(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    config = refit_config("student", teacher_workdir=str(member_dirs[0]))
    config.data.valid_fraction = 0.2
    with pytest.raises(defaults.ConfigError, match=r"held out valid_fraction=0.1, less than the student's 0.2"):
        loop.train_and_evaluate(config, str(tmp_path / "student"))


def test_a_clustered_student_keeps_the_rows_of_its_select_phase_teacher_in_both_phases(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    config = refit_config("student", teacher_workdir=str(member_dirs[0]))
    config.table.row_order, config.table.row_order_seed = "clustered", 3
    config.train.num_epochs = 1  # a select epoch, then a refit epoch on the same rows
    workdir = tmp_path / "student"
    result = loop.train_and_evaluate(config, str(workdir))
    num_items, factors = result["num_items"], tuple(result["config"]["table"]["item_factors"])
    assert len(factors) == 2 and set(result["teachers"]) == {"select", "refit"}
    # The map clusters the teacher the select phase distils from (trained on train alone), not the refit one.
    select_table = np.asarray(runs.load_trained(str(member_dirs[0]), num_items, checkpoint="select").params["item_embedding"])
    refit_table = np.asarray(runs.load_trained(str(member_dirs[0]), num_items).params["item_embedding"])
    expected = row_order.clustered_rows(select_table, factors, seed=3)
    assert not np.array_equal(row_order.clustered_rows(refit_table, factors, seed=3), expected)
    recorded = runs.read_run_config(str(workdir)).table.item_rows
    np.testing.assert_array_equal(row_order.decode_item_rows(recorded, num_items, math.prod(factors)), expected)
    assert result["config"]["table"]["item_rows"] == recorded and result["bytes"]["item_rows_int32"] == 4 * (num_items + 1)
    # The shipped (refit) student reads its table in that order: item i's embedding is row expected[i].
    student = runs.load_trained(str(workdir), num_items)
    table = student.model.apply({"params": student.params}, method=lambda model: model.item_table())
    full = student.model.spec.materialize(student.params[student.model.spec.param_name])
    np.testing.assert_allclose(np.asarray(table), np.asarray(full)[expected], atol=1e-6)
    # A run that has trained keeps its recorded map without the teacher (here: gone).
    again = refit_config("student", teacher_workdir=str(tmp_path / "no_teacher"))
    again.table.row_order, again.table.row_order_seed = "clustered", 3
    again.table.item_factors = factors
    prepare.fill_clustered_rows(again, str(workdir), None, {})
    assert again.table.item_rows == recorded
    with pytest.raises(defaults.ConfigError, match="no teacher config"):  # a new run needs the teacher
        again.table.item_rows = ""
        prepare.fill_clustered_rows(again, str(tmp_path / "new"), load_configured(again), {})


def test_clustered_members_share_one_map_and_members_on_different_maps_are_refused(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    configs = [refit_config("student", teacher_workdir=str(member_dirs[0]), seed=seed) for seed in (0, 1)]
    for config in configs:
        config.table.row_order, config.train.refit_on_valid, config.train.num_epochs = "clustered", False, 1
    workdirs = [tmp_path / f"member_{i}" for i in range(2)]
    loop.train_members([config.copy_and_resolve_references() for config in configs], [str(w) for w in workdirs])
    maps = [runs.read_run_config(str(w)).table.item_rows for w in workdirs]
    num_items = read_results(workdirs[0])["num_items"]
    factors = tuple(read_results(workdirs[0])["config"]["table"]["item_factors"])
    select_table = np.asarray(runs.load_trained(str(member_dirs[0]), num_items, checkpoint="select").params["item_embedding"])
    expected = row_order.clustered_rows(select_table, factors, seed=0)  # row_order_seed 0, whatever the member's seed
    for text in maps:
        np.testing.assert_array_equal(row_order.decode_item_rows(text, num_items, math.prod(factors)), expected)
    # Member 1 "started" on other rows (two items swapped); resumed together, the stack is refused.
    other = expected.copy()
    other[[1, 2]] = other[[2, 1]]
    recorded = json.loads((workdirs[1] / "config.json").read_text())
    recorded["table"]["item_rows"] = row_order.encode_item_rows(other)
    (workdirs[1] / "config.json").write_text(json.dumps(recorded))
    for workdir in workdirs:
        (workdir / "results.json").unlink()
    with pytest.raises(defaults.ConfigError, match="hold different item -> row maps"):
        loop.train_members([config.copy_and_resolve_references() for config in configs], [str(w) for w in workdirs])
    # A map given for a run that trained on another one is refused too.
    given = configs[0].copy_and_resolve_references()
    given.table.item_factors, given.table.item_rows = factors, row_order.encode_item_rows(other)
    with pytest.raises(defaults.ConfigError, match="trained on another item -> row map than the table.item_rows given"):
        prepare.fill_clustered_rows(given, str(workdirs[0]), None, {})


# A refit needs only its select record: a run whose select phase ended on another machine refits here.


def refit_elsewhere(source: Path, target: Path) -> Path:
    """A fresh workdir holding only `source`'s select record (what a grid keeps in the repository)."""
    target.mkdir(parents=True)
    shutil.copy(source / runs.SELECT_RECORD, target / runs.SELECT_RECORD)
    return target


def assert_same_refit(again_dir: Path, unbroken_dir: Path) -> None:
    """The refit from the record reports what the unbroken run reports, loss for loss over the refit."""
    again, unbroken = read_results(again_dir), read_results(unbroken_dir)
    for field in ("selected_epoch", "selected_step", "valid", "select_phase", "protocol"):
        assert again[field] == unbroken[field], field
    for split in ("test", "test_cold"):
        for name, value in unbroken[split].items():
            assert again[split][name] == pytest.approx(value, abs=1e-6), (split, name)
    again_losses, unbroken_losses = train_losses(again_dir), train_losses(unbroken_dir)
    refit_steps = [step for step in unbroken_losses if step > unbroken["select_phase"]["step"] and step > min(again_losses)]
    assert sorted(again_losses) == sorted(step for step in unbroken_losses if step >= min(again_losses)) and len(refit_steps) >= 4
    np.testing.assert_allclose([again_losses[s] for s in refit_steps], [unbroken_losses[s] for s in refit_steps], rtol=1e-6)
    assert again["refit_from_record"] == str(again_dir / runs.SELECT_RECORD) and unbroken["refit_from_record"] is None
    assert not runs.has_checkpoint(str(again_dir), "select")  # the select phase ran elsewhere


def test_vmapped_members_refit_from_their_select_records_alone_as_the_unbroken_run(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    record = json.loads((member_dirs[1] / runs.SELECT_RECORD).read_text())
    assert record["record"]["best"]["epoch"] == 1 and record["config"]["train"]["learning_rate"] == 0.0
    fields = [dict(seed=0, train__learning_rate=3e-3), dict(seed=1, train__learning_rate=0.0)]
    again_dirs = [refit_elsewhere(d, tmp_path / d.name) for d in member_dirs]
    loop.train_members([refit_config("teacher", **f) for f in fields], [str(d) for d in again_dirs])
    for again_dir, member_dir in zip(again_dirs, member_dirs, strict=True):
        assert_same_refit(again_dir, member_dir)
    # The refit model is the shipped one, as after an unbroken run.
    assert runs.load_trained(str(again_dirs[0]), read_results(again_dirs[0])["num_items"]).refit


def test_a_student_refits_from_its_select_record_with_a_teacher_that_keeps_no_select_model(refit_teachers, tmp_path, caplog):
    member_dirs, _ = refit_teachers
    config = refit_config("student", teacher_workdir=str(member_dirs[0]))
    config.train.num_epochs = 2
    unbroken = loop.train_and_evaluate(config, str(tmp_path / "student"))
    # Another machine's teacher: refit from its own record, so it has no checkpoints/select/ to give.
    teacher_dir = tmp_path / "teacher_refit_only"
    shutil.copytree(member_dirs[0], teacher_dir)
    shutil.rmtree(teacher_dir / "checkpoints" / "select")
    config.teacher_workdir = str(teacher_dir)
    again_dir = refit_elsewhere(tmp_path / "student", tmp_path / "again")
    again = loop.train_and_evaluate(config, str(again_dir))
    assert_same_refit(again_dir, tmp_path / "student")
    assert again["teachers"] == unbroken["teachers"] and again["commits"][0] == unbroken["commits"][0]
    assert again["refit_teacher_as_recorded"] is True  # the refit teacher here has the recorded one's parameters
    # Another training of the teacher here (its refit model nudged): the refit runs, and says so.
    other_dir = tmp_path / "teacher_other_training"
    shutil.copytree(teacher_dir, other_dir)
    shipped = runs.load_trained(str(other_dir), unbroken["num_items"])
    manager = checkpointing.manager(str(other_dir / "checkpoints" / "best"), max_to_keep=1)
    checkpointing.save(manager, shipped.step, {"params": jax.tree.map(lambda x: x + 1e-3, shipped.params)}, {"refit": True})
    config.teacher_workdir = str(other_dir)
    with caplog.at_level(logging.WARNING):
        other = loop.train_and_evaluate(config, str(refit_elsewhere(tmp_path / "student", tmp_path / "other")))
    assert other["refit_teacher_as_recorded"] is False
    assert other["teachers"]["refit"]["digest"] != unbroken["teachers"]["refit"]["digest"]
    assert "not the one named where its select phase ran" in caplog.text
    config.teacher_workdir = str(teacher_dir)
    # Without its record the same workdir would start a select phase, which that teacher cannot serve.
    with pytest.raises(defaults.ConfigError, match=r"checkpoints/best: the teacher was refit on train \+ valid"):
        loop.train_and_evaluate(config, str(tmp_path / "fresh"))


def test_a_select_record_of_another_recipe_or_position_or_a_missing_member_is_refused(refit_teachers, tmp_path):
    member_dirs, _ = refit_teachers
    other = refit_config("teacher", seed=0, train__learning_rate=1e-3)  # the record ran at 3e-3
    with pytest.raises(
        defaults.ConfigError, match=r"recipe/select_record.json: the run there started under another recipe \(train.learning_rate"
    ):
        loop.train_and_evaluate(other, str(refit_elsewhere(member_dirs[0], tmp_path / "recipe")))
    assert not (tmp_path / "recipe" / "config.json").exists()  # refused before anything was written: its own recipe still refits
    loop.train_and_evaluate(refit_config("teacher", seed=0, train__learning_rate=3e-3), str(tmp_path / "recipe"))
    assert_same_refit(tmp_path / "recipe", member_dirs[0])
    moved = refit_elsewhere(member_dirs[0], tmp_path / "position")
    payload = json.loads((moved / runs.SELECT_RECORD).read_text())
    payload["record"]["epoch"] = 1  # a record saved mid-refit: the refit's first epoch would be lost
    (moved / runs.SELECT_RECORD).write_text(json.dumps(payload))
    with pytest.raises(defaults.ConfigError, match=r"select_record.json: not a record of a refit's start"):
        loop.train_and_evaluate(refit_config("teacher", seed=0, train__learning_rate=3e-3), str(moved))
    (moved / runs.SELECT_RECORD).write_text("{not json")
    with pytest.raises(defaults.ConfigError, match=r"select_record.json: not valid JSON"):
        loop.train_and_evaluate(refit_config("teacher", seed=0, train__learning_rate=3e-3), str(moved))
    fields = [dict(seed=0, train__learning_rate=3e-3), dict(seed=1, train__learning_rate=0.0)]
    pair = [refit_elsewhere(member_dirs[0], tmp_path / "pair_0"), tmp_path / "pair_1"]
    with pytest.raises(defaults.ConfigError, match=r"pair_1/select_record.json: missing, while .*pair_0/select_record.json is there"):
        loop.train_members([refit_config("teacher", **f) for f in fields], [str(d) for d in pair])
    # A member with a checkpoint of its own beside one with a record: refused, its progress is not dropped.
    shutil.copytree(member_dirs[1] / "checkpoints", pair[1] / "checkpoints", dirs_exist_ok=True)
    with pytest.raises(checkpointing.CheckpointError, match=r"no checkpoint step common to every member restores: .*pair_0"):
        loop.train_members([refit_config("teacher", **f) for f in fields], [str(d) for d in pair])
