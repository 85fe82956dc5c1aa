"""The teacher/student forward against an independent numpy implementation, and the heads' masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd import defaults, evaluation
from rec_kd.compress import row_order, sttd
from rec_kd.defaults import ConfigError
from rec_kd.models import DistillHeads, SeqRecModel, build_model, sasrec
from rec_kd.models.sasrec import row_order_seed

NUM_ITEMS, DIM, MAX_LEN = 7, 4, 3


def np_layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_dense(x, p):
    return x @ p["kernel"] + p.get("bias", 0.0)


def np_readout(h, mask, p, summaries=None):
    """beta_i = w . sigmoid(W1 tanh(h_i) + b1 + W2 m); s = sum mask beta h; m = masked mean (+ summary)."""
    out = []
    for b, (hb, mb) in enumerate(zip(h, mask, strict=False)):
        real = hb[mb]
        mean = real.mean(0) if len(real) else np.zeros(hb.shape[-1])
        if summaries is not None:
            mean = mean + summaries[b]
        s = np.zeros(hb.shape[-1])
        for i in np.nonzero(mb)[0]:
            gate = np_dense(np.tanh(hb[i]), p["w1"]) + mean @ p["w2_mean"]["kernel"]
            beta = (1 / (1 + np.exp(-gate))) @ p["w_beta"]["kernel"]
            s += beta[0] * hb[i]
        out.append(s)
    return np.array(out)


def np_forward(params, table, items, lengths, num_heads, summary=False):
    """One example at a time, loops over positions: embedding -> post-LN block -> readout -> scores.

    summary=True: a summary token (its own embedding) sits at position `length` of a row one
    column longer, and its encoder output is added to the readout's mean.
    """
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    table = np.asarray(table, np.float64)
    block = params["block_0"]
    head_dim = DIM // num_heads
    sessions = []
    for row, length in zip(items, lengths, strict=False):
        embedded = table[row]
        if summary:
            embedded = np.concatenate([embedded, np.zeros((1, DIM))])
            embedded[length] = params["summary_embedding"][0]
        x = np_layer_norm(embedded + params["position_embedding"][: len(embedded)], params["input_norm"])
        q, k, v = (np_dense(x, block[name]) for name in ("query", "key", "value"))
        attended = np.zeros_like(x)
        for head in range(num_heads):
            cols = slice(head * head_dim, (head + 1) * head_dim)
            for i in range(len(x)):
                logits = np.array(
                    [q[i, cols] @ k[j, cols] / math.sqrt(head_dim) if (j <= i and j < length) else -10000.0 for j in range(len(x))]
                )
                probs = np.exp(logits - logits.max())
                probs /= probs.sum()
                attended[i, cols] = probs @ v[:, cols]
        x = np_layer_norm(x + np_dense(attended, block["attention_out"]), block["attention_norm"])
        inner = np_dense(x, block["ffn_in"])
        inner = 0.5 * inner * (1 + np.vectorize(math.erf)(inner / math.sqrt(2)))
        x = np_layer_norm(x + np_dense(inner, block["ffn_out"]), block["ffn_norm"])
        mask = np.arange(len(x)) < length
        summaries = x[length][None] if summary else None
        sessions.append(np_readout(x[None], mask[None], params["readout"], summaries)[0])
    sessions = np.array(sessions)
    scores = sessions @ table.T
    scores[:, 0] = -1e9
    return sessions, scores


ITEMS = np.array([[3, 1, 0], [2, 0, 0], [7, 5, 6]], np.int32)  # right-padded
LENGTHS = np.array([2, 1, 3], np.int32)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_teacher_forward_matches_numpy_reference(num_heads):
    model = SeqRecModel(num_items=NUM_ITEMS, hidden_dim=DIM, num_heads=num_heads, inner_dim=6, dropout_rate=0.5, max_len=MAX_LEN)
    params = model.init(jax.random.key(0), jnp.asarray(ITEMS), jnp.asarray(LENGTHS))["params"]
    out = model.apply({"params": params}, jnp.asarray(ITEMS), jnp.asarray(LENGTHS), train=False)
    sessions, scores = np_forward(params, params["item_embedding"], ITEMS, LENGTHS, num_heads)
    np.testing.assert_allclose(out["session"], sessions, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["scores"][:, 1:], scores[:, 1:], rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(out["scores"][:, 0]) == -1e9)


def test_summary_readout_matches_numpy_reference():
    model = SeqRecModel(num_items=NUM_ITEMS, hidden_dim=DIM, num_heads=2, inner_dim=6, max_len=MAX_LEN, readout="mean+summary")
    params = model.init(jax.random.key(3), jnp.asarray(ITEMS), jnp.asarray(LENGTHS))["params"]
    assert params["position_embedding"].shape == (MAX_LEN + 1, DIM) and params["summary_embedding"].shape == (1, DIM)
    out = model.apply({"params": params}, jnp.asarray(ITEMS), jnp.asarray(LENGTHS), train=False)
    sessions, scores = np_forward(params, params["item_embedding"], ITEMS, LENGTHS, num_heads=2, summary=True)
    np.testing.assert_allclose(out["session"], sessions, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["scores"][:, 1:], scores[:, 1:], rtol=1e-4, atol=1e-5)
    # Without the summary, the same parameters give another session vector: the token matters.
    plain, _ = np_forward(params, params["item_embedding"], ITEMS, LENGTHS, num_heads=2)
    assert np.abs(plain - sessions).max() > 1e-3


@pytest.mark.parametrize("readout", ["mean", "mean+summary"])
def test_padding_content_and_future_items_do_not_leak(readout):
    model = SeqRecModel(num_items=NUM_ITEMS, hidden_dim=DIM, inner_dim=6, max_len=MAX_LEN, readout=readout)
    params = model.init(jax.random.key(1), jnp.asarray(ITEMS), jnp.asarray(LENGTHS))
    changed = ITEMS.copy()
    changed[0, 2], changed[1, 1:] = 6, [4, 4]  # overwrite padding positions with real ids
    a = model.apply(params, jnp.asarray(ITEMS), jnp.asarray(LENGTHS))["session"]
    b = model.apply(params, jnp.asarray(changed), jnp.asarray(LENGTHS))["session"]
    np.testing.assert_allclose(a, b, atol=1e-6)
    # A row with no items (a padding row of a batch) is finite.
    empty = model.apply(params, jnp.zeros((1, MAX_LEN), jnp.int32), jnp.zeros((1,), jnp.int32))
    assert np.all(np.isfinite(np.asarray(empty["session"])))


def test_student_uses_the_materialised_sttd_table_for_lookup_and_scores():
    spec = sttd.STTDSpec(item_factors=(3, 3), dim_factors=(2, 2), ranks=(4,), t=2)
    model = SeqRecModel(num_items=NUM_ITEMS, hidden_dim=DIM, inner_dim=6, max_len=MAX_LEN, table_spec=spec)
    params = model.init(jax.random.key(2), jnp.asarray(ITEMS), jnp.asarray(LENGTHS))["params"]
    assert "item_embedding" not in params
    table = sttd.materialize(params["sttd_cores"], spec)[: NUM_ITEMS + 1]
    out = model.apply({"params": params}, jnp.asarray(ITEMS), jnp.asarray(LENGTHS))
    np.testing.assert_allclose(out["table"], table, atol=1e-6)
    sessions, scores = np_forward(params, table, ITEMS, LENGTHS, num_heads=1)
    np.testing.assert_allclose(out["scores"][:, 1:], scores[:, 1:], rtol=1e-4, atol=1e-5)


def test_shuffled_rows_put_each_item_on_its_own_random_row_and_padding_on_row_0():
    spec = sttd.STTDSpec(item_factors=(3, 3), dim_factors=(2, 2), ranks=(4,), t=2)  # 9 rows for 8 ids
    model = SeqRecModel(num_items=NUM_ITEMS, hidden_dim=DIM, inner_dim=6, max_len=MAX_LEN, table_spec=spec, row_order_seed=5)
    rows = model.item_rows()
    assert rows[0] == 0 and rows.tolist() != list(range(NUM_ITEMS + 1)) and np.any(np.diff(rows[1:]) < 0)  # shuffled
    assert len(set(rows.tolist())) == NUM_ITEMS + 1 and set(rows[1:].tolist()) <= set(range(1, 9))
    np.testing.assert_array_equal(rows, SeqRecModel(num_items=NUM_ITEMS, table_spec=spec, row_order_seed=5).item_rows())  # seeded
    params = model.init(jax.random.key(2), jnp.asarray(ITEMS), jnp.asarray(LENGTHS))["params"]
    table = np.asarray(sttd.materialize(params["sttd_cores"], spec))[rows]  # item i's embedding is row rows[i]
    out = model.apply({"params": params}, jnp.asarray(ITEMS), jnp.asarray(LENGTHS))
    np.testing.assert_allclose(out["table"], table, atol=1e-6)
    sessions, scores = np_forward(params, table, ITEMS, LENGTHS, num_heads=1)
    np.testing.assert_allclose(out["scores"][:, 1:], scores[:, 1:], rtol=1e-4, atol=1e-5)


def test_a_stored_row_map_puts_each_item_on_its_row():
    spec = sttd.STTDSpec(item_factors=(3, 3), dim_factors=(2, 2), ranks=(4,), t=2)  # 9 rows for 8 ids
    rows = np.array([0, 8, 3, 1, 7, 2, 5, 4])  # any distinct rows, padding on row 0
    text = row_order.encode_item_rows(rows)
    assert text.startswith("uint16:")
    model = SeqRecModel(num_items=NUM_ITEMS, hidden_dim=DIM, inner_dim=6, max_len=MAX_LEN, table_spec=spec, row_map=text)
    np.testing.assert_array_equal(model.item_rows(), rows)
    params = model.init(jax.random.key(2), jnp.asarray(ITEMS), jnp.asarray(LENGTHS))["params"]
    out = model.apply({"params": params}, jnp.asarray(ITEMS), jnp.asarray(LENGTHS))
    np.testing.assert_allclose(out["table"], np.asarray(sttd.materialize(params["sttd_cores"], spec))[rows], atol=1e-6)


def test_an_item_row_map_round_trips_and_a_broken_one_is_named():
    rows = np.array([0, 70_000, 3, 12])
    text = row_order.encode_item_rows(rows)
    assert text.startswith("uint32:")  # 70,000 needs 4 bytes
    np.testing.assert_array_equal(row_order.decode_item_rows(text, 3, 70_001), rows)
    with pytest.raises(ValueError, match="holds 4 rows; a catalogue of 4 items needs 5"):
        row_order.decode_item_rows(text, 4, 70_001)
    with pytest.raises(ValueError, match=r"distinct rows in \[0, 100\)"):
        row_order.decode_item_rows(text, 3, 100)
    with pytest.raises(ValueError, match="distinct rows"):
        row_order.decode_item_rows(row_order.encode_item_rows(np.array([0, 2, 2])), 2, 9)
    with pytest.raises(ValueError, match="distinct rows"):
        row_order.decode_item_rows(row_order.encode_item_rows(np.array([1, 0, 2])), 2, 9)  # padding off row 0
    with pytest.raises(ValueError, match="starts with one of"):
        row_order.decode_item_rows("int8:AAAA", 3, 9)
    with pytest.raises(ValueError, match="not base64"):
        row_order.decode_item_rows("uint16:***", 3, 9)


def test_the_clustered_order_needs_its_map_and_a_two_core_table():
    config = defaults.get_config("retailrocket", "student")
    config.table.row_order = "clustered"
    config.table.item_factors = (3, 3)
    assert sasrec.row_order(config) == "clustered" and row_order_seed(config) is None  # the map, not a seed, places the items
    with pytest.raises(defaults.ConfigError, match="needs table.item_rows"):
        sasrec.row_map(config, 8)
    config.table.item_rows = row_order.encode_item_rows(np.array([0, 8, 3, 1, 7, 2, 5, 4]))
    assert sasrec.row_map(config, 7) == config.table.item_rows
    with pytest.raises(defaults.ConfigError, match="table.item_rows: the item -> row map holds 8 rows"):
        sasrec.row_map(config, 8)  # another catalogue
    config.table.item_factors = (2, 2, 2)
    with pytest.raises(defaults.ConfigError, match="two-core table's rows; table.kind=sttd with item_factors=\\(2, 2, 2\\)"):
        sasrec.row_order(config)
    config.table.item_factors, config.table.num_cores = (), 3  # factors still to be suggested, for 3 cores
    with pytest.raises(defaults.ConfigError, match="table.kind=sttd with num_cores=3 has none"):
        sasrec.row_order(config)
    config.table.kind = "qr"
    with pytest.raises(defaults.ConfigError, match="table.kind=qr"):
        sasrec.row_order(config)
    config.table.kind = "hash"  # no factor rows by id digits: the order is ignored
    assert sasrec.row_order(config) == "id" and sasrec.row_map(config, 8) == ""


def test_row_order_from_the_config():
    config = defaults.get_config("ml-100k", "student")
    assert row_order_seed(config) is None  # the paper's order by default
    assert row_order_seed(defaults.get_config("tmall", "student")) == 0  # Tmall shuffles (chosen on valid)
    assert row_order_seed(defaults.get_config("retailrocket", "student")) is None  # RetailRocket keeps id order
    assert defaults.MAIN_ROW_ORDER.keys() == defaults.MAIN_TABLES.keys()  # every main table has its order
    config.table.row_order, config.table.row_order_seed = "shuffled", 3
    assert row_order_seed(config) == 3
    for kind in ("dense", "lowrank", "hash", "mixed_dim"):  # no factor rows shared by id digits
        config.table.kind = kind
        assert row_order_seed(config) is None
    config.table.kind = "qr"
    assert row_order_seed(config) == 3
    assert row_order_seed(defaults.get_config("tmall", "teacher")) is None
    assert defaults.get_config("tmall", "student,smoke").table.row_order == "id"  # smoke runs keep the base settings
    config.table.kind, config.table.row_order = "sttd", "sorted"
    with pytest.raises(defaults.ConfigError, match=r"unknown table.row_order 'sorted'; expected one of \('id', 'shuffled', 'clustered'\)"):
        row_order_seed(config)
    del config.table["row_order"]  # a run from before the field
    assert row_order_seed(config) is None


def test_sttd_spec_too_small_for_catalogue_is_an_error():
    spec = sttd.STTDSpec(item_factors=(2, 2), dim_factors=(2, 2), ranks=(2,), t=2)
    model = SeqRecModel(num_items=NUM_ITEMS, hidden_dim=DIM, max_len=MAX_LEN, table_spec=spec)
    with pytest.raises(ValueError, match="need >= 8 rows"):
        model.init(jax.random.key(0), jnp.asarray(ITEMS), jnp.asarray(LENGTHS))


def test_heads_recombine_mixed_examples_and_cross_session_vectors_otherwise():
    hot_mask = jnp.asarray([False, True, True, True, False, False, False, False])
    batch = {"items": jnp.asarray([[1, 5, 0], [1, 2, 0], [5, 6, 7]]), "lengths": jnp.asarray([2, 2, 3]), "weights": jnp.ones(3)}
    rng = np.random.default_rng(0)
    student_table, teacher_table = (jnp.asarray(rng.normal(size=(NUM_ITEMS + 1, DIM)), jnp.float32) for _ in range(2))
    student_session, teacher_session = (jnp.asarray(rng.normal(size=(3, DIM)), jnp.float32) for _ in range(2))
    heads = DistillHeads()
    args = (batch, student_table, teacher_table, student_session, teacher_session, hot_mask)
    params = heads.init(jax.random.key(0), *args)["params"]
    out = heads.apply({"params": params}, *args)
    np.testing.assert_array_equal(out["mixed"], [True, False, False])
    # Hot-only and cold-only rows: z_S is the teacher's session vector, z_T the student's.
    for name in ("cl", "pred"):
        np.testing.assert_allclose(out[f"{name}_student"][1:], teacher_session[1:])
        np.testing.assert_allclose(out[f"{name}_teacher"][1:], student_session[1:])
    # The mixed row: MLP_a([hot readout over student table ; cold readout over teacher table]).
    p = jax.tree.map(np.asarray, params)
    hot_s = np_readout(np.asarray(student_table)[None, [1, 5]], np.array([[True, False]]), p["hot_student"])
    cold_t = np_readout(np.asarray(teacher_table)[None, [1, 5]], np.array([[False, True]]), p["cold_teacher"])
    want = np.concatenate([hot_s, cold_t], -1) @ p["cl_student"]["kernel"]
    np.testing.assert_allclose(out["cl_student"][0], want[0], rtol=1e-4, atol=1e-5)


GOLDEN_ROWS = [0, 5, 7, 8, 3, 1, 4, 6, 11]  # numpy 2's PCG64 permutation, recorded at commit 1594831


def test_the_shuffled_rows_of_a_seed_never_change():
    # A checkpoint stores the table's rows, not the map: the same seed must give the same map in every
    # numpy release, or a restored student reads its embeddings permuted. Pinned values, seed 0.
    assert row_order.shuffled_item_rows(12, 8, seed=0).tolist() == GOLDEN_ROWS


def test_spread_rows_give_the_most_clicked_items_distinct_factor_rows():
    counts = np.array([0, 5, 9, 1, 7, 3, 8, 2, 6, 4, 0])  # padding first; 10 items on a 3 x 4 table
    rows = row_order.spread_rows(counts, (3, 4))
    assert len(set(rows.tolist())) == 11 and rows.max() < 12
    by_count = [2, 6, 4, 8, 1, 9, 5, 7, 3]  # the clicked items, most clicked first
    # rank k sits on (k mod 3, (k // 3 + k mod 3) mod 4): ranks 0..2 on (0, 0), (1, 1), (2, 2); 3..5 on (0, 1), (1, 2), (2, 3).
    assert [divmod(int(rows[i]), 4) for i in by_count[:6]] == [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 3)]
    np.testing.assert_array_equal(row_order.popularity_rows(counts)[by_count], np.arange(1, 10))
    with pytest.raises(ValueError, match="do not fit a 2 x 4 table"):
        row_order.spread_rows(counts, (2, 4))


def test_balanced_assignment_by_regret_hand_computed():
    # Squared distances to the centres 0 and 10: (0, 100), (0.01, 98.01), (0.04, 96.04), (100, 0).
    # Regrets -100, -98, -96, -100: points 0 and 3 choose first (0 -> c0, 3 -> c1), then 1 -> c0,
    # which fills c0, so 2 goes to c1 though c0 is nearer.
    points, centres = np.array([[0.0], [0.1], [0.2], [10.0]]), np.array([[0.0], [10.0]])
    assert row_order.balanced_assignment(points, centres, np.array([2, 2])).tolist() == [0, 0, 1, 1]
    assert row_order.balanced_assignment(points, centres, np.array([4, 4])).tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="4 points do not fit clusters holding 3"):
        row_order.balanced_assignment(points, centres, np.array([2, 1]))


def test_clustered_rows_put_close_items_on_one_first_core_row_and_alike_offsets_on_one_second():
    # Three tight groups of three items (ids 1-3, 4-6, 7-9), each at offsets (1, 0), (-1, 0), (0, 0)
    # from its centre, on a 3 x 4 table; padding (id 0) far from all.
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    embeddings = np.concatenate([[[50.0, 50.0]], [100.0, 0.0] + offsets, [0.0, 100.0] + offsets, offsets])
    for seed in range(4):
        rows = row_order.clustered_rows(embeddings, (3, 4), seed=seed)
        assert rows[0] == 0 and len(set(rows.tolist())) == 10 and rows.max() < 12
        first, second = rows // 4, rows % 4
        assert [len(set(first[group].tolist())) for group in ([1, 2, 3], [4, 5, 6], [7, 8, 9])] == [1, 1, 1]
        assert len(set(first[1:].tolist())) == 3
        # Groups off first-core row 0 (whose slot 0 is padding's) put each offset on one shared slot.
        groups = [group for group in ([1, 2, 3], [4, 5, 6], [7, 8, 9]) if first[group[0]] != 0]
        assert len(groups) == 2 and second[groups[0]].tolist() == second[groups[1]].tolist()
    with pytest.raises(ValueError, match="10 ids do not fit a 3 x 3 table"):
        row_order.clustered_rows(embeddings, (3, 3))


def test_the_repeat_bonus_moves_the_ranking_of_the_sessions_items_and_nothing_else():
    items = jnp.array([[3, 5, 3, 0], [7, 4, 0, 0]], jnp.int32)  # item 3 twice; row 1's 4 is past its length
    lengths = jnp.array([3, 1], jnp.int32)
    plain = SeqRecModel(num_items=9, hidden_dim=8, inner_dim=8, max_len=4, dropout_rate=0.0)
    boosted = plain.clone(repeat_bonus=2.5)
    params = plain.init(jax.random.key(0), items, lengths)["params"]
    out, out_boosted = plain.apply({"params": params}, items, lengths), boosted.apply({"params": params}, items, lengths)
    np.testing.assert_array_equal(out_boosted["scores"], out["scores"])  # what the losses read is unchanged
    np.testing.assert_array_equal(out["ranking"], out["scores"])
    expected = np.zeros((2, 10), np.float32)
    expected[0, [3, 5]] = 2.5  # once per item, however often it occurs; padding column 0 never
    expected[1, 7] = 2.5  # not item 4: the session is [7]
    np.testing.assert_allclose(out_boosted["ranking"] - out_boosted["scores"], expected, rtol=0, atol=1e-6)
    config = defaults.get_config("ml-100k", "teacher")
    config.model.repeat_bonus = float("inf")  # would make every other item's ranking nan
    with pytest.raises(ConfigError, match="give a finite number"):
        build_model(config, 9)


def test_chunked_target_ranks_equal_the_full_rankings():
    """SeqRecModel.target_ranks (evaluation past a catalogue size) ranks as __call__'s `ranking` does,
    copy and repeat bonuses and a shuffled row map included, for chunks that do not divide the catalogue."""
    num_items = 53
    spec = sttd.STTDSpec(item_factors=(6, 9), dim_factors=(2, 4), ranks=(4,), t=2)
    model = SeqRecModel(
        num_items=num_items,
        hidden_dim=8,
        inner_dim=8,
        max_len=6,
        table_spec=spec,
        copy_bonus=True,
        repeat_bonus=0.7,
        row_order_seed=5,
    )
    rng = np.random.default_rng(4)
    items = rng.integers(1, num_items + 1, size=(16, 6)).astype(np.int32)
    lengths = rng.integers(1, 7, size=16).astype(np.int32)
    targets = jnp.asarray(np.where(np.arange(16) % 2 == 0, items[:, 0], rng.integers(1, num_items + 1, size=16)))  # half are repeats
    params = model.init(jax.random.key(0), jnp.asarray(items), jnp.asarray(lengths))["params"]
    params = {**params, "copy_bonus": jnp.asarray(1.3)}
    ranking = model.apply({"params": params}, jnp.asarray(items), jnp.asarray(lengths))["ranking"]
    want = np.asarray(evaluation.target_ranks(ranking, targets))
    assert 0 < (want < 3).sum() < 16  # the bonuses lift some targets to the top, not all
    for chunk_size in (5, 100):  # chunks that do not divide the catalogue; one chunk past it
        got = model.apply(
            {"params": params}, jnp.asarray(items), jnp.asarray(lengths), targets, chunk_size, method=SeqRecModel.target_ranks
        )
        np.testing.assert_array_equal(np.asarray(got), want)
