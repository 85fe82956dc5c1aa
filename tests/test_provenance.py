"""Where a run came from: the commit it records (dirty only when its code differs from HEAD), and its teacher's training."""

import json
import subprocess

from rec_kd.train.prepare import git_commit


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_results_copies_in_docs_leave_the_commit_clean_and_a_code_change_marks_it_dirty(tmp_path):
    # A grid that keeps its results in docs/results edits the checkout it runs from; the runs it
    # starts after the first copy must still record a clean commit.
    for path, text in {"rec_kd/model.py": "x = 1\n", "docs/results/run.json": "{}\n", "README.md": "a\n"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "start")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(str(tmp_path)) == head

    (tmp_path / "docs/results/run.json").write_text('{"test": 1}\n')
    (tmp_path / "README.md").write_text("b\n")
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch/new.py").write_text("")  # untracked: not part of any commit, not counted
    assert git_commit(str(tmp_path)) == head

    (tmp_path / "rec_kd/model.py").write_text("x = 2\n")
    assert git_commit(str(tmp_path)) == head + "-dirty"


def test_a_checkout_without_git_is_told_its_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if the temp folder sits in a checkout
    monkeypatch.setenv("REC_KD_COMMIT", "abc1234")
    assert git_commit(str(tmp_path)) == "abc1234"


def test_a_student_names_the_training_of_its_teacher_and_the_report_prints_it(tmp_path):
    from launch.report import teacher_label
    from rec_kd.experiments.results import teacher_results

    assert teacher_results(str(tmp_path), 44929) is None  # the teacher has not finished
    test = {"hr@20": 0.52016, "mrr@20": 0.27504, "ndcg@20": 0.33}
    select_test = {"hr@20": 0.46716, "mrr@20": 0.25489}
    teacher = {
        "commits": ["da6fe52799", "19503ab6ba"],
        "wall_s": 3052.0,
        "selected_step": 44929,
        "test": test,
        "select_phase": {"step": 15756, "test": select_test},
    }
    (tmp_path / "results.json").write_text(json.dumps(teacher))
    training = teacher_results(str(tmp_path), 44929)
    assert training == {"commits": ["da6fe52799", "19503ab6ba"], "wall_s": 3052.0, "step": 44929, "params_digest": None, "test": test}
    assert teacher_results(str(tmp_path), 15756)["test"] == select_test  # a select-only student's teacher
    # Results written before digests name the training by its step alone, whatever the student's digest.
    assert teacher_results(str(tmp_path), 44929, "00aa")["test"] == test
    paired = ", teacher trained at da6fe52, continued at 19503ab (test HR@20 0.5202, MRR@20 0.2750)"
    assert teacher_label({"teacher_results": training}) == paired
    dirty = {**training, "commits": ["da6fe52799-dirty"]}
    assert teacher_label({"teacher_results": dirty}) == ", teacher trained at da6fe52-dirty (test HR@20 0.5202, MRR@20 0.2750)"
    assert teacher_label({"teacher_results": None}) == teacher_label({}) == ""  # teachers, and students kept before the field
    assert teacher_label({"teacher_results": training, "refit_teacher_as_recorded": True}) == paired
    assert teacher_label({"teacher_results": training, "refit_teacher_as_recorded": False}) == (
        paired + "; epochs selected with another training of the teacher"
    )
    assert teacher_label({"refit_teacher_as_recorded": False}) == "; epochs selected with another training of the teacher"

    assert teacher_results(str(tmp_path), 15000) is None  # results of another training than the one distilled from
    digested = {**teacher, "params_digest": "77ee", "select_phase": {**teacher["select_phase"], "params_digest": "55cc"}}
    (tmp_path / "results.json").write_text(json.dumps(digested))
    assert teacher_results(str(tmp_path), 44929, "77ee")["params_digest"] == "77ee"
    assert teacher_results(str(tmp_path), 15756, "55cc")["test"] == select_test
    assert teacher_results(str(tmp_path), 44929, "55cc") is None  # same step, other parameters: another training
    old = {"commit": "1788740abc", "selected_step": 44929, "test": test}  # written before `commits`
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert teacher_results(str(tmp_path), 44929)["commits"] == ["1788740abc"]
    (tmp_path / "results.json").write_text('{"selected_step": 449')  # half written
    assert teacher_results(str(tmp_path), 44929) is None


def test_a_teacher_is_the_same_by_checkpoint_step_and_digest_where_recorded():
    from rec_kd.train.records import same_teacher

    used = {"checkpoint": "select", "step": 8712, "digest": "aa"}
    assert same_teacher(dict(used), used)
    assert not same_teacher({**used, "digest": "bb"}, used)  # trained again to the same step
    assert not same_teacher({**used, "step": 8713}, used)
    assert same_teacher({"checkpoint": "select", "step": 8712}, used)  # a phase started before digests


def test_a_refit_from_a_record_says_whether_its_teacher_is_the_recorded_training():
    from rec_kd.experiments.results import refit_teacher_as_recorded

    here = {"checkpoint": "best", "step": 27969, "digest": "aa"}
    assert refit_teacher_as_recorded({"refit_teacher_of_record": dict(here), "teachers": {"refit": here}}) is True
    assert refit_teacher_as_recorded({"refit_teacher_of_record": {**here, "digest": "bb"}, "teachers": {"refit": here}}) is False
    # Refit here (no record), from a record of before digests, or from one that names no refit teacher: unknown.
    assert refit_teacher_as_recorded({"refit_teacher_of_record": None, "teachers": {"refit": here}}) is None
    assert (
        refit_teacher_as_recorded({"refit_teacher_of_record": {"checkpoint": "best", "step": 27969}, "teachers": {"refit": here}}) is None
    )
    assert refit_teacher_as_recorded({"teachers": {"refit": here}}) is None  # a record from before the field
