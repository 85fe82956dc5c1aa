"""What every item-table compressor shares: argument checks and the authors-scheme initialiser."""

from __future__ import annotations

import jax


def spec_error(kind: str, problem: str) -> ValueError:
    """A ValueError naming the compressor's file, so a bad table config says where to look."""
    return ValueError(f"rec_kd/compress ({kind} table): {problem}")


def check_positive_ints(kind: str, **values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise spec_error(kind, f"{name} must be a positive int, got {value!r}")


def init_from_shapes(initializer, shapes, key: jax.Array):
    """Every leaf of a pytree of jax.ShapeDtypeStruct drawn from `initializer(key, shape)`.

    The 'authors' init scheme (U(-0.1, 0.1) for every weight) applied to any table's parameters.
    A single array gets `key` itself, so a dense table draws what it drew before tables had specs.
    """
    leaves, treedef = jax.tree.flatten(shapes)
    if len(leaves) == 1 and treedef.num_nodes == 1:
        return initializer(key, leaves[0].shape, leaves[0].dtype)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [initializer(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)])
