"""Tables and plots from a reproduction root: `python -m launch.report --runs=ROOT --out=DIR`.

Reads every ROOT/DATASET/RUN/results.json (written by `launch/reproduce.py` runs), and the copies
an earlier report kept in DIR/results/ of runs ROOT no longer holds, and writes
DIR/results.md (metric tables, mean ± std over seeds, selected on validation; the refit runs'
select-phase models and the authors' protocol in separate tables), DIR/img/*.png (accuracy vs compression; validation curves, teacher vs
student) and copies of the results (with their eval records) in DIR/results/. Rows are keyed by variant and compression.
"""

import collections
import glob
import json
import os
import sys
from collections.abc import Callable

import matplotlib
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from rec_kd import evaluation  # noqa: E402
from rec_kd.experiments import result_copies  # noqa: E402
from rec_kd.experiments import results as results_lib  # noqa: E402
from rec_kd.experiments import runs as runs_lib  # noqa: E402

_RUNS = flags.DEFINE_string("runs", None, "Reproduction root (ROOT/DATASET/RUN/results.json).")
_OUT = flags.DEFINE_string("out", None, "Output folder: results.md, img/, results/.")
_PREAMBLE = flags.DEFINE_string("preamble", None, "Optional markdown file placed at the top of results.md.")
_KEEP = flags.DEFINE_bool(
    "keep",
    True,
    "Also report the runs OUT/results/ holds copies of and RUNS does not (finished on a machine this one is not); "
    "move a copy to OUT/results/archive/ to drop its run.",
)
_README = flags.DEFINE_string(
    "readme", None, "Optional README.md whose results table (between README_BEGIN and README_END) is rewritten from OUT/results/."
)
flags.mark_flags_as_required(["runs", "out"])

METRICS = evaluation.metric_names()


class ReportError(ValueError):
    """Runs that one table row cannot hold together."""


COLD_METRICS = ("hr@20", "mrr@20")


def load_runs(root: str, kept: str | None = None) -> list[dict]:
    """Every ROOT/DATASET/RUN/results.json, then KEPT's copies of the runs ROOT does not hold.

    KEPT is an earlier report's results/ folder (the repository's docs/results, rec_kd/experiments/result_copies.py):
    a grid that spans machines keeps every finished run in its report.
    """
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "results.json"))):
        with open(path) as f:
            result = json.load(f)
        result["_run"] = os.path.basename(os.path.dirname(path))
        result["_dir"] = os.path.dirname(path)
        runs.append(result)
    if kept:
        held = {(result["dataset"], result["_run"]) for result in runs}
        runs += [{**copy, "_dir": None} for copy in result_copies.read_kept(kept) if (copy["dataset"], copy["_run"]) not in held]
    return sorted(runs, key=lambda result: (result["dataset"], result["_run"]))  # the same report whichever machine holds which run


def evals_path(result: dict) -> str:
    """The run's eval records: its workdir's metrics.jsonl, or the ones kept beside its copy."""
    return os.path.join(result["_dir"], "metrics.jsonl") if result["_dir"] else result_copies.evals_path(result)


PROTOCOL_LABELS = {
    "selected on valid": "valid-selected",
    "refit on train+valid for the epochs selected on valid": "refit",
    "last epoch (no valid split)": "all sessions, last epoch",
}


def variant_label(result: dict) -> str:
    """The variant, with the table kind where the variant does not name it ('ce (qr)')."""
    variant = result["variant"]
    kind = result.get("table_kind", variant if variant in ("tt", "dense") else "sttd")  # older results: no field
    return variant if kind in ("sttd", variant) or variant == "teacher" else f"{variant} ({kind})"


def row_key(result: dict) -> tuple[str, str, str]:
    """(variant, compression label, protocol): seeds of the same configuration share a row."""
    compression = result["embedding_compression"]
    protocol = PROTOCOL_LABELS.get(result.get("protocol", "selected on valid"), result.get("protocol"))
    return variant_label(result), "1x" if compression is None else f"{compression:.1f}x", protocol


