"""Training and evaluation throughput at the paper's Tmall shapes; prints one JSON object.

  python -m launch.bench --data_dir=../shared/data [--stages=teacher,student] [--batch_sizes=100,256,1024]
  python -m launch.bench --data_dir=../shared/data --batch_sizes=100 --members=1,8 --eval=false   # vmapped seeds
  python -m launch.bench --data_dir=../shared/data --stages=student --variants=full,kd_cl,kd,ce --batch_sizes=100 --eval=false
  python -m launch.bench --data_dir=../shared/data --stages=teacher --losses=full,sampled --batch_sizes=100 --eval=false
  python -m launch.bench --data_dir=../shared/data --stages=teacher --losses=full,sampled --table_updates=dense,rows --eval=false

Training: examples/s of the real jitted train step (optimizer included, fp32), over batches drawn
from Tmall's training split in the trainer's own order (so the real length mix and buckets), with
compilation excluded: every bucket's step is compiled and run once before the clock starts. The
student runs the full objective (teacher forward, student forward, rec + KD + contrastive +
predictive) against a randomly initialised teacher, which costs the same as a trained one;
--variants times the objective ablations too (rec_kd.defaults.VARIANTS: `kd` leaves out the
contrastive and predictive losses and their heads, `ce` the teacher as well), each row naming its
variant, so what a loss costs is a ratio measured in one process. --losses=full,sampled times the
full softmax and the sampled one (train.loss, rec_kd/train/sampling.py) the same way; a sampled row's
floor is still the full catalogue's cross-entropy, so its step_over_floor says how far below the
full softmax's own floor the sampled step gets. --table_updates=dense,rows times the sampled teacher
with both updates of its table (train.table_update, rec_kd/train/row_sparse.py).
With --members=1,8, each (stage, batch size) is also timed as N members (seeds 0..N-1) trained by
one vmapped step (rec_kd.train.members.build_run, the program of rec_kd.train.loop.train_members): `model_examples_per_s` counts every
member's examples, and `speedup_vs_sequential` divides it by the one-member rate, i.e. N models
vmapped against the same N trained one after another.
Floor: each training row also times, in the same process right after the step, the catalogue work
its objective cannot avoid: for the teacher the cross-entropy over the full catalogue, forward and
backward ((B, d) @ (d, N+1), log-softmax, gradients to the session vectors and the table); for the
student its own cross-entropy, the teacher's catalogue scores, the KD softmaxes and the predictive
loss's two catalogue products, with their gradients. `step_over_floor` (wall time) and
`step_over_floor_cpu` (process CPU time, steadier on a shared machine) are what we track: a ratio
measured in one process does not depend on the machine (docs/performance.md). For N vmapped
members the floor counts N models' catalogue work, although the frozen teacher's forward (part of
the student's floor) runs once for all of them: the ratio is then slightly pessimistic.
Evaluation: seconds for full-ranking metrics over the whole Tmall test split, compiled first.
Peak memory: the device's peak bytes in use where the backend reports it, else the process's
peak RSS. Figures are machine-dependent: record the machine and date beside them.
"""

