"""On-device serving: `Recommender.load(path).recommend(session, k) -> (ids, scores)`.

Imports only numpy and onnxruntime, never JAX: this is the code a phone app (or any CPU service)
would run next to the .onnx file written by rec_kd.serve.export. The file carries what serving needs to
know in its metadata (num_items, max_len, k), so a session is validated before it reaches the
runtime: an empty session, an id outside [1, num_items] or a k above the exported K is a
ServingError with a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

INPUT_ITEMS = "session_items"
INPUT_LENGTHS = "session_length"
OUTPUT_IDS = "top_items"
OUTPUT_SCORES = "top_scores"


class ServingError(ValueError):
    """A model file or a request that cannot be served; the message is one line naming the problem."""


def parse_session(text: str) -> list[int]:
    """'3,17,42' -> [3, 17, 42]; anything that is not comma-separated integers is a ServingError."""
    tokens = [token.strip() for token in text.split(",") if token.strip()]
    try:
        return [int(token) for token in tokens]
    except ValueError:
        raise ServingError(f"session {text!r}: expected comma-separated integer item ids") from None


def check_session(session: Sequence[int], num_items: int) -> np.ndarray:
    """The session as an int32 array; empty sessions and ids outside [1, num_items] are errors."""
    session = list(session)
    not_ids = [item for item in session if isinstance(item, bool) or not isinstance(item, (int, np.integer))]
    if not_ids:
        raise ServingError(f"item ids must be integers, got {not_ids[:10]}")
    items = np.asarray(session, dtype=np.int64)
    if items.size == 0:
        raise ServingError("empty session: give at least one item id")
    unknown = items[(items < 1) | (items > num_items)]
    if unknown.size:
        raise ServingError(f"unknown item ids {unknown.tolist()[:10]}: ids must lie in [1, {num_items}]")
    return items.astype(np.int32)


def pad_session(items: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(1, max_len) right-padded ids keeping the last max_len items (as training does) and (1,) length."""
    kept = items[-max_len:]
    padded = np.zeros((1, max_len), dtype=np.int32)
    padded[0, : kept.size] = kept
    return padded, np.asarray([kept.size], dtype=np.int32)


def check_k(k: int | None, max_k: int) -> int:
    k = max_k if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= max_k:
        raise ServingError(f"k = {k!r} must be an integer in [1, {max_k}] (the K this model was exported with)")
    return int(k)


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keep the runtime's warnings off the user's stderr
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


@dataclasses.dataclass
class Recommender:
    """An ONNX Runtime session over an exported model, plus the metadata needed to validate input."""

    session: ort.InferenceSession
    path: str
    num_items: int
    max_len: int
    k: int
    metadata: dict

    @classmethod
    def load(cls, path: str, threads: int | None = None) -> Recommender:
        """Opens `path`; `threads` (e.g. 1 for a phone-like benchmark) fixes ORT's thread pools."""
        if not os.path.isfile(path):
            raise ServingError(f"{path}: no such model file")
        try:
            session = ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for unreadable files
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ServingError(f"{path}: not a loadable ONNX model ({first_line[:200]})") from None
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        try:
            num_items, max_len, k = (int(metadata[key]) for key in ("num_items", "max_len", "k"))
        except (KeyError, ValueError):
            raise ServingError(f"{path}: not a rec_kd export (no num_items/max_len/k metadata)") from None
        return cls(session, path, num_items, max_len, k, metadata)

    def run(self, items: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw batched call: (B, max_len) int32 ids and (B,) int32 lengths -> (B, K) ids, scores."""
        ids, scores = self.session.run([OUTPUT_IDS, OUTPUT_SCORES], {INPUT_ITEMS: items, INPUT_LENGTHS: lengths})
        return ids, scores

    def recommend(self, session: Sequence[int], k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (k <= exported K) item ids (k,) int64 and scores (k,) float32, best first."""
        k = check_k(k, self.k)
        items, lengths = pad_session(check_session(session, self.num_items), self.max_len)
        ids, scores = self.run(items, lengths)
        return ids[0, :k], scores[0, :k]
