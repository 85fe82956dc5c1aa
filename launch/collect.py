"""Gather a sweep's results into one table: `python -m launch.collect --root=ROOT`.

Reads every ROOT/RUN/results.json (and the run's config.json) and writes ROOT/summary.csv and
ROOT/summary.md (also printed). One row a finished run; the columns are the config fields that
differ between the runs, then the validation metric that selected the step, then test metrics.
Rows are sorted by that validation metric, best first (runs without a validation split last).
"""

import csv
import glob
import io
import json
import os
import sys

from absl import app, flags

from rec_kd.train import members

_ROOT = flags.DEFINE_string("root", None, "Sweep root (ROOT/RUN/results.json).")
_OUT = flags.DEFINE_string("out", None, "Folder for summary.csv and summary.md (default: ROOT).")
_METRICS = flags.DEFINE_list("metrics", ["hr@20", "mrr@20", "ndcg@20"], "Test metrics to show.")
flags.mark_flag_as_required("root")


def load_finished(root: str) -> tuple[list[dict], list[str]]:
    """([{'name', 'config', 'results'}] for finished runs, names of unfinished runs)."""
    finished, unfinished = [], []
    for config_path in sorted(glob.glob(os.path.join(root, "*", "config.json"))):
        run_dir = os.path.dirname(config_path)
        name = os.path.basename(run_dir)
        results_path = os.path.join(run_dir, "results.json")
        if not os.path.exists(results_path):
            unfinished.append(name)
            continue
        entry = {"name": name}
        for key, path in (("config", config_path), ("results", results_path)):
            try:
                with open(path) as f:
                    entry[key] = json.load(f)
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"{path}: unreadable ({error})") from None
        finished.append(entry)
    return finished, unfinished


# Fields that hold packed arrays filled when a run starts (a clustered item -> row map, ~100 KB of
# text; mixed_dim's hot mask): they differ whenever the row order or the data does, which other
# columns already show, and a table cell cannot show them.
PACKED_FIELDS = ("table.item_rows", "table.mixed_dim.hot_rows")


def summary_rows(runs: list[dict], metrics: list[str]) -> tuple[list[str], list[list]]:
    """(header, rows) sorted by the selection metric on valid, best first."""
    fields = members.differing_fields([run["config"] for run in runs]) if len(runs) > 1 else []
    fields = [field for field in fields if field not in PACKED_FIELDS]
    rows = []
    for run in runs:
        flat = members.flatten_config(run["config"])
        selection = flat["train.selection_metric"]
        valid = run["results"]["valid"]
        valid_value = None if valid is None else valid[selection]
        test = run["results"]["test"]
        rows.append(
            [
                run["name"],
                *(flat.get(f) for f in fields),
                f"valid {selection}",
                valid_value,
                run["results"]["selected_epoch"],
                *(test[m] for m in metrics),
            ]
        )
    rows.sort(key=lambda row: (row[len(fields) + 2] is None, -(row[len(fields) + 2] or 0.0)))
    header = ["run", *fields, "selected by", "valid", "epoch", *(f"test {m}" for m in metrics)]
    return header, rows


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([["" if value is None else value for value in row] for row in rows])
    return out.getvalue()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        runs, unfinished = load_finished(_ROOT.value)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if not runs:
        print(f"error: {_ROOT.value}: no finished run (no RUN/results.json)", file=sys.stderr)
        sys.exit(1)
    header, rows = summary_rows(runs, _METRICS.value)
    out = _OUT.value or _ROOT.value
    os.makedirs(out, exist_ok=True)
    markdown = to_markdown(header, rows)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        f.write(to_csv(header, rows))
    print(markdown, end="")
    if unfinished:
        print(f"\n{len(unfinished)} unfinished runs: {', '.join(unfinished)}")


if __name__ == "__main__":
    app.run(main)
