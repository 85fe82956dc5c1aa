"""Vector quantization of an item table: weighted k-means, product and residual quantization.

What the `codes` table (rec_kd/compress/codes.py) starts from: each item's vector becomes M small
integer codes into M codebooks of K centroids. Product quantization (PQ) splits the width into M
sub-vectors and quantizes each on its own (row = concatenated centroids); residual quantization
(RQ) quantizes the whole vector, then what is left of it, M times (row = sum of centroids), and
encodes with a beam search over the stages.

Pure functions of numpy arrays and a seed, run with JAX on the host's default device, deterministic
for a given seed. The k-means weights the points (items) by how often they occur, so the popular
items, which most sessions hold, are the best reproduced. Catalogues beyond `MAX_POINTS_PER_CENTROID`
points a centroid train the centroids on a seeded sample and assign every point afterwards.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Like faiss: at most this many training points per centroid; beyond it a sample trains the centroids.
MAX_POINTS_PER_CENTROID = 256
# Points whose distances are computed at once when assigning (bounds the (chunk, K) matrix).
ASSIGN_CHUNK = 65536


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """(n, d), (K, d) -> (n, K) squared Euclidean distances, by one matmul."""
    return jnp.sum(x * x, 1, keepdims=True) - 2.0 * x @ centroids.T + jnp.sum(centroids * centroids, 1)[None, :]


@functools.partial(jax.jit, static_argnames=("num_centroids",))
def _kmeans_plus_plus(x: jax.Array, weights: jax.Array, key: jax.Array, num_centroids: int) -> jax.Array:
    """Weighted k-means++ seeding: each next centroid drawn with probability ~ weight x distance^2."""
    first = jax.random.choice(key, x.shape[0], p=weights / jnp.sum(weights))
    centroids = jnp.zeros((num_centroids, x.shape[1]), x.dtype).at[0].set(x[first])
    nearest = jnp.sum((x - x[first]) ** 2, 1)

    def add_one(carry, index_key):
        centroids, nearest = carry
        index, step_key = index_key
        scores = weights * jnp.maximum(nearest, 0.0)
        # All points already placed exactly (fewer distinct points than centroids): any weighted point.
        scores = jnp.where(jnp.sum(scores) > 0, scores, weights)
        chosen = jax.random.choice(step_key, x.shape[0], p=scores / jnp.sum(scores))
        centroids = centroids.at[index].set(x[chosen])
        nearest = jnp.minimum(nearest, jnp.sum((x - x[chosen]) ** 2, 1))
        return (centroids, nearest), None

    keys = jax.random.split(jax.random.fold_in(key, 1), num_centroids - 1)
    (centroids, _), _ = jax.lax.scan(add_one, (centroids, nearest), (jnp.arange(1, num_centroids), keys))
    return centroids


@functools.partial(jax.jit, static_argnames=("iterations",))
def _lloyd(x: jax.Array, weights: jax.Array, centroids: jax.Array, iterations: int) -> jax.Array:
    """Weighted Lloyd iterations; a centroid that loses every point keeps its place."""

    def step(centroids, _):
        assignment = jnp.argmin(squared_distances(x, centroids), 1)
        mass = jax.ops.segment_sum(weights, assignment, centroids.shape[0])
        total = jax.ops.segment_sum(weights[:, None] * x, assignment, centroids.shape[0])
        moved = total / jnp.maximum(mass, 1e-12)[:, None]
        return jnp.where((mass > 0)[:, None], moved, centroids), None

    centroids, _ = jax.lax.scan(step, centroids, None, length=iterations)
    return centroids


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, d), (K, d) -> (n,) int32 index of each point's nearest centroid (lowest index on ties)."""
    nearest = jax.jit(lambda x, c: jnp.argmin(squared_distances(x, c), 1))
    parts = [np.asarray(nearest(x[start : start + ASSIGN_CHUNK], centroids)) for start in range(0, len(x), ASSIGN_CHUNK)]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0,), np.int32)