def mean_std(values: list[float]) -> str:
    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


def grouped(runs: list[dict]) -> dict[str, dict[tuple, list[dict]]]:
    by_dataset = collections.defaultdict(lambda: collections.defaultdict(list))
    for result in runs:
        by_dataset[result["dataset"]][row_key(result)].append(result)
    for dataset, rows in by_dataset.items():
        for key, results in rows.items():
            check_one_recipe(dataset, key, results)
    return by_dataset


def check_one_recipe(dataset: str, key: tuple, results: list[dict]) -> None:
    """A row's runs may differ in their seed alone, or its mean ± std would mix two recipes.

    Why: a launcher keeps a finished run made under an older default (with a warning), and a kept
    copy may come from another session; the row key names only variant, compression and protocol.
    Results without their config (older runs) are not checked.
    """
    recipes = {result["_run"]: runs_lib.recipe(ml_collections.ConfigDict(result["config"])) for result in results if "config" in result}
    names = sorted({name for recipe in recipes.values() for name in recipe} - {"seed"})
    differ = [name for name in names if len({json.dumps(recipe.get(name)) for recipe in recipes.values()}) > 1]
    if differ:
        raise ReportError(
            f"{dataset}: the row {' / '.join(key)} holds runs of different recipes ({', '.join(sorted(recipes))} differ in "
            f"{', '.join(differ)}); move the odd ones to results/archive/ (and out of the run root)"
        )


