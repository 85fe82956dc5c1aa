"""Compression of the item table: the STTD (semi-tensor-product tensor-train) math, model-free."""

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

__all__ = [
    "STTDSpec",
    "compression_ratio",
    "init_cores",
    "materialize",
    "materialize_rows",
    "num_params",
    "suggest_spec",
    "suggest_spec_at_compression",
]
