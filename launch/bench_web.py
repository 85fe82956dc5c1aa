"""The student in a real browser: page weight, cold load time and inference latency, as one JSON object.

  python -m launch.bench_web --workdir=workdirs/demo/student [--calls=200] [--loads=3] [--screenshot=docs/img/web_demo.png]

Why: docs/export.md measures the .onnx file in ONNX Runtime from Python; a web page pays for
other things (the WASM runtime's download and compilation, JavaScript calls), and those are what
a user of an on-device web client waits for. This builds the page with rec_kd.serve.web (int8 unless
--quantize=none), serves it on 127.0.0.1 and drives headless Chromium (the same browser and
flags as tests/test_web.py, through `chromium_driver`):

- page weight: model + onnxruntime-web runtime bytes (the page's own HTML/JS/names are listed apart);
- cold load: navigation start to the model ready to answer, each load in a fresh browser profile
  (empty cache), `--loads` times;
- parity: the timed calls' answers against rec_kd.serve.serving.Recommender on the same file;
- latency: `--calls` timed `recommend(session, 20)` calls after `--warmup` untimed ones (V8 first
  runs WASM in its baseline tier and optimises hot functions in the background), sessions
  drawn from the dataset's test split; `session.run` alone (the page's own timer) and the whole
  `recommend()` call, p50/p90 in ms (Chrome's performance.now() is coarsened to 0.1 ms without
  cross-origin isolation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
READY_TIMEOUT_S = 60


def chromium_driver(user_data_dir: str):
    """Headless Chromium (Debian's chromium + chromium-driver) with a fresh profile in `user_data_dir`.

    The console log is kept (`driver.get_log("browser")`) so callers can check for SEVERE entries.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def wait_until_ready(driver, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Waits for the page's body[data-state] to leave 'loading'; a load error is a RuntimeError with the page's message."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = driver.execute_script("return document.body && document.body.dataset.state")
        if state == "ready":
            return
        if state == "error":
            raise RuntimeError(f"the page could not load: {driver.find_element('id', 'message').text}")
        time.sleep(0.05)
    raise RuntimeError(f"the page was not ready after {timeout_s} s")


# One call from Python, N calls in the page: returns {results: [{items, scores} | {error}], ...}.
RECOMMEND_MANY_JS = """
const [sessions, k, done] = arguments;
(async () => {
  const results = [], runMs = [], callMs = [];
  for (const session of sessions) {
    const start = performance.now();
    try {
      results.push(await window.recommend(session, k));
      callMs.push(performance.now() - start);
      runMs.push(window.recKd.state.lastInferenceMs);
    } catch (error) {
      results.push({error: error.message});
    }
  }
  return {results, runMs, callMs};
})().then(done, (error) => done({fatal: String(error)}));
"""


def recommend_many(driver, sessions: list[list[int]], k: int) -> dict:
    """Runs window.recommend on every session in order, inside the page."""
    driver.set_script_timeout(READY_TIMEOUT_S + len(sessions))
    out = driver.execute_async_script(RECOMMEND_MANY_JS, sessions, k)
    if "fatal" in out:
        raise RuntimeError(f"recommend() failed in the page: {out['fatal']}")
    return out


def split_sessions(count: int, max_len: int, seed: int = 0) -> list[list[int]]:
    """`count` test-split sessions of MovieLens-100k (rec_kd.data), oldest item first."""
    from rec_kd import data

    split = data.load_dataset("ml-100k", max_len=max_len).test
    rows = np.random.default_rng(seed).choice(len(split), size=count, replace=count > len(split))
    return [split.items[row, : split.lengths[row]].tolist() for row in rows]


def serve_in_thread(folder: str):
    from rec_kd.serve import web

    server = web.make_server(folder, 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def percentiles(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p90_ms": round(float(np.percentile(values, 90)), 3)}


def cold_load(url: str) -> dict:
    """One load in a fresh profile: navigation start -> model ready, as the page measured it."""
    profile = tempfile.mkdtemp(prefix="rec_kd_chromium_")
    driver = chromium_driver(profile)
    try:
        driver.get(url)
        wait_until_ready(driver)
        state = driver.execute_script("return window.recKd.state")
        return {"load_ms": round(state["loadMs"], 1), "session_create_ms": round(state["createMs"], 1)}
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def click_three_items(driver, queries=("Star Wars", "Toy Story")) -> list[str]:
    """The UI path: search and click two titles, then the top recommendation; returns the names then shown."""
    from selenium.webdriver.common.by import By

    for clicked, query in enumerate(queries, start=1):
        search = driver.find_element(By.ID, "search")
        search.clear()
        search.send_keys(query)
        driver.find_element(By.CSS_SELECTOR, "#matches li").click()
        wait_for_recommendations(driver, clicked)
    driver.find_element(By.CSS_SELECTOR, "#recommendations li").click()
    return wait_for_recommendations(driver, len(queries) + 1)


# The session the page shows, and the session its recommendation list answers (data-session).
PAGE_LISTS_JS = """
const shown = [...document.querySelectorAll('#session li')].map((li) => li.dataset.item).join(',');
const list = document.getElementById('recommendations');
return {shown, answered: list.dataset.session || '', names: [...list.querySelectorAll('li .name')].map((n) => n.textContent)};
"""


def wait_for_recommendations(driver, session_length: int, timeout_s: float = 30) -> list[str]:
    """The recommended names once the list answers the shown session of `session_length` items."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lists = driver.execute_script(PAGE_LISTS_JS)
        shown = lists["shown"].split(",") if lists["shown"] else []
        if len(shown) == session_length and lists["answered"] == lists["shown"] and lists["names"]:
            return lists["names"]
        time.sleep(0.05)
    raise RuntimeError(f"no recommendations shown for a session of {session_length} items after {timeout_s} s")


def parity(results: list[dict], sessions: list[list[int]], model_path: str, k: int) -> dict:
    """How the page's answers compare with rec_kd.serve.serving.Recommender (ONNX Runtime, native) on the same file."""
    from rec_kd.serve import serving

    recommender = serving.Recommender.load(model_path)
    same_order, max_diff = 0, 0.0
    for session, got in zip(sessions, results, strict=True):
        ids, scores = recommender.recommend(session, k)
        same_order += got["items"] == ids.tolist()
        max_diff = max(max_diff, float(np.max(np.abs(np.asarray(got["scores"]) - scores))))
    return {"sessions": len(sessions), "same_items_same_order": same_order, "max_abs_score_diff": max_diff}


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return f"{model}, {os.cpu_count()} CPUs"


def main(argv=None) -> int:
    from rec_kd.serve import web

    parser = argparse.ArgumentParser(prog="python -m launch.bench_web", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained ml-100k run (make demo: workdirs/demo/student)")
    parser.add_argument("--out", help="the page's folder (default: a temporary one)")
    parser.add_argument("--quantize", default="int8", choices=web.QUANTIZE_CHOICES)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls first (V8 tiers the WASM code up while hot)")
    parser.add_argument("--loads", type=int, default=3, help="cold loads, each in a fresh browser profile")
    parser.add_argument("--screenshot", help="save a PNG of the page after three clicks here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]  # other work on the machine shows in the tail latencies
    out = args.out or tempfile.mkdtemp(prefix="rec_kd_web_")
    try:
        manifest = web.build(args.workdir, out, args.quantize)
    except web.WebError as error:
        print(f"launch.bench_web: {error}", file=sys.stderr)
        return 1
    server, url = serve_in_thread(out)
    try:
        loads = [cold_load(url) for _ in range(args.loads)]
        profile = tempfile.mkdtemp(prefix="rec_kd_chromium_")
        driver = chromium_driver(profile)
        try:
            driver.get(url)
            wait_until_ready(driver)
            sessions = split_sessions(args.warmup + args.calls, manifest["max_len"])
            recommend_many(driver, sessions[: args.warmup], web.EXPORT_K)
            timed = recommend_many(driver, sessions[args.warmup :], web.EXPORT_K)
            errors = [r["error"] for r in timed["results"] if "error" in r]
            if errors:
                raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
            if args.screenshot:
                driver.set_window_size(1100, 720)
                driver.get(url)
                wait_until_ready(driver)
                click_three_items(driver)
                os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
                driver.save_screenshot(args.screenshot)
            browser = driver.capabilities.get("browserVersion", "")
            severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    finally:
        server.shutdown()
        server.server_close()

    page_files = {name: os.path.getsize(os.path.join(out, name)) for name in (web.PAGE_FILE, web.SCRIPT_FILE, web.NAMES_FILE)}
    load_ms = [entry["load_ms"] for entry in loads]
    report = {
        "workdir": os.path.abspath(args.workdir),
        "quantize": args.quantize,
        "num_items": manifest["num_items"],
        "model_bytes": manifest["bytes"],
        "runtime_bytes": manifest["runtime_bytes"],
        "page_weight_bytes": manifest["page_weight_bytes"],
        "page_files_bytes": page_files,
        "runtime": manifest["runtime"],
        "browser": f"Chromium {browser} (headless)",
        "machine": machine(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cold_loads": loads,
        "cold_load_median_ms": round(float(np.median(load_ms)), 1),
        "calls": args.calls,
        "warmup": args.warmup,
        "session_run": percentiles(timed["runMs"]),
        "recommend_call": percentiles(timed["callMs"]),
        "parity_with_onnxruntime": parity(timed["results"], sessions[args.warmup :], os.path.join(out, web.MODEL_FILE), web.EXPORT_K),
        "console_severe": severe,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
