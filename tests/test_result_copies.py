"""rec_kd.experiments.result_copies and the grid's hook that keeps each run as it finishes (sweeps.run_jobs on_exit)."""

import json
import sys
import time
from pathlib import Path

import pytest

from rec_kd.experiments import result_copies
from rec_kd.train import sweeps

TRAIN = {"step": 10, "epoch": 0, "split": "train", "loss/total": 5.0}
VALID = {"step": 10, "epoch": 1, "split": "valid", "hr@20": 0.35}
TEST = {"step": 10, "epoch": 1, "split": "test", "hr@20": 0.3}


def finished_run(workdir, dataset="tmall", hr=0.31):
    workdir.mkdir(parents=True)
    (workdir / "results.json").write_text(json.dumps({"dataset": dataset, "variant": "full", "test": {"hr@20": hr}}))
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (TRAIN, VALID, TEST)))
    return workdir


def test_a_kept_run_holds_its_results_and_only_its_eval_records(tmp_path):
    run = finished_run(tmp_path / "runs" / "tmall" / "main_s1")
    kept = tmp_path / "docs" / "results"
    path = result_copies.keep(str(run), str(kept))
    assert path == str(kept / "tmall_main_s1.json")
    assert json.loads((kept / "tmall_main_s1.json").read_text()) == json.loads((run / "results.json").read_text())
    evals = [json.loads(line) for line in (kept / "tmall_main_s1.evals.jsonl").read_text().splitlines()]
    assert evals == [VALID, TEST]  # the train-loss lines stay behind

    (kept / "bench_cpu_2026-11-27.json").write_text(json.dumps({"dataset": "tmall", "training": {}}))  # not a run
    (kept / "retailrocket_x.json").write_text(json.dumps({"dataset": "tmall", "variant": "full", "test": {}}))  # misnamed
    (copy,) = result_copies.read_kept(str(kept))
    assert (copy["_run"], copy["test"]["hr@20"], copy["_copy"]) == ("main_s1", 0.31, path)
    assert result_copies.evals_path(copy) == str(kept / "tmall_main_s1.evals.jsonl")

    elsewhere = tmp_path / "report" / "results"
    assert result_copies.keep_copy(copy, str(elsewhere)) == str(elsewhere / "tmall_main_s1.json")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["tmall_main_s1.evals.jsonl", "tmall_main_s1.json"]
    assert result_copies.keep_copy(copy, str(kept)) == path  # already there: nothing copied onto itself
    assert result_copies.read_kept(str(tmp_path / "nothing")) == []


def test_run_jobs_reports_each_exit_as_it_happens(tmp_path):
    exits = []
    jobs = [
        sweeps.Job("ok", [sys.executable, "-c", "pass"], str(tmp_path / "ok" / "stdout.log")),
        sweeps.Job("bad", [sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path / "bad" / "stdout.log")),
    ]
    codes = sweeps.run_jobs(jobs, parallel=1, poll_s=0.01, on_exit=lambda job, code: exits.append((job.name, code)))
    assert codes == {"ok": 0, "bad": 3} and exits == [("ok", 0), ("bad", 3)]


def test_run_jobs_polls_while_jobs_run_and_once_after_the_last(tmp_path):
    exits, polls = [], []
    jobs = [sweeps.Job("slow", [sys.executable, "-c", "import time; time.sleep(2.0)"], str(tmp_path / "slow" / "stdout.log"))]
    sweeps.run_jobs(
        jobs, poll_s=0.01, on_exit=lambda job, code: exits.append(code), on_poll=lambda: polls.append(len(exits)), on_poll_every_s=0.2
    )
    assert polls[-1] == 1  # the last poll follows the exit: a record written at the end is kept
    assert polls.count(0) >= 2  # and it polled while the job ran (every 0.2 s of its two seconds)


def test_a_copy_of_another_kind_of_run_is_not_replaced_and_bad_files_are_named(tmp_path):
    kept = tmp_path / "kept"
    real = finished_run(tmp_path / "real" / "main_s0")
    result_copies.keep(str(real), str(kept))
    smoke = finished_run(tmp_path / "smoke" / "main_s0", hr=0.9)
    (smoke / "results.json").write_text(json.dumps({**json.loads((smoke / "results.json").read_text()), "smoke": True}))
    with pytest.raises(result_copies.CopyError, match=r"tmall_main_s0.json: kept from another kind of run \(smoke None -> True\)"):
        result_copies.keep(str(smoke), str(kept))
    assert json.loads((kept / "tmall_main_s0.json").read_text())["test"]["hr@20"] == 0.31  # the real run's copy stands

    (real / "metrics.jsonl").unlink()  # the same run again, without eval records: no older curve passes for its own
    result_copies.keep(str(real), str(kept))
    assert sorted(p.name for p in kept.iterdir()) == ["tmall_main_s0.json"]

    (kept / "listed.json").write_text("[1, 2]")  # JSON, not a run: ignored
    assert [c["_run"] for c in result_copies.read_kept(str(kept))] == ["main_s0"]
    (kept / "tmall_broken.json").write_text('{"dataset": "tmall", ')
    with pytest.raises(result_copies.CopyError, match="tmall_broken.json: not valid JSON"):
        result_copies.read_kept(str(kept))