def metrics_table(
    rows: dict[tuple, list[dict]],
    scores: Callable[[dict], dict],
    cold_scores: Callable[[dict], dict] | None = None,
    protocol: str | None = None,
) -> list[str]:
    """One line per row: mean ± std over its seeds of scores(result), and of cold_scores(result) where given.

    protocol, where given, names what the table reports instead of each row's own protocol label (the
    select-phase table's rows are refit runs, reported there by a model from before their refit).
    """
    header = [
        "variant",
        "emb. compression",
        "protocol",
        "seeds",
        *METRICS,
        *(f"cold {m}" for m in COLD_METRICS),
        "params (inference)",
        "model compression",
        "bytes fp32",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (variant, compression, row_protocol), results in sorted(rows.items(), key=lambda kv: (kv[0][0] != "teacher", -len(kv[1]), kv[0])):
        first = results[0]
        model_compression = first["model_compression"]
        cells = [variant, compression, protocol or row_protocol, str(len(results))]
        cells += [mean_std([scores(r)[m] for r in results]) for m in METRICS]
        cells += [mean_std([cold_scores(r)[m] for r in results]) for m in COLD_METRICS] if cold_scores else ["", ""]
        cells += [
            f"{first['params']['inference_total']:,}",
            f"{model_compression:.2f}x" if model_compression else "",
            f"{first['bytes']['params_fp32']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def select_phase_rows(rows: dict[tuple, list[dict]]) -> dict[tuple, list[dict]]:
    """The rows whose every run was refit and kept its select-phase model's test scores (results.json select_phase).

    Why: a refit run reports the model trained on train + valid, where the teacher and the student gain by
    different amounts; its select-phase model (train only, the epoch count chosen on valid) is the other
    leak-free comparison, made before that gain.
    """
    return {key: results for key, results in rows.items() if all("test" in (r.get("select_phase") or {}) for r in results)}


def valid_curve(path: str) -> tuple[list[int], list[float]]:
    """(epochs, valid HR@20) from a metrics.jsonl or a kept copy of its eval records."""
    epochs, values = [], []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record["split"] == "valid":
                    epochs.append(record["epoch"])
                    values.append(record["hr@20"])
    return epochs, values


def save_plot(fig, ax, xlabel: str, ylabel: str, title: str, path: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_compression(dataset: str, rows, path: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    teacher_lines = 0
    for (variant, compression, protocol), results in rows.items():
        if variant == "teacher":
            style = ("--", ":", "-.")[teacher_lines % 3]
            teacher_lines += 1
            ax.axhline(np.mean([r["test"]["hr@20"] for r in results]), color="k", linestyle=style, label=f"teacher ({protocol})")
            continue
        x = results[0]["embedding_compression"]
        ys = [r["test"]["hr@20"] for r in results]
        ax.errorbar(
            [x],
            [np.mean(ys)],
            yerr=[np.std(ys)] if len(ys) > 1 else None,
            marker="o",
            label=f"{variant} {compression} ({protocol})",
            capsize=3,
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor log labels overlap
    save_plot(fig, ax, "item-table compression (x)", "test HR@20 (reported step)", f"{dataset}: accuracy vs compression", path)


def plot_valid_curves(dataset: str, rows, path: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (variant, compression, _), results in sorted(rows.items()):
        if variant not in ("teacher", "full"):
            continue
        for result in results:
            epochs, values = valid_curve(evals_path(result))
            if epochs:
                ax.plot(epochs, values, marker=".", label=f"{variant} {compression} s{result['seed']}")
    save_plot(fig, ax, "epoch", "valid HR@20", f"{dataset}: validation curves", path)


def write_report(runs: list[dict], out: str, preamble: str | None = None) -> str:
    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    os.makedirs(os.path.join(out, "results"), exist_ok=True)
    lines = [preamble.rstrip() + "\n"] if preamble else []
    title = "# Tables" if preamble else "# Results"  # a preamble brings its own page title
    lines += [title, "", "Generated by `python -m launch.report`; every run's command and commit are listed below its table.", ""]
    for dataset, rows in sorted(grouped(runs).items()):
        lines += [
            f"## {dataset}",
            "",
            "Test metrics at the reported step (the protocol column says how it was chosen; mean ± std over seeds).",
            "",
        ]
        lines += metrics_table(rows, lambda r: r["test"], lambda r: r["test_cold"])
        refit_rows = select_phase_rows(rows)
        if refit_rows:
            lines += [
                "",
                "The same refit runs' select-phase models (trained on train only, for the epoch count each selected on "
                "valid; test metrics, mean ± std over seeds):",
                "",
            ]
            lines += metrics_table(
                refit_rows, lambda r: r["select_phase"]["test"], lambda r: r["select_phase"]["test_cold"], "select phase"
            )
        lines += ["", "Authors' protocol (the best test value of each metric over epochs; selected on test):", ""]
        lines += metrics_table(rows, lambda r: r["paper_protocol_test"])
        for kind, plot in (("compression", plot_accuracy_vs_compression), ("valid_curves", plot_valid_curves)):
            name = f"{dataset}_{kind}.png"
            plot(dataset, rows, os.path.join(out, "img", name))
            lines += ["", f"![{dataset} {kind}](img/{name})"]
        lines += ["", "Runs:", ""]
        folder = os.path.join(out, "results")
        for results in rows.values():
            for result in results:
                copy = result_copies.keep(result["_dir"], folder) if result["_dir"] else result_copies.keep_copy(result, folder)
                lines.append(
                    f"- [{result['_run']}]({os.path.relpath(copy, out)}): commit `{commit_label(result)}`, "
                    f"{result['num_devices']} device(s), {result['wall_s']:.0f} s{teacher_label(result)}: `{result['command']}`"
                )
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    return text


README_BEGIN = (
    "<!-- results table: generated from docs/results/ by "
    "`python -m launch.report --runs=RUNS --out=docs --preamble=docs/results_preamble.md --readme=README.md` -->"
)
README_END = "<!-- end of the results table -->"
README_DATASETS = ("tmall", "retailrocket")
REFIT = PROTOCOL_LABELS["refit on train+valid for the epochs selected on valid"]


def readme_table(runs: list[dict]) -> list[str]:
    """The README's one table: every refit run of the README's datasets, a row per recipe, mean ± std over seeds.

    Compression is the bytes ratio (the dense fp32 table over the item table, row map included) for
    every row, so runs recorded before `bytes.item_table` compare with the ones after.
    """
    lines = [
        "| dataset | model | item table | compression | seeds | test HR@20 | test MRR@20 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for dataset, rows in sorted(grouped([r for r in runs if r["dataset"] in README_DATASETS]).items()):
        refit_rows = [(key[0], results_lib.recorded_table_bytes(results[0]), results) for key, results in rows.items() if key[2] == REFIT]
        for variant, table, results in sorted(refit_rows, key=lambda row: (row[0] != "teacher", -row[1]["item_table"], row[0])):
            cells = [
                dataset,
                variant,
                f"{table['item_table'] / 1e3:,.0f} kB",
                f"{table['dense_item_table'] / table['item_table']:.1f}x",
                str(len(results)),
                mean_std([r["test"]["hr@20"] for r in results]),
                mean_std([r["test"]["mrr@20"] for r in results]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def with_readme_table(readme: str, table: list[str]) -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by `table`."""
    if README_BEGIN not in readme or README_END not in readme:
        raise ReportError(f"the README has no results table markers ({README_BEGIN!r} ... {README_END!r})")
    head, rest = readme.split(README_BEGIN, 1)
    return head + "\n".join([README_BEGIN, *table, README_END]) + rest.split(README_END, 1)[1]


def teacher_label(result: dict) -> str:
    """', teacher trained at abc1234 (test HR@20 0.5202, MRR@20 0.2750)': the training a student distilled from.

    Why: the teacher row shows one training of the teacher run (the root's, else the copy kept last),
    and a teacher trained again on another machine need not repeat its numbers; each student names
    the training it used (rec_kd/experiments/results.py).
    """
    teacher, label = result.get("teacher_results"), ""
    if teacher:
        test = teacher["test"]
        commits = [result_copies.short_commit(commit) for commit in teacher.get("commits") or [None]]
        # Later commits: resumes, or a refit from the teacher's select record (its select phase ran at the first).
        later = f", continued at {', '.join(commits[1:])}" if len(commits) > 1 else ""
        label = f", teacher trained at {commits[0]}{later} (test HR@20 {test['hr@20']:.4f}, MRR@20 {test['mrr@20']:.4f})"
    if result.get("refit_teacher_as_recorded") is False:  # refit from a select record, by another teacher training
        label += "; epochs selected with another training of the teacher"
    return label


def commit_label(result: dict) -> str:
    """The commit a run started at, and the ones it was resumed at: 'abc... (resumed at def1234-dirty)'.

    A resume at uncommitted code keeps its -dirty mark (result_copies.short_commit): the label is
    how a reader tells which resumes ran code nobody can check out. A run refit from a kept select
    record (its select phase ran on another machine) says so: its later commits are not resumes of
    one process's checkpoints but a new training that reuses only the selected epoch counts.
    """
    resumed = [result_copies.short_commit(commit) for commit in result.get("commits", [])[1:]]
    if not resumed:
        return result["commit"]
    if result.get("refit_from_record"):  # the first commits are the select phase's, on the machine that selected
        return result["commit"] + f" (continued at {', '.join(resumed)}: refit from its select record)"
    return result["commit"] + f" (resumed at {', '.join(resumed)})"


def main(argv):
    del argv
    try:
        runs = load_runs(_RUNS.value, os.path.join(_OUT.value, "results") if _KEEP.value else None)
        if not runs:
            raise app.UsageError(f"no results.json under {_RUNS.value}/*/*/")
        preamble = open(_PREAMBLE.value).read() if _PREAMBLE.value else None
        write_report(runs, _OUT.value, preamble)
        if _README.value:  # from the copies write_report just kept: what tests/test_readme.py reads
            with open(_README.value) as f:
                readme = f.read()
            with open(_README.value, "w") as f:
                f.write(with_readme_table(readme, readme_table(result_copies.read_kept(os.path.join(_OUT.value, "results")))))
    except (result_copies.CopyError, ReportError) as error:
        sys.exit(str(error))
    print(f"wrote {os.path.join(_OUT.value, 'results.md')} from {len(runs)} runs")


if __name__ == "__main__":
    app.run(main)
