"""Item-table compressors, model-free: each maps its parameters to the rows of a (P, d) table.

Every kind is one module with a frozen, hashable spec dataclass (a static attribute of the model)
and two functions of the config's options:

  spec.num_rows, spec.dim        the table it stands for (num_rows >= num_items + 1)
  spec.param_name                the model parameter that holds its pytree (checkpoints, export)
  spec.num_params()              the exact count of trained (float) parameters
  spec.num_bytes()               bytes on device: fp32 parameters x 4, integer arrays at their width
  spec.param_shapes()            pytree of jax.ShapeDtypeStruct (the 'authors' init scheme draws these)
  spec.init(key, target_std)     parameters whose table entries have std ~ target_std
  spec.materialize(params)       the whole (num_rows, d) table: the model's lookups and scores
  spec.rows(params, ids)         ids.shape + (d,), without building the table
  spec.onnx_table(g, params)     the same table inside an ONNX graph from the stored compressed
                                 parameters (numpy); all constant, so ONNX Runtime folds it at load
  budget_options(P, d, budget, options) -> options with every size left at 0 filled in: the
                                 largest setting within `budget` (parameters; for kinds with
                                 BUDGET_IN_BYTES = True, bytes)
  spec_from_options(P, d, options) -> the spec

A new compressor is one module here, one entry in KINDS, its config fields in
rec_kd/defaults.py, and a test.
"""

from rec_kd.compress import codes, dense, hashing, lowrank, mixed_dim, qr, sttd
from rec_kd.compress.sttd import (
    STTDSpec,
    compression_ratio,
    init_cores,
    materialize,
    materialize_rows,
    num_params,
    suggest_spec,
    suggest_spec_at_compression,
)

# table.kind -> its module. 'tt' is STTD with t = 1 (the plain TT-matrix of TT-Rec).
KINDS = {
    "dense": dense,
    "sttd": sttd,
    "tt": sttd,
    "lowrank": lowrank,
    "hash": hashing,
    "qr": qr,
    "mixed_dim": mixed_dim,
    "codes": codes,
}
# Kinds whose options live in their own sub-config, config.table.<kind>; STTD's are config.table's own fields.
OPTION_KINDS = ("lowrank", "hash", "qr", "mixed_dim", "codes")


def table_bytes(spec) -> int:
    """Bytes a table's stored arrays take on device (fp32 tables: 4 per parameter)."""
    return spec.num_bytes() if hasattr(spec, "num_bytes") else 4 * spec.num_params()


# The model parameter name of every kind's table.
TABLE_PARAM_NAMES = frozenset(module.PARAM_NAME for module in KINDS.values())

__all__ = [
    "KINDS",
    "OPTION_KINDS",
    "STTDSpec",
    "TABLE_PARAM_NAMES",
    "table_bytes",
    "compression_ratio",
    "init_cores",
    "materialize",
    "materialize_rows",
    "num_params",
    "suggest_spec",
    "suggest_spec_at_compression",
]
