"""launch/reproduce.py --smoke, launch/report.py and launch/studies/compare_tables.py, end to end, into a temporary folder."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch import report
from launch.studies import compare_tables
from rec_kd import defaults
from rec_kd.experiments import result_copies, runs

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_grid(tmp_path_factory, data_dir):
    """(root, command): the smoke grid's teacher and two seeds of the main student, on Tmall slices."""
    root = tmp_path_factory.mktemp("grid") / "runs"
    env_cmd = [
        sys.executable,
        "-m",
        "launch.reproduce",
        f"--root={root}",
        f"--data_dir={data_dir}",
        "--smoke",
        "--datasets=tmall",
        "--seeds=0,1",
        "--rows=teacher,main",
        "--parallel=2",
        f"--keep_results_in={root.parent / 'kept'}",
    ]
    subprocess.run(env_cmd, cwd=REPO, check=True, capture_output=True, timeout=900)
    return root, env_cmd


def test_smoke_grid_then_report_holds_the_runs_numbers(smoke_grid, tmp_path):
    (root, env_cmd), out = smoke_grid, tmp_path / "report"
    run_names = sorted(path.parent.name for path in root.glob("tmall/*/results.json"))
    assert run_names == ["main_s0", "main_s1", "teacher_s0"]
    # The default protocol: every run refit on train + valid; students used the teacher's select/ model first.
    main = json.loads((root / "tmall" / "main_s0" / "results.json").read_text())
    assert main["protocol"] == "refit on train+valid for the epochs selected on valid"
    assert main["teachers"]["select"]["checkpoint"] == "select" and main["teachers"]["refit"]["checkpoint"] == "best"
    teacher = json.loads((root / "tmall" / "teacher_s0" / "results.json").read_text())
    assert main["teacher_results"] == {
        "commits": teacher["commits"],
        "wall_s": teacher["wall_s"],
        "step": teacher["selected_step"],
        "params_digest": teacher["params_digest"],
        "test": teacher["test"],
    }
    assert main["teachers"]["refit"]["digest"] == teacher["params_digest"]  # the refit teacher, named by its parameters
    # --keep_results_in copied each run as it finished (rec_kd/experiments/result_copies.py).
    kept = sorted(path.name for path in (root.parent / "kept").iterdir() if path.is_file())
    assert kept == sorted([f"tmall_{r}.json" for r in run_names] + [f"tmall_{r}.evals.jsonl" for r in run_names])
    # ... and each run's select record as its refit started (result_copies.keep_select_record).
    records = root.parent / "kept" / result_copies.SELECT_RECORDS
    assert sorted(path.name for path in records.iterdir()) == [f"tmall_{r}.json" for r in run_names]
    for r in run_names:
        assert (records / f"tmall_{r}.json").read_text() == (root / "tmall" / r / result_copies.SELECT_RECORD).read_text()
    assert json.loads((root.parent / "kept" / "tmall_main_s0.json").read_text()) == main
    # Rerunning skips finished runs instead of training again.
    again = subprocess.run(env_cmd, cwd=REPO, check=True, capture_output=True, text=True, timeout=300)
    assert "3 runs finished, 0 kept in" in again.stderr and "(skipped); running 0 teachers, then 0 students" in again.stderr

    # A new machine (an empty root) with the kept copies trains neither main seed; the teacher again only for a student
    # whose copy is missing.
    (root.parent / "kept" / "tmall_main_s1.json").unlink()
    moved = [arg.replace(str(root), str(root.parent / "new_machine")) for arg in env_cmd]
    anew = subprocess.run(moved, cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    assert "0 runs finished, 1 kept in" in anew.stderr and "running 1 teachers, then 1 students" in anew.stderr
    assert sorted(path.parent.name for path in (root.parent / "new_machine").glob("tmall/*/results.json")) == ["main_s1", "teacher_s0"]

    text = report.write_report(report.load_runs(str(root)), str(out))
    assert (out / "results.md").read_text() == text
    mains = [json.loads((root / "tmall" / f"main_s{s}" / "results.json").read_text()) for s in (0, 1)]
    teacher_row = next(line for line in text.splitlines() if line.startswith("| teacher |"))
    assert f"{teacher['test']['hr@20']:.4f}" in teacher_row and f"{teacher['params']['inference_total']:,}" in teacher_row
    main_rows = [line for line in text.splitlines() if line.startswith("| full | 27.3x | refit | 2 |")]
    assert len(main_rows) == 2  # selected-on-valid table and the authors'-protocol table
    values = [m["test"]["hr@20"] for m in mains]
    mean, std = sum(values) / 2, abs(values[0] - values[1]) / 2**0.5
    assert f"{mean:.4f} ± {std:.4f}" in main_rows[0]
    main_line = next(line for line in text.splitlines() if line.startswith("- [main_s0]"))
    assert f"teacher trained at {result_copies.short_commit(teacher['commit'])} (test HR@20 {teacher['test']['hr@20']:.4f}," in main_line
    for name in ("tmall_compression.png", "tmall_valid_curves.png"):
        assert (out / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "results").glob("*.json")) == [f"tmall_{r}.json" for r in run_names]
    # Each copy keeps its run's eval records, so a machine without the workdirs draws the same report.
    evals = [json.loads(line) for line in (out / "results" / "tmall_main_s0.evals.jsonl").read_text().splitlines()]
    logged = [json.loads(line) for line in (root / "tmall" / "main_s0" / "metrics.jsonl").read_text().splitlines()]
    assert evals == [record for record in logged if record["split"] != "train"] and {"valid", "test"} <= {r["split"] for r in evals}
    assert report.write_report(report.load_runs(str(tmp_path / "no_runs_here"), str(out / "results")), str(out)) == text


