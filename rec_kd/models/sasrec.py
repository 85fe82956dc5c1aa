"""The teacher (SASRec with a soft-attention readout) and the student (the same network, STTD table).

One module serves both: the only difference is where the item table comes from. A dense table is
a parameter; an STTD table is materialised from its cores once per call and used for both the
input lookup and the full-catalogue scores, so the cores get gradients through both paths.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from rec_kd.compress import sttd
from rec_kd.defaults import ConfigError
from rec_kd.models.layers import SoftAttentionReadout, TransformerBlock, initializers

# 'mean': METHOD.md's readout (the gate sees the masked mean of the encoder outputs). 'mean+summary':
# the gate also sees the output of a learned summary token placed right after the session, which
# attends to the whole session. Why: under causal attention every real position sees only a
# prefix, so the masked mean under-weights the full session; the authors' code (bug 8, the mean
# over padded positions too) gets a whole-session signal by accident, from the padded positions'
# outputs, at the price of depending on the padded width. docs/method.md has the measurements.
READOUTS = ("mean", "mean+summary")

# Logit given to the padding item: finite so that softmax/KL stay NaN-free, small enough that its
# probability underflows to exactly zero.
PADDING_LOGIT = -1e9


def position_mask(lengths: jax.Array, length: int) -> jax.Array:
    """(B,) lengths -> (B, L) bool, true at the real (right-padded) positions."""
    return jnp.arange(length)[None, :] < lengths[:, None]


def mask_padding_scores(scores: jax.Array) -> jax.Array:
    """Sets column 0 (the padding item) of (B, C) scores to PADDING_LOGIT."""
    return scores.at[:, 0].set(PADDING_LOGIT)


class SeqRecModel(nn.Module):
    """Item table -> embedding + positions -> causal transformer -> readout -> catalogue scores.

    Attributes:
      num_items: largest item id; the table has num_items + 1 rows (row 0 = padding).
      sttd_spec: None for a dense table (the teacher, or the dense ablation), else the STTD spec of
        the student's table (spec.num_rows >= num_items + 1; rows past num_items are never used).
    """

    num_items: int
    hidden_dim: int = 128
    num_layers: int = 1
    num_heads: int = 1
    inner_dim: int = 128
    dropout_rate: float = 0.5
    max_len: int = 50
    init_scheme: str = "standard"
    readout: str = "mean"
    sttd_spec: sttd.STTDSpec | None = None

    def setup(self):
        kernel_init, embedding_init, ln_init = initializers(self.init_scheme)
        # N(0, 1/d) entries make initial logits s.E ~ N(0, 1) for a LayerNorm'd session vector.
        embedding_init = embedding_init or nn.initializers.normal(stddev=self.hidden_dim**-0.5)
        if self.sttd_spec is None:
            self.item_embedding = self.param("item_embedding", embedding_init, (self.num_items + 1, self.hidden_dim))
        else:
            spec = self.sttd_spec
            if spec.dim != self.hidden_dim or spec.num_rows < self.num_items + 1:
                raise ValueError(
                    f"STTD spec {spec} gives a {spec.num_rows} x {spec.dim} table; need >= {self.num_items + 1} rows"
                    f" and width {self.hidden_dim}"
                )
            if self.init_scheme == "authors":

                def init_fn(key):
                    shapes = spec.core_shapes()
                    return [embedding_init(k, shape) for k, shape in zip(jax.random.split(key, len(shapes)), shapes, strict=True)]
            else:

                def init_fn(key):
                    return sttd.init_cores(key, spec, target_std=self.hidden_dim**-0.5)

            self.sttd_cores = self.param("sttd_cores", init_fn)
        if self.readout not in READOUTS:
            raise ValueError(f"unknown readout {self.readout!r}; expected one of {READOUTS}")
        summary = self.readout == "mean+summary"
        # With a summary token, position max_len exists too (the token sits right after the session).
        self.position_embedding = self.param("position_embedding", embedding_init, (self.max_len + summary, self.hidden_dim))
        if summary:
            self.summary_embedding = self.param("summary_embedding", embedding_init, (1, self.hidden_dim))
        self.input_norm = nn.LayerNorm(scale_init=ln_init)
        self.input_dropout = nn.Dropout(self.dropout_rate)
        self.blocks = [
            TransformerBlock(self.num_heads, self.inner_dim, self.dropout_rate, self.init_scheme, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.readout_head = SoftAttentionReadout(self.init_scheme, name="readout")

    def item_table(self) -> jax.Array:
        """(num_items + 1, D) item embeddings; materialised from the cores for an STTD table."""
        if self.sttd_spec is None:
            return self.item_embedding
        return sttd.materialize(self.sttd_cores, self.sttd_spec)[: self.num_items + 1]

    def encode(self, table: jax.Array, items: jax.Array, lengths: jax.Array, train: bool) -> jax.Array:
        """Session vectors (B, D) for right-padded item ids (B, L) with `lengths` (B,) real items."""
        summary = self.readout == "mean+summary"
        if summary:  # one more column for the summary token at position `length`
            items = jnp.pad(items, ((0, 0), (0, 1)))
        length = items.shape[1]
        mask = position_mask(lengths, length)  # (B, L), real items only
        x = table[items]
        if summary:
            is_summary = (jnp.arange(length)[None, :] == lengths[:, None])[..., None]  # (B, L, 1)
            x = jnp.where(is_summary, self.summary_embedding[None], x)
        x = x + self.position_embedding[None, :length]  # (B, L, D)
        x = self.input_dropout(self.input_norm(x), deterministic=not train)
        for block in self.blocks:
            x = block(x, mask, train)
        if not summary:
            return self.readout_head(x, mask)
        # The token's query attends to every real item (keys are masked to real items, and the
        # causal mask lets a later position see all earlier ones): a whole-session summary.
        return self.readout_head(x, mask, x[jnp.arange(x.shape[0]), lengths])

    def __call__(self, items: jax.Array, lengths: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Returns {'session': (B, D), 'table': (N + 1, D), 'scores': (B, N + 1) with padding masked}."""
        table = self.item_table()
        session = self.encode(table, items, lengths, train)
        scores = mask_padding_scores(session @ table.T)
        return {"session": session, "table": table, "scores": scores}