def kmeans(x: np.ndarray, weights: np.ndarray, num_centroids: int, iterations: int, seed: int) -> np.ndarray:
    """(K, d) float32 centroids of the weighted points x (n, d); deterministic for a seed.

    Points of weight 0 are never seeded and never move a centroid. Beyond MAX_POINTS_PER_CENTROID
    points a centroid, a sample drawn with probability ~ weight trains them (then unweighted: the
    sample already carries the weights).
    """
    x = np.asarray(x, np.float32)
    weights = np.asarray(weights, np.float64)
    if x.ndim != 2 or weights.shape != (len(x),):
        raise ValueError(f"kmeans needs points (n, d) and weights (n,), got {x.shape} and {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not np.any(weights > 0):
        raise ValueError("kmeans needs finite, non-negative weights with at least one positive")
    key = jax.random.key(seed)
    limit = MAX_POINTS_PER_CENTROID * num_centroids
    if len(x) > limit:
        sample_key, key = jax.random.split(key)
        chosen = np.asarray(jax.random.choice(sample_key, len(x), (limit,), p=jnp.asarray(weights / weights.sum(), jnp.float32)))
        x, weights = x[chosen], np.ones(limit)
    weights = jnp.asarray(weights / weights.max(), jnp.float32)
    centroids = _kmeans_plus_plus(jnp.asarray(x), weights, key, num_centroids)
    return np.asarray(_lloyd(jnp.asarray(x), weights, centroids, iterations))


def product_quantize(x: np.ndarray, weights: np.ndarray, num_codebooks: int, codebook_size: int, iterations: int, seed: int):
    """PQ of x (n, d): codes (n, M) int32 and codebooks (M, K, d / M); row i ~ concat_m codebooks[m, codes[i, m]]."""
    n, dim = x.shape
    if dim % num_codebooks:
        raise ValueError(f"product quantization splits the width: {num_codebooks} codebooks do not divide {dim}")
    parts = np.split(np.asarray(x, np.float32), num_codebooks, axis=1)
    codebooks = np.stack([kmeans(part, weights, codebook_size, iterations, seed + 7919 * m) for m, part in enumerate(parts)])
    codes = np.stack([assign(part, codebooks[m]) for m, part in enumerate(parts)], axis=1) if n else np.zeros((0, num_codebooks), np.int32)
    return codes, codebooks


def pq_decode(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(n, M) codes, (M, K, d / M) codebooks -> (n, d) rows."""
    return np.concatenate([codebooks[m][codes[:, m]] for m in range(codebooks.shape[0])], axis=1)


def rq_decode(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(n, M) codes, (M, K, d) codebooks -> (n, d) rows: the sum of each stage's centroid."""
    return sum(codebooks[m][codes[:, m]] for m in range(codebooks.shape[0]))


def rq_beam_encode(x: np.ndarray, codebooks: np.ndarray, beam: int) -> np.ndarray:
    """(n, M) codes of x under RQ codebooks (M, K, d): beam search over the stages.

    Greedy encoding (beam 1) picks each stage's nearest centroid to the residual; a wider beam
    keeps the `beam` best partial sums after each stage and so finds lower total errors.
    """
    num_stages, size, _ = codebooks.shape

    @jax.jit
    def encode_chunk(x):
        n = x.shape[0]
        residuals = x[:, None, :]  # (n, 1, d): one hypothesis to start
        paths = jnp.zeros((n, 1, 0), jnp.int32)
        for stage in range(num_stages):
            errors = jnp.sum(residuals**2, -1, keepdims=True) - 2.0 * residuals @ codebooks[stage].T
            errors = errors + jnp.sum(codebooks[stage] ** 2, -1)  # (n, h, K): ||r - c||^2
            width = min(beam, errors.shape[1] * size)
            _, best = jax.lax.top_k(-errors.reshape(n, -1), width)  # (n, width) flat (hypothesis, centroid)
            parent, code = best // size, best % size
            residuals = jnp.take_along_axis(residuals, parent[..., None], 1) - codebooks[stage][code]
            paths = jnp.concatenate([jnp.take_along_axis(paths, parent[..., None], 1), code[..., None]], -1)
        best = jnp.argmin(jnp.sum(residuals**2, -1), 1)
        return jnp.take_along_axis(paths, best[:, None, None], 1)[:, 0]

    codebooks = jnp.asarray(codebooks)
    parts = [
        np.asarray(encode_chunk(jnp.asarray(x[s : s + ASSIGN_CHUNK // max(beam, 1)])))
        for s in range(0, len(x), ASSIGN_CHUNK // max(beam, 1))
    ]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0, num_stages), np.int32)


def residual_quantize(
    x: np.ndarray, weights: np.ndarray, num_codebooks: int, codebook_size: int, iterations: int, seed: int, beam: int = 1
):
    """RQ of x (n, d): codebooks (M, K, d), each a k-means of what the earlier stages left, and codes (n, M) by beam search."""
    residual = np.asarray(x, np.float32).copy()
    codebooks = []
    for stage in range(num_codebooks):
        centroids = kmeans(residual, weights, codebook_size, iterations, seed + 7919 * stage)
        codebooks.append(centroids)
        residual -= centroids[assign(residual, centroids)]
    codebooks = np.stack(codebooks)
    return rq_beam_encode(np.asarray(x, np.float32), codebooks, beam), codebooks
