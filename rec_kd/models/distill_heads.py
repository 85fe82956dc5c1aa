"""Self-supervised distillation heads: hot/cold sub-session readouts and embedding recombination.

Sub-sessions are masks over the padded batch (the hot-item mask gathered at the item ids), never
Python loops over examples. Four readouts, each with its own parameters, read the hot and cold
items of a session through the student's table and through the (frozen) teacher's table. Two
recombination pairs cross them: one feeds the contrastive loss, one the predictive loss.

Examples with both hot and cold items ("mixed") use the recombinations; hot-only and cold-only
examples use the full session vectors crossed the same way (z_S = teacher's session vector, z_T =
student's). Examples with a single item, and padding rows, are not eligible for either loss.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from rec_kd.models.layers import SoftAttentionReadout, initializers
from rec_kd.models.sasrec import position_mask


def sub_session_masks(items: jax.Array, lengths: jax.Array, hot_mask: jax.Array):
    """(hot, cold) position masks (B, L) over right-padded items, from the (N + 1,) hot-item mask."""
    real = position_mask(lengths, items.shape[1])
    is_hot = hot_mask[items]  # (B, L)
    return real & is_hot, real & ~is_hot


def example_kinds(hot: jax.Array, cold: jax.Array, lengths: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    """Per-example bool masks (B,): eligible (a real row with > 1 item), mixed, and single-kind."""
    eligible = (weights > 0) & (lengths > 1)
    has_hot, has_cold = jnp.any(hot, axis=1), jnp.any(cold, axis=1)
    mixed = eligible & has_hot & has_cold
    return {"eligible": eligible, "mixed": mixed, "single_kind": eligible & ~mixed}


class DistillHeads(nn.Module):
    """The distillation parameters trained with the student (the teacher stays frozen)."""

    init_scheme: str = "standard"

    @nn.compact
    def __call__(self, batch, student_table, teacher_table, student_session, teacher_session, hot_mask):
        """Returns the recombined views for the contrastive and predictive losses.

        Args:
          batch: 'items' (B, L), 'lengths' (B,), 'weights' (B,).
          student_table, teacher_table: (N + 1, D); the teacher's already under stop_gradient.
          student_session, teacher_session: (B, D) session vectors.
          hot_mask: (N + 1,) bool.
        Returns:
          {'cl_student', 'cl_teacher', 'pred_student', 'pred_teacher': (B, D),
           'eligible', 'mixed': (B,) bool}.
        """
        kernel_init, _, _ = initializers(self.init_scheme)
        items, lengths = batch["items"], batch["lengths"]
        hot, cold = sub_session_masks(items, lengths, hot_mask)
        kinds = example_kinds(hot, cold, lengths, batch["weights"])
        student_items, teacher_items = student_table[items], teacher_table[items]  # (B, L, D)

        hot_student = SoftAttentionReadout(self.init_scheme, name="hot_student")(student_items, hot)
        cold_student = SoftAttentionReadout(self.init_scheme, name="cold_student")(student_items, cold)
        hot_teacher = SoftAttentionReadout(self.init_scheme, name="hot_teacher")(teacher_items, hot)
        cold_teacher = SoftAttentionReadout(self.init_scheme, name="cold_teacher")(teacher_items, cold)
        student_view = jnp.concatenate([hot_student, cold_teacher], axis=-1)  # (B, 2D)
        teacher_view = jnp.concatenate([hot_teacher, cold_student], axis=-1)  # (B, 2D)

        def recombine(name, view):
            return nn.Dense(student_session.shape[-1], use_bias=False, kernel_init=kernel_init, name=name)(view)

        mixed = kinds["mixed"][:, None]
        outputs = {"eligible": kinds["eligible"], "mixed": kinds["mixed"]}
        for loss_name in ("cl", "pred"):
            outputs[f"{loss_name}_student"] = jnp.where(mixed, recombine(f"{loss_name}_student", student_view), teacher_session)
            outputs[f"{loss_name}_teacher"] = jnp.where(mixed, recombine(f"{loss_name}_teacher", teacher_view), student_session)
        return outputs
