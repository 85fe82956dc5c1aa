"""How the train step, memory and evaluation grow with the catalogue: synthetic data at N items.

  python -m launch.bench_scale [--sizes=40000,1000000,10000000] [--step_seconds=10] [--results_out=docs/results/bench_scale_cpu_DATE.json]

One row per (num_items, stage, loss), each measured in a fresh process (so `peak_rss_mb` is that
row's alone): the teacher (dense table) and the student (the custom-data STTD table at 30x, the KD
objective: the sampled loss trains rec + KD only) on data.format='synthetic' sessions
(rec_kd/data/synthetic.py) of N items, with the full softmax (`full`) where its tables fit in this
machine's memory and the sampled one (`sampled`, 1,000 negatives + in-batch, log-Q corrected).
A row reports the median train step after compilation (`step_s`, batch 100), the process's peak
resident memory, the seconds to evaluate 10,000 test sessions over the whole catalogue (`eval_s`,
chunked past 262,144 items), and `model_bytes`, what the exported fp32 file stores (the item table
at its bytes, every other parameter at 4). The student distils from a randomly initialised teacher
of the same N, which costs what a trained one does. Rows that do not fit are listed under
`skipped` with the reason; `projection` extends each series to 100M items from its two largest
measured sizes (linear in N), on paper. A plot of step_s against N is written beside the JSON.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["40000", "1000000", "10000000"], "Catalogue sizes (synthetic items).")
_SECONDS = flags.DEFINE_float("step_seconds", 10.0, "Timed training seconds a row, at least (after compilation).")
_EVENTS = flags.DEFINE_integer("events", 400_000, "Synthetic clicks a row generates (its batches and test sessions).")
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 10_000, "Test sessions evaluated a row.")
_OUT = flags.DEFINE_string("results_out", "", "JSON output path (default docs/results/bench_scale_cpu_DATE.json); the plot goes beside it.")
_ROW = flags.DEFINE_string("row", "", "Internal: measure one NUM_ITEMS,STAGE,LOSS,TABLE_UPDATE row in this process and print it.")
_TABLE_UPDATES = flags.DEFINE_list("table_updates", ["dense"], "The sampled teacher's table updates (train.table_update): dense, rows.")
_MEMORY_GB = flags.DEFINE_float("memory_gb", 24.0, "This machine's memory: full-softmax rows whose tables would not fit are skipped.")

BATCH_SIZE = 100
STAGES = ("teacher", "student")
LOSSES = ("full", "sampled")


def row_settings(table_updates: list[str]) -> list[tuple[str, str, str]]:
    """(stage, loss, table update) of every row at one size: the sampled teacher once per table update."""
    return [
        (stage, loss, update)
        for stage in STAGES
        for loss in LOSSES
        for update in (table_updates if (stage, loss) == ("teacher", "sampled") else ["dense"])
    ]


def row_fits(num_items: int, stage: str, loss: str, memory_gb: float) -> str:
    """'' when the row fits, else why not. A dense fp32 table of N x 128 is 512 bytes a row: the teacher
    keeps it, its gradient and Adam's two moments (4 copies); the full softmax adds (B, N) logits and
    their gradient; a student holds only its frozen teacher's table."""
    table_gb = num_items * 128 * 4 / 1e9
    copies = 4 if stage == "teacher" else 1
    logits_gb = 2 * BATCH_SIZE * num_items * 4 / 1e9 * (3 if stage == "student" else 1) if loss == "full" else 0.0
    need = copies * table_gb + logits_gb
    if need > 0.6 * memory_gb:
        return f"needs about {need:.0f} GB of {memory_gb:.0f} GB (tables {copies} x {table_gb:.1f} GB, logits {logits_gb:.1f} GB)"
    return ""