def test_a_custom_datasets_path_becomes_a_file_name(tmp_path):
    run = finished_run(tmp_path / "runs" / "teacher_s0", dataset="custom:inter:/data/my log.inter")
    path = result_copies.keep(str(run), str(tmp_path / "kept"))
    assert path == str(tmp_path / "kept" / "custom_inter_data_my_log.inter_teacher_s0.json")
    (copy,) = result_copies.read_kept(str(tmp_path / "kept"))
    assert copy["_run"] == "teacher_s0" and copy["dataset"] == "custom:inter:/data/my log.inter"


def test_a_runner_that_fails_stops_its_running_jobs(tmp_path):
    def fail(job, code):
        raise OSError("disk full")

    jobs = [
        sweeps.Job("quick", [sys.executable, "-c", "pass"], str(tmp_path / "quick" / "stdout.log")),
        sweeps.Job("slow", [sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path / "slow" / "stdout.log")),
    ]
    start = time.monotonic()
    with pytest.raises(OSError, match="disk full"):
        sweeps.run_jobs(jobs, parallel=2, poll_s=0.01, on_exit=fail)
    assert time.monotonic() - start < 30  # the slow job got SIGTERM and was waited for, not left sleeping


def test_a_run_trained_again_moves_the_earlier_trainings_copy_to_the_archive(tmp_path):
    kept = tmp_path / "docs" / "results"
    first = finished_run(tmp_path / "a" / "retailrocket" / "teacher_s0", "retailrocket", hr=0.5193)
    first_result = {**json.loads((first / "results.json").read_text()), "commit": "1788740abcdef"}
    (first / "results.json").write_text(json.dumps(first_result))
    result_copies.keep(str(first), str(kept))
    result_copies.keep(str(first), str(kept))  # the same training kept again (a report): nothing archived
    assert not (kept / "archive").exists()

    again = finished_run(tmp_path / "b" / "retailrocket" / "teacher_s0", "retailrocket", hr=0.5202)
    result_copies.keep(str(again), str(kept))
    assert json.loads((kept / "retailrocket_teacher_s0.json").read_text())["test"]["hr@20"] == 0.5202
    archived = kept / "archive" / "retailrocket_teacher_s0_1788740.json"
    assert json.loads(archived.read_text()) == first_result
    evals = [json.loads(line) for line in (kept / "archive" / "retailrocket_teacher_s0_1788740.evals.jsonl").read_text().splitlines()]
    assert evals == [VALID, TEST]
    assert [copy["_run"] for copy in result_copies.read_kept(str(kept))] == ["teacher_s0"]  # the archive is not in the grid

    # A third training at a commit already archived gets the next free name.
    third = finished_run(tmp_path / "c" / "retailrocket" / "teacher_s0", "retailrocket", hr=0.5199)
    second_result = json.loads((kept / "retailrocket_teacher_s0.json").read_text())
    (kept / "retailrocket_teacher_s0.json").write_text(json.dumps({**second_result, "commit": "1788740abcdef"}))
    result_copies.keep(str(third), str(kept))
    assert json.loads((kept / "archive" / "retailrocket_teacher_s0_1788740_2.json").read_text())["test"]["hr@20"] == 0.5202

    # A retraining with the same numbers (another workdir, wall time, commit) replaces the copy.
    same = finished_run(tmp_path / "d" / "retailrocket" / "teacher_s0", "retailrocket", hr=0.5199)
    (same / "results.json").write_text(json.dumps({**json.loads((same / "results.json").read_text()), "wall_s": 9.0}))
    result_copies.keep(str(same), str(kept))
    assert len(list((kept / "archive").glob("*.json"))) == 2
    assert json.loads((kept / "retailrocket_teacher_s0.json").read_text())["wall_s"] == 9.0

    # Results that name their parameters: the same numbers and a digest beside a copy without one
    # (kept before digests) is the same training; the same numbers of other parameters are not.
    def with_digests(workdir: Path, digest: str) -> Path:
        result = json.loads((workdir / "results.json").read_text())
        result.update(params_digest=digest, select_phase={"test": {"hr@20": 0.47}, "params_digest": digest + "s"})
        (workdir / "results.json").write_text(json.dumps(result))
        return workdir

    kept_copy = json.loads((kept / "retailrocket_teacher_s0.json").read_text())
    (kept / "retailrocket_teacher_s0.json").write_text(json.dumps({**kept_copy, "select_phase": {"test": {"hr@20": 0.47}}}))
    result_copies.keep(
        str(with_digests(finished_run(tmp_path / "e" / "retailrocket" / "teacher_s0", "retailrocket", 0.5199), "aa")), str(kept)
    )
    assert len(list((kept / "archive").glob("*.json"))) == 2
    result_copies.keep(
        str(with_digests(finished_run(tmp_path / "f" / "retailrocket" / "teacher_s0", "retailrocket", 0.5199), "bb")), str(kept)
    )
    assert len(list((kept / "archive").glob("*.json"))) == 3
    assert json.loads((kept / "retailrocket_teacher_s0.json").read_text())["params_digest"] == "bb"
    other_select = with_digests(finished_run(tmp_path / "g" / "retailrocket" / "teacher_s0", "retailrocket", 0.5199), "bb")
    result = json.loads((other_select / "results.json").read_text())
    result["select_phase"]["params_digest"] = "zz"  # the same refit model's digest, another select-phase model
    (other_select / "results.json").write_text(json.dumps(result))
    result_copies.keep(str(other_select), str(kept))
    assert len(list((kept / "archive").glob("*.json"))) == 4


