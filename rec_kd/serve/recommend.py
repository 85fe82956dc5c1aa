"""CLI: `python -m rec_kd.serve.recommend --model=FILE.onnx --session=3,17,42 [--k=20]`.

Prints exactly one JSON object, {"items": [...], "scores": [...]}, on stdout and nothing else.
`--workdir=DIR` instead of `--model` answers from the run's JAX checkpoint, for comparison with
the exported file. Bad input (unknown ids, an empty session, a file that is not an export) prints
one line on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

import numpy as np

from rec_kd.serve import serving


def recommend_onnx(path: str, session: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    return serving.Recommender.load(path).recommend(session, k)


def recommend_jax(workdir: str, session: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same answer from the JAX checkpoint (rec_kd.serve.export.jax_top_k on the padded session)."""
    from rec_kd.serve import export  # imports JAX; only this path needs it

    try:
        trained, num_items = export.load_workdir(workdir)
    except export.ExportError as error:
        raise serving.ServingError(str(error)) from None
    k = serving.check_k(k, num_items)
    items, lengths = serving.pad_session(serving.check_session(session, num_items), trained.model.max_len)
    ids, scores = export.jax_top_k(trained.model, trained.params, items, lengths, k)
    return ids[0], scores[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rec_kd.serve.recommend", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="an .onnx file written by rec_kd.serve.export")
    source.add_argument("--workdir", help="a trained rec_kd run (answers from the JAX checkpoint)")
    parser.add_argument("--session", required=True, help="comma-separated item ids, oldest first")
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        session = serving.parse_session(args.session)
        if args.model:
            ids, scores = recommend_onnx(args.model, session, args.k)
        else:
            # Library chatter (absl, orbax) must not reach stdout, which carries only the JSON.
            with contextlib.redirect_stdout(sys.stderr):
                ids, scores = recommend_jax(args.workdir, session, args.k)
    except serving.ServingError as error:
        print(f"rec_kd.serve.recommend: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"items": [int(i) for i in ids], "scores": [float(s) for s in scores]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
