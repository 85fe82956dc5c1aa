"""Reader for SR-GNN session files: `train.txt` (or `train.txt.xz`) and `test.txt` pickles.

Each file holds `(seqs, targets)` (a tuple, or a list for RetailRocket): `seqs[k]` is a prefix of
a session and `targets[k]` the item that followed it. SR-GNN expands every training session `s`
into `(s[:-1], s[-1]), (s[:-2], s[-2]), ...`, down to a minimum prefix length (1, or 2 for
RetailRocket), so the prefixes of one session are consecutive, longest first. The sessions are
recovered from that chain (see `session_starts`) and the validation split takes whole sessions.

Pickles are untrusted: they are read with an unpickler that refuses every global, so only the
built-in containers and scalars the format needs can be built, and nothing a pickle carries runs.
"""

from __future__ import annotations

import io
import itertools
import lzma
import os
import pickle

import numpy as np

from rec_kd.data import session_data
from rec_kd.data.session_data import DataError, SessionData


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Builds lists, tuples and ints (and other literals) only: any global is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"pickle names the global {module}.{name}")


def read_file_bytes(path: str) -> bytes:
    """The file's bytes, decompressed when it ends in .xz."""
    try:
        if path.endswith(".xz"):
            with lzma.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (lzma.LZMAError, EOFError) as e:
        raise DataError(f"{path}: not a valid .xz file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def restricted_unpickle(path: str) -> object:
    """Unpickles a file without admitting any global: a pickle that names one is refused."""
    data = read_file_bytes(path)
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        if "names the global" in str(e):
            raise DataError(f"{path}: refused, {e}; only lists, tuples and ints are allowed") from None
        raise DataError(f"{path}: not a valid pickle ({_one_line(e)})") from None
    except EOFError:
        raise DataError(f"{path}: not a valid pickle (truncated: ran out of input)") from None
    except Exception as e:  # a corrupt stream can raise almost anything; none may escape raw
        raise DataError(f"{path}: not a valid pickle ({type(e).__name__}: {_one_line(e)})") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _first_index(values, predicate) -> int:
    return next(i for i, v in enumerate(values) if predicate(v))


def parse_examples(obj: object, path: str) -> tuple[list, session_data.Prefixes]:
    """Checks the `(seqs, targets)` structure and item ids; returns the sequences and examples.

    The sequences are returned as loaded (lists of ints) for the session chain check.
    """
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pair (seqs, targets), got {_describe(obj)}")
    seqs, targets = obj
    if not isinstance(seqs, list) or not isinstance(targets, list):
        raise DataError(f"{path}: expected seqs and targets to be lists, got {_describe(seqs)} and {_describe(targets)}")
    if len(seqs) != len(targets):
        raise DataError(f"{path}: {len(seqs)} sequences but {len(targets)} targets")
    if not set(map(type, seqs)) <= {list, tuple}:
        k = _first_index(seqs, lambda s: type(s) not in (list, tuple))
        raise DataError(f"{path}: sequence {k} is {_describe(seqs[k])}, expected a list of item ids")
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))  # (n,)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise DataError(f"{path}: sequence {int(empty[0])} is empty")
    if not set(map(type, itertools.chain.from_iterable(seqs))) <= {int}:
        k = _first_index(seqs, lambda s: any(type(i) is not int for i in s))
        bad = next(i for i in seqs[k] if type(i) is not int)
        raise DataError(f"{path}: sequence {k} has a non-integer item id {bad!r}")
    if not set(map(type, targets)) <= {int}:
        k = _first_index(targets, lambda t: type(t) is not int)
        raise DataError(f"{path}: target {k} is a non-integer item id {targets[k]!r}")
    flat = _int64_ids(lambda: itertools.chain.from_iterable(seqs), int(lengths.sum()))
    starts = np.cumsum(lengths) - lengths  # (n,)
    bad = np.flatnonzero((flat < 1) | (flat > session_data.INT32_MAX))
    if bad.size:
        k = int(np.searchsorted(starts, bad[0], side="right")) - 1
        item = seqs[k][int(bad[0] - starts[k])]
        raise DataError(f"{path}: sequence {k} has item id {item}; ids must be >= 1 (0 is padding)")
    target_array = _int64_ids(lambda: iter(targets), len(targets))  # (n,)
    bad = np.flatnonzero((target_array < 1) | (target_array > session_data.INT32_MAX))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{path}: target {k} is item id {targets[k]}; ids must be >= 1 (0 is padding)")
    return seqs, session_data.Prefixes(flat, starts, lengths, target_array)


