"""Export a trained teacher or student to an ONNX Runtime model that answers top-K recommendations.

`python -m rec_kd.serve.export --workdir=DIR --out=PATH [--quantize=int8] [--mode=materialized|factored] [--k=20]`

The ONNX graph is written op by op (onnx.helper) from the run's selected parameters: it *is* the
model (Gather, LayerNorm, causal + padding masked attention, exact GELU via Erf, the soft-attention
readout, full-catalogue scores, TopK), so ONNX Runtime computes it on any device it runs on,
including phones (ONNX Runtime Mobile). jax2onnx was not used: its release for this JAX pins
orbax-checkpoint < 0.11.37, below the project's 0.12.8 (see docs/export.md).

The student's table stays compressed in the file: only its compressed parameters are stored
(the STTD cores, or the low-rank factors, hash buckets and weights, QR tables, mixed-dimension
blocks and projections with the packed hot-row mask; rec_kd/compress, each spec's onnx_table).
- mode 'materialized' (every kind): the graph builds the dense table from those parameters; every
  input of that subgraph is a constant, so ONNX Runtime folds it once when the session is created
  (the RAM cost and the lookup speed of a dense table, the file size of the compressed one).
- mode 'factored' (STTD only): no dense table ever exists. Input rows come from the cores by their item-id
  digits (METHOD.md's row-by-row definition), and for K = 2 the scores are contracted through the
  cores: with G_1 viewed as (I_1, J_1, R_1/t, t), row x*I_2 + y, width j*J_2 + c*t + v,
      T[b, x, a, c]  = sum_{j, v} s[b, j, c, v] G_1[x, j, a, v]
      scores[b, x*I_2 + y] = sum_{a, c} T[b, x, a, c] G_2[a, y, c].
The teacher's dense table is a plain initializer (mode 'dense').

int8 (`--quantize=int8`): weight-only, symmetric per-channel int8 for every weight matrix (the
table or the cores included), stored as int8 + fp32 scales and dequantised in the graph
(Cast, Mul), which ONNX Runtime folds once at load; activations and arithmetic stay fp32, so int8
shrinks the file, not the RAM or the latency.

Inputs: int32 item ids (B, max_len) right-padded with 0 and int32 lengths (B,). Outputs: top-K
item ids (B, K) int64 in [1, num_items] (padding and rows past num_items are never candidates)
and their scores (B, K) float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_ITEMS = "session_items"
INPUT_LENGTHS = "session_length"
OUTPUT_IDS = "top_items"
OUTPUT_SCORES = "top_scores"
MODES = ("materialized", "factored")
# Flax's LayerNorm epsilon and the model's attention mask value (rec_kd/models/layers.py).
LAYER_NORM_EPSILON = 1e-6
ATTENTION_MASK_VALUE = -10000.0
# Weights smaller than this stay fp32 under int8 (biases, LayerNorm gains: no gain in bytes).
MIN_QUANTIZED_SIZE = 1024


class ExportError(ValueError):
    """A workdir, option or model that cannot be exported; the message names which and why."""


# ----------------------------------------------------------------------------------------------
# A tiny graph builder: nodes and initializers with fresh names.
# ----------------------------------------------------------------------------------------------


class GraphBuilder:
    """Collects ONNX nodes and initializers; int8 mode stores big weights as int8 + scales."""

    def __init__(self, quantize: str | None):
        self.nodes = []
        self.initializers = []
        self.quantize = quantize
        self._counter = 0

    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def constant(self, value, name: str | None = None, dtype=None) -> str:
        """An initializer holding `value` exactly (index tensors, shapes, scalars, small weights)."""
        array = np.asarray(value, dtype=dtype)
        name = name or self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, value) -> str:
        """A float weight: fp32, or int8 with per-channel scales and a DequantizeLinear node."""
        array = np.asarray(value, dtype=np.float32)
        if self.quantize != "int8" or array.ndim < 2 or array.size < MIN_QUANTIZED_SIZE:
            return self.constant(array, name)
        axis = quantization_axis(array.shape)
        quantized, scale = quantize_symmetric(array, axis)
        # Cast + Mul rather than DequantizeLinear: ONNX Runtime constant-folds these at load, while it
        # keeps DequantizeLinear nodes unfolded (for QDQ fusion) and would dequantise on every call.
        scale_shape = [1] * array.ndim
        scale_shape[axis] = -1
        q_name = self.constant(quantized, f"{name}_int8")
        s_name = self.constant(scale.reshape(scale_shape), f"{name}_scale")
        return self.op("Mul", self.op("Cast", q_name, to=TensorProto.FLOAT), s_name, out=name)

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    # Shorthands for the ops used more than once.
    def reshape(self, x: str, shape) -> str:
        return self.op("Reshape", x, self.constant(np.asarray(shape, dtype=np.int64)))

    def reduce_sum(self, x: str, axis: int, keepdims: int) -> str:
        return self.op("ReduceSum", x, self.constant(np.asarray([axis], dtype=np.int64)), keepdims=keepdims)

    def unsqueeze(self, x: str, axes) -> str:
        return self.op("Unsqueeze", x, self.constant(np.asarray(axes, dtype=np.int64)))

    def dense(self, x: str, params: dict, name: str) -> str:
        y = self.op("MatMul", x, self.weight(f"{name}.kernel", params["kernel"]))
        if "bias" in params:
            y = self.op("Add", y, self.weight(f"{name}.bias", params["bias"]))
        return y

    def layer_norm(self, x: str, params: dict, name: str) -> str:
        scale = self.weight(f"{name}.scale", params["scale"])
        bias = self.weight(f"{name}.bias", params["bias"])
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=LAYER_NORM_EPSILON)


# Slices smaller than this would spend too much of the file on their fp32 scales (4 bytes each).
MIN_QUANTIZED_SLICE = 16


def quantization_axis(shape) -> int:
    """The axis that gets one scale per slice: the longest (ties: the last, output channels).

    Unless its slices would be tiny: a tall, thin matrix ((P, 4) low-rank factors, (P, 2) hash
    weights) would pay a 4-byte scale per row of 4 or 2 int8 values, so it gets one scale per
    column (the longest of the other axes) instead.
    """

    def longest(axes):
        size = max(shape[axis] for axis in axes)
        return max(axis for axis in axes if shape[axis] == size)

    axis = longest(range(len(shape)))
    if math.prod(shape) // shape[axis] < MIN_QUANTIZED_SLICE:
        axis = longest([other for other in range(len(shape)) if other != axis])
    return axis


def quantize_symmetric(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values q and scales (one per slice along `axis`) with array ~= q * scale."""
    other_axes = tuple(a for a in range(array.ndim) if a != axis)
    max_abs = np.max(np.abs(array), axis=other_axes)  # (shape[axis],)
    scale = np.where(max_abs > 0, max_abs / 127.0, 1.0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    quantized = np.clip(np.round(array / scale.reshape(shape)), -127, 127).astype(np.int8)
    return quantized, scale


# ----------------------------------------------------------------------------------------------
# The item table: built from the stored compressed parameters (every kind's spec.onnx_table), or
# for STTD also factored.
# ----------------------------------------------------------------------------------------------


def item_digits(g: GraphBuilder, items: str, spec) -> list[str]:
    """Mixed-radix digits (i_1..i_K) of int32 item ids, i_1 most significant."""
    digits = []
    remainder = items
    for factor in reversed(spec.item_factors):
        radix = g.constant(np.asarray(factor, dtype=np.int32))
        digits.append(g.op("Mod", remainder, radix))
        remainder = g.op("Div", remainder, radix)
    return digits[::-1]


def factored_lookup(g: GraphBuilder, cores: list[str], spec, items: str) -> str:
    """(B, L, d) rows of the table for (B, L) ids, as sttd.materialize_rows (no dense table)."""
    ranks = (1, *spec.ranks, 1)
    t = spec.t
    digits = item_digits(g, items, spec)
    running = g.op("Gather", cores[0], digits[0], axis=0)  # (B, L, J_1, R_1)
    width = spec.dim_factors[0]
    for k in range(1, spec.num_cores):
        chunks = g.reshape(running, [0, 0, width, ranks[k] // t, t])  # (B, L, W, R_{k-1}/t, t)
        core_rows = g.op("Gather", cores[k], digits[k], axis=1)  # (R_{k-1}/t, B, L, J_k R_k/t)
        grown = g.op("Einsum", chunks, core_rows, equation="blwav,ablc->blwcv")  # (B, L, W, J_k R_k/t, t)
        width *= spec.dim_factors[k]
        running = g.reshape(grown, [0, 0, width, ranks[k + 1]])
    return g.reshape(running, [0, 0, spec.dim])  # (B, L, d)


def factored_scores(g: GraphBuilder, cores: list[str], spec, session: str) -> str:
    """(B, P) scores s . E[row] contracted through the two cores (module docstring)."""
    if spec.num_cores != 2:
        raise ExportError(f"factored scoring is implemented for K = 2 cores, the spec has K = {spec.num_cores}")
    (i1, i2), (j1, j2), (r1,), t = spec.item_factors, spec.dim_factors, spec.ranks, spec.t
    s = g.reshape(session, [-1, j1, j2 // t, t])  # (B, J_1, J_2/t, t): width j*J_2 + c*t + v
    g1 = g.reshape(cores[0], [i1, j1, r1 // t, t])  # (I_1, J_1, R_1/t, t)
    partial = g.op("Einsum", s, g1, equation="bjcv,xjav->bxac")  # (B, I_1, R_1/t, J_2/t)
    scores = g.op("Einsum", partial, cores[1], equation="bxac,ayc->bxy")  # (B, I_1, I_2)
    return g.reshape(scores, [-1, i1 * i2])  # (B, P)


# ----------------------------------------------------------------------------------------------
# The network.
# ----------------------------------------------------------------------------------------------


def session_item_bonus(g: GraphBuilder, num_items: int, bonus: float, length: int) -> str:
    """(B, N) `bonus` at each item 1..N the session holds, else 0: SeqRecModel's repeat_bonus.

    The ids at positions before the session's length are counted into a (B, N + 1) row of zeros
    (ScatterElements with reduction 'add', so repeated ids and the padding id 0 are well defined;
    column 0 is cut off), and a count above 0 gets the bonus: one catalogue-wide row per query and
    no (B, L, N) one-hot.
    """
    one = g.constant(np.asarray([1], np.int64))
    positions = g.constant(np.arange(length, dtype=np.int32)[None, :])  # (1, L)
    inside = g.op("Less", positions, g.unsqueeze(INPUT_LENGTHS, [1]))  # (B, L)
    held_ids = g.op("Where", inside, INPUT_ITEMS, g.constant(np.zeros((1, 1), np.int32)))  # (B, L); past the length: 0
    batch = g.op("Slice", g.op("Shape", INPUT_ITEMS), g.constant(np.asarray([0], np.int64)), one)  # (1,)
    shape = g.op("Concat", batch, g.constant(np.asarray([num_items + 1], np.int64)), axis=0)
    zeros = g.op("ConstantOfShape", shape, value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    ones = g.op("ConstantOfShape", g.op("Shape", INPUT_ITEMS), value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    counts = g.op("ScatterElements", zeros, held_ids, ones, axis=1, reduction="add")  # (B, N + 1)
    held = g.op("Cast", g.op("Greater", counts, g.constant(np.zeros((1, 1), np.float32))), to=TensorProto.FLOAT)
    bonuses = g.op("Mul", held, g.constant(np.full((1, 1), bonus, np.float32)))
    return g.op("Slice", bonuses, one, g.constant(np.asarray([num_items + 1], np.int64)), one)  # (B, N)


def transformer_block(g: GraphBuilder, x: str, allowed: str, params: dict, name: str, dim: int, num_heads: int) -> str:
    """rec_kd.models.layers.TransformerBlock at inference (no dropout)."""
    head_dim = dim // num_heads

    def heads(part: str, perm) -> str:  # (B, L, D) -> (B, H, L, Dh) or (B, H, Dh, L)
        y = g.dense(x, params[part], f"{name}.{part}")
        return g.op("Transpose", g.reshape(y, [0, 0, num_heads, head_dim]), perm=perm)

    query, key_t, value = heads("query", [0, 2, 1, 3]), heads("key", [0, 2, 3, 1]), heads("value", [0, 2, 1, 3])
    logits = g.op("Div", g.op("MatMul", query, key_t), g.constant(np.float32(math.sqrt(head_dim))))  # (B, H, L, L)
    logits = g.op("Where", allowed, logits, g.constant(np.float32(ATTENTION_MASK_VALUE)))
    probs = g.op("Softmax", logits, axis=-1)
    attended = g.op("Transpose", g.op("MatMul", probs, value), perm=[0, 2, 1, 3])  # (B, L, H, Dh)
    attended = g.dense(g.reshape(attended, [0, 0, dim]), params["attention_out"], f"{name}.attention_out")
    x = g.layer_norm(g.op("Add", x, attended), params["attention_norm"], f"{name}.attention_norm")

    hidden = g.dense(x, params["ffn_in"], f"{name}.ffn_in")
    erf = g.op("Erf", g.op("Div", hidden, g.constant(np.float32(math.sqrt(2.0)))))
    hidden = g.op("Div", g.op("Mul", hidden, g.op("Add", erf, g.constant(np.float32(1.0)))), g.constant(np.float32(2.0)))
    hidden = g.dense(hidden, params["ffn_out"], f"{name}.ffn_out")
    return g.layer_norm(g.op("Add", x, hidden), params["ffn_norm"], f"{name}.ffn_norm")


def soft_attention_readout(g: GraphBuilder, h: str, mask: str, params: dict, summary: str | None = None) -> str:
    """rec_kd.models.layers.SoftAttentionReadout: (B, L, D), (B, L, 1) float mask [, (B, D) summary] -> (B, D)."""
    count = g.op("Max", g.reduce_sum(mask, 1, keepdims=0), g.constant(np.float32(1.0)))  # (B, 1)
    mean = g.op("Div", g.reduce_sum(g.op("Mul", h, mask), 1, keepdims=0), count)  # (B, D)
    if summary is not None:
        mean = g.op("Add", mean, summary)
    gate = g.dense(g.op("Tanh", h), params["w1"], "readout.w1")  # (B, L, D)
    gate = g.op("Add", gate, g.unsqueeze(g.dense(mean, params["w2_mean"], "readout.w2_mean"), [1]))
    beta = g.dense(g.op("Sigmoid", gate), params["w_beta"], "readout.w_beta")  # (B, L, 1)
    return g.reduce_sum(g.op("Mul", g.op("Mul", beta, mask), h), 1, keepdims=0)  # (B, D)


def as_numpy_tree(tree):
    if isinstance(tree, dict):
        return {key: as_numpy_tree(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [as_numpy_tree(value) for value in tree]
    array = np.asarray(tree)
    return array if np.issubdtype(array.dtype, np.integer) else array.astype(np.float32)  # a codes table's codes stay integers


def top_k_outputs(g: GraphBuilder, model, params: dict, session: str, table: str | None, cores, row_of: str | None, num_items: int, k: int):
    """The graph's outputs: the top-k items 1..N (OUTPUT_IDS) and their scores (OUTPUT_SCORES) for (B, d) sessions.

    `table` is the materialised (rows, d) table, or None for factored scoring from `cores`; `row_of`
    the item -> row map constant, if any. The learned copy and the repeat bonus are added here.
    """
    spec, length = model.spec, model.max_len
    factored = table is None
    if not factored:
        scores = g.op("Gemm", session, table, transB=1)  # (B, rows of the table)
    else:
        scores = factored_scores(g, cores, spec, session)  # (B, P)
    if row_of is not None and factored:
        # Factored scores come in table-row order: take items 1..N's rows, in item order.
        real_rows = g.op(
            "Slice", row_of, g.constant(np.asarray([1], np.int64)), g.constant(np.asarray([num_items + 1], np.int64))
        )  # (N,): the map is stored once
        real = g.op("Gather", scores, real_rows, axis=1)  # (B, N)
    else:
        # Candidates are items 1..N: the padding row and rows past num_items are cut off here.
        real = g.op(
            "Slice",
            scores,
            g.constant(np.asarray([1], np.int64)),
            g.constant(np.asarray([num_items + 1], np.int64)),
            g.constant(np.asarray([1], np.int64)),
        )  # (B, N)
    # The learned copy bonus (in the scores) and the ranking-only repeat bonus act alike on the session's items.
    bonus = model.repeat_bonus + (float(params["copy_bonus"]) if getattr(model, "copy_bonus", False) else 0.0)
    if bonus:
        real = g.op("Add", real, session_item_bonus(g, num_items, bonus, length))  # what the model ranks by
    top_scores, top_index = f"{OUTPUT_SCORES}", g.fresh("top_index")
    g.nodes.append(helper.make_node("TopK", [real, g.constant(np.asarray([k], np.int64))], [top_scores, top_index], axis=-1))
    g.op("Add", top_index, g.constant(np.int64(1)), out=OUTPUT_IDS)


def build_graph(model, params, num_items: int, mode: str, k: int, quantize: str | None) -> onnx.GraphProto:
    """The ONNX graph of a SeqRecModel with `params` (a flax params dict) answering top-k."""
    if mode not in MODES:
        raise ExportError(f"unknown table mode {mode!r}; expected one of {MODES}")
    if not 1 <= k <= num_items:
        raise ExportError(f"k = {k} must lie in [1, num_items = {num_items}]")
    from rec_kd.compress import sttd  # JAX; imported here so reading a run's JSON does not need it

    params = as_numpy_tree(params)
    g = GraphBuilder(quantize)
    length, dim, spec = model.max_len, model.hidden_dim, model.spec
    factored = mode == "factored" and isinstance(spec, sttd.STTDSpec)
    if mode == "factored" and not factored and model.table_spec is not None:  # a dense table ignores the mode
        raise ExportError(f"mode 'factored' is for STTD tables; this model's table is {type(spec).__name__} (use 'materialized')")

    # The 'mean+summary' readout appends one column: the summary token sits at position `length`.
    summary = getattr(model, "readout", "mean") == "mean+summary"
    width = length + summary
    items = INPUT_ITEMS  # (B, L) int32
    if summary:
        items = g.op("Pad", items, g.constant(np.asarray([0, 0, 0, 1], np.int64)))  # (B, L + 1)
    lengths = g.unsqueeze(INPUT_LENGTHS, [1])  # (B, 1)
    positions = g.constant(np.arange(width, dtype=np.int32)[None, :])  # (1, W)
    mask_bool = g.op("Less", positions, lengths)  # (B, W)
    mask = g.unsqueeze(g.op("Cast", mask_bool, to=TensorProto.FLOAT), [2])  # (B, W, 1)
    causal = g.constant(np.tril(np.ones((width, width), dtype=bool))[None, None])  # (1, 1, W, W)
    allowed = g.op("And", causal, g.unsqueeze(mask_bool, [1, 2]))  # (B, 1, L, L)

    # A shuffled or clustered row order (SeqRecModel.item_rows) is one constant: item id -> table row.
    item_rows = model.item_rows()
    row_of = None if item_rows is None else g.constant(item_rows)  # (N + 1,) int32
    if factored:
        table, cores = None, sttd.onnx_core_names(g, sttd.core_list(params[spec.param_name]))
        embedded = factored_lookup(g, cores, spec, items if row_of is None else g.op("Gather", row_of, items, axis=0))
    else:
        weights = params[spec.param_name]
        if model.table_spec is None:  # a dense table: the rows past num_items (train.shard_item_table's padding) stay behind
            weights = weights[: num_items + 1]
        cores, table = None, spec.onnx_table(g, weights)  # (rows, d): the stored weights, folded at load
        if row_of is not None:
            table = g.op("Gather", table, row_of, axis=0)  # (N + 1, d), in item order
        embedded = g.op("Gather", table, items, axis=0)
    if summary:
        is_summary = g.unsqueeze(g.op("Equal", positions, lengths), [2])  # (B, W, 1)
        embedded = g.op("Where", is_summary, g.weight("summary_embedding", params["summary_embedding"]), embedded)
    x = g.op("Add", embedded, g.weight("position_embedding", params["position_embedding"][:width]))
    x = g.layer_norm(x, params["input_norm"], "input_norm")
    for i in range(model.num_layers):
        x = transformer_block(g, x, allowed, params[f"block_{i}"], f"block_{i}", dim, model.num_heads)
    summary_vector = None
    if summary:  # the token's encoder output: (B, d)
        summary_vector = g.reduce_sum(g.op("Mul", x, g.op("Cast", is_summary, to=TensorProto.FLOAT)), 1, keepdims=0)
    session = soft_attention_readout(g, x, mask, params["readout"], summary_vector)  # (B, d)

    top_k_outputs(g, model, params, session, table, cores, row_of, num_items, k)

    inputs = [
        helper.make_tensor_value_info(INPUT_ITEMS, TensorProto.INT32, ["batch", length]),
        helper.make_tensor_value_info(INPUT_LENGTHS, TensorProto.INT32, ["batch"]),
    ]
    outputs = [
        helper.make_tensor_value_info(OUTPUT_IDS, TensorProto.INT64, ["batch", k]),
        helper.make_tensor_value_info(OUTPUT_SCORES, TensorProto.FLOAT, ["batch", k]),
    ]
    return helper.make_graph(g.nodes, "rec_kd_recommender", inputs, outputs, g.initializers)


def build_onnx_model(
    model, params, num_items: int, mode: str = "materialized", k: int = 20, quantize: str | None = None, metadata: dict | None = None
) -> onnx.ModelProto:
    """A checked ONNX model; `metadata` (plus num_items, max_len, k, mode, repeat_bonus) goes in metadata_props."""
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantization {quantize!r}; expected int8 or none")
    graph = build_graph(model, params, num_items, mode, k, quantize)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rec_kd.serve.export")
    onnx_model.ir_version = 8
    table_mode = "dense" if model.table_spec is None else mode
    props = {
        "num_items": num_items,
        "max_len": model.max_len,
        "k": k,
        "table_mode": table_mode,
        "quantize": quantize or "none",
        "repeat_bonus": model.repeat_bonus,
        **(metadata or {}),
    }
    helper.set_model_props(onnx_model, {key: str(value) for key, value in props.items()})
    onnx.checker.check_model(onnx_model)
    return onnx_model


# ----------------------------------------------------------------------------------------------
# From a workdir: load, export, and the JAX reference answer.
# ----------------------------------------------------------------------------------------------


def read_run_field(workdir: str, file_name: str, field: str, cast=str):
    """`cast(value)` of one field of a run's JSON file (results.json, config.json); ExportError names the file."""
    path = os.path.join(workdir, file_name)
    try:
        with open(path) as f:
            return cast(json.load(f)[field])
    except FileNotFoundError:
        raise ExportError(f"{path}: missing; is {workdir} a finished rec_kd run?") from None
    except (KeyError, ValueError, TypeError) as error:
        raise ExportError(f"{path}: no readable {field} ({type(error).__name__})") from None


def read_num_items(workdir: str) -> int:
    return read_run_field(workdir, "results.json", "num_items", int)


def load_workdir(workdir: str):
    """The run's selected model (rec_kd.experiments.runs.TrainedModel) and its num_items."""
    from rec_kd.experiments import runs  # JAX; imported here so the graph builder works without a run

    num_items = read_num_items(workdir)
    try:
        return runs.load_trained(workdir, num_items), num_items
    except runs.ConfigError as error:
        raise ExportError(str(error)) from None


def export_workdir(
    workdir: str, out: str, mode: str = "materialized", k: int = 20, quantize: str | None = None, repeat_bonus: float | None = None
) -> str:
    """Writes the run's model to `out` (+ '.onnx' if missing); returns the path written.

    `repeat_bonus` (None: the run's own model.repeat_bonus) ranks the session's own items up by that
    much; it is inference only, so any finished run can ship with any bonus.
    """
    trained, num_items = load_workdir(workdir)
    model = trained.model if repeat_bonus is None else trained.model.clone(repeat_bonus=repeat_bonus)
    metadata = {"stage": trained.config.stage, "workdir": os.path.abspath(workdir), "step": trained.step}
    onnx_model = build_onnx_model(model, trained.params, num_items, mode, k, quantize, metadata)
    path = out if out.endswith(".onnx") else out + ".onnx"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save_model(onnx_model, path)
    return path


def jax_top_k(model, params, items: np.ndarray, lengths: np.ndarray, k: int, chunk_size: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The JAX model's own top-k (ids in [1, N], scores) for (B, L) items and (B,) lengths.

    `chunk_size` as train.eval_chunk_items (-1: by catalogue size): past 262,144 items the
    catalogue is scanned in chunks with a running top-k (SeqRecModel.top_k), never a (B, N) matrix.
    """
    import jax

    from rec_kd import evaluation

    items, lengths = items.astype(np.int32), lengths.astype(np.int32)
    chunk = evaluation.eval_chunk_size(chunk_size, model.num_items + 1)
    if chunk:
        scores, ids = model.apply({"params": params}, items, lengths, k, chunk, method=type(model).top_k)
        return np.asarray(ids).astype(np.int64), np.asarray(scores)
    out = model.apply({"params": params}, items, lengths)
    scores, index = jax.lax.top_k(out["ranking"][:, 1:], k)  # table rows stop at N already
    return np.asarray(index) + 1, np.asarray(scores)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rec_kd.serve.export", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a finished rec_kd run (teacher or student)")
    parser.add_argument("--out", required=True, help="output path; '.onnx' is appended if missing")
    parser.add_argument("--mode", default="materialized", choices=MODES, help="STTD table mode (ignored for a dense table)")
    parser.add_argument("--quantize", default="none", choices=("none", "int8"))
    parser.add_argument("--k", type=int, default=20, help="number of items returned (fixed in the file)")
    parser.add_argument(
        "--repeat_bonus", type=float, default=None, help="ranking bonus for the session's own items (default: the run's model.repeat_bonus)"
    )
    args = parser.parse_args(argv)
    if args.repeat_bonus is not None:
        from rec_kd.defaults import ConfigError
        from rec_kd.models.sasrec import finite_repeat_bonus  # JAX; the export needs it anyway

        try:
            finite_repeat_bonus(args.repeat_bonus, "--repeat_bonus")
        except ConfigError as error:
            parser.error(str(error))
    try:
        quantize = None if args.quantize == "none" else args.quantize
        path = export_workdir(args.workdir, args.out, args.mode, args.k, quantize, args.repeat_bonus)
    except ExportError as error:
        print(f"rec_kd.serve.export: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"path": path, "bytes": os.path.getsize(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