import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from rec_kd import data as data_lib
from rec_kd import defaults, evaluation
from rec_kd.experiments import runs
from rec_kd.models import build_model, init_model_params
from rec_kd.train import host_memory, losses, members
from rec_kd.train.sharding import Placement

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Folder holding tmall/.")
_DATASET = flags.DEFINE_string("dataset", "tmall", "Dataset whose shapes are benchmarked.")
_STAGES = flags.DEFINE_list("stages", ["teacher", "student"], "Which train steps to time.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["100", "256", "1024"], "Global batch sizes to time.")
_MEMBERS = flags.DEFINE_list("members", ["1"], "Member counts to time (vmapped seeds); 1 = a single model.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Timed training seconds per (stage, batch size), at least.")
_FLOOR_CALLS = flags.DEFINE_integer("floor_calls", 30, "Timed calls of each floor program (after one to compile).")
_VARIANTS = flags.DEFINE_list("variants", ["full"], "Student variants to time (rec_kd.defaults.VARIANTS), e.g. full,kd,ce.")
_LOSSES = flags.DEFINE_list("losses", ["full"], "Recommendation losses to time (train.loss): full, sampled.")
_TABLE_UPDATES = flags.DEFINE_list(
    "table_updates", ["dense"], "Teacher table updates to time with the sampled loss (train.table_update): dense, rows."
)
_EVAL = flags.DEFINE_bool("eval", True, "Also time full-ranking evaluation of the test split.")


def random_teacher(config, data, placement) -> runs.Teacher:
    teacher_config = defaults.get_config(config.dataset, "teacher")
    model = build_model(teacher_config, data.num_items)
    params = jax.jit(lambda: init_model_params(model, config.data.max_len, jax.random.key(1)), out_shardings=placement.replicated)()
    return runs.Teacher(model=model, params=params, step=0, workdir="(random init)", config=teacher_config)


def time_training(
    stage: str, batch_size: int, data, placement, num_members: int = 1, variant: str = "full", loss: str = "full", table_update="dense"
) -> dict:
    config = defaults.get_config(data.name, f"student,{variant}" if stage == "student" else stage)
    config.train.batch_size = batch_size
    config.train.loss = loss
    config.train.table_update = table_update
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    batches = data_lib.train_batches(data.train, batch_size, data_seed=0, epoch=0, buckets=buckets)
    teacher = random_teacher(config, data, placement) if stage == "student" else None
    configs = [config.copy_and_resolve_references() for _ in range(num_members)]
    for seed, member_config in enumerate(configs):
        member_config.seed = seed
    run = members.build_run(configs, data, placement, teacher, len(batches))
    state = run.state

    def step(state, batch):
        return run.step(state, placement.put_batch(batch))

    # Compile every bucket's step before timing.
    compile_started = time.perf_counter()
    for width in sorted({batch["items"].shape[1] for batch in batches}):
        state, metrics = step(state, next(b for b in batches if b["items"].shape[1] == width))
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - compile_started

    examples, started, cpu_started, index = 0, time.perf_counter(), time.process_time(), 0
    faults_started = minor_faults()
    while time.perf_counter() - started < _SECONDS.value and index < len(batches):
        state, metrics = step(state, batches[index])
        examples += int(batches[index]["weights"].sum())
        index += 1
    jax.block_until_ready(metrics)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    faults = minor_faults() - faults_started
    floor = time_floor(stage, config, batch_size, data.num_items + 1)
    step_ms, step_cpu_ms = 1000 * seconds / index, 1000 * cpu_seconds / index
    return {
        "stage": stage,
        "variant": config.variant,
        "loss": loss,
        "table_update": table_update,
        "batch_size": batch_size,
        "members": num_members,
        "model_examples_per_s": num_members * examples / seconds,
        "steps": index,
        "examples": examples,
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "compile_and_warmup_s": compile_seconds,
        "step_ms": step_ms,
        "step_cpu_ms": step_cpu_ms,
        "floor_ms": floor["ms"],
        "floor_cpu_ms": floor["cpu_ms"],
        # The floor is one model's; N members need N floors.
        "step_over_floor": step_ms / (num_members * floor["ms"]),
        "step_over_floor_cpu": step_cpu_ms / (num_members * floor["cpu_ms"]),
        "step_minor_faults": faults / index,
        "floor_minor_faults": floor["minor_faults"],
    }


def floor_loss(stage: str, distill_config):
    """The catalogue work of a stage's objective alone: loss(trained, frozen, batch) (see the module doc).

    A student's floor has the catalogue terms its variant computes (rec_kd.train.losses.objective_terms,
    which leaves out a term whose weight is zero), summed unweighted; the contrastive term works
    within the batch, not over the catalogue, so it is not part of the floor.
    """

    def teacher_floor(trained, frozen, batch):
        return losses.rec_loss({"scores": trained["session"] @ trained["table"].T}, batch)[0]

    def student_floor(trained, frozen, batch):
        scores = trained["session"] @ trained["table"].T
        teacher_scores = frozen["session"] @ frozen["table"].T
        outputs = {
            "scores": scores,
            "teacher_scores": teacher_scores,
            "table": trained["table"],
            "teacher_table": frozen["table"],
            "pred_student": trained["pred_student"],
            "pred_teacher": trained["pred_teacher"],
            "eligible": batch["weights"] > 0,
        }
        catalogue_terms = [loss_fn for name, _, loss_fn in losses.objective_terms(distill_config) if name != "cl"]
        return sum(loss_fn(outputs, batch)[0] for loss_fn in catalogue_terms)

    return teacher_floor if stage == "teacher" else student_floor


def time_floor_fn(stage: str, config, batch_size: int, num_rows: int):
    """() -> the floor's gradients for one batch, on random inputs of the step's shapes (compiled on first call)."""
    dim = config.model.hidden_dim
    keys = jax.random.split(jax.random.key(0), 6)
    trained = {"session": jax.random.normal(keys[0], (batch_size, dim)), "table": 0.1 * jax.random.normal(keys[1], (num_rows, dim))}
    frozen = {"session": jax.random.normal(keys[2], (batch_size, dim)), "table": 0.1 * jax.random.normal(keys[3], (num_rows, dim))}
    if stage == "student":
        trained.update(
            pred_student=jax.random.normal(keys[4], (batch_size, dim)), pred_teacher=jax.random.normal(keys[5], (batch_size, dim))
        )
    batch = {"targets": jnp.arange(batch_size, dtype=jnp.int32) % num_rows + 1, "weights": jnp.ones((batch_size,))}
    grad_fn = jax.jit(jax.grad(floor_loss(stage, config.distill)))
    return lambda: grad_fn(trained, frozen, batch)


def time_floor(stage: str, config, batch_size: int, num_rows: int) -> dict:
    """Median wall and CPU milliseconds of one call of the floor's forward and backward."""
    floor = time_floor_fn(stage, config, batch_size, num_rows)
    jax.block_until_ready(floor())  # compile
    wall, cpu, faults = [], [], []
    for _ in range(_FLOOR_CALLS.value):
        started, cpu_started, faults_started = time.perf_counter(), time.process_time(), minor_faults()
        jax.block_until_ready(floor())
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        faults.append(minor_faults() - faults_started)
    return {"ms": 1000 * float(np.median(wall)), "cpu_ms": 1000 * float(np.median(cpu)), "minor_faults": float(np.median(faults))}


def minor_faults() -> int:
    """The process's minor page faults so far: each is a fresh page the kernel had to map (and zero) for us."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_evaluation(data, placement, eval_batch_size: int = 500) -> dict:
    config = defaults.get_config(data.name, "teacher")
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    run = members.build_run(config, data, placement, None, 1)

    def evaluate_split():
        batches = data_lib.eval_batches(data.test, eval_batch_size, buckets=buckets)
        return evaluation.split_totals(lambda b: run.metric_sums(run.state["params"], b, run.constants), batches, placement.put_batch)

    evaluate_split()  # compile every bucket
    started = time.perf_counter()
    evaluate_split()
    seconds = time.perf_counter() - started
    return {
        "split": "test",
        "examples": len(data.test),
        "seconds": seconds,
        "examples_per_s": len(data.test) / seconds,
        "eval_batch_size": eval_batch_size,
    }


def peak_memory() -> dict:
    stats = jax.devices()[0].memory_stats() or {}
    memory = {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if "peak_bytes_in_use" in stats:
        memory["device_peak_bytes_in_use"] = stats["peak_bytes_in_use"]
    return memory


def main(argv):
    del argv
    data = data_lib.load_dataset(_DATASET.value, _DATA_DIR.value)
    placement = Placement.over_all_devices()
    report = {
        "machine": {
            "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()],
            "cpu": platform.processor() or platform.machine(),
            "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        },
        "dataset": data.name,
        "num_items": data.num_items,
        "training": [],
    }
    timed = [(stage, variant) for stage in _STAGES.value for variant in (_VARIANTS.value if stage == "student" else ["teacher"])]
    for stage, variant in timed:
        settings = [
            (int(size), loss, update)
            for size in _BATCH_SIZES.value
            for loss in _LOSSES.value
            for update in (_TABLE_UPDATES.value if loss == "sampled" and stage == "teacher" else ["dense"])
        ]
        for batch_size, loss, update in settings:
            rows = [time_training(stage, batch_size, data, placement, int(n), variant, loss, update) for n in _MEMBERS.value]
            single = next((row for row in rows if row["members"] == 1), None)
            for row in rows:
                if single is not None:
                    row["speedup_vs_sequential"] = row["model_examples_per_s"] / single["model_examples_per_s"]
            report["training"].extend(rows)
    for stage, variant in timed:
        rows = [row for row in report["training"] if row["variant"] == variant and row["members"] == 1 and row["loss"] == "full"]
        if not rows:
            continue
        best = max(rows, key=lambda row: row["examples_per_s"])
        name = stage if variant in ("teacher", "full") else f"{stage}_{variant}"  # student_best: the full objective, as before
        report[f"{name}_best"] = {"batch_size": best["batch_size"], "examples_per_s": best["examples_per_s"]}
    if _EVAL.value:
        report["evaluation"] = time_evaluation(data, placement)
    report["memory"] = peak_memory()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    host_memory.restart_with_tunables()  # time the step as rec_kd.main runs it
    app.run(main)
