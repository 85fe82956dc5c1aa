"""rec_kd.serve.web: the static folder it writes, and the page itself in headless Chromium.

Why a real browser: the page is the on-device client, so its answers must be the exported file's
answers, computed by onnxruntime-web in WebAssembly, not by any server. The browser tests train a
tiny MovieLens-100k teacher and student in-process (one module fixture, small settings), build the
page from the student with rec_kd.serve.web, serve it on 127.0.0.1 from a thread, and drive Chromium
through selenium with the flags of launch/bench_web.py. Without Chromium, chromedriver, selenium
or the onnxruntime-web package (`make web-deps`) they skip with a one-line reason, except under
REC_KD_REQUIRE_BROWSER=1 (set by .ci/run), where a missing piece fails them.

The folder-builder tests need none of that: they use a stand-in export (metadata only) and runtime.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest

from launch import bench_web
from rec_kd import defaults
from rec_kd.serve import export, serving, web

REPO = Path(__file__).resolve().parents[1]
REQUIRE_BROWSER_ENV = "REC_KD_REQUIRE_BROWSER"
ML_100K_ITEMS = 1682
SCORE_ATOL = 1e-4
# The tiny runs: max_len 20 (shorter than most test sessions, so truncation is exercised), one bucket.
TINY_RUN = dict(max_len=20, hidden_dim=16, train_examples=1000, eval_examples=200)


# ----------------------------------------------------------------------------------------------
# The folder builder, no browser.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in_export(tmp_path_factory) -> str:
    """An ONNX file with a rec_kd export's metadata over ml-100k's 1,682 ids (the builder reads only that)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", export.OPSET)])
    props = {"num_items": ML_100K_ITEMS, "max_len": 6, "k": 20, "table_mode": "dense", "quantize": "int8", "stage": "teacher"}
    onnx.helper.set_model_props(model, {key: str(value) for key, value in props.items()})
    path = str(tmp_path_factory.mktemp("export") / "stand_in.onnx")
    onnx.save_model(model, path)
    return path


