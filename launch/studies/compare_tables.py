"""Every item-table compressor in the same student at the same budget: run the grid, then report it.

  python -m launch.reproduce --root=ROOT --datasets=tmall --rows=teacher          # the teacher, once
  python -m launch.studies.compare_tables --root=ROOT --datasets=tmall                    # the grid (resumable)
  python -m launch.studies.compare_tables --root=ROOT --datasets=tmall --report --report_out=docs  # docs/compression.md

Each run is a student of ROOT/DATASET/teacher_s0, seed 0, in ROOT/DATASET/tables/KIND_OBJECTIVE_BUDGET:
every `--kinds` (rec_kd/compress) with every `--objectives` ('full': the SSKD objective; 'ce': no
distillation) at every `--budgets` ('main': the main STTD table's parameter count, 191,160 on
Tmall; 'x100': the STTD table nearest 100x). STTD and TT are sized by their rank (the main and
x100 STTD tables themselves; TT at the largest rank within the STTD count), every other kind by
`table.budget` (rec_kd/models/sasrec.py resolve_table_config); 'dense' is the uncompressed
student, the reference (its budget is moot: run it at 'main' only). A kind that cannot be made
that small (QR's two tables have at least 2 sqrt(P) d parameters) is skipped with its reason. The protocol is launch/reproduce.py's
(refit by default); `--override` adds config overrides to every run alike, for a cheaper protocol
that is the same for every kind (e.g. `--override=--config.data.valid_fraction=0
--override=--config.train.num_epochs=1`). Finished runs are skipped, interrupted ones resume.

`--report` exports every finished run to ONNX (fp32 and int8, in RUN/export/), measures each file's
size and its batch-1, one-thread latency (launch/bench_device.py's fresh pinned process), and
writes OUT/compression.md (after `--report_preamble`), OUT/img/compression_DATASET.png (test HR@20 against
item-table bytes, one line per kind) and copies of the results in OUT/results/compression/.
"""

import dataclasses
import json
import os
import re
import shutil
import sys
import types

from absl import app, flags, logging

from launch import reproduce
from rec_kd import compress, defaults
from rec_kd.compress import sttd
from rec_kd.data import load_dataset
from rec_kd.experiments import results as results_lib
from rec_kd.models import resolve_table_config
from rec_kd.train import sweeps

KINDS = ("sttd", "tt", "lowrank", "hash", "qr", "mixed_dim", "dense")
OBJECTIVES = ("full", "ce")
BUDGETS = ("main", "x100")
# A run's folder under ROOT/DATASET/tables/: KIND_OBJECTIVE_BUDGET_sSEED.
RUN_NAME = re.compile(rf"({'|'.join(KINDS)})_({'|'.join(OBJECTIVES)})_({'|'.join(BUDGETS)})_s\d+")