def _int64_ids(ids, count: int) -> np.ndarray:
    """(count,) int64 of the Python ints `ids()` yields; an id beyond int64 becomes one the range check refuses.

    The direct conversion is the fast path (Tmall's 2.27M training ids in a tenth of the time a Python
    clip per id took); only a file holding an id that overflows int64 pays for clipping each id into
    [0, 2**31], where it still fails the 1..INT32_MAX check with its own value named.
    """
    try:
        return np.fromiter(ids(), np.int64, count)
    except OverflowError:
        return np.fromiter((min(max(item, 0), session_data.INT32_MAX + 1) for item in ids()), np.int64, count)


def _describe(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a value of type {type(value).__name__}"


def session_starts(seqs: list, targets: list) -> np.ndarray:
    """(n,) bool: True where example k starts a new session.

    Example k continues the session of example k-1 exactly when it is that example's prefix minus
    its last item, and its target is that last item: `seqs[k] == seqs[k-1][:-1]` and
    `targets[k] == seqs[k-1][-1]`. A session's shortest prefix has the dataset's minimum length m,
    while the next session's first (longest) prefix has at least m items, so with one m per file
    this never joins two sessions.
    """
    starts = np.ones(len(seqs), dtype=bool)
    for k in range(1, len(seqs)):
        previous = seqs[k - 1]
        if targets[k] == previous[-1] and len(seqs[k]) == len(previous) - 1 and seqs[k] == previous[:-1]:
            starts[k] = False
    return starts


def _find_file(path_dir: str, stem: str) -> str:
    """`stem` or `stem.xz` in the folder (the plain file wins when both exist)."""
    for candidate in (os.path.join(path_dir, stem), os.path.join(path_dir, stem + ".xz")):
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"{os.path.join(path_dir, stem)}: file not found (nor {stem}.xz)")


def load_examples(path: str) -> tuple[list, session_data.Prefixes]:
    """One SR-GNN file: the sequences as loaded and the checked, flattened examples."""
    return parse_examples(restricted_unpickle(path), path)


def load_srgnn(
    path_dir: str,
    *,
    max_len: int = 50,
    valid_fraction: float = 0.1,
    hot_fraction: float = 0.2,
    hot_counting: str = "clicks",
    name: str | None = None,
) -> SessionData:
    """Reads an SR-GNN folder; validation = the last floor(valid_fraction * S) training sessions.

    Args:
      path_dir: folder with train.txt (or train.txt.xz) and test.txt (or test.txt.xz).
      max_len: prefixes keep their last max_len items.
      valid_fraction: share of the training sessions, taken from the end of the file, for validation.
      hot_fraction: share of the distinct training-split items that are hot.
      hot_counting: "clicks" (each click of a training-split session once) or "prefixes" (the
        authors' rule: each occurrence in each training prefix).
      name: the dataset's name; defaults to the folder name.
    """
    session_data.check_common_args(max_len, valid_fraction, hot_fraction, hot_counting)
    train_path = _find_file(path_dir, "train.txt")
    test_path = _find_file(path_dir, "test.txt")
    train_seqs, train_and_valid = load_examples(train_path)
    test = load_examples(test_path)[1]

    starts = session_starts(train_seqs, train_and_valid.targets.tolist())  # (n,)
    session_ids = np.cumsum(starts) - 1  # (n,)
    num_sessions = int(session_ids[-1]) + 1 if len(session_ids) else 0
    num_valid_sessions = session_data.floor_fraction(valid_fraction, num_sessions)
    is_valid = session_ids >= num_sessions - num_valid_sessions  # (n,)
    train = train_and_valid.select(~is_valid)

    # A session's clicks are its longest prefix and that prefix's target.
    first_of_session = np.flatnonzero(starts & ~is_valid)
    clicks = train_and_valid.select(first_of_session)
    clicks_flat = clicks.flat[session_data.window_positions(clicks.starts, clicks.lengths)[1]]
    train_clicks = np.concatenate([clicks_flat, clicks.targets])

    return session_data.build_session_data(
        name or os.path.basename(os.path.normpath(path_dir)),
        train=train,
        valid=train_and_valid.select(is_valid),
        test=test,
        train_clicks=train_clicks,
        num_train_sessions=num_sessions,
        max_len=max_len,
        hot_fraction=hot_fraction,
        hot_counting=hot_counting,
    )