@pytest.fixture
def stand_in_runtime(tmp_path) -> Path:
    """A dist/ folder with the three runtime file names (and the package.json above it)."""
    dist = tmp_path / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for name in web.RUNTIME_FILES:
        (dist / name).write_bytes(b"x" * 100)
    (dist.parent / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": "9.9.9"}))
    return dist


def inlined_config(page: str) -> dict:
    match = re.search(r'<script id="rec-kd-config" type="application/json">(.*?)</script>', page, re.S)
    assert match, "the page has no inlined config"
    return json.loads(match.group(1))


def test_build_folder_writes_page_script_model_names_and_runtime(stand_in_export, stand_in_runtime, tmp_path):
    out = tmp_path / "site"
    manifest = web.build_folder(stand_in_export, str(out), "ml-100k", web.item_names("ml-100k"), stand_in_runtime)
    expected = {web.PAGE_FILE, web.SCRIPT_FILE, web.MODEL_FILE, web.NAMES_FILE, *web.RUNTIME_FILES}
    assert set(os.listdir(out)) == expected and set(manifest["files"]) == expected
    assert (out / web.MODEL_FILE).read_bytes() == Path(stand_in_export).read_bytes()
    names = json.loads((out / web.NAMES_FILE).read_text(encoding="utf-8"))
    assert names["dataset"] == "ml-100k" and len(names["names"]) == ML_100K_ITEMS
    # Hand-checked against ml-100k.item (item_id, movie_title, release_year).
    assert names["names"]["1"] == "Toy Story (1995)"
    assert names["names"]["2"] == "GoldenEye (1995)"
    assert names["names"]["12"] == "Usual Suspects, The (1995)"
    assert names["names"]["543"] == "Misérables, Les (1995)"
    assert names["names"]["267"] == "unkonwn"  # the file's own placeholder, no year
    assert names["names"]["1682"] == "Scream of Stone (Schrei aus Stein) (1991)"
    config = inlined_config((out / web.PAGE_FILE).read_text(encoding="utf-8"))
    assert {key: config[key] for key in ("num_items", "max_len", "k", "quantize", "stage", "dataset", "has_names")} == {
        "num_items": ML_100K_ITEMS,
        "max_len": 6,
        "k": 20,
        "quantize": "int8",
        "stage": "teacher",
        "dataset": "ml-100k",
        "has_names": True,
    }
    assert config["bytes"] == os.path.getsize(stand_in_export) and config["runtime_bytes"] == 300
    assert config["runtime"] == "onnxruntime-web 9.9.9"
    assert manifest["page_weight_bytes"] == config["bytes"] + 300
    assert "http" not in (out / web.SCRIPT_FILE).read_text() and "//cdn" not in (out / web.PAGE_FILE).read_text()


def test_datasets_without_titles_get_empty_names(stand_in_export, stand_in_runtime, tmp_path):
    assert web.item_names("tmall") == {}
    web.build_folder(stand_in_export, str(tmp_path / "site"), "tmall", {}, stand_in_runtime)
    assert json.loads((tmp_path / "site" / web.NAMES_FILE).read_text()) == {"dataset": "tmall", "names": {}}
    assert inlined_config((tmp_path / "site" / web.PAGE_FILE).read_text())["has_names"] is False


def test_item_file_parsing_and_display_names():
    text = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n3\tFour Rooms\t1995\tThriller\n9\tNo Year\t\tDrama\n"
    assert web.parse_movielens_items(text, "x.item") == {3: "Four Rooms (1995)", 9: "No Year"}
    with pytest.raises(web.WebError, match="x.item: header"):
        web.parse_movielens_items("id\tname\n1\ta\n", "x.item")
    with pytest.raises(web.WebError, match="x.item: line 2"):
        web.parse_movielens_items("item_id:token\tmovie_title:token_seq\trelease_year:token\nabc\tA\t1990\n", "x.item")


def test_page_config_cannot_close_its_script_tag():
    assert "</script>" not in web.page_html("<script>__REC_KD_CONFIG__</script>", {"dataset": "</script><b>"}).removesuffix("</script>")


def test_missing_runtime_names_the_files_and_the_make_target(stand_in_export, tmp_path):
    with pytest.raises(web.WebError, match=r"runtime files missing \(ort.wasm.min.js, .*\); run `make web-deps`"):
        web.build_folder(stand_in_export, str(tmp_path / "site"), "ml-100k", {}, tmp_path / "empty")


def test_workdir_without_a_trained_model_is_a_clear_error(stand_in_runtime, tmp_path):
    with pytest.raises(web.WebError, match="config.json: missing; is .* a finished rec_kd run"):
        web.build(str(tmp_path / "nothing"), str(tmp_path / "site"), runtime=stand_in_runtime)
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text(json.dumps({"dataset": "ml-100k"}))
    with pytest.raises(web.WebError, match="half: cannot export the run's model .*results.json: missing"):
        web.build(str(half), str(tmp_path / "site"), runtime=stand_in_runtime)
    with pytest.raises(web.WebError, match="unknown quantization 'int4'"):
        web.build(str(half), str(tmp_path / "site"), quantize="int4", runtime=stand_in_runtime)
    result = subprocess.run(
        [sys.executable, "-m", "rec_kd.serve.web", f"--workdir={tmp_path / 'nothing'}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("rec_kd.serve.web: ") and "config.json: missing" in result.stderr


def test_server_sends_webassembly_mime_types(stand_in_export, stand_in_runtime, tmp_path):
    out = tmp_path / "site"
    web.build_folder(stand_in_export, str(out), "ml-100k", {}, stand_in_runtime)
    server = web.make_server(str(out), 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        types = {}
        for name in ("", "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs", "recommend.js", "names.json"):
            with urllib.request.urlopen(base + name) as response:
                types[name] = response.headers["Content-Type"]
    finally:
        server.shutdown()
        server.server_close()
    assert types == {
        "": "text/html; charset=utf-8",
        "ort-wasm-simd-threaded.wasm": "application/wasm",
        "ort-wasm-simd-threaded.mjs": "text/javascript",
        "recommend.js": "text/javascript",
        "names.json": "application/json",
    }
    with pytest.raises(web.WebError, match="no index.html; build the folder first"):
        web.make_server(str(tmp_path), 0)


# ----------------------------------------------------------------------------------------------
# The page in headless Chromium.
# ----------------------------------------------------------------------------------------------


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [path for path in (bench_web.CHROMIUM, bench_web.CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -r requirements.txt)"
    try:
        web.runtime_paths(web.runtime_dir())
    except web.WebError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def browser_ready():
    reason = browser_unavailable()
    if reason and os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{REQUIRE_BROWSER_ENV}=1 but {reason}")
    if reason:
        pytest.skip(reason)


def tiny_config(arg: str, teacher_workdir: str = ""):
    config = defaults.get_config("ml-100k", arg)
    config.data.max_len = TINY_RUN["max_len"]
    config.data.buckets = (TINY_RUN["max_len"],)
    config.data.max_train_examples = TINY_RUN["train_examples"]
    config.data.max_eval_examples = TINY_RUN["eval_examples"]
    config.model.hidden_dim = config.model.inner_dim = TINY_RUN["hidden_dim"]
    config.train.num_epochs = 1
    config.train.eval_batch_size = TINY_RUN["eval_examples"]
    config.train.checkpoint_every_steps = 1000
    config.train.log_every_steps = 1000
    config.teacher_workdir = teacher_workdir
    return config


@pytest.fixture(scope="module")
def site(browser_ready, tmp_path_factory):
    """A tiny trained ml-100k student's page, served on 127.0.0.1: (url, manifest)."""
    from rec_kd.train import loop

    root = tmp_path_factory.mktemp("web_runs")
    teacher, student = str(root / "teacher"), str(root / "student")
    loop.train_and_evaluate(tiny_config("teacher,smoke"), teacher)
    loop.train_and_evaluate(tiny_config("student,smoke", teacher), student)
    manifest = web.build(student, str(root / "site"))
    server = web.make_server(manifest["folder"], 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", manifest
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def driver(site):
    profile = tempfile.mkdtemp(prefix="rec_kd_chromium_")
    browser = bench_web.chromium_driver(profile)
    try:
        browser.get(site[0])
        bench_web.wait_until_ready(browser)
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(driver, site):
    """The page freshly loaded; after the test, the console must hold no SEVERE entry (no JS exception)."""
    driver.get(site[0])
    bench_web.wait_until_ready(driver)
    driver.get_log("browser")  # drop what earlier loads logged
    yield driver
    severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, f"browser console errors: {severe}"


def model_path(site) -> str:
    return os.path.join(site[1]["folder"], web.MODEL_FILE)


def assert_same_ranking(got: dict, ids, scores, session):
    """Same ids in the same order (a swap only between reference scores tied within 1e-5), scores within 1e-4."""
    np.testing.assert_allclose(got["scores"], scores, atol=SCORE_ATOL, err_msg=f"session {session}")
    differ = np.asarray(got["items"]) != np.asarray(ids)
    gaps = np.abs(np.diff(scores))
    swapped_pairs = differ[1:] | differ[:-1]
    assert len(got["items"]) == len(ids) and np.all(gaps[swapped_pairs] < 1e-5), f"session {session}: {got['items']} != {ids.tolist()}"


def test_page_recommends_what_onnx_runtime_recommends_on_50_test_sessions(page, site):
    sessions = bench_web.split_sessions(50, max_len=50, seed=0)  # up to 50 items: the page keeps the last 20
    sessions.append(list(range(1, 121)))  # 120 items, 100 of them dropped
    assert max(len(s) for s in sessions) > TINY_RUN["max_len"]
    answers = bench_web.recommend_many(page, sessions, 20)["results"]
    recommender = serving.Recommender.load(model_path(site))
    for session, got in zip(sessions, answers, strict=True):
        assert "error" not in got, got
        assert_same_ranking(got, *recommender.recommend(session, 20), session)
    # The CLI on the same file, for the first session.
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "rec_kd.serve.recommend",
            f"--model={model_path(site)}",
            "--session=" + ",".join(map(str, sessions[0])),
            "--k=20",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert_same_ranking(answers[0], *(np.asarray(v) for v in json.loads(cli.stdout).values()), sessions[0])


def recommend_one(page, session, k) -> dict:
    """window.recommend(session, k) in the page: {items, scores}, or {error} when it rejects."""
    return bench_web.recommend_many(page, [session], k)["results"][0]


def test_page_slices_k_and_refuses_k_above_the_exported_k(page):
    full, five, too_many = (recommend_one(page, [50, 100, 181], k) for k in (20, 5, 21))
    assert five["items"] == full["items"][:5] and five["scores"] == full["scores"][:5]
    assert too_many == {"error": "k = 21 must be an integer in [1, 20] (the K this model was exported with)"}
    assert page.find_element("id", "message").text == too_many["error"]


def test_three_clicks_show_ten_names(page, site):
    names = bench_web.click_three_items(page)
    assert len(names) == 10
    titles = set(json.loads(Path(site[1]["folder"], web.NAMES_FILE).read_text(encoding="utf-8"))["names"].values())
    assert all(name in titles for name in names), names
    session = [li.get_attribute("data-item") for li in page.find_elements("css selector", "#session li")]
    shown = [li.get_attribute("data-item") for li in page.find_elements("css selector", "#recommendations li")]
    assert len(session) == 3 and not set(session) & set(shown)  # the list leaves out what the session holds
    assert re.search(r"last inference [0-9.]+ ms", page.find_element("id", "status").text)
    assert page.find_element("id", "message").text == ""


def test_bad_input_shows_a_message_and_raises_nothing(page):
    unknown, empty, not_ids = (recommend_one(page, session, 10) for session in ([99999], [], [3, 4.5]))
    assert unknown == {"error": f"unknown item ids [99999]: ids must lie in [1, {ML_100K_ITEMS}]"}
    assert empty == {"error": "empty session: give at least one item id"}
    assert not_ids == {"error": "item ids must be integers, got [4.5]"}
    assert page.find_element("id", "message").text == not_ids["error"]
    # The same through the UI: an id typed into the search box, then an emptied session.
    search = page.find_element("id", "search")
    search.send_keys("99999\n")
    assert page.find_element("id", "message").text == unknown["error"]
    assert page.find_elements("css selector", "#session li") == []
    search.clear()
    search.send_keys("1\n")
    bench_web.wait_for_recommendations(page, 1)
    page.find_element("id", "clear").click()
    assert page.find_element("id", "message").text == empty["error"]
    assert page.find_elements("css selector", "#recommendations li") == []