# --root, --data_dir, --datasets, --protocol, --smoke and --dry_run are launch/reproduce.py's flags.
FLAGS = flags.FLAGS
_KINDS = flags.DEFINE_list("kinds", list(KINDS), f"Table kinds, from {KINDS}.")
_OBJECTIVES = flags.DEFINE_list("objectives", list(OBJECTIVES), f"Objectives, from {OBJECTIVES}.")
_BUDGETS = flags.DEFINE_list("budgets", ["main"], f"Budgets, from {BUDGETS}.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "A config override added to every run (e.g. --config.train.num_epochs=1).")
_REPORT = flags.DEFINE_bool("report", False, "Export, measure and write the report instead of training.")
_OUT = flags.DEFINE_string("report_out", "docs", "Report folder (compression.md, img/, results/compression/).")
_PREAMBLE = flags.DEFINE_string("report_preamble", None, "Markdown placed above the generated tables.")
_CALLS = flags.DEFINE_integer("calls", 200, "Latency: timed batch-1 calls per file.")


def budget_specs(dataset: str, num_items: int) -> dict[str, sttd.STTDSpec]:
    """The STTD table of each budget; its parameter count is every other kind's budget."""
    main = reproduce.main_spec(dataset, num_items)
    return {"main": main, "x100": reproduce.x100_spec(main)}


def table_overrides(kind: str, spec: sttd.STTDSpec) -> tuple[str, ...]:
    """The config overrides giving `kind` the budget of STTD table `spec`."""
    if kind == "sttd":
        return reproduce.table_overrides(spec)
    if kind == "tt":
        return reproduce.table_overrides(reproduce.tt_spec(spec)) + ("--config.table.kind=tt",)
    if kind == "dense":
        return ("--config.table.kind=dense",)
    return reproduce.table_overrides(spec) + (f"--config.table.kind={kind}", f"--config.table.budget={spec.num_params()}")


def unresolvable(dataset: str, data, overrides: tuple[str, ...]) -> str:
    """Why the student these `--config.*` overrides describe cannot size its table ('' when it can).

    The table is resolved as the run would resolve it (rec_kd/models/sasrec.py resolve_table_config),
    so a kind that cannot be made that small is skipped instead of failing inside the grid.
    """
    config = reproduce.config_from_overrides(dataset, "student", overrides)
    try:
        resolve_table_config(config, data.num_items, data.hot_mask)
    except defaults.ConfigError as error:
        return str(error)
    return ""


def grid(dataset: str, data, kinds, objectives, budgets, common: tuple[str, ...], smoke: bool, root: str) -> list[reproduce.RunSpec]:
    specs = budget_specs(dataset, data.num_items)
    teacher = f"--config.teacher_workdir={os.path.join(root, dataset, 'teacher_s0')}"
    runs = []
    for budget in budgets:
        for kind in kinds:
            tables = table_overrides(kind, specs[budget])
            reason = "a dense table has no budget" if kind == "dense" and budget != "main" else unresolvable(dataset, data, common + tables)
            if reason:
                logging.warning("%s: skipping %s at budget %s: %s", dataset, kind, budget, reason)
                continue
            for objective in objectives:
                words = ["student", objective] + (["smoke"] if smoke else [])
                overrides = (*common, "--config.seed=0", teacher, *tables)
                runs.append(reproduce.RunSpec(dataset, f"tables/{kind}_{objective}_{budget}", 0, ",".join(words), overrides))
    return runs


def run_grid(root: str) -> None:
    common = (f"--config.data_dir={FLAGS.data_dir}",) + (reproduce.SMOKE_OVERRIDES if FLAGS.smoke else ())
    common += ("--config.train.refit_on_valid=True",) if FLAGS.protocol == "refit" else ()
    common += tuple(_OVERRIDES.value)
    jobs = []
    for dataset in FLAGS.datasets:
        data = load_dataset(dataset, FLAGS.data_dir)
        for run in grid(dataset, data, _KINDS.value, _OBJECTIVES.value, _BUDGETS.value, common, FLAGS.smoke, root):
            cmd, workdir = reproduce.command(run, root), os.path.join(root, run.dataset, run.name)
            if FLAGS.dry_run:
                print(" ".join(cmd))
                continue
            try:
                sweeps.check_recipe(workdir, reproduce.config_from_overrides(run.dataset, run.config_arg, run.overrides), "the table grid")
            except sweeps.SweepError as error:
                sys.exit(str(error))
            if not sweeps.run_is_finished(workdir):
                jobs.append(sweeps.Job(f"{run.dataset}/{run.name}", cmd, os.path.join(workdir, "stdout.log")))
    if FLAGS.dry_run:
        return
    logging.info("running %d runs one at a time (finished ones skipped; logs: WORKDIR/stdout.log)", len(jobs))
    failed = {name: code for name, code in sweeps.run_jobs(jobs, parallel=1).items() if code}
    if failed:
        sys.exit(f"not finished: {failed} (>0 failed: see stdout.log; -1/SIGTERM: rerun to resume)")


# ----------------------------------------------------------------------------------------------
# The report.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    dataset: str
    name: str
    kind: str
    objective: str
    budget: str
    results: dict
    files: dict  # 'fp32' / 'int8' -> {'bytes', 'p50_ms'}


def measure_files(workdir: str, calls: int) -> dict:
    """Exports the run (fp32, int8) into workdir/export/ unless there, then sizes and times each file.

    A file's timing is kept beside it (PRECISION.timing.json) and reused while `calls` is the same,
    so a report regenerated later, on a busier machine, keeps the latency measured when it was quiet.
    """
    from launch import bench_device
    from rec_kd.serve import export

    files = {}
    for precision, quantize in (("fp32", None), ("int8", "int8")):
        path = os.path.join(workdir, "export", f"{precision}.onnx")
        timing_path = os.path.join(workdir, "export", f"{precision}.timing.json")
        if not os.path.exists(path):
            export.export_workdir(workdir, path, quantize=quantize)
            if os.path.exists(timing_path):
                os.remove(timing_path)  # it timed a file that is gone
        timing = read_timing(timing_path)
        if timing.get("calls") != calls:
            timing = {
                **bench_device.measure_in_subprocess(path, types.SimpleNamespace(calls=calls, warmup=20, cpu=0, seed=0)),
                "calls": calls,
            }
            with open(timing_path, "w") as f:
                json.dump(timing, f, indent=2)
        files[precision] = {"bytes": os.path.getsize(path), "p50_ms": timing["p50_ms"]}
    return files


def read_timing(path: str) -> dict:
    """A file's kept timing ({} when none was kept)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_rows(root: str, calls: int) -> list[Row]:
    rows = []
    for dataset in sorted(os.listdir(root)):
        tables = os.path.join(root, dataset, "tables")
        for name in sorted(os.listdir(tables)) if os.path.isdir(tables) else []:
            workdir = os.path.join(tables, name)
            if not sweeps.run_is_finished(workdir):
                continue
            with open(os.path.join(workdir, "results.json")) as f:
                results = json.load(f)
            match = RUN_NAME.fullmatch(name)
            if not match:
                continue
            kind, objective, budget = match.groups()
            rows.append(Row(dataset, name, kind, objective, budget, results, measure_files(workdir, calls)))
    return rows


def table_bytes(row: Row) -> tuple[int, float]:
    """(the item table's bytes on device, the dense fp32 table's bytes over that): what a phone stores."""
    sizes = results_lib.recorded_table_bytes(row.results)
    return sizes["item_table"], sizes["dense_item_table"] / sizes["item_table"]


def table_lines(rows: list[Row]) -> list[str]:
    header = (
        "| kind | objective | budget | item-table params | item table | compression (bytes) | test HR@20 | MRR@20 | NDCG@20 "
        "| cold HR@20 | file fp32 | file int8 | p50 fp32 / int8 (ms) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in sorted(rows, key=lambda r: (r.budget, r.objective, -r.results["test"]["hr@20"])):
        test, files = row.results["test"], row.files
        num_bytes, compression = table_bytes(row)
        lines.append(
            f"| {row.kind} | {row.objective} | {row.budget} | {row.results['params']['item_table']:,} | {num_bytes / 1e3:,.0f} kB | "
            f"{compression:.1f}x | {test['hr@20']:.4f} | {test['mrr@20']:.4f} | {test['ndcg@20']:.4f} | "
            f"{row.results['test_cold']['hr@20']:.4f} | {files['fp32']['bytes'] / 1e6:.2f} MB | {files['int8']['bytes'] / 1e6:.2f} MB | "
            f"{files['fp32']['p50_ms']:.2f} / {files['int8']['p50_ms']:.2f} |"
        )
    return lines


def plot(rows: list[Row], dataset: str, path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10").colors
    for index, kind in enumerate(compress.KINDS):  # one colour a kind; the objective sets the line and marker
        for objective, style in (("full", "-o"), ("ce", "--x")):
            points = sorted((table_bytes(r)[0], r.results["test"]["hr@20"]) for r in rows if (r.kind, r.objective) == (kind, objective))
            if points:
                ax.plot(*zip(*points, strict=True), style, color=colors[index % len(colors)], label=f"{kind} ({objective})")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the decades alone: no overlapping labels
    ax.set(xlabel="item-table bytes on device", ylabel="test HR@20", title=f"{dataset}: accuracy against table size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[Row], out: str, preamble: str | None) -> str:
    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    os.makedirs(os.path.join(out, "results", "compression"), exist_ok=True)
    lines = [preamble.rstrip(), ""] if preamble else ["# Item-table compressors", ""]
    lines += [
        "## Tables",
        "",
        "Generated by `python -m launch.studies.compare_tables --report`; each run's command and commit are listed below.",
        "",
    ]
    for dataset in sorted({row.dataset for row in rows}):
        ours = [row for row in rows if row.dataset == dataset]
        protocols = sorted({row.results.get("protocol", "") for row in ours})
        lines += [f"### {dataset}", "", f"Protocol: {'; '.join(protocols)}.", ""]
        lines += table_lines(ours)
        image = f"compression_{dataset}.png"
        plot(ours, dataset, os.path.join(out, "img", image))
        lines += ["", f"![{dataset}: accuracy against table size](img/{image})", "", "Runs:", ""]
        for row in ours:
            copy = f"{dataset}_{row.name}.json"
            shutil.copyfile(os.path.join(_results_dir(row), "results.json"), os.path.join(out, "results", "compression", copy))
            lines.append(f"- [{row.name}](results/compression/{copy}): commit `{row.results['commit']}`: `{row.results['command']}`")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "compression.md"), "w") as f:
        f.write(text)
    return text


def _results_dir(row: Row) -> str:
    return os.path.join(os.path.abspath(FLAGS.root), row.dataset, "tables", row.name)


def main(argv):
    del argv
    for flag, values, allowed in (
        (_KINDS, _KINDS.value, KINDS),
        (_OBJECTIVES, _OBJECTIVES.value, OBJECTIVES),
        (_BUDGETS, _BUDGETS.value, BUDGETS),
    ):
        if set(values) - set(allowed):
            raise app.UsageError(f"--{flag.name}: unknown {sorted(set(values) - set(allowed))}; expected some of {allowed}")
    root = os.path.abspath(FLAGS.root)
    if not _REPORT.value:
        run_grid(root)
        return
    rows = load_rows(root, _CALLS.value)
    if not rows:
        raise app.UsageError(f"no finished run under {root}/*/tables/")
    write_report(rows, _OUT.value, open(_PREAMBLE.value).read() if _PREAMBLE.value else None)
    print(f"wrote {os.path.join(_OUT.value, 'compression.md')} from {len(rows)} runs")


if __name__ == "__main__":
    app.run(main)
