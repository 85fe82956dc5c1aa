"""Synthetic sessions with known structure, at any catalogue size, deterministic from a seed.

Why: the real benchmarks hold about 40k items; shops hold millions. This generator gives a
catalogue of any size without a download, with the structure that makes next-item prediction
learnable, so HR@20 on it means something (a model that learns the transitions beats popularity):

- popularity: item weights follow a power law (Zipf, `zipf_exponent`), ranks assigned at random;
- latent clusters: every item belongs to one of `num_clusters` clusters (uniformly at random);
- Markov transitions between clusters: each cluster has `successors` successor clusters with
  Dirichlet(1) weights; the next item is drawn from a successor of the current item's cluster,
  by popularity within that cluster;
- repeats: with probability `repeat_prob` the next item is one the session already holds (uniform
  over its earlier positions), as in real sessions (38-45% of the benchmarks' targets).

Session lengths are 1 + Geometric(1 / (mean_length - 1)) (at least 2, mean_length on average), capped at `max_session_length`;
sessions are generated until `num_events` clicks. The sessions are in time order: the last
`test_fraction` of them are the test split, and the loader holds out the last valid_fraction of the
rest as valid, like every other reader. Every prefix of a session is an example (SR-GNN's
expansion). Everything is vectorised over sessions, so 1M items and 5M clicks take seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rec_kd.data import session_data
from rec_kd.data.session_data import DataError, SessionData

NAME = "synthetic"


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    num_items: int = 10_000
    num_events: int = 200_000
    num_clusters: int = 100
    successors: int = 4
    zipf_exponent: float = 1.0
    repeat_prob: float = 0.3
    mean_length: float = 5.0
    max_session_length: int = 50
    test_fraction: float = 0.1
    seed: int = 0

    def check(self) -> None:
        """A DataError naming the field (data.synthetic.NAME) of the first bad value."""
        checks = [
            ("num_items", self.num_items >= 2, "at least 2"),
            ("num_events", self.num_events >= 4, "at least 4"),
            ("num_clusters", 1 <= self.num_clusters <= self.num_items, f"between 1 and num_items ({self.num_items})"),
            ("successors", 1 <= self.successors <= self.num_clusters, f"between 1 and num_clusters ({self.num_clusters})"),
            ("zipf_exponent", self.zipf_exponent >= 0, "at least 0"),
            ("repeat_prob", 0 <= self.repeat_prob < 1, "in [0, 1)"),
            ("mean_length", 2 <= self.mean_length <= self.max_session_length, f"in [2, max_session_length = {self.max_session_length}]"),
            ("max_session_length", self.max_session_length >= 2, "at least 2"),
            ("test_fraction", 0 < self.test_fraction < 1, "in (0, 1)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise DataError(f"data.synthetic.{name}={getattr(self, name)!r}: expected {expected}")


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """The latent structure: what the generator samples from (and what a test can check against)."""

    cluster_of: np.ndarray  # (N + 1,) int64, cluster of each item; row 0 (padding) -1
    by_cluster: np.ndarray  # (N,) item ids sorted by cluster
    cluster_starts: np.ndarray  # (C + 1,) offsets of each cluster's items in by_cluster
    cumulative: np.ndarray  # (N,) float64 running sum of the items' weights in by_cluster order
    successor_clusters: np.ndarray  # (C, S) int64
    successor_cumulative: np.ndarray  # (C, S) float64, running sums of the successors' weights (last = 1)


def make_catalogue(spec: SyntheticSpec, rng: np.random.Generator) -> Catalogue:
    n, c = spec.num_items, spec.num_clusters
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** spec.zipf_exponent
    weights = weights[rng.permutation(n)]  # item i + 1 has the weight of a random popularity rank
    cluster_of_items = rng.integers(0, c, size=n)
    by_cluster = np.argsort(cluster_of_items, kind="stable") + 1
    cluster_starts = np.concatenate([[0], np.cumsum(np.bincount(cluster_of_items, minlength=c))])
    successor_clusters = np.stack([rng.choice(c, size=spec.successors, replace=False) for _ in range(c)])
    successor_weights = rng.dirichlet(np.ones(spec.successors), size=c)
    return Catalogue(
        cluster_of=np.concatenate([[-1], cluster_of_items]),
        by_cluster=by_cluster,
        cluster_starts=cluster_starts,
        cumulative=np.cumsum(weights[by_cluster - 1]),
        successor_clusters=successor_clusters,
        successor_cumulative=np.cumsum(successor_weights, axis=1),
    )


def running_mass(catalogue: Catalogue) -> np.ndarray:
    """(N + 1,) the items' weight before position i of by_cluster: a cluster's mass is a difference of two."""
    return np.concatenate([[0.0], catalogue.cumulative])


def draw_in_clusters(catalogue: Catalogue, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item from each of `clusters`, by popularity within the cluster (empty clusters: any item by popularity)."""
    starts, ends = catalogue.cluster_starts[clusters], catalogue.cluster_starts[clusters + 1]
    empty = starts == ends
    starts, ends = np.where(empty, 0, starts), np.where(empty, len(catalogue.by_cluster), ends)
    padded = running_mass(catalogue)
    low, high = padded[starts], padded[ends]
    position = np.searchsorted(catalogue.cumulative, low + rng.random(len(clusters)) * (high - low), side="right")
    return catalogue.by_cluster[np.clip(position, starts, ends - 1)]


