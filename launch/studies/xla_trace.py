"""Reading a jax.profiler trace of jitted programs on the CPU: milliseconds per XLA operation.

`launch.studies.profile_step --trace_dir` uses it. What an operation's time means: the wall time of one
thunk on its executor thread. Thunks that XLA runs concurrently overlap, and an asynchronous one
(an Eigen `dot`) shows only its launch, its work landing in whatever runs beside it, so read
these times for where a step's time goes, not as a sum. No flags here, so tests import it freely.
"""

import collections
import glob
import gzip
import json
import os
import re

import jax

# Prefix of the profiler annotation around each traced component.
COMPONENT_ANNOTATION = "component:"


def traced_pass(components: dict, num_batches: int, trace_dir: str) -> str:
    """Runs every component once over its batches under jax.profiler; returns the Perfetto trace's path."""
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for name, fn in components.items():
            with jax.profiler.TraceAnnotation(COMPONENT_ANNOTATION + name):
                jax.block_until_ready([fn(i) for i in range(num_batches)])
    traces = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"{trace_dir}: jax.profiler wrote no plugins/profile/*/perfetto_trace.json.gz")
    return max(traces, key=os.path.getmtime)


def read_op_ms(trace_file: str, num_batches: int) -> dict[str, dict[str, float]]:
    """xla_op_ms of a Perfetto trace file (.json.gz) as traced_pass writes it."""
    with gzip.open(trace_file) as trace:
        return xla_op_ms(json.load(trace)["traceEvents"], num_batches)


def _full_name(event: dict) -> str:
    """An event's name as annotated: the Perfetto export cuts a name at ':' and keeps the whole in args.long_name."""
    return event.get("args", {}).get("long_name", event["name"])


def xla_op_ms(events: list[dict], num_batches: int) -> dict[str, dict[str, float]]:
    """{component: {XLA op: ms per batch}} from trace events (Chrome trace format, microseconds).

    A component's window is its annotation's event; an XLA operation is a complete event ('X')
    carrying `args.hlo_op`, counted in the window that contains its start.
    """
    complete = [event for event in events if event.get("ph") == "X"]
    result = {}
    for window in complete:
        annotation = _full_name(window)
        if not annotation.startswith(COMPONENT_ANNOTATION):
            continue
        start, end = window["ts"], window["ts"] + window["dur"]
        op_us = collections.defaultdict(float)
        for event in complete:
            op = event.get("args", {}).get("hlo_op")
            if op is not None and start <= event["ts"] <= end:
                op_us[op] += event["dur"]
        result[annotation[len(COMPONENT_ANNOTATION) :]] = {op: us / 1e3 / num_batches for op, us in op_us.items()}
    return result


def by_kind(op_ms: dict[str, float]) -> dict[str, float]:
    """Sums ops of one kind: 'ynn_fusion.44' and 'ynn_fusion' are both 'ynn_fusion'."""
    kinds = collections.defaultdict(float)
    for op, ms in op_ms.items():
        kinds[re.sub(r"\.\d+$", "", op)] += ms
    return dict(kinds)


def top(values: dict[str, float], count: int) -> dict[str, float]:
    """The `count` largest entries, largest first, rounded to 0.01."""
    return {name: round(value, 2) for name, value in sorted(values.items(), key=lambda item: -item[1])[:count]}
