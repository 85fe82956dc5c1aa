"""rec_kd.result_copies and the grid's hook that keeps each run as it finishes (sweeps.run_jobs on_exit)."""

import json
import sys

from rec_kd import result_copies, sweeps

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