def test_the_grid_runs_teachers_first_then_students_in_priority_order(tmp_path, data_dir):
    command = [sys.executable, "-m", "launch.reproduce", f"--root={tmp_path}", f"--data_dir={data_dir}", "--dry_run"]
    grid = ["--datasets=tmall,retailrocket", "--seeds=0,1", "--rows=ce,x100,main,teacher"]
    result = subprocess.run([*command, *grid], cwd=REPO, capture_output=True, text=True, check=True, timeout=300)
    workdirs = [re.search(r"--workdir=\S+/(\w+/\w+)", line).group(1) for line in result.stdout.splitlines()]
    # Every teacher, then the main row seed by seed across datasets, then x100, then the ablation.
    assert workdirs == [
        "tmall/teacher_s0",
        "retailrocket/teacher_s0",
        "tmall/main_s0",
        "retailrocket/main_s0",
        "tmall/main_s1",
        "retailrocket/main_s1",
        "tmall/x100_s0",
        "retailrocket/x100_s0",
        "tmall/ce_s0",
        "retailrocket/ce_s0",
    ]


def test_a_new_machine_refits_teacher_and_student_from_the_kept_select_records(smoke_grid, tmp_path):
    """Only the select records survive (a session ended during the refits): neither run selects again, and both report the same."""
    root, env_cmd = smoke_grid
    kept = tmp_path / "kept"
    (kept / result_copies.SELECT_RECORDS).mkdir(parents=True)
    for name in ("teacher_s0", "main_s0"):
        source = root.parent / "kept" / result_copies.SELECT_RECORDS / f"tmall_{name}.json"
        (kept / result_copies.SELECT_RECORDS / source.name).write_bytes(source.read_bytes())
    flags = {"--root": str(tmp_path / "runs"), "--keep_results_in": str(kept), "--seeds": "0", "--rows": "teacher,main", "--parallel": "1"}
    command = [arg for arg in env_cmd if arg.split("=", 1)[0] not in flags] + [f"{key}={value}" for key, value in flags.items()]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("teacher_s0", "main_s0"):
        again_dir = tmp_path / "runs" / "tmall" / name
        assert f"{again_dir} refits from {kept / result_copies.SELECT_RECORDS / f'tmall_{name}.json'}" in result.stderr
        assert not runs.has_checkpoint(str(again_dir), "select")  # no select phase ran here
        again, first = (json.loads((d / "results.json").read_text()) for d in (again_dir, root / "tmall" / name))
        assert (again["selected_epoch"], again["selected_step"], again["select_phase"]) == (
            first["selected_epoch"],
            first["selected_step"],
            first["select_phase"],
        )
        for metric, value in first["test"].items():
            assert again["test"][metric] == pytest.approx(value, abs=1e-5), (name, metric)
        assert again["refit_from_record"] == str(again_dir / result_copies.SELECT_RECORD)
        # On one CPU model a refit repeats to the bit: the same parameters as the first machine's.
        assert again["params_digest"] == first["params_digest"] and again["params_digest"]
    # So the student's refit distilled from the teacher training its select phase was paired with, and says so.
    student = json.loads((tmp_path / "runs" / "tmall" / "main_s0" / "results.json").read_text())
    assert student["refit_teacher_as_recorded"] is True
    # A student that still selects here needs the select-phase teacher this machine never trained: named, nothing runs.
    seed1 = [arg for arg in command if not arg.startswith("--seeds=")] + ["--seeds=1"]
    refused = subprocess.run(seed1, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "teacher_s0: refit without its select phase (from a select record)" in refused.stderr
    assert not (tmp_path / "runs" / "tmall" / "main_s1").exists()
    # A kept record that is not a refit's start is named, with the way out.
    bad = kept / result_copies.SELECT_RECORDS / "tmall_main_s1.json"
    bad.write_text(json.dumps({"record": {"phase": "select"}, "config": {}}))
    broken = subprocess.run(seed1, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1 and f"{bad}: not a record of a refit's start" in broken.stderr
    assert f"move {bad} away to select that run again" in broken.stderr


def test_a_grid_refuses_a_run_made_under_the_other_protocol(tmp_path, data_dir):
    workdir = tmp_path / "runs" / "tmall" / "teacher_s0"
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"train": {"refit_on_valid": True}}))
    command = [sys.executable, "-m", "launch.reproduce", f"--root={tmp_path / 'runs'}", f"--data_dir={data_dir}"]
    result = subprocess.run(
        [*command, "--datasets=tmall", "--rows=teacher", "--protocol=select"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"{workdir}/config.json: ran with train.refit_on_valid=True, but --protocol=select; use another --root"
    )


def test_compressor_grid_runs_each_kind_at_the_budget_and_reports_it(smoke_grid, data_dir, tmp_path):
    root, _ = smoke_grid
    command = [
        sys.executable,
        "-m",
        "launch.studies.compare_tables",
        f"--root={root}",
        f"--data_dir={data_dir}",
        "--smoke",
        "--datasets=tmall",
    ]
    # The select protocol (half the refit one's training): this tests the grid, not the protocol.
    common = ["--objectives=ce", "--protocol=select"]
    # The whole grid's plan: each kind sized at each budget, or skipped with the reason (nothing trains).
    plan = [*command, *common, "--kinds=qr,mixed_dim,hash", "--budgets=main,x100", "--dry_run"]
    planned = subprocess.run(plan, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert "skipping qr at budget x100" in planned.stderr and "below the smallest QR table for 40728 rows (51712)" in planned.stderr
    assert "skipping hash at budget x100" in planned.stderr  # its 2 x 40,728 item weights alone exceed 50,976
    planned_runs = [re.search(r"--workdir=\S+/tables/(\w+)", line).group(1) for line in planned.stdout.splitlines()]
    assert planned_runs == ["qr_ce_main_s0", "mixed_dim_ce_main_s0", "hash_ce_main_s0", "mixed_dim_ce_x100_s0"]
    # One of them trains here; every kind's budget sizing and gradients are tests/test_student_step.py's.
    result = subprocess.run([*command, *common, "--kinds=qr", "--budgets=main"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(path.parent.name for path in (root / "tmall" / "tables").glob("*/results.json"))
    assert names == ["qr_ce_main_s0"]
    qr = json.loads((root / "tmall" / "tables" / "qr_ce_main_s0" / "results.json").read_text())
    assert qr["table_kind"] == "qr" and qr["variant"] == "ce" and "losses" in qr and set(qr["losses"]) == {"rec", "total"}
    assert qr["config"]["table"]["qr"]["modulus"] == 28 and qr["params"]["item_table"] == (1455 + 28) * 128  # <= 191,160

    out = tmp_path / "report"
    report_cmd = [*command, "--report", f"--report_out={out}", "--calls=20"]
    subprocess.run(report_cmd, cwd=REPO, check=True, capture_output=True, timeout=900)
    text = (out / "compression.md").read_text()
    qr_row = next(line for line in text.splitlines() if line.startswith("| qr | ce | main |"))
    assert f"{qr['test']['hr@20']:.4f}" in qr_row and "189,824" in qr_row
    # Bytes on device: 189,824 fp32 parameters, plus an int32 map of the 40,728 rows where the rows are shuffled.
    sizes = qr["bytes"]
    assert sizes["item_table"] == 4 * 189_824 + (4 * 40_728 if qr["config"]["table"]["row_order"] != "id" else 0)
    assert f"| {sizes['item_table'] / 1e3:,.0f} kB | {40_728 * 128 * 4 / sizes['item_table']:.1f}x |" in qr_row
    fp32 = root / "tmall" / "tables" / "qr_ce_main_s0" / "export" / "fp32.onnx"
    assert f"{fp32.stat().st_size / 1e6:.2f} MB" in qr_row
    assert (out / "img" / "compression_tmall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "results" / "compression").iterdir()) == [f"tmall_{name}.json" for name in names]
    assert compare_tables.RUN_NAME.fullmatch("mixed_dim_full_x100_s0").groups() == ("mixed_dim", "full", "x100")

    # A regenerated report keeps each file's measured latency (its timing.json) instead of timing it again.
    timing_path = fp32.parent / "fp32.timing.json"
    timing = json.loads(timing_path.read_text())
    assert timing["calls"] == 20 and timing["p50_ms"] > 0
    timing_path.write_text(json.dumps({**timing, "p50_ms": 123.45}))
    subprocess.run(report_cmd, cwd=REPO, check=True, capture_output=True, timeout=900)
    qr_row = next(line for line in (out / "compression.md").read_text().splitlines() if line.startswith("| qr | ce | main |"))
    assert "| 123.45 / " in qr_row


def test_report_labels_name_the_table_where_the_variant_does_not():
    labels = [
        report.variant_label(result)
        for result in (
            {"variant": "full"},  # results from before table_kind: the variant decides
            {"variant": "tt"},
            {"variant": "full", "table_kind": "sttd"},
            {"variant": "ce", "table_kind": "qr"},
            {"variant": "qr", "table_kind": "qr"},
            {"variant": "teacher", "table_kind": "dense"},
        )
    ]
    assert labels == ["full", "tt", "full", "ce (qr)", "qr", "teacher"]


def test_report_names_the_commits_a_run_was_resumed_at():
    started = {"commit": "a" * 40, "commits": ["a" * 40]}
    resumed = {"commit": "a" * 40, "commits": ["a" * 40, "b" * 40, "c" * 40]}
    assert report.commit_label(started) == "a" * 40
    assert report.commit_label(resumed) == "a" * 40 + " (resumed at bbbbbbb, ccccccc)"
    assert report.commit_label({"commit": "d" * 40}) == "d" * 40  # results from before `commits`
    dirty_resume = {"commit": "a" * 40, "commits": ["a" * 40, "e" * 40 + "-dirty"]}
    assert report.commit_label(dirty_resume) == "a" * 40 + " (resumed at eeeeeee-dirty)"
    from_record = {**resumed, "refit_from_record": "/runs/x/select_record.json"}
    assert report.commit_label(from_record) == "a" * 40 + " (continued at bbbbbbb, ccccccc: refit from its select record)"


def test_report_reads_kept_copies_of_runs_its_root_does_not_hold(tmp_path):
    """Which files are copies: tests/test_result_copies.py."""
    root, kept = tmp_path / "runs", tmp_path / "docs" / "results"
    (root / "tmall" / "main_s0").mkdir(parents=True)
    kept.mkdir(parents=True)

    def result(hr):
        return {"dataset": "tmall", "variant": "full", "test": {"hr@20": hr}}

    (root / "tmall" / "main_s0" / "results.json").write_text(json.dumps(result(0.31)))
    (kept / "tmall_main_s0.json").write_text(json.dumps(result(0.29)))  # older copy of a run the root holds
    (kept / "tmall_main_s1.json").write_text(json.dumps(result(0.30)))  # finished on another machine
    evals = [{"split": "valid", "epoch": 1, "hr@20": 0.35}, {"split": "test", "epoch": 1, "hr@20": 0.3}]
    (kept / "tmall_main_s1.evals.jsonl").write_text("".join(json.dumps(record) + "\n" for record in evals))

    runs = report.load_runs(str(root), str(kept))
    assert [(r["_run"], r["test"]["hr@20"]) for r in runs] == [("main_s0", 0.31), ("main_s1", 0.30)]
    assert report.valid_curve(report.evals_path(runs[1])) == ([1], [0.35])
    assert [r["_run"] for r in report.load_runs(str(root))] == ["main_s0"]  # --nokeep: the root alone


def test_report_tables_the_refit_runs_select_phase_models_apart():
    """Each refit run's select_phase test scores, mean ± std over seeds, in a table of their own; a run without them stays out."""
    metric_names = report.METRICS

    def run(name, variant, compression, seed, refit_hr, select_hr, select=True):
        scores = lambda hr: {m: hr + 0.001 * i for i, m in enumerate(metric_names)}  # noqa: E731
        result = {
            "_run": name,
            "dataset": "tmall",
            "variant": variant,
            "seed": seed,
            "embedding_compression": compression,
            "protocol": "refit on train+valid for the epochs selected on valid",
            "model_compression": compression,
            "params": {"inference_total": 1000},
            "bytes": {"params_fp32": 4000},
            "test": scores(refit_hr),
            "test_cold": scores(refit_hr - 0.05),
        }
        if select:
            result["select_phase"] = {"epoch": 3, "step": 30, "test": scores(select_hr), "test_cold": scores(select_hr - 0.02)}
        return result

    runs_ = [
        run("teacher_s0", "teacher", None, 0, 0.345, 0.276),
        run("main_s0", "full", 27.3, 0, 0.311, 0.295),
        run("main_s1", "full", 27.3, 1, 0.310, 0.291),
        run("kd_s0", "kd", 27.3, 0, 0.310, 0.290, select=False),  # a results.json from before select_phase
    ]
    rows = report.grouped(runs_)["tmall"]
    assert sorted(report.select_phase_rows(rows)) == [("full", "27.3x", "refit"), ("teacher", "1x", "refit")]
    header, _, teacher_line, student_line = report.metrics_table(
        report.select_phase_rows(rows), lambda r: r["select_phase"]["test"], lambda r: r["select_phase"]["test_cold"], "select phase"
    )
    cells = [cell.strip() for cell in student_line.strip("|").split("|")]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert cells[:4] == ["full", "27.3x", "select phase", "2"]
    hr20 = np.array([0.295, 0.291]) + 0.001 * metric_names.index("hr@20")
    assert cells[columns.index("hr@20")] == f"{hr20.mean():.4f} ± {hr20.std(ddof=1):.4f}"  # 0.2930 ± 0.0028 (plus the offset)
    assert cells[columns.index("cold hr@20")] == f"{(hr20 - 0.02).mean():.4f} ± {(hr20 - 0.02).std(ddof=1):.4f}"
    teacher_cells = [cell.strip() for cell in teacher_line.strip("|").split("|")]
    assert teacher_cells[:4] == ["teacher", "1x", "select phase", "1"]
    assert teacher_cells[columns.index("hr@20")] == f"{0.276 + 0.001 * metric_names.index('hr@20'):.4f}"


def test_a_report_row_refuses_runs_of_two_recipes():
    config = defaults.get_config("ml-100k", "student").to_dict()
    base = {"dataset": "ml-100k", "variant": "full", "embedding_compression": 10.0, "protocol": "selected on valid", "config": config}
    seed_1 = {**base, "_run": "main_s1", "config": {**config, "seed": 1}}
    (row,) = report.grouped([{**base, "_run": "main_s0"}, seed_1])["ml-100k"].values()  # seeds alone differ: one row
    assert [r["_run"] for r in row] == ["main_s0", "main_s1"]
    other_lr = {**base, "_run": "main_s2", "config": {**config, "train": {**config["train"], "learning_rate": 0.5}}}
    with pytest.raises(report.ReportError, match=r"the row full / 10.0x / valid-selected holds .* main_s2 differ in train.learning_rate\)"):
        report.grouped([{**base, "_run": "main_s0"}, other_lr])


def test_a_summary_leaves_packed_maps_out_of_its_columns(tmp_path):
    """launch/collect.py on two finished runs that differ in the learning rate and their clustered maps."""
    for name, learning_rate, item_rows, hr in (("a", 1e-3, "uint16:AAAB", 0.3), ("b", 2e-3, "uint16:AAAC", 0.4)):
        config = defaults.get_config("ml-100k", "student")
        config.train.learning_rate, config.table.row_order, config.table.item_rows = learning_rate, "clustered", item_rows
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config.to_json())
        results = {"valid": {"hr@20": hr}, "test": {"hr@20": hr - 0.1, "mrr@20": 0.1, "ndcg@20": 0.1}, "selected_epoch": 1}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    subprocess.run([sys.executable, "-m", "launch.collect", f"--root={tmp_path}"], cwd=REPO, check=True, capture_output=True, timeout=120)
    header, _, best, second = (tmp_path / "summary.md").read_text().splitlines()[:4]
    assert [cell.strip() for cell in header.strip("|").split("|")][:3] == ["run", "train.learning_rate", "selected by"]
    assert "item_rows" not in header and best.startswith("| b |") and second.startswith("| a |")
