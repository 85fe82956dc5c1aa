"""The student in a web page: `python -m rec_kd.serve.web --workdir=RUN [--out=FOLDER] [--serve --port=8000]`.

Why: the product is a recommender that runs on the user's own device. A browser is the nearest
device these machines can run and test, and ONNX Runtime Web executes the very .onnx file that
rec_kd.serve.export writes, in WebAssembly, the way a mobile web app would. So this module only
assembles a static folder; every recommendation is computed in the page, never on a server.

The folder (self-contained; no CDN, nothing fetched from elsewhere at run time):
  index.html      the page, with the model's metadata (num_items, max_len, K, bytes) inlined
  recommend.js    the page's one script: validation and padding as rec_kd.serve.serving, the UI,
                  and `window.recommend(session, k)` -> Promise of {items, scores}
  model.onnx      the run's selected model, exported by rec_kd.serve.export (int8 unless --quantize=none)
  names.json      {"dataset": ..., "names": {"1": "Toy Story (1995)", ...}}; empty names for
                  datasets without titles (the page shows ids)
  ort.wasm.min.js, ort-wasm-simd-threaded.{mjs,wasm}
                  the onnxruntime-web runtime (WASM backend), copied from the npm package that
                  `make web-deps` installs into node_modules/ (pinned in package.json)

`--serve` serves the folder on 127.0.0.1 with the MIME types WebAssembly needs. The page runs
ONNX Runtime on one thread, so no cross-origin isolation headers are needed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import sys
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "web_static"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Where `make web-deps` (npm ci) puts the runtime; REC_KD_ORT_WEB_DIR overrides it.
DEFAULT_RUNTIME_DIR = REPO_ROOT / "node_modules" / "onnxruntime-web" / "dist"
RUNTIME_DIR_ENV = "REC_KD_ORT_WEB_DIR"
# The WASM-only build of onnxruntime-web: the API (global `ort`), the Emscripten glue and the binary.
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILE, SCRIPT_FILE, MODEL_FILE, NAMES_FILE = "index.html", "recommend.js", "model.onnx", "names.json"
CONFIG_PLACEHOLDER = "__REC_KD_CONFIG__"
# The page asks for at most this many; the model is exported with K >= it (the page slices).
EXPORT_K = 20
QUANTIZE_CHOICES = ("int8", "none")
MOVIELENS_ITEMS_FILE = "ml-100k.item"
# Extra MIME types: browsers compile .wasm only from application/wasm and import .mjs only as JavaScript.
MIME_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
}


class WebError(ValueError):
    """A workdir, runtime folder or option the page cannot be built from; the message names which and why."""


# ----------------------------------------------------------------------------------------------
# Inputs: the runtime files, the run's dataset, the item names.
# ----------------------------------------------------------------------------------------------


def runtime_dir() -> Path:
    """The onnxruntime-web dist folder: $REC_KD_ORT_WEB_DIR, else node_modules/ beside the package."""
    return Path(os.environ.get(RUNTIME_DIR_ENV) or DEFAULT_RUNTIME_DIR)


def runtime_paths(folder: Path) -> list[Path]:
    """The runtime files in `folder`; a missing one is a WebError that says how to install them."""
    missing = [name for name in RUNTIME_FILES if not (folder / name).is_file()]
    if missing:
        raise WebError(
            f"{folder}: onnxruntime-web runtime files missing ({', '.join(missing)}); "
            f"run `make web-deps` (npm ci) or set {RUNTIME_DIR_ENV} to the package's dist/ folder"
        )
    return [folder / name for name in RUNTIME_FILES]


def runtime_version(folder: Path) -> str:
    """The npm package's version (its package.json sits one level above dist/), or 'unknown'."""
    try:
        return str(json.loads((folder.parent / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def run_dataset(workdir: str) -> str:
    """The dataset a run was trained on, from its config.json."""
    from rec_kd.serve import export

    try:
        return export.read_run_field(workdir, "config.json", "dataset")
    except export.ExportError as error:
        raise WebError(f"{error} (make demo writes workdirs/demo/student)") from None


def movielens_items_path() -> str:
    """ml-100k.item beside ml-100k.inter in the recbole wheel (found without importing recbole)."""
    from rec_kd.data import sequences
    from rec_kd.data.session_data import DataError

    try:
        inter = sequences.movielens_100k_path()
    except DataError as error:
        raise WebError(str(error)) from None
    path = os.path.join(os.path.dirname(inter), MOVIELENS_ITEMS_FILE)
    if not os.path.isfile(path):
        raise WebError(f"{path}: file not found (expected beside {os.path.basename(inter)} in the recbole wheel)")
    return path


def display_name(title: str, year: str) -> str:
    """'Toy Story', '1995' -> 'Toy Story (1995)'; a missing or non-numeric year is left out."""
    title, year = title.strip(), year.strip()
    return f"{title} ({year})" if year.isdigit() else title


def parse_movielens_items(text: str, path: str) -> dict[int, str]:
    """RecBole's ml-100k.item (tab-separated, header `item_id:token movie_title:token_seq release_year:token ...`)."""
    lines = text.splitlines()
    header = [field.split(":")[0] for field in lines[0].split("\t")] if lines else []
    try:
        id_col, title_col, year_col = (header.index(name) for name in ("item_id", "movie_title", "release_year"))
    except ValueError:
        raise WebError(f"{path}: header {lines[0] if lines else ''!r} lacks item_id, movie_title or release_year") from None
    names = {}
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            item = int(fields[id_col])
            names[item] = display_name(fields[title_col], fields[year_col])
        except (IndexError, ValueError):
            raise WebError(f"{path}: line {line_number}: expected an integer item id, a title and a year") from None
    return names


def item_names(dataset: str) -> dict[int, str]:
    """Item id -> display name for datasets that ship titles (ml-100k); {} for the rest (the page shows ids)."""
    if dataset != "ml-100k":
        return {}
    path = movielens_items_path()
    with open(path, encoding="utf-8") as f:
        return parse_movielens_items(f.read(), path)


def model_info(model_path: str) -> dict:
    """What the page needs to know about the file: its rec_kd metadata and its size in bytes."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}
        info = {key: int(props[key]) for key in ("num_items", "max_len", "k")}
    except (OSError, KeyError, ValueError) as error:
        raise WebError(f"{model_path}: not a rec_kd export ({type(error).__name__}: {error})") from None
    info.update(quantize=props.get("quantize", "none"), stage=props.get("stage", ""), bytes=os.path.getsize(model_path))
    return info


# ----------------------------------------------------------------------------------------------
# The folder.
# ----------------------------------------------------------------------------------------------


def page_html(template: str, config: dict) -> str:
    """The page template with `config` inlined as JSON ('</' escaped so it cannot close the script tag)."""
    if CONFIG_PLACEHOLDER not in template:
        raise WebError(f"{STATIC_DIR / PAGE_FILE}: template lacks {CONFIG_PLACEHOLDER}")
    return template.replace(CONFIG_PLACEHOLDER, json.dumps(config, sort_keys=True).replace("</", "<\\/"))


def names_document(dataset: str, names: dict[int, str]) -> dict:
    return {"dataset": dataset, "names": {str(item): name for item, name in sorted(names.items())}}


def build_folder(model_path: str, out: str, dataset: str, names: dict[int, str], runtime: Path) -> dict:
    """Writes the static folder around an exported model already at `model_path`; returns its manifest.

    `model_path` is copied to out/model.onnx unless it is that file already.
    """
    runtime_files = runtime_paths(runtime)
    os.makedirs(out, exist_ok=True)
    target = os.path.join(out, MODEL_FILE)
    if os.path.abspath(model_path) != os.path.abspath(target):
        shutil.copyfile(model_path, target)
    info = model_info(target)
    for path in runtime_files:
        shutil.copyfile(path, os.path.join(out, path.name))
    with open(os.path.join(out, NAMES_FILE), "w", encoding="utf-8") as f:
        json.dump(names_document(dataset, names), f, ensure_ascii=False, separators=(",", ":"))
    shutil.copyfile(STATIC_DIR / SCRIPT_FILE, os.path.join(out, SCRIPT_FILE))
    runtime_bytes = sum(os.path.getsize(os.path.join(out, path.name)) for path in runtime_files)
    config = {
        **info,
        "dataset": dataset,
        "has_names": bool(names),
        "model_file": MODEL_FILE,
        "names_file": NAMES_FILE,
        "runtime": f"onnxruntime-web {runtime_version(runtime)}",
        "runtime_bytes": runtime_bytes,
    }
    with open(os.path.join(out, PAGE_FILE), "w", encoding="utf-8") as f:
        f.write(page_html((STATIC_DIR / PAGE_FILE).read_text(encoding="utf-8"), config))
    return {"folder": os.path.abspath(out), "files": sorted(os.listdir(out)), "page_weight_bytes": info["bytes"] + runtime_bytes, **config}


def build(workdir: str, out: str, quantize: str = "int8", k: int = EXPORT_K, runtime: Path | None = None) -> dict:
    """Exports the run's selected model (rec_kd.serve.export) and writes the folder around it."""
    from rec_kd.serve import export

    if quantize not in QUANTIZE_CHOICES:
        raise WebError(f"unknown quantization {quantize!r}; expected one of {QUANTIZE_CHOICES}")
    if k < EXPORT_K:
        raise WebError(f"k = {k}: export at least K = {EXPORT_K} items (the page slices to smaller k)")
    dataset = run_dataset(workdir)  # the user's own input first: its error does not depend on this machine
    runtime = runtime or runtime_dir()
    runtime_paths(runtime)  # fail before the (slower) export when the runtime is not installed
    names = item_names(dataset)
    os.makedirs(out, exist_ok=True)
    try:
        # repeat_bonus=0: the page hides the session's own items, so a bonus that ranks them first
        # would only push the recommendations it shows out of the exported top k.
        model_path = export.export_workdir(
            workdir, os.path.join(out, MODEL_FILE), k=k, quantize=None if quantize == "none" else quantize, repeat_bonus=0.0
        )
    except export.ExportError as error:
        raise WebError(f"{workdir}: cannot export the run's model ({error})") from None
    return build_folder(model_path, out, dataset, names, runtime)


# ----------------------------------------------------------------------------------------------
# Serving the folder (static files only).
# ----------------------------------------------------------------------------------------------


class StaticHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with WebAssembly's MIME types; `quiet` drops the per-request log lines."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    quiet = False

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")  # a rebuilt folder is never served stale
        super().end_headers()

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def make_server(folder: str, port: int = 8000, host: str = "127.0.0.1", quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """An HTTP server for `folder` on host:port (port 0 picks a free one: server.server_address[1])."""
    if not os.path.isfile(os.path.join(folder, PAGE_FILE)):
        raise WebError(f"{folder}: no {PAGE_FILE}; build the folder first (python -m rec_kd.serve.web --workdir=RUN --out={folder})")
    handler = type("Handler", (StaticHandler,), {"quiet": quiet})
    try:
        return http.server.ThreadingHTTPServer((host, port), functools.partial(handler, directory=folder))
    except OSError as error:
        raise WebError(f"{host}:{port}: cannot serve ({error.strerror or error}); choose another --port") from None


def serve(folder: str, port: int) -> None:
    """Serves `folder` on 127.0.0.1:port until Ctrl-C."""
    server = make_server(folder, port)
    print(f"rec_kd.serve.web: serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rec_kd.serve.web", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained rec_kd run (teacher or student)")
    parser.add_argument("--out", help="the folder to write (default: WORKDIR/web)")
    parser.add_argument("--quantize", default="int8", choices=QUANTIZE_CHOICES, help="int8 weights (default) or fp32")
    parser.add_argument("--k", type=int, default=EXPORT_K, help=f"items the model returns (>= {EXPORT_K}; fixed in the file)")
    parser.add_argument("--serve", action="store_true", help="then serve the folder on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    out = args.out or os.path.join(args.workdir, "web")
    try:
        # Library chatter (absl, orbax) goes to stderr: stdout carries one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            manifest = build(args.workdir, out, args.quantize, args.k)
        summary = {key: manifest[key] for key in ("folder", "bytes", "runtime_bytes", "page_weight_bytes", "num_items")}
        print(json.dumps(summary), flush=True)
        if args.serve:
            serve(out, args.port)
    except (WebError, OSError) as error:
        print(f"rec_kd.serve.web: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