def measure_row(num_items: int, stage: str, loss: str, table_update: str = "dense") -> dict:
    """One row, in this process: build, compile, time steps, evaluate, read the peak RSS."""
    import jax

    from rec_kd import compress, defaults, evaluation
    from rec_kd import data as data_lib
    from rec_kd.experiments import runs
    from rec_kd.models import build_model, init_model_params, resolve_table_config
    from rec_kd.train import members
    from rec_kd.train.sharding import Placement

    def config_for(arg):
        config = defaults.get_config(defaults.CUSTOM, arg)
        config.data.format = "synthetic"
        config.data.synthetic.update(num_items=num_items, num_events=_EVENTS.value, num_clusters=1000, seed=0)
        config.data.max_eval_examples = _EVAL_EXAMPLES.value
        config.train.batch_size = BATCH_SIZE
        config.train.loss = loss
        config.train.table_update = table_update if arg == "teacher" else "dense"
        return config

    started = time.perf_counter()
    config = config_for("student,kd" if stage == "student" else "teacher")
    data = data_lib.load_configured(config)
    data_s = time.perf_counter() - started
    resolve_table_config(config, data.num_items, data.hot_mask)
    placement = Placement.over_all_devices()
    teacher = None
    if stage == "student":
        teacher_config = config_for("teacher")
        model = build_model(teacher_config, data.num_items)
        params = jax.jit(lambda: init_model_params(model, config.data.max_len, jax.random.key(1)), out_shardings=placement.replicated)()
        teacher = runs.Teacher(model=model, params=params, step=0, workdir="(random init)", config=teacher_config)
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    batches = data_lib.train_batches(data.train, BATCH_SIZE, data_seed=0, epoch=0, buckets=buckets)
    run = members.build_run(config, data, placement, teacher, len(batches))
    state = run.state
    for width in sorted({batch["items"].shape[1] for batch in batches}):  # compile every bucket
        state, metrics = run.step(state, placement.put_batch(next(b for b in batches if b["items"].shape[1] == width)))
    jax.block_until_ready(metrics)
    step_seconds, began = [], time.perf_counter()
    for batch in batches:
        tick = time.perf_counter()
        state, metrics = run.step(state, placement.put_batch(batch))
        jax.block_until_ready(metrics)
        step_seconds.append(time.perf_counter() - tick)
        if time.perf_counter() - began > _SECONDS.value:
            break
    test = data.test.head(_EVAL_EXAMPLES.value)

    def evaluate():
        batches = data_lib.eval_batches(test, config.train.eval_batch_size, buckets=buckets)
        return evaluation.split_totals(lambda b: run.metric_sums(state["params"], b, run.constants), batches, placement.put_batch)

    evaluate()  # compile
    tick = time.perf_counter()
    totals = evaluate()
    eval_s = time.perf_counter() - tick
    model_params = jax.device_get(state["params"]["model"])
    spec = build_model(config, data.num_items).spec
    other = sum(np.asarray(leaf).size for name, value in model_params.items() if name != spec.param_name for leaf in jax.tree.leaves(value))
    return {
        "num_items": num_items,
        "stage": stage,
        "loss": loss,
        "table_update": table_update,
        "table_kind": config.table.kind if stage == "student" else "dense",
        "batch_size": BATCH_SIZE,
        "step_s": float(np.median(step_seconds)),
        "steps_timed": len(step_seconds),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval_s": eval_s,
        "eval_examples": len(test),
        "eval_chunk_items": evaluation.eval_chunk_size(config.train.eval_chunk_items, data.num_items + 1),
        "eval_hr@20": float(np.ravel(totals["all/hr@20"] / totals["all/count"])[0]),  # one member: an axis of 1
        "model_bytes": int(compress.table_bytes(spec) + 4 * other),
        "data_s": data_s,
    }


def linear_at(target: int, a: dict, b: dict, key: str) -> float:
    """`key` at `target` items on the line through rows a and b (by num_items)."""
    return b[key] + (b[key] - a[key]) * (target - b["num_items"]) / (b["num_items"] - a["num_items"])


def series(row: dict) -> tuple[str, str, str]:
    """A row's series: (stage, loss, table update); rows from before the table update are 'dense'."""
    return row["stage"], row["loss"], row.get("table_update", "dense")


def projection(rows: list[dict], target: int = 100_000_000) -> list[dict]:
    """Each series' step_s and model_bytes at `target` items, linear in N through its two largest sizes."""
    out = []
    for key in sorted({series(r) for r in rows}):
        points = sorted((r for r in rows if series(r) == key), key=lambda r: r["num_items"])
        if len(points) < 2:
            continue
        a, b = points[-2], points[-1]
        out.append(
            {
                "num_items": target,
                "stage": key[0],
                "loss": key[1],
                "table_update": key[2],
                "step_s": linear_at(target, a, b, "step_s"),
                "model_bytes": linear_at(target, a, b, "model_bytes"),
                "from": [a["num_items"], b["num_items"]],
            }
        )
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key in sorted({series(r) for r in rows}):
        points = sorted((r["num_items"], r["step_s"]) for r in rows if series(r) == key)
        style = "-o" if key[1] == "full" else ("--s" if key[2] == "dense" else ":^")
        label = f"{key[0]}, {key[1]} softmax" + (", row-sparse Adam" if key[2] == "rows" else "")
        ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="catalogue items (synthetic)",
        ylabel="train step (s, batch 100)",
        title="Step time against catalogue size",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    if _ROW.value:
        num_items, stage, loss, table_update = _ROW.value.split(",")
        print("ROW " + json.dumps(measure_row(int(num_items), stage, loss, table_update)))
        return
    out = _OUT.value or os.path.join("docs", "results", f"bench_scale_cpu_{time.strftime('%Y-%m-%d')}.json")
    rows, skipped = [], []
    for num_items in (int(size) for size in _SIZES.value):
        for stage, loss, table_update in row_settings(_TABLE_UPDATES.value):
            reason = row_fits(num_items, stage, loss, _MEMORY_GB.value)
            if reason:
                skipped.append({"num_items": num_items, "stage": stage, "loss": loss, "reason": reason})
                print(f"skipping {num_items:,} {stage} {loss}: {reason}", file=sys.stderr)
                continue
            flags_passed = [
                f"--row={num_items},{stage},{loss},{table_update}",
                f"--step_seconds={_SECONDS.value}",
                f"--events={_EVENTS.value}",
                f"--eval_examples={_EVAL_EXAMPLES.value}",
            ]
            result = subprocess.run([sys.executable, "-m", "launch.bench_scale", *flags_passed], capture_output=True, text=True)
            line = next((line for line in result.stdout.splitlines() if line.startswith("ROW ")), None)
            if result.returncode != 0 or line is None:
                skipped.append({"num_items": num_items, "stage": stage, "loss": loss, "reason": f"failed: {result.stderr.strip()[-500:]}"})
                print(f"{num_items:,} {stage} {loss} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(line[4:]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    report = {
        "command": " ".join(["python -m launch.bench_scale", *sys.argv[1:]]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")},
        "rows": rows,
        "skipped": skipped,
        "projection": projection(rows),
    }
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    plot(rows, os.path.splitext(out)[0] + ".png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
