"""The teacher (SASRec with a soft-attention readout) and the student (the same network, compressed table).

One module serves both: the only difference is where the item table comes from, a table spec
(rec_kd/compress: dense, STTD, TT, low-rank, hashed, quotient-remainder, mixed-dimension). The
table is materialised from the spec's parameters once per call and used for both the input lookup
and the full-catalogue scores, so the compressed parameters get gradients through both paths.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rec_kd import compress, evaluation
from rec_kd.compress import common, dense, sttd
from rec_kd.compress.row_order import decode_item_rows, shuffled_item_rows
from rec_kd.defaults import ConfigError
from rec_kd.models.layers import SoftAttentionReadout, TransformerBlock, initializers

# 'mean': METHOD.md's readout (the gate sees the masked mean of the encoder outputs). 'mean+summary':
# the gate also sees the output of a learned summary token placed right after the session, which
# attends to the whole session. Why: under causal attention every real position sees only a
# prefix, so the masked mean under-weights the full session; the authors' code (bug 8, the mean
# over padded positions too) gets a whole-session signal by accident, from the padded positions'
# outputs, at the price of depending on the padded width. docs/findings.md has the measurements.
READOUTS = ("mean", "mean+summary")

# Logit given to the padding item: finite so that softmax/KL stay NaN-free, small enough that its
# probability underflows to exactly zero.
PADDING_LOGIT = -1e9


def position_mask(lengths: jax.Array, length: int) -> jax.Array:
    """(B,) lengths -> (B, L) bool, true at the real (right-padded) positions."""
    return jnp.arange(length)[None, :] < lengths[:, None]


def session_item_mask(items: jax.Array, lengths: jax.Array, num_columns: int) -> jax.Array:
    """(B, L) item ids with (B,) lengths -> (B, C) bool, true at the items the session holds.

    Ids at positions past a session's length are not its items (the encoder never reads them), and
    column 0, the padding item, is never held.
    """
    held = jnp.where(position_mask(lengths, items.shape[1]), items, 0)
    rows = jnp.arange(items.shape[0])[:, None]
    return jnp.zeros((items.shape[0], num_columns), bool).at[rows, held].set(True).at[:, 0].set(False)


def mask_padding_scores(scores: jax.Array) -> jax.Array:
    """Sets column 0 (the padding item) of (B, C) scores to PADDING_LOGIT."""
    return scores.at[:, 0].set(PADDING_LOGIT)


def session_item_columns(items: jax.Array, lengths: jax.Array, first: jax.Array, num_columns: int) -> jax.Array:
    """session_item_mask for the columns first .. first + num_columns - 1 only: (B, num_columns) bool."""
    held = jnp.where(position_mask(lengths, items.shape[1]), items, 0) - first  # column index within the chunk
    held = jnp.where((held >= 0) & (held < num_columns) & (items != 0), held, num_columns)  # out of the chunk: dropped
    rows = jnp.arange(items.shape[0])[:, None]
    return jnp.zeros((items.shape[0], num_columns), bool).at[rows, held].set(True, mode="drop")


class SeqRecModel(nn.Module):
    """Item table -> embedding + positions -> causal transformer -> readout -> catalogue scores.

    Attributes:
      num_items: largest item id; the table has num_items + 1 rows (row 0 = padding).
      table_spec: None for a dense table (the teacher, or the dense ablation), else the spec of the
        student's compressed table (rec_kd/compress; spec.num_rows >= num_items + 1, and rows past
        num_items are never used).
      row_order_seed: None: item i is row i of the table (the paper's order). Else items sit on
        rows shuffled by this seed (`item_rows`): benchmark ids number items in order of first
        appearance, so a structured table (STTD, TT, QR) indexed by raw ids makes the popular
        early items share factor rows (docs/findings.md, "Row order").
      row_map: '' or a stored item -> row map (row_order.encode_item_rows; `table.row_order=
        'clustered'`, computed from the teacher's table when the run starts), read instead of the
        seed: items close in the teacher's space share first-core rows (docs/findings.md, "Clustered rows").
      copy_bonus: a trained scalar added to `scores` (what the losses read) at the items the session
        holds: a learned copy signal (off: the paper's model).
      repeat_bonus: added to the `ranking` scores of the items the session already holds (0: the
        paper's ranking, by `scores` alone). The losses read `scores` and never see it, so the
        teacher's soft targets and every gradient are the same at any bonus; what it changes is
        which items are recommended: the evaluation, and through it the epoch selection, early
        stopping and refit length, and the export (docs/findings.md, "Repeat bonus").
      table_row_multiple: a dense table's rows are padded to a multiple of this, so they split evenly
        over the devices that shard it (train.shard_item_table; 1: num_items + 1 rows). The padding
        rows are never read: item_table() and every score stop at row num_items.
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
    table_spec: object | None = None
    row_order_seed: int | None = None
    row_map: str = ""
    repeat_bonus: float = 0.0
    copy_bonus: bool = False
    table_row_multiple: int = 1

    @property
    def spec(self):
        """The table spec; a dense (num_items + 1, hidden_dim) table, rows padded to table_row_multiple, when table_spec is None."""
        if self.table_spec is not None:
            return self.table_spec
        return dense.DenseSpec(-(-(self.num_items + 1) // self.table_row_multiple) * self.table_row_multiple, self.hidden_dim)

    def setup(self):
        kernel_init, embedding_init, ln_init = initializers(self.init_scheme)
        # N(0, 1/d) entries make initial logits s.E ~ N(0, 1) for a LayerNorm'd session vector.
        target_std = self.hidden_dim**-0.5
        embedding_init = embedding_init or nn.initializers.normal(stddev=target_std)
        spec = self.spec
        if spec.dim != self.hidden_dim or spec.num_rows < self.num_items + 1:
            raise ValueError(
                f"{type(spec).__name__} gives a {spec.num_rows} x {spec.dim} table; "
                f"need >= {self.num_items + 1} rows and width {self.hidden_dim}"
            )
        if self.init_scheme == "authors" and not getattr(spec, "own_init", False):
            init_fn = lambda key: common.init_from_shapes(embedding_init, spec.param_shapes(), key)  # noqa: E731
        else:
            init_fn = lambda key: spec.init(key, target_std)  # noqa: E731
        self.table_params = self.param(spec.param_name, init_fn)
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
        if self.copy_bonus:
            self.copy_bonus_value = self.param("copy_bonus", nn.initializers.zeros, ())

    def item_rows(self) -> np.ndarray | None:
        """(num_items + 1,) table row of each item id, or None when item i is row i."""
        if self.row_map:
            return decode_item_rows(self.row_map, self.num_items, self.spec.num_rows)
        if self.row_order_seed is None:
            return None
        return shuffled_item_rows(self.spec.num_rows, self.num_items, self.row_order_seed)

    def item_table(self) -> jax.Array:
        """(num_items + 1, D) item embeddings, materialised from the table's parameters."""
        table = self.spec.materialize(self.table_params)
        rows = self.item_rows()
        return table[: self.num_items + 1] if rows is None else table[rows]

    def rows(self, ids: jax.Array) -> jax.Array:
        """Item vectors of `ids` (any shape, + (D,)), computing only those rows of the table (spec.rows).

        What a step over a large catalogue uses instead of item_table(): a compressed table's rows
        cost O(len(ids)), not O(N).
        """
        item_rows = self.item_rows()
        return self.spec.rows(self.table_params, ids if item_rows is None else jnp.asarray(item_rows)[ids])

    def encode(self, lookup, items: jax.Array, lengths: jax.Array, train: bool) -> jax.Array:
        """Session vectors (B, D) for right-padded item ids (B, L) with `lengths` (B,) real items.

        `lookup(ids) -> vectors`: rows of the materialised table, or `rows` for a large catalogue.
        """
        summary = self.readout == "mean+summary"
        if summary:  # one more column for the summary token at position `length`
            items = jnp.pad(items, ((0, 0), (0, 1)))
        length = items.shape[1]
        mask = position_mask(lengths, length)  # (B, L), real items only
        x = lookup(items)
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
        """Returns {'session': (B, D), 'table': (N + 1, D), 'scores': (B, N + 1) with padding masked,
        'ranking': (B, N + 1), the scores recommendations are ranked by (`repeat_bonus`)}."""
        table = self.item_table()
        session = self.encode(lambda ids: table[ids], items, lengths, train)
        scores = mask_padding_scores(session @ table.T)
        if self.copy_bonus:  # learned: the losses see it, so the gradient sets how much copying pays
            scores = jnp.where(session_item_mask(items, lengths, scores.shape[1]), scores + self.copy_bonus_value, scores)
        ranking = scores
        if self.repeat_bonus:
            ranking = jnp.where(session_item_mask(items, lengths, scores.shape[1]), scores + self.repeat_bonus, scores)
        return {"session": session, "table": table, "scores": scores, "ranking": ranking}

    def sampled_scores(self, items, lengths, targets, candidates, train: bool = False, rows: jax.Array | None = None):
        """The scores a sampled softmax needs, never the catalogue's: {'session': (B, D), 'positive': (B,)
        each session's score of its own target, 'candidates': (B, M) every session's scores of the shared
        candidate ids (M,)}, copy bonus included (repeat_bonus only ranks, it never trains).

        `rows`: None, or a (U, D) block of the table's rows (a row-sparse step, train.table_update='rows');
        items, targets and candidates are then local ids into it (local id 0 is the padding row).
        """
        lookup = self.rows if rows is None else (lambda ids: rows[ids])
        session = self.encode(lookup, items, lengths, train)
        positive = jnp.sum(session * lookup(targets), axis=-1)
        scores = session @ lookup(candidates).T
        if self.copy_bonus:
            real = position_mask(lengths, items.shape[1])
            target_held = jnp.any(real & (items == targets[:, None]), axis=1) & (targets != 0)
            candidate_held = jnp.any(real[:, :, None] & (items[:, :, None] == candidates[None, None, :]), axis=1) & (candidates != 0)
            positive = jnp.where(target_held, positive + self.copy_bonus_value, positive)
            scores = jnp.where(candidate_held, scores + self.copy_bonus_value, scores)
        return {"session": session, "positive": positive, "candidates": scores}

    def target_ranks(self, items: jax.Array, lengths: jax.Array, targets: jax.Array, chunk_size: int) -> jax.Array:
        """(B,) 0-based ranks of `targets` under `ranking`, with the catalogue scored `chunk_size` columns at a time.

        The same ranking as __call__'s (copy and repeat bonuses included), without its (B, N + 1)
        scores: what evaluation uses past a catalogue size (evaluation.chunked_target_ranks).
        """
        return evaluation.chunked_target_ranks(self.ranking_columns(items, lengths), targets, self.num_items + 1, chunk_size)

    def top_k(self, items: jax.Array, lengths: jax.Array, k: int, chunk_size: int) -> tuple[jax.Array, jax.Array]:
        """((B, k) ranking scores, (B, k) item ids) of the k best items, the catalogue scored `chunk_size` at a time.

        lax.top_k of __call__'s `ranking` over items 1..N (evaluation.chunked_top_k), without its
        (B, N + 1) matrix: what `recommend` uses on a large catalogue (rec_kd.serve.export.jax_top_k).
        """
        return evaluation.chunked_top_k(self.ranking_columns(items, lengths), items.shape[0], self.num_items + 1, chunk_size, k)

    def ranking_columns(self, items: jax.Array, lengths: jax.Array):
        """ids (C,) -> (B, C) `ranking` scores of those columns for these sessions (ids past the catalogue score anything)."""
        table = self.item_table()
        session = self.encode(lambda ids: table[ids], items, lengths, train=False)
        last_row = self.num_items

        def column_scores(ids):
            scores = session @ table[jnp.minimum(ids, last_row)].T  # ids past the catalogue: never counted
            if self.copy_bonus or self.repeat_bonus:
                held = session_item_columns(items, lengths, ids[0], ids.shape[0])
                if self.copy_bonus:
                    scores = jnp.where(held, scores + self.copy_bonus_value, scores)
                if self.repeat_bonus:
                    scores = jnp.where(held, scores + self.repeat_bonus, scores)
            return scores

        return column_scores


# Kinds whose rows share factor rows by their ids' digits (STTD and TT: id // I_2, id % I_2; QR: quotient,
# remainder), so which items share them depends on the item -> row map. Every other kind ignores
# table.row_order: dense and low-rank rows are independent, hash rows are already pseudo-random,
# and mixed_dim's hot rows are item ids.
ROW_ORDER_KINDS = ("sttd", "tt", "qr")
# 'id': item i on row i (the paper's); 'shuffled': a seeded random map; 'clustered': a map from the
# teacher's select-phase table (row_order.clustered_rows), which needs two item factors (STTD / TT).
ROW_ORDERS = ("id", "shuffled", "clustered")


def row_order(config) -> str:
    """The order the model reads its rows in: config.table.row_order, or 'id' for a kind without one."""
    table = config.get("table", {})
    order = table.get("row_order", "id")  # runs from before this field: 'id'
    if order not in ROW_ORDERS:
        raise ConfigError(f"unknown table.row_order {order!r}; expected one of {ROW_ORDERS}")
    kind = table_kind(config)
    if kind not in ROW_ORDER_KINDS:
        return "id"
    factors = tuple(table.get("item_factors") or ())
    cores = len(factors) if factors else table.get("num_cores", 2)  # unresolved factors: the cores they will have
    if order == "clustered" and (kind == "qr" or cores != 2):
        raise ConfigError(
            f"table.row_order='clustered' clusters items onto a two-core table's rows; table.kind={kind} with "
            f"{f'item_factors={factors}' if factors else f'num_cores={cores}'} has none (use sttd or tt with two item factors)"
        )
    return order


def row_order_seed(config) -> int | None:
    """The model's row_order_seed: table.row_order_seed under the 'shuffled' order, else None."""
    return int(config.table.row_order_seed) if row_order(config) == "shuffled" else None


def row_map(config, num_items: int) -> str:
    """The model's stored item -> row map: table.item_rows under the 'clustered' order, else ''.

    A ConfigError when the order needs a map that is missing or does not fit this catalogue (the
    trainer fills it when the run starts: train.write_configs).
    """
    if row_order(config) != "clustered":
        return ""
    text = config.table.get("item_rows", "")
    if not text:
        raise ConfigError(
            "table.row_order='clustered' needs table.item_rows, the map the trainer computes from the teacher's "
            "select-phase table when the run starts (rec_kd.train.prepare.fill_clustered_rows); this config has none"
        )
    try:
        decode_item_rows(text, num_items, math.prod(config.table.item_factors))
    except ValueError as error:
        raise ConfigError(f"table.item_rows: {error}") from None
    return text


def build_model(config, num_items: int) -> SeqRecModel:
    """The teacher (dense table) or student model named by a run config (its table resolved)."""
    model_config = config.model
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
        table_spec=table_spec_from_config(config, num_items),
        row_order_seed=row_order_seed(config),
        row_map=row_map(config, num_items),
        repeat_bonus=finite_repeat_bonus(model_config.get("repeat_bonus", 0.0)),  # runs from before this field: 0
        copy_bonus=bool(model_config.get("copy_bonus", False)),  # runs from before this field: off
        table_row_multiple=SHARDED_TABLE_ROW_MULTIPLE if config.train.get("shard_item_table", False) else 1,
    )


# A sharded dense table's rows are padded to a multiple of this (train.shard_item_table): every
# power-of-two device count up to it divides them, at a cost of fewer than 1,024 unused rows.
SHARDED_TABLE_ROW_MULTIPLE = 1024


# Why a bonus must be finite: inf would make every other item's ranking nan (0 * inf), and 1000 already
# puts the session's own items first.
FINITE_BONUS_HINT = "give a finite number: 1000 puts the session's own items first"


def finite_repeat_bonus(value, name: str = "model.repeat_bonus") -> float:
    """A repeat bonus as a float; inf or nan is an error naming `name` (a config field or a flag)."""
    bonus = float(value)
    if not math.isfinite(bonus):
        raise ConfigError(f"{name}={value!r}: {FINITE_BONUS_HINT}")
    return bonus


def init_model_params(model: SeqRecModel, max_len: int, key) -> dict:
    """A model's freshly initialised parameters (the shapes do not depend on the batch)."""
    items = jnp.ones((1, max_len), jnp.int32)
    return model.init(key, items, jnp.ones((1,), jnp.int32), train=False)["params"]


def table_kind(config) -> str:
    """The table a run trains: 'dense' for teachers, else config.table.kind."""
    return config.table.kind if config.stage == "student" else "dense"


def table_options(table_config, kind: str) -> dict:
    """The options of one kind: its sub-config, or for STTD / TT the table's own fields (TT: t = 1)."""
    if kind in compress.OPTION_KINDS:
        return table_config[kind].to_dict()
    options = {name: table_config.get(name) for name in ("item_factors", "dim_factors", "ranks", "t", "num_cores")}
    if kind == "tt":
        options["t"] = 1
    return options


def table_spec_from_config(config, num_items: int):
    """The student's table spec from its resolved config (None: a dense table)."""
    kind = table_kind(config)
    if kind == "dense":
        return None
    if kind not in compress.KINDS:
        raise ConfigError(f"unknown table.kind {kind!r}; expected one of {tuple(compress.KINDS)}")
    try:
        return compress.KINDS[kind].spec_from_options(num_items + 1, config.model.hidden_dim, table_options(config.table, kind))
    except ValueError as error:
        raise ConfigError(f"table.kind={kind}: {error}") from None


def resolve_table_config(config, num_items: int, hot_mask=None) -> None:
    """Fills a student's unset table sizes for this catalogue (in place); teachers are left alone.

    STTD / TT with empty item_factors: a suggested factorisation, at the largest rank compressing
    at least `table.target_compression` (the custom-data config has it; sttd.suggest_spec_at_compression)
    or else at the named datasets' fixed `table.ranks[0]`. Explicit item_factors are kept.
    Other kinds: every size left at 0 is the largest within the budget (`table.budget_bytes`, else
    `table.budget` parameters of 4 bytes; codes count their integers at their width), and a budget
    of 0 means the size of this catalogue's main STTD table (the fair comparison: every compressor
    at the STTD student's size). mixed_dim records `hot_mask` (SessionData.hot_mask) as its hot rows.
    """
    kind = table_kind(config)
    if kind == "dense":
        return
    if kind in ("sttd", "tt"):
        resolve_sttd_fields(config, num_items)
        return
    if kind not in compress.OPTION_KINDS:
        raise ConfigError(f"unknown table.kind {kind!r}; expected one of {tuple(compress.KINDS)}")
    num_rows, dim = num_items + 1, config.model.hidden_dim
    options = table_options(config.table, kind)
    if kind == "mixed_dim" and not options["hot_rows"]:
        if hot_mask is None or len(hot_mask) != num_rows:
            raise ConfigError(
                f"table.kind=mixed_dim needs the data's hot mask over its {num_rows} rows to split them (SessionData.hot_mask)"
            )
        options["hot_rows"] = compress.mixed_dim.encode_rows(hot_mask)
    budget_bytes = table_budget_bytes(config, num_items, kind)
    module = compress.KINDS[kind]
    budget = budget_bytes if getattr(module, "BUDGET_IN_BYTES", False) else budget_bytes // 4
    try:
        options = module.budget_options(num_rows, dim, budget, options)
    except ValueError as error:
        raise ConfigError(f"table.kind={kind}: {error}") from None
    with config.unlocked():
        config.table[kind].update(options)


def table_budget_bytes(config, num_items: int, kind: str) -> int:
    """The table's budget in bytes: table.budget_bytes, else 4 x table.budget parameters, else the main STTD table's fp32 bytes."""
    if config.table.get("budget_bytes", 0):
        return int(config.table.budget_bytes)
    if config.table.get("budget", 0):
        return 4 * int(config.table.budget)
    try:
        return 4 * main_sttd_budget(config, num_items)
    except ConfigError as error:
        raise ConfigError(
            f"table.kind={kind}: table.budget=0 means the main STTD table's size, and here: {error}; set --config.table.budget_bytes"
        ) from None


def main_sttd_budget(config, num_items: int) -> int:
    """Parameters of this dataset's main STTD table (the run's own STTD fields, resolved as for kind 'sttd')."""
    sttd_config = config.copy_and_resolve_references()
    with sttd_config.unlocked():
        sttd_config.table.kind = "sttd"
    resolve_sttd_fields(sttd_config, num_items)
    return sttd.spec_from_options(0, 0, table_options(sttd_config.table, "sttd")).num_params()


def resolve_sttd_fields(config, num_items: int) -> None:
    """resolve_table_config for kinds 'sttd' and 'tt' (see there)."""
    table = config.table
    if table.item_factors:
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
