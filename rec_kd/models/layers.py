"""Building blocks shared by the teacher, the student and the distillation heads.

Every module is flax.linen: `apply(params, ...)` is a pure function of its parameters. Padding is
handled with masks everywhere, and a row with no real item (a zero-weight padding row of a batch)
produces finite zeros, never NaN.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# Additive attention mask for padded keys, as in the authors' code (not -inf: a fully padded row
# must still give a finite softmax).
ATTENTION_MASK_VALUE = -10000.0


def _authors_uniform(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -0.1, 0.1)


def initializers(scheme: str):
    """(kernel_init, embedding_init, layer_norm_scale_init) for an initialisation scheme.

    'standard': LeCun-normal kernels, N(0, 1/d)-like embeddings (set by the caller), LayerNorm
    gain 1. 'authors': every parameter U(-0.1, 0.1), LayerNorm gains included, as the OD-Rec
    code does (kept only to reproduce it).
    """
    if scheme == "standard":
        return nn.initializers.lecun_normal(), None, nn.initializers.ones
    if scheme == "authors":
        return _authors_uniform, _authors_uniform, _authors_uniform
    raise ValueError(f"unknown init scheme {scheme!r}; expected 'standard' or 'authors'")


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over axis 1 of (B, L, D) values where mask (B, L) is true; zeros for empty rows."""
    mask = mask.astype(values.dtype)[..., None]  # (B, L, 1)
    count = jnp.maximum(jnp.sum(mask, axis=1), 1.0)  # (B, 1)
    return jnp.sum(values * mask, axis=1) / count  # (B, D)


class SoftAttentionReadout(nn.Module):
    """DHCN/COTREC session readout: beta_i = w2 . sigmoid(W1 tanh(h_i) + b1 + W2 m), s = sum mask beta h.

    m is the masked mean of h; beta is not normalised. Used on encoder outputs (the session
    vector) and, by the distillation heads, directly on item embeddings of a sub-session.
    """

    init_scheme: str = "standard"

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array, summary: jax.Array | None = None) -> jax.Array:  # (B, L, D), (B, L)
        """Session vectors (B, D). `summary` (B, D), if given, is added to the mean m in the gate."""
        kernel_init, _, _ = initializers(self.init_scheme)
        dim = h.shape[-1]
        mean = masked_mean(h, mask)  # (B, D)
        if summary is not None:
            mean = mean + summary
        gate = nn.Dense(dim, kernel_init=kernel_init, name="w1")(jnp.tanh(h))  # (B, L, D)
        gate = gate + nn.Dense(dim, use_bias=False, kernel_init=kernel_init, name="w2_mean")(mean)[:, None, :]
        beta = nn.Dense(1, use_bias=False, kernel_init=kernel_init, name="w_beta")(nn.sigmoid(gate))  # (B, L, 1)
        return jnp.sum(beta * mask[..., None].astype(h.dtype) * h, axis=1)  # (B, D)


class TransformerBlock(nn.Module):
    """Post-LN causal self-attention block with key-padding mask and an exact-GELU feed-forward."""

    num_heads: int
    inner_dim: int
    dropout_rate: float
    init_scheme: str = "standard"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:  # (B, L, D), (B, L)
        kernel_init, _, ln_init = initializers(self.init_scheme)
        batch, length, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {self.num_heads}")
        head_dim = dim // self.num_heads

        def heads(name):  # (B, L, D) -> (B, H, L, Dh)
            y = nn.Dense(dim, kernel_init=kernel_init, name=name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        query, key, value = heads("query"), heads("key"), heads("value")
        logits = jnp.einsum("bhqd,bhkd->bhqk", query, key) / jnp.sqrt(head_dim).astype(x.dtype)
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))  # (L, L)
        allowed = causal[None, None] & mask[:, None, None, :]  # (B, 1, L, L)
        logits = jnp.where(allowed, logits, ATTENTION_MASK_VALUE)
        probs = nn.Dropout(self.dropout_rate)(jax.nn.softmax(logits, axis=-1), deterministic=not train)
        attended = jnp.einsum("bhqk,bhkd->bhqd", probs, value).transpose(0, 2, 1, 3).reshape(batch, length, dim)
        attended = nn.Dense(dim, kernel_init=kernel_init, name="attention_out")(attended)
        attended = nn.Dropout(self.dropout_rate)(attended, deterministic=not train)
        x = nn.LayerNorm(scale_init=ln_init, name="attention_norm")(x + attended)

        hidden = nn.gelu(nn.Dense(self.inner_dim, kernel_init=kernel_init, name="ffn_in")(x), approximate=False)
        hidden = nn.Dense(dim, kernel_init=kernel_init, name="ffn_out")(hidden)
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not train)
        return nn.LayerNorm(scale_init=ln_init, name="ffn_norm")(x + hidden)