def build_model(config, num_items: int) -> SeqRecModel:
    """The teacher (config.table.kind == 'dense') or student model named by a run config."""
    model_config = config.model
    spec = None
    if config.stage == "student" and config.table.kind != "dense":
        spec = sttd_spec_from_config(config.table)
    return SeqRecModel(
        num_items=num_items,
        hidden_dim=model_config.hidden_dim,
        num_layers=model_config.num_layers,
        num_heads=model_config.num_heads,
        inner_dim=model_config.inner_dim,
        dropout_rate=model_config.dropout_rate,
        max_len=config.data.max_len,
        init_scheme=model_config.init_scheme,
        readout=model_config.get("readout", "mean"),  # runs from before this field: 'mean'
        sttd_spec=spec,
    )


def init_model_params(model: SeqRecModel, max_len: int, key) -> dict:
    """A model's freshly initialised parameters (the shapes do not depend on the batch)."""
    items = jnp.ones((1, max_len), jnp.int32)
    return model.init(key, items, jnp.ones((1,), jnp.int32), train=False)["params"]


def sttd_spec_from_config(table_config) -> sttd.STTDSpec:
    """STTDSpec from the config's table fields; kind 'tt' forces t = 1 (the plain TT-matrix)."""
    t = 1 if table_config.kind == "tt" else table_config.t
    return sttd.STTDSpec(
        item_factors=tuple(table_config.item_factors),
        dim_factors=tuple(table_config.dim_factors),
        ranks=tuple(table_config.ranks),
        t=t,
    )


def resolve_table_config(config, num_items: int) -> None:
    """Fills a student's empty STTD factors with a suggested factorisation of this catalogue (in place).

    With `table.target_compression` (the custom-data config has it), the rank is the largest that
    compresses the table at least that much (sttd.suggest_spec_at_compression); without it, the
    named datasets' fixed `table.ranks[0]`. Explicit item_factors are kept as they are.
    """
    table = config.table
    if config.stage != "student" or table.kind == "dense" or table.item_factors:
        return
    t = 1 if table.kind == "tt" else table.t
    target = table.get("target_compression", 0)
    if target:
        spec = sttd.suggest_spec_at_compression(num_items + 1, config.model.hidden_dim, target, t, table.num_cores)
        if spec is None:
            smallest = sttd.suggest_spec(num_items + 1, config.model.hidden_dim, t, t, table.num_cores)
            raise ConfigError(
                f"{config.data.get('path') or config.dataset}: a catalogue of {num_items} items is too small to compress "
                f"{target:g}x (a {table.num_cores}-core table reaches {sttd.compression_ratio(smallest):.1f}x at most); "
                "lower --config.table.target_compression or train the 'dense' variant"
            )
    else:
        spec = sttd.suggest_spec(num_items + 1, config.model.hidden_dim, table.ranks[0], t, table.num_cores)
    with config.unlocked():
        table.item_factors, table.dim_factors, table.ranks = spec.item_factors, spec.dim_factors, spec.ranks
