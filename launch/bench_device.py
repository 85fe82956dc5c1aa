"""Phone-like benchmark of exported recommenders: batch 1, one thread, one core.

    python -m launch.bench_device --teacher_workdir=T --student_workdir=S --out_dir=DIR \
        [--calls=300] [--warmup=30] [--cpu=0] [--eval_examples=N]

Exports (into out_dir, reusing files already there) the teacher fp32/int8 and the student in both
table modes (materialized at load, factored per query), fp32/int8. Each file is then measured in
its own fresh process, pinned to one core (os.sched_setaffinity) with ONNX Runtime's intra- and
inter-op pools at one thread: load time, latency p50/p90/p99 of `Recommender.recommend` over
`calls` random sessions after `warmup` calls, peak RSS (VmHWM), the RSS before the model
was loaded and after the calls, and the file size. With --eval_examples > 0 it also scores the first N test examples
of the student's dataset through every file (batched, any threads): HR@20, and the int8 files'
top-20 overlap with their fp32 file. Prints one JSON object.

Before a student has finished training, --standin_student_config=RUN_DIR (a student run's folder,
for its config.json) benchmarks student-shaped files built from the teacher's dense layers and
freshly initialised cores: right for size, RAM and latency, meaningless for accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

TEACHER_VARIANTS = [("materialized", None), ("materialized", "int8")]  # mode is moot for a dense table
# The factored mode exists for STTD tables only (rec_kd/serve/export.py).
STTD_STUDENT_VARIANTS = [*TEACHER_VARIANTS, ("factored", None), ("factored", "int8")]


def student_variants(config_dir: str) -> list[tuple[str, str | None]]:
    """The (mode, quantize) pairs a student of this run's table kind exports to."""
    from rec_kd.experiments import runs

    kind = runs.read_run_config(config_dir).table.kind
    return STTD_STUDENT_VARIANTS if kind in ("sttd", "tt") else TEACHER_VARIANTS


def variant_name(stage: str, mode: str, quantize: str | None) -> str:
    table = "dense" if stage == "teacher" else mode
    return f"{stage}_{table}_{quantize or 'fp32'}"


def export_all(teacher_workdir: str | None, student_workdir: str | None, out_dir: str, k: int) -> dict[str, str]:
    """{variant name: .onnx path}, exporting only the files that do not exist yet."""
    paths = {}
    for stage, workdir in (("teacher", teacher_workdir), ("student", student_workdir)):
        if not workdir:
            continue
        for mode, quantize in TEACHER_VARIANTS if stage == "teacher" else student_variants(workdir):
            name = variant_name(stage, mode, quantize)
            path = os.path.join(out_dir, name + ".onnx")
            if not os.path.exists(path):
                from rec_kd.serve import export

                export.export_workdir(workdir, path, mode=mode, k=k, quantize=quantize)
            paths[name] = path
    return paths


def export_standin_student(teacher_workdir: str, student_config_dir: str, out_dir: str, k: int) -> dict[str, str]:
    """Student-shaped files for size and latency only, while no trained student exists yet.

    The architecture and table spec come from a student run's config.json (e.g. one still
    training); the dense layers are the teacher's and the table's parameters are freshly
    initialised (its spec's init), so the figures of size, RAM and latency are the student's, its scores are not.
    """
    import jax

    from rec_kd.experiments import runs
    from rec_kd.models import build_model
    from rec_kd.serve import export

    teacher, num_items = export.load_workdir(teacher_workdir)
    model = build_model(runs.read_run_config(student_config_dir), num_items)
    params = {key: value for key, value in teacher.params.items() if key != "item_embedding"}
    params[model.spec.param_name] = model.spec.init(jax.random.key(0), model.hidden_dim**-0.5)
    paths = {}
    for mode, quantize in student_variants(student_config_dir):
        path = os.path.join(out_dir, variant_name("student", mode, quantize) + ".onnx")
        if not os.path.exists(path):
            metadata = {"stage": "student (stand-in: untrained cores, teacher's dense layers)"}
            onnx_model = export.build_onnx_model(model, params, num_items, mode, k, quantize, metadata)
            export.onnx.save_model(onnx_model, path)
        paths[os.path.basename(path)[: -len(".onnx")]] = path
    return paths


def random_sessions(num_items: int, max_len: int, count: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, count)
    return [rng.integers(1, num_items + 1, length).tolist() for length in lengths]


