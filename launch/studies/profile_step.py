"""Where a train step's time goes: its components at a dataset's shapes (Tmall's by default), timed interleaved in one process.

  python -m launch.studies.profile_step --data_dir=../shared/data --stage=teacher [--batch_sizes=100 --trials=5 --num_batches=40]

Every component runs over the same `num_batches` training batches in the trainer's order (the
real mix of length buckets, each bucket at least once). Trials are interleaved (A, B, C, A, B, C,
...), so load from other processes hits every component alike; the median ms per step of each is
printed with its share of the full step and, for the step, its multiple of the floor
(`launch.bench.floor_loss`). The components overlap (forward is part of grad, grad part of the
step), so the shares do not add up to 100%. docs/performance.md reads these numbers.

With --trace_dir, one more pass of the --traced_components runs under `jax.profiler` (a Perfetto
trace is written there, for ui.perfetto.dev), and the XLA operations that took longest in each
are printed, by name and by kind (the name without its numeric suffix); `launch.studies.xla_trace` says
how to read those times.
"""

import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from launch import bench
from launch.studies import xla_trace
from rec_kd import data as data_lib
from rec_kd import defaults
from rec_kd.models import DistillHeads, build_model
from rec_kd.train import host_memory, members, step
from rec_kd.train.sharding import Placement

_STAGE = flags.DEFINE_enum("stage", "teacher", ["teacher", "student"], "Which step to take apart.")
_TRIALS = flags.DEFINE_integer("trials", 5, "Interleaved trials; the median is reported.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 40, "Training batches per trial.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "", "If set: trace one more pass here (jax.profiler) and print top XLA ops.")
_TOP_OPS = flags.DEFINE_integer("top_ops", 12, "With --trace_dir: how many operations (and kinds) to print per component.")
_TRACED_COMPONENTS = flags.DEFINE_list("traced_components", ["full_step", "floor"], "With --trace_dir: the components traced.")


def interleaved(components: dict, num_batches: int, trials: int) -> dict[str, float]:
    """{name: median ms per batch}; each component is fn(i) -> arrays to block on."""
    for fn in components.values():  # compile every bucket
        jax.block_until_ready([fn(i) for i in range(num_batches)])
    times = {name: [] for name in components}
    for _ in range(trials):
        for name, fn in components.items():
            started = time.perf_counter()
            jax.block_until_ready([fn(i) for i in range(num_batches)])
            times[name].append(1e3 * (time.perf_counter() - started) / num_batches)
    return {name: statistics.median(values) for name, values in times.items()}


def profile_batches(data, batch_size: int, buckets, num_batches: int) -> tuple[list, int]:
    """The first `num_batches` training batches, with every length bucket present at least once."""
    all_batches = data_lib.train_batches(data.train, batch_size, data_seed=0, epoch=0, buckets=buckets)
    batches = all_batches[:num_batches]
    present = {b["items"].shape[1] for b in batches}
    missing = [w for w in buckets if w not in present and any(b["items"].shape[1] == w for b in all_batches)]
    for offset, width in enumerate(missing):
        batches[-1 - offset] = next(b for b in all_batches if b["items"].shape[1] == width)
    return batches, len(all_batches)


def components(stage: str, batch_size: int, data, placement) -> dict:
    """name -> fn(i): the full step and its parts, for batch i."""
    config = defaults.get_config(data.name, stage)
    config.train.batch_size = batch_size
    buckets = data_lib.bucket_lengths(config.data.max_len, tuple(config.data.buckets))
    batches, steps_per_epoch = profile_batches(data, batch_size, buckets, _NUM_BATCHES.value)
    teacher = bench.random_teacher(config, data, placement) if stage == "student" else None
    run = members.build_run(config, data, placement, teacher, steps_per_epoch)  # one member: no member axis
    on_device = [placement.put_batch(batch) for batch in batches]
    model = build_model(config, data.num_items)
    heads = DistillHeads(config.model.init_scheme) if stage == "student" else None
    loss_fn = step.make_loss_fn(model, heads, teacher.model if teacher else None, config.distill if stage == "student" else None)
    params, key, hparams = run.state["params"], jax.random.key(3), run.members["hparams"]

    def loss(p, batch):
        return loss_fn(p, batch, key, run.constants, run.teacher_params, hparams)

    forward = jax.jit(lambda p, batch: loss(p, batch)[0])
    grad = jax.jit(lambda p, batch: jax.grad(loss, has_aux=True)(p, batch)[0])
    grads = grad(params, on_device[0])
    optimizer = step.make_optimizer(config, steps_per_epoch)

    @jax.jit
    def adam(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def encoder_loss(p, batch):  # the encoder (fwd + bwd, the table gather's gradient included), no catalogue scores
        def encode(module, items, lengths):
            return module.encode(module.item_table(), items, lengths, True)

        session = model.apply({"params": p["model"]}, batch["items"], batch["lengths"], method=encode, rngs={"dropout": key})
        return jnp.sum(session * session)

    encoder_grad = jax.jit(jax.grad(encoder_loss))
    floor = bench.time_floor_fn(stage, config, batch_size, data.num_items + 1)
    live = {"state": run.init_state()}

    def full_step(i):
        live["state"], metrics = run.step(live["state"], placement.put_batch(batches[i]))
        return metrics

    return {
        "full_step": full_step,
        "floor": lambda i: floor(),
        "forward_only": lambda i: forward(params, on_device[i]),
        "grad_no_update": lambda i: grad(params, on_device[i]),
        "adam_update": lambda i: adam(params, run.state["opt_state"], grads),
        "grad_norm": lambda i: optax.tree.norm(grads),
        "encoder_fwd_bwd": lambda i: encoder_grad(params, on_device[i]),
        "put_batch": lambda i: placement.put_batch(batches[i]),
    }


def main(argv):
    del argv
    data = data_lib.load_dataset(bench._DATASET.value, bench._DATA_DIR.value)
    placement = Placement.over_all_devices()
    for batch_size in (int(size) for size in bench._BATCH_SIZES.value):
        all_components = components(_STAGE.value, batch_size, data, placement)
        medians = interleaved(all_components, _NUM_BATCHES.value, _TRIALS.value)
        full = medians["full_step"]
        report = {
            "stage": _STAGE.value,
            "batch_size": batch_size,
            "num_batches": _NUM_BATCHES.value,
            "trials": _TRIALS.value,
            "ms": {name: round(value, 2) for name, value in medians.items()},
            "pct_of_step": {name: round(100 * value / full, 1) for name, value in medians.items()},
            "step_over_floor": round(full / medians["floor"], 3),
        }
        if _TRACE_DIR.value:
            unknown = set(_TRACED_COMPONENTS.value) - set(all_components)
            if unknown:
                raise app.UsageError(f"--traced_components: unknown {sorted(unknown)}; expected some of {list(all_components)}")
            traced = {name: fn for name, fn in all_components.items() if name in _TRACED_COMPONENTS.value}
            trace_file = xla_trace.traced_pass(traced, _NUM_BATCHES.value, _TRACE_DIR.value)
            op_ms = xla_trace.read_op_ms(trace_file, _NUM_BATCHES.value)
            report["trace"] = trace_file
            report["top_ops_ms"] = {name: xla_trace.top(ms, _TOP_OPS.value) for name, ms in op_ms.items()}
            report["top_kinds_ms"] = {name: xla_trace.top(xla_trace.by_kind(ms), _TOP_OPS.value) for name, ms in op_ms.items()}
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    host_memory.restart_with_tunables()  # profile the step as rec_kd.main runs it
    app.run(main)
