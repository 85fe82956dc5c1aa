"""Flax models: the SASRec teacher, the STTD student (same module) and the distillation heads."""

from rec_kd.models.distill_heads import DistillHeads
from rec_kd.models.sasrec import (
    PADDING_LOGIT,
    SHARDED_TABLE_ROW_MULTIPLE,
    SeqRecModel,
    build_model,
    init_model_params,
    resolve_table_config,
    table_kind,
    table_spec_from_config,
)

__all__ = [
    "DistillHeads",
    "PADDING_LOGIT",
    "SHARDED_TABLE_ROW_MULTIPLE",
    "SeqRecModel",
    "build_model",
    "init_model_params",
    "resolve_table_config",
    "table_kind",
    "table_spec_from_config",
]