def test_two_machines_keeping_their_own_trainings_in_turn_archive_each_training_once(tmp_path):
    kept = tmp_path / "results"
    a = finished_run(tmp_path / "a" / "retailrocket" / "teacher_s0", "retailrocket", hr=0.5193)
    b = finished_run(tmp_path / "b" / "retailrocket" / "teacher_s0", "retailrocket", hr=0.5202)
    for run in (a, b, a, b, a):
        result_copies.keep(str(run), str(kept))
    assert json.loads((kept / "retailrocket_teacher_s0.json").read_text())["test"]["hr@20"] == 0.5193  # the one kept last
    archive = sorted(json.loads(p.read_text())["test"]["hr@20"] for p in (kept / "archive").glob("*.json"))
    assert archive == [0.5193, 0.5202]
    assert len(list((kept / "archive").glob("*.evals.jsonl"))) == 2


def test_a_dirty_commit_keeps_its_mark_in_the_archive_name(tmp_path):
    kept = tmp_path / "results"
    first = finished_run(tmp_path / "a" / "tmall" / "main_s0", hr=0.31)
    (first / "results.json").write_text(json.dumps({**json.loads((first / "results.json").read_text()), "commit": "19503ab6ba-dirty"}))
    (kept / "archive").mkdir(parents=True)
    (kept / "archive" / "tmall_main_s0_19503ab-dirty.evals.jsonl").write_text("")  # a stray curve: its name is taken
    result_copies.keep(str(first), str(kept))
    result_copies.keep(str(finished_run(tmp_path / "b" / "tmall" / "main_s0", hr=0.32)), str(kept))
    assert (kept / "archive" / "tmall_main_s0_19503ab-dirty_2.json").exists()


def test_a_select_record_is_kept_once_under_its_dataset_and_run_and_a_broken_one_is_named(tmp_path):
    workdir, kept = tmp_path / "runs" / "tmall" / "main_s1", tmp_path / "kept"
    workdir.mkdir(parents=True)
    assert result_copies.keep_select_record(str(workdir), str(kept)) is None  # no record yet: nothing to keep
    record = {"record": {"phase": "refit", "epoch": 0, "best": {"epoch": 3}}, "config": {"dataset": "tmall"}}
    (workdir / result_copies.SELECT_RECORD).write_text(json.dumps(record))
    expected = kept / result_copies.SELECT_RECORDS / "tmall_main_s1.json"
    assert result_copies.keep_select_record(str(workdir), str(kept)) == str(expected)
    assert json.loads(expected.read_text()) == record and expected == Path(result_copies.select_record_copy(str(kept), "tmall", "main_s1"))
    assert result_copies.keep_select_record(str(workdir), str(kept)) is None  # kept already: not written again
    record["record"]["best"]["epoch"] = 4  # a new training of the run selected again
    (workdir / result_copies.SELECT_RECORD).write_text(json.dumps(record))
    assert result_copies.keep_select_record(str(workdir), str(kept)) == str(expected)
    assert json.loads(expected.read_text())["record"]["best"]["epoch"] == 4
    (workdir / result_copies.SELECT_RECORD).write_text('{"record": {}}')
    with pytest.raises(result_copies.CopyError, match=r"main_s1/select_record.json: not a select record"):
        result_copies.keep_select_record(str(workdir), str(kept))
    assert json.loads(expected.read_text())["record"]["best"]["epoch"] == 4  # the kept one is untouched