def session_lengths(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Lengths of sessions adding up to exactly num_events clicks (the last one cut, at least 2)."""
    estimate = int(spec.num_events / spec.mean_length * 1.2) + 16
    lengths = np.minimum(1 + rng.geometric(1.0 / (spec.mean_length - 1.0), size=estimate), spec.max_session_length)
    while lengths.sum() < spec.num_events:  # rare: the estimate fell short
        lengths = np.concatenate([lengths, lengths])
    ends = np.cumsum(lengths)
    count = int(np.searchsorted(ends, spec.num_events)) + 1
    lengths = lengths[:count].copy()
    lengths[-1] -= ends[count - 1] - spec.num_events
    if lengths[-1] < 2:  # fold a one-click remainder into the session before it
        lengths[-2] += lengths[-1]
        lengths = lengths[:-1]
    return lengths


def generate_sessions(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray, Catalogue]:
    """(flat clicks (num_events,), session lengths, the catalogue), deterministic from spec.seed."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    catalogue = make_catalogue(spec, rng)
    lengths = session_lengths(spec, rng)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.zeros(int(lengths.sum()), np.int64)
    padded = running_mass(catalogue)
    cluster_mass = padded[catalogue.cluster_starts[1:]] - padded[catalogue.cluster_starts[:-1]]
    first_clusters = np.searchsorted(np.cumsum(cluster_mass) / cluster_mass.sum(), rng.random(len(lengths)), side="right")
    flat[starts] = draw_in_clusters(catalogue, np.minimum(first_clusters, spec.num_clusters - 1), rng)
    for position in range(1, int(lengths.max())):
        alive = np.flatnonzero(lengths > position)
        previous = flat[starts[alive] + position - 1]
        successor = (rng.random(len(alive))[:, None] > catalogue.successor_cumulative[catalogue.cluster_of[previous]]).sum(axis=1)
        successor = np.minimum(successor, spec.successors - 1)
        fresh = draw_in_clusters(catalogue, catalogue.successor_clusters[catalogue.cluster_of[previous], successor], rng)
        earlier = flat[starts[alive] + rng.integers(0, position, size=len(alive))]
        flat[starts[alive] + position] = np.where(rng.random(len(alive)) < spec.repeat_prob, earlier, fresh)
    return flat, lengths, catalogue


def session_prefixes(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[session_data.Prefixes, np.ndarray]:
    """Every prefix of every session as an example (vectorised SR-GNN expansion) and its session index."""
    session_index = np.repeat(np.arange(len(lengths)), lengths - 1)
    prefix_lengths = np.arange(len(session_index)) - np.repeat(np.cumsum(lengths - 1) - (lengths - 1), lengths - 1) + 1
    prefix_starts = starts[session_index]
    targets = flat[prefix_starts + prefix_lengths]
    return session_data.Prefixes(flat, prefix_starts, prefix_lengths, targets), session_index


def load_synthetic(
    spec: SyntheticSpec,
    *,
    max_len: int = 50,
    valid_fraction: float = 0.1,
    hot_fraction: float = 0.2,
    hot_counting: str = "clicks",
) -> SessionData:
    """The generated sessions, split like a benchmark: test the last test_fraction, valid the end of the rest."""
    session_data.check_common_args(max_len, valid_fraction, hot_fraction, hot_counting)
    flat, lengths, _ = generate_sessions(spec)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    num_sessions = len(lengths)
    num_test = max(1, session_data.floor_fraction(spec.test_fraction, num_sessions))
    num_train = num_sessions - num_test
    if num_train < 1:
        raise DataError(f"data.synthetic.num_events={spec.num_events}: too few clicks for a train and a test session")
    examples, session_index = session_prefixes(flat, starts, lengths)
    num_valid = session_data.floor_fraction(valid_fraction, num_train)
    is_test = session_index >= num_train
    is_valid = ~is_test & (session_index >= num_train - num_valid)
    train_clicks = flat[: starts[num_train - num_valid]]  # the train split's sessions come first
    data = session_data.build_session_data(
        NAME,
        train=examples.select(~is_test & ~is_valid),
        valid=examples.select(is_valid),
        test=examples.select(is_test),
        train_clicks=train_clicks,
        num_train_sessions=num_train,
        max_len=max_len,
        hot_fraction=hot_fraction,
        hot_counting=hot_counting,
    )
    return with_catalogue_size(data, spec.num_items, hot_fraction)


def with_catalogue_size(data: SessionData, num_items: int, hot_fraction: float) -> SessionData:
    """`data` over all num_items items, the ones no session drew included (the table has a row for each)."""
    if data.num_items == num_items:
        return data
    counts = np.zeros(num_items + 1, np.int64)
    counts[: len(data.item_counts)] = data.item_counts
    return dataclasses.replace(data, num_items=num_items, item_counts=counts, hot_mask=session_data.hot_item_mask(counts, hot_fraction))
