"""Which table row holds each item: the orders a structured item table (STTD, TT, QR) can be read in.

A compressed table builds row r from factor rows picked by r's digits (STTD: r // I_2 and r % I_2),
so the items that share factor rows are decided by the item -> row map. Benchmark ids number items
in order of first appearance, which puts popular early items on shared factor rows (docs/findings.md,
"Row order"). Each function returns a (num_items + 1,) int array of
distinct rows, padding id 0 first.

- shuffled_item_rows: a seeded random map, independent of the data: the model's
  `table.row_order='shuffled'` (SeqRecModel.item_rows).
- popularity_rows, spread_rows: maps from the train split's clicks, measured by
  launch/studies/row_order_probe.py; not model options.
- clustered_rows: a map from a trained model's item embeddings (the teacher's), so that items
  close in that space share first-core rows: the model's `table.row_order='clustered'`, whose map
  a run computes once from its teacher's select-phase table and keeps in its config.json
  (`table.item_rows`, encode_item_rows), so that a resume, an export and every later reader of
  the run find the same rows without the teacher.
"""

import base64

import numpy as np

from rec_kd.data import session_data


def shuffled_item_rows(num_rows: int, num_items: int, seed: int) -> np.ndarray:
    """(num_items + 1,) int32 rows: padding id 0 keeps row 0, ids 1..N take distinct random rows in [1, num_rows).

    A numpy constant, so the jitted table gathers it like any index and export writes the same rows.
    """
    rows = np.random.default_rng(seed).permutation(np.arange(1, num_rows))[:num_items]
    return np.concatenate([[0], rows]).astype(np.int32)


# The dtypes a stored map may use, by the prefix that names them: the smallest that holds every row.
ROW_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def encode_item_rows(rows: np.ndarray) -> str:
    """A (num_items + 1,) item -> row map as text for config.json: 'uint16:' or 'uint32:' + base64 of the little-endian rows.

    Why text in the config, not a file beside the checkpoints: the config is what every reader of a
    run already loads (resume, export, evaluation tools, results.json), so none can miss the map.
    uint16 holds Tmall's and RetailRocket's rows: 2 bytes an item, about 110 KB of text on Tmall.
    """
    rows = np.asarray(rows)
    name = "uint16" if rows.max(initial=0) < 2**16 else "uint32"
    return f"{name}:" + base64.b64encode(rows.astype(ROW_DTYPES[name]).tobytes()).decode("ascii")


def decode_item_rows(text: str, num_items: int, num_rows: int) -> np.ndarray:
    """(num_items + 1,) int32 rows from encode_item_rows' text; ValueError unless it is a map of
    distinct rows in [0, num_rows) with padding (id 0) on row 0."""
    name, _, payload = text.partition(":")
    if name not in ROW_DTYPES:
        raise ValueError(f"an item -> row map starts with one of {sorted(ROW_DTYPES)} and ':', not {text[:16]!r}")
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError as error:
        raise ValueError(f"the item -> row map is not base64 ({error})") from None
    dtype = ROW_DTYPES[name]
    if len(raw) != (num_items + 1) * dtype.itemsize:
        raise ValueError(
            f"the item -> row map holds {len(raw) // dtype.itemsize} rows; a catalogue of {num_items} items needs {num_items + 1}"
        )
    rows = np.frombuffer(raw, dtype).astype(np.int64)
    if rows[0] != 0 or rows.max() >= num_rows or len(np.unique(rows)) != len(rows):
        raise ValueError(f"the item -> row map must give distinct rows in [0, {num_rows}) with padding on row 0")
    return rows.astype(np.int32)


def prefix_and_target_counts(data: session_data.SessionData) -> np.ndarray:
    """(N + 1,) occurrences of each item in the train split's prefixes, plus its count as a target.

    Not clicks: an item early in a session of n clicks appears in about n prefixes, so long
    sessions weigh more (`data.item_counts` with hot_counting='clicks' counts each click once).
    The probe's numbers in docs/findings.md were measured with this count.
    """
    size = data.num_items + 1
    items = data.train.items[data.train.items > 0]
    return np.bincount(data.train.targets, minlength=size) + np.bincount(items, minlength=size)


def popularity_rows(counts: np.ndarray) -> np.ndarray:
    """(N + 1,) rows: the most clicked item on row 1, the next on row 2, ...; padding on row 0."""
    rows = np.empty(len(counts), np.int64)
    rows[np.argsort(-counts[1:], kind="stable") + 1] = np.arange(1, len(counts))
    rows[0] = 0
    return rows


