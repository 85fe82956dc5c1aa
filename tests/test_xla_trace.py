"""launch.studies.xla_trace: XLA op times per component, from synthetic and real jax.profiler traces."""

import jax
import jax.numpy as jnp
import pytest

from launch.studies import xla_trace


def _complete(name, ts, dur, hlo_op=None):
    event = {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 1}
    if hlo_op is not None:
        event["args"] = {"hlo_op": hlo_op, "hlo_module": "jit_step"}
    return event


def test_xla_op_ms_sums_ops_inside_each_window_per_batch():
    annotation = xla_trace.COMPONENT_ANNOTATION
    events = [
        _complete(annotation + "full_step", 0, 1000),
        _complete("ynn_fusion.4", 10, 300, "ynn_fusion.4"),
        _complete("ynn_fusion.4", 500, 100, "ynn_fusion.4"),  # the same op again: summed
        _complete("copy.1", 900, 50, "copy.1"),
        _complete("ThunkExecutor::Execute", 5, 990),  # a runtime event, not an XLA op
        _complete("end: copy.1", 950, 1, None),
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "main"}},
        # As the Perfetto export writes an annotation: the name cut at ':', the whole in args.long_name.
        {"ph": "X", "name": "floor", "ts": 2000, "dur": 400, "args": {"long_name": annotation + "floor"}},
        _complete("ynn_fusion", 2100, 200, "ynn_fusion"),
        _complete("ynn_fusion.9", 1500, 700, "ynn_fusion.9"),  # between the windows: in neither
    ]
    result = xla_trace.xla_op_ms(events, num_batches=2)
    # us summed, / 1000 for ms, / 2 batches.
    assert result == {"full_step": {"ynn_fusion.4": 0.2, "copy.1": 0.025}, "floor": {"ynn_fusion": 0.1}}


def test_by_kind_drops_numeric_suffixes_and_top_orders_largest_first():
    kinds = xla_trace.by_kind({"ynn_fusion.44": 2.0, "ynn_fusion": 1.5, "copy.3": 0.25, "multiply_add_fusion.80": 0.125})
    assert kinds == {"ynn_fusion": 3.5, "copy": 0.25, "multiply_add_fusion": 0.125}
    assert list(xla_trace.top(kinds, 2).items()) == [("ynn_fusion", 3.5), ("copy", 0.25)]
    assert xla_trace.top({"a": 1.23456}, 5) == {"a": 1.23}


def test_traced_pass_writes_a_perfetto_trace_whose_xla_ops_land_in_their_component(tmp_path):
    matrix = jnp.ones((64, 64))
    square = jax.jit(lambda x: jnp.tanh(x @ x))
    add_one = jax.jit(lambda x: x + 1.0)
    components = {"square": lambda i: square(matrix), "add_one": lambda i: add_one(matrix)}
    jax.block_until_ready([fn(0) for fn in components.values()])  # compile outside the trace
    trace_file = xla_trace.traced_pass(components, num_batches=3, trace_dir=str(tmp_path))
    assert trace_file.startswith(str(tmp_path)) and trace_file.endswith("perfetto_trace.json.gz")
    op_ms = xla_trace.read_op_ms(trace_file, num_batches=3)
    if not any(op_ms.values()):
        pytest.fail(f"no XLA op events in {trace_file}: does this jaxlib's CPU runtime still emit per-thunk events?")
    assert set(op_ms) == {"square", "add_one"}
    assert all(ms >= 0 for ops in op_ms.values() for ms in ops.values())
    # Each program's own ops, and none of the other's: the matmul only where there is one.
    assert any("dot" in op or "fusion" in op for op in op_ms["square"])
    assert not any("dot" in op for op in op_ms["add_one"])