def proc_status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB (Linux).

    VmHWM rather than ru_maxrss: the latter survives exec, so a child of a big parent would
    report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(path: str, calls: int, warmup: int, cpu: int, seed: int) -> dict:
    """Runs in a fresh process: pinned, one thread, batch 1."""
    os.sched_setaffinity(0, {cpu})
    from rec_kd.serve import serving

    rss_before = proc_status_mb("VmRSS")
    start = time.perf_counter()
    recommender = serving.Recommender.load(path, threads=1)
    load_s = time.perf_counter() - start
    sessions = random_sessions(recommender.num_items, recommender.max_len, warmup + calls, seed)
    for session in sessions[:warmup]:
        recommender.recommend(session)
    latencies = []
    for session in sessions[warmup:]:
        start = time.perf_counter()
        recommender.recommend(session)
        latencies.append(time.perf_counter() - start)
    latencies_ms = 1000 * np.asarray(latencies)
    return {
        "file_bytes": os.path.getsize(path),
        "load_s": round(load_s, 3),
        "calls": calls,
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 3),
        "p90_ms": round(float(np.percentile(latencies_ms, 90)), 3),
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 3),
        "mean_ms": round(float(latencies_ms.mean()), 3),
        "rss_before_load_mb": round(rss_before, 1),
        "rss_after_calls_mb": round(proc_status_mb("VmRSS"), 1),
        "peak_rss_mb": round(proc_status_mb("VmHWM"), 1),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
    }


def measure_in_subprocess(path: str, args) -> dict:
    command = [
        sys.executable,
        "-m",
        "launch.bench_device",
        f"--measure={path}",
        f"--calls={args.calls}",
        f"--warmup={args.warmup}",
        f"--cpu={args.cpu}",
        f"--seed={args.seed}",
    ]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo, check=False)
    if result.returncode:
        raise RuntimeError(f"measuring {path} failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout)


def evaluate(paths: dict[str, str], workdir: str, num_examples: int, batch_size: int = 256) -> dict:
    """HR@20 of every file on the first num_examples test examples, and int8 vs fp32 top-20 overlap."""
    from rec_kd.experiments import runs
    from rec_kd.serve import serving

    test = runs.load_run_data(workdir).test.head(num_examples)
    top = {}
    for name, path in paths.items():
        recommender = serving.Recommender.load(path)
        batches = [
            recommender.run(test.items[i : i + batch_size], test.lengths[i : i + batch_size])[0] for i in range(0, len(test), batch_size)
        ]
        top[name] = np.concatenate(batches)[:, :20]  # (n, 20)
    report = {"examples": len(test)}
    for name, ids in top.items():
        entry = {"hr@20": float(np.mean(np.any(ids == test.targets[:, None], axis=1)))}
        if name.endswith("_int8"):
            reference = top[name[: -len("int8")] + "fp32"]
            entry["top20_overlap_vs_fp32"] = float(np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, reference, strict=False)]))
        report[name] = entry
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.bench_device", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_workdir")
    parser.add_argument("--student_workdir")
    parser.add_argument("--out_dir", default="workdirs/export")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--cpu", type=int, default=0, help="the core every measurement is pinned to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_examples", type=int, default=0)
    parser.add_argument(
        "--standin_student_config",
        help="a student run dir whose config.json shapes a stand-in "
        "student (teacher's dense layers, untrained cores) when there is no --student_workdir",
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one file in this process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.calls, args.warmup, args.cpu, args.seed)))
        return 0
    if args.calls < 200:
        parser.error("--calls must be at least 200")
    os.makedirs(args.out_dir, exist_ok=True)
    paths = export_all(args.teacher_workdir, args.student_workdir, args.out_dir, args.k)
    if args.standin_student_config and not args.student_workdir:
        paths.update(export_standin_student(args.teacher_workdir, args.standin_student_config, args.out_dir, args.k))
    report = {
        "setup": {
            "batch": 1,
            "threads": 1,
            "cpu": args.cpu,
            "calls": args.calls,
            "warmup": args.warmup,
            "cpu_count": os.cpu_count(),
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "models": {name: measure_in_subprocess(path, args) for name, path in paths.items()},
    }
    if args.eval_examples:
        evaluated = {name: path for name, path in paths.items() if args.student_workdir or name.startswith("teacher")}
        report["eval"] = evaluate(evaluated, args.student_workdir or args.teacher_workdir, args.eval_examples)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