def spread_rows(counts: np.ndarray, item_factors: tuple[int, int]) -> np.ndarray:
    """(N + 1,) rows of a 2-core table: the k-th most clicked id on core indices (k mod I_1, (k // I_1 + k mod I_1) mod I_2).

    Every run of I_1 consecutive popularity ranks gets distinct first and distinct second indices,
    so no two of the I_1 most clicked items share a factor row. Padding (id 0, no clicks) ranks
    first among the items without clicks (a stable sort); its row is never read for an item.
    """
    first, second = item_factors
    if len(counts) > first * second:
        raise ValueError(f"{len(counts)} ids do not fit a {first} x {second} table")
    by_count = np.argsort(-counts, kind="stable")
    k = np.arange(len(counts))
    rows = np.empty(len(counts), np.int64)
    rows[by_count] = (k % first) * second + (k // first + k % first) % second
    return rows


def squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, k) squared Euclidean distances, without the (n, k, d) difference array (GBs at catalogue size)."""
    squared = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None, :]
    return np.maximum(squared, 0.0)


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, d) initial centres, each drawn with probability proportional to its squared distance from
    the nearest centre drawn so far (k-means++), so that no two start in one tight group."""
    centres = [points[rng.integers(len(points))]]
    nearest = squared_distances(points, centres[0][None])[:, 0]
    for _ in range(k - 1):
        total = nearest.sum()
        index = rng.choice(len(points), p=nearest / total) if total > 0 else rng.integers(len(points))
        centres.append(points[index])
        nearest = np.minimum(nearest, squared_distances(points, points[index][None])[:, 0])
    return np.array(centres)


def balanced_assignment(points: np.ndarray, centroids: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """(n,) cluster of each point: its nearest centroid that still has room (capacity[c] points at most).

    Greedy in order of regret (how much farther a point's second choice is than its first), so the
    points that lose most by moving choose first. Why greedy and not an exact assignment: the exact
    one is an (n x sum(capacity)) problem, 37k x 37k on RetailRocket.
    """
    if capacity.sum() < len(points):
        raise ValueError(f"{len(points)} points do not fit clusters holding {capacity.sum()}")
    distances = squared_distances(points, centroids)
    two_best = np.sort(distances, axis=1)[:, :2] if distances.shape[1] > 1 else np.zeros((len(points), 2))
    room = capacity.astype(np.int64).copy()
    clusters = np.empty(len(points), np.int64)
    for i in np.argsort(two_best[:, 0] - two_best[:, 1], kind="stable"):  # largest regret first
        open_distances = np.where(room > 0, distances[i], np.inf)
        clusters[i] = int(np.argmin(open_distances))
        room[clusters[i]] -= 1
    return clusters


def clustered_rows(embeddings: np.ndarray, item_factors: tuple[int, int], seed: int = 0, iterations: int = 8) -> np.ndarray:
    """(N + 1,) rows of a 2-core table from (N + 1, d) item embeddings (padding id 0 first).

    First index: a balanced k-means of the items into I_1 clusters of at most I_2 items, so items
    close in the embedding space share the first core's row. Second index: a k-means of the items'
    offsets from their cluster's centre into I_2 slots, each cluster's items matched to distinct
    slots by an exact assignment, so items whose offsets are alike also share the second core's row.
    Padding keeps row 0 (cluster 0, slot 0). Why: an STTD row is built from the factor rows its
    indices pick, so which items share them decides what the table can tell apart (docs/findings.md, "Row order").
    """
    from scipy import optimize  # the exact per-cluster matching; only this order needs scipy

    first, second = item_factors
    points = np.asarray(embeddings, np.float64)[1:]
    num_items = len(points)
    if num_items + 1 > first * second:
        raise ValueError(f"{num_items + 1} ids do not fit a {first} x {second} table")
    rng = np.random.default_rng(seed)
    capacity = np.full(first, second)
    capacity[0] -= 1  # row 0 is padding's
    centroids = kmeans_plus_plus(points, first, rng)
    for _ in range(iterations):
        clusters = balanced_assignment(points, centroids, capacity)
        for c in range(first):
            members = points[clusters == c]
            if len(members):
                centroids[c] = members.mean(0)
    offsets = points - centroids[clusters]
    slots = kmeans_plus_plus(offsets, second, rng)
    for _ in range(iterations):  # plain k-means of the offsets: slots may hold any number of items
        nearest = squared_distances(offsets, slots).argmin(1)
        for j in range(second):
            if np.any(nearest == j):
                slots[j] = offsets[nearest == j].mean(0)
    rows = np.zeros(num_items + 1, np.int64)
    for c in range(first):
        members = np.flatnonzero(clusters == c)
        if not len(members):
            continue
        cost = squared_distances(offsets[members], slots)
        if c == 0:
            cost[:, 0] = cost.max() * len(members) + 1.0  # padding's slot: never the cheaper choice
        items, chosen = optimize.linear_sum_assignment(cost)
        rows[members[items] + 1] = c * second + chosen
    return rows
