"""The student's one train step: which parameters its gradients reach, in process on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rec_kd import defaults
from rec_kd.models import DistillHeads, build_model, init_model_params, resolve_table_config
from rec_kd.train import step

NUM_ITEMS = 11


def tiny_config(stage: str, variant: str = ""):
    config = defaults.get_config("ml-100k", ",".join(word for word in (stage, variant) if word))
    config.model.hidden_dim, config.model.inner_dim, config.model.num_heads = 8, 12, 2
    config.data.max_len = 4
    config.table.item_factors, config.table.dim_factors, config.table.ranks, config.table.t = (3, 4), (4, 2), (4,), 2
    return config


# Rows: mixed (hot 1 + cold 7), hot-only, cold-only, a single item, a padding row.
BATCH = {
    "items": jnp.asarray([[1, 7, 2, 0], [1, 2, 0, 0], [7, 8, 9, 0], [3, 0, 0, 0], [0, 0, 0, 0]], jnp.int32),
    "lengths": jnp.asarray([3, 2, 3, 1, 0], jnp.int32),
    "targets": jnp.asarray([4, 5, 6, 7, 0], jnp.int32),
    "weights": jnp.asarray([1, 1, 1, 1, 0], jnp.float32),
}
HOT_MASK = jnp.asarray([i in (1, 2, 3) for i in range(NUM_ITEMS + 1)])  # items 1-3 hot


def student_gradients(variant: str = "", config=None):
    config, teacher_config = config or tiny_config("student", variant), tiny_config("teacher")
    student, teacher = build_model(config, NUM_ITEMS), build_model(teacher_config, NUM_ITEMS)
    heads = DistillHeads()
    params = step.init_params(config, student, heads, jax.random.key(0))
    teacher_params = init_model_params(teacher, config.data.max_len, jax.random.key(1))
    loss_fn = step.make_loss_fn(student, heads, teacher, config.distill)
    constants = {"hot_mask": HOT_MASK}
    grads = jax.grad(lambda p, t: loss_fn(p, BATCH, jax.random.key(2), constants, t, {})[0], argnums=(0, 1))(params, teacher_params)
    return params, grads


def nonzero_by_path(tree) -> dict[str, bool]:
    return {jax.tree_util.keystr(path): bool(np.any(np.asarray(leaf) != 0)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow  # about 40 s: the full objective's gradient through a real student and its heads
def test_full_objective_reaches_every_student_and_head_parameter_and_no_teacher_parameter():
    params, (student_grads, teacher_grads) = student_gradients()
    reached = nonzero_by_path(student_grads)
    assert "['model']['sttd_cores'][0]" in reached and "['model']['sttd_cores'][1]" in reached
    assert any("['heads']['hot_teacher']" in path for path in reached)
    missing = [path for path, nonzero in reached.items() if not nonzero]
    assert not missing, f"no gradient reaches {missing}"
    assert not any(nonzero_by_path(teacher_grads).values()), "the frozen teacher got a gradient"
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(student_grads))


def test_ce_only_variant_leaves_the_heads_untouched():
    _, (student_grads, _) = student_gradients("ce")
    reached = nonzero_by_path(student_grads)
    assert all(nonzero for path, nonzero in reached.items() if path.startswith("['model']"))
    assert not any(nonzero for path, nonzero in reached.items() if path.startswith("['heads']"))


@pytest.mark.parametrize("variant,kind", [("tt", "tt"), ("dense", "dense")])
def test_table_ablations_build_the_named_table(variant, kind):
    config = tiny_config("student", variant)
    assert config.table.kind == kind
    params = init_model_params(build_model(config, NUM_ITEMS), config.data.max_len, jax.random.key(0))
    if kind == "dense":
        assert params["item_embedding"].shape == (NUM_ITEMS + 1, 8)
    else:  # t = 1: core 2 is (R_1, I_2, J_2) = (4, 4, 2)
        assert [core.shape for core in params["sttd_cores"]] == [(3, 4, 4), (4, 4, 2)]


@pytest.mark.parametrize(
    "kind, sizes, shapes",
    [
        # Hand-sized at 12 rows, d = 8, a budget of 64 parameters:
        ("lowrank", {"rank": 3}, {"items": (12, 3), "basis": (3, 8)}),  # 64 // (12 + 8)
        ("hash", {"buckets": 5}, {"buckets": (5, 8), "weights": (12, 2)}),  # (64 - 24) // 8
        ("qr", {"modulus": 2}, {"quotient": (6, 8), "remainder": (2, 8)}),  # (6 + 2) x 8 = 64
        # hot items 1-3: 3 h + 8 h + 9 c + 8 c <= 64 -> h = 4, c = round(1.0) = 1 (61); h = 5 needs 72.
        ("mixed_dim", {"hot_dim": 4, "cold_dim": 1}, {"hot": (3, 4), "hot_projection": (4, 8), "cold": (9, 1), "cold_projection": (1, 8)}),
    ],
)
def test_every_kind_is_sized_to_the_budget_and_trained_through_the_full_objective(kind, sizes, shapes):
    config = tiny_config("student", kind)
    config.table.budget = 64
    resolve_table_config(config, NUM_ITEMS, np.asarray(HOT_MASK))
    assert {name: config.table[kind][name] for name in sizes} == sizes
    params, (student_grads, teacher_grads) = student_gradients(config=config)
    table = params["model"][build_model(config, NUM_ITEMS).spec.param_name]
    assert {name: leaf.shape for name, leaf in table.items()} == shapes
    missing = [path for path, nonzero in nonzero_by_path(student_grads).items() if not nonzero]
    assert not missing, f"no gradient reaches {missing}"
    assert not any(nonzero_by_path(teacher_grads).values())


def test_a_budget_of_zero_means_the_main_sttd_tables_size():
    config = tiny_config("student", "qr")
    resolve_table_config(config, NUM_ITEMS)
    # The main STTD table here: cores (I_1, J_1, R_1) = (3, 4, 4) and (R_1/t, I_2, J_2/t) = (2, 4, 1),
    # 48 + 8 = 56 parameters. QR m = 2 needs (6 + 2) x 8 = 64 > 56; m = 3 needs (4 + 3) x 8 = 56.
    assert config.table.qr.modulus == 3
