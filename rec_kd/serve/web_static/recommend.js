// rec_kd in the page: loads model.onnx into ONNX Runtime Web (WASM, one thread), validates and pads
// a session exactly as rec_kd/serving.py does, and exposes window.recommend(session, k), which
// resolves to {items, scores} (best first) or rejects with a one-line Error for bad input.
// Nothing is computed on a server: the page only fetches its own static files.
"use strict";

(function () {
  const CONFIG = JSON.parse(document.getElementById("rec-kd-config").textContent);
  const UI_K = Math.min(10, CONFIG.k); // the list shows 10; the rest of K covers hidden session items
  const MAX_MATCHES = 30;
  const $ = (id) => document.getElementById(id);

  class RecommendError extends Error {}

  // ---- The rules of rec_kd/serving.py (check_session, pad_session, check_k), in JS. -------------

  function checkSession(session, numItems) {
    if (!Array.isArray(session)) throw new RecommendError("session must be an array of item ids");
    const notIds = session.filter((item) => typeof item !== "number" || !Number.isInteger(item));
    if (notIds.length) throw new RecommendError(`item ids must be integers, got ${JSON.stringify(notIds.slice(0, 10))}`);
    if (session.length === 0) throw new RecommendError("empty session: give at least one item id");
    const unknown = session.filter((item) => item < 1 || item > numItems);
    if (unknown.length) {
      throw new RecommendError(`unknown item ids [${unknown.slice(0, 10).join(", ")}]: ids must lie in [1, ${numItems}]`);
    }
    return session;
  }

  function checkK(k, maxK) {
    k = k === undefined || k === null ? maxK : k;
    if (typeof k !== "number" || !Number.isInteger(k) || k < 1 || k > maxK) {
      throw new RecommendError(`k = ${k} must be an integer in [1, ${maxK}] (the K this model was exported with)`);
    }
    return k;
  }

  // (1, max_len) right-padded ids keeping the last max_len items (as training does) and (1,) length.
  function padSession(session, maxLen) {
    const kept = session.slice(-maxLen);
    const padded = new Int32Array(maxLen);
    padded.set(kept);
    return { padded, length: kept.length };
  }

  // ---- The runtime. ------------------------------------------------------------------------------

  let ortSession = null;
  let queue = Promise.resolve(); // one session.run at a time: ORT Web refuses concurrent runs
  const state = { loadMs: null, createMs: null, lastInferenceMs: null, modelBytes: CONFIG.bytes, runtimeBytes: CONFIG.runtime_bytes };
  let names = {};

  function nameOf(item) {
    return names[item] || `item ${item}`;
  }

  async function infer(session, k) {
    const { padded, length } = padSession(session, CONFIG.max_len);
    const feeds = {
      session_items: new ort.Tensor("int32", padded, [1, CONFIG.max_len]),
      session_length: new ort.Tensor("int32", Int32Array.of(length), [1]),
    };
    const start = performance.now();
    const out = await ortSession.run(feeds);
    state.lastInferenceMs = performance.now() - start;
    const ids = out.top_items.data; // BigInt64Array (int64)
    const scores = out.top_scores.data; // Float32Array
    const result = { items: [], scores: [] };
    for (let i = 0; i < k; i++) {
      result.items.push(Number(ids[i]));
      result.scores.push(scores[i]);
    }
    return result;
  }

  // The API: a Promise of {items, scores}; bad input rejects with a one-line Error and is shown in the page.
  function recommend(session, k) {
    let checkedK;
    try {
      if (!ortSession) throw new RecommendError("the model is not loaded yet");
      checkSession(session, CONFIG.num_items);
      checkedK = checkK(k, CONFIG.k);
    } catch (error) {
      showMessage(error.message);
      return Promise.reject(error);
    }
    const copy = session.slice();
    const run = queue.then(() => infer(copy, checkedK));
    queue = run.catch(() => undefined);
    return run.then((result) => {
      showStatus();
      return result;
    });
  }

  // ---- The page. ---------------------------------------------------------------------------------

  const ui = { session: [] };

  function showMessage(text) {
    $("message").textContent = text || "";
  }

  function formatBytes(bytes) {
    return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(2)} MB` : `${(bytes / 1e3).toFixed(1)} kB`;
  }

  function showStatus() {
    const parts = [
      `model <b>${formatBytes(CONFIG.bytes)}</b> (${CONFIG.quantize === "none" ? "fp32" : CONFIG.quantize}, ${CONFIG.stage || "model"}, ${CONFIG.num_items} items)`,
      `${CONFIG.runtime}, WASM, 1 thread (runtime ${formatBytes(CONFIG.runtime_bytes)})`,
      `loaded in <b>${state.loadMs.toFixed(0)} ms</b>`,
      `last inference <b id="last-inference">${state.lastInferenceMs === null ? "–" : state.lastInferenceMs.toFixed(2) + " ms"}</b>`,
    ];
    $("status").innerHTML = parts.join(" · ");
  }

  function listItem(item, text, extra) {
    const li = document.createElement("li");
    li.dataset.item = String(item);
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = text;
    li.appendChild(label);
    if (extra) li.appendChild(extra);
    return li;
  }

  function idBadge(item) {
    const span = document.createElement("span");
    span.className = "id";
    span.textContent = `#${item}`;
    return span;
  }

  function renderSession() {
    const list = $("session");
    list.replaceChildren(...ui.session.map((item) => listItem(item, nameOf(item), idBadge(item))));
  }

  // data-session on the list names the session it answers, so a reader can tell a stale list.
  function renderRecommendations(result, session) {
    const rows = result.items.map((item, i) => {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = result.scores[i].toFixed(3);
      const li = listItem(item, nameOf(item), score);
      li.title = `item ${item}: click to add it to the session`;
      return li;
    });
    $("recommendations").replaceChildren(...rows);
    $("recommendations").dataset.session = session.join(",");
  }

  // The first `count` recommendations that are not in `session`, with their scores.
  function unseen(result, session, count) {
    const seen = new Set(session);
    const kept = { items: [], scores: [] };
    result.items.forEach((item, i) => {
      if (!seen.has(item) && kept.items.length < count) {
        kept.items.push(item);
        kept.scores.push(result.scores[i]);
      }
    });
    return kept;
  }

  async function update() {
    renderSession();
    try {
      const session = ui.session.slice();
      // Ask for all K and hide what the session already holds (a rated movie is not rated again).
      const result = await recommend(session, CONFIG.k);
      showMessage("");
      renderRecommendations(unseen(result, session, UI_K), session);
    } catch (error) {
      // recommend() has already shown the message; an empty session clears the list.
      $("recommendations").replaceChildren();
      $("recommendations").dataset.session = "";
      if (!(error instanceof RecommendError)) showMessage(`inference failed: ${error.message}`);
    }
  }

  function addItem(item) {
    try {
      checkSession([item], CONFIG.num_items); // an unknown id is shown, never added
    } catch (error) {
      showMessage(error.message);
      return;
    }
    ui.session.push(item);
    update();
  }

  function searchIndex() {
    if (CONFIG.has_names) return Object.keys(names).map((id) => [Number(id), names[id], names[id].toLowerCase()]);
    const all = [];
    for (let id = 1; id <= CONFIG.num_items; id++) all.push([id, `item ${id}`, `item ${id}`]);
    return all;
  }

  function matches(index, query) {
    const q = query.trim().toLowerCase();
    if (!q) return index.slice(0, MAX_MATCHES);
    const asId = /^\d+$/.test(q) ? Number(q) : null;
    const found = index.filter(([id, , lower]) => id === asId || lower.includes(q));
    found.sort((a, b) => (b[0] === asId) - (a[0] === asId)); // an exact id first
    return found.slice(0, MAX_MATCHES);
  }

  function renderMatches(index) {
    const rows = matches(index, $("search").value).map(([id, name]) => listItem(id, name, idBadge(id)));
    $("matches").replaceChildren(...rows);
  }

  function onSearchKey(event, index) {
    if (event.key !== "Enter") return;
    const query = $("search").value.trim();
    if (/^-?\d+$/.test(query)) {
      addItem(Number(query)); // validated by recommend(): an unknown id shows a message
    } else {
      const first = matches(index, query)[0];
      if (first) addItem(first[0]);
      else showMessage(`no item matches ${JSON.stringify(query)}`);
    }
  }

  function onListClick(event) {
    const li = event.target.closest("li[data-item]");
    if (li) addItem(Number(li.dataset.item));
  }

  function wireUp() {
    const index = searchIndex();
    $("search").addEventListener("input", () => renderMatches(index));
    $("search").addEventListener("keydown", (event) => onSearchKey(event, index));
    $("matches").addEventListener("click", onListClick);
    $("recommendations").addEventListener("click", onListClick);
    $("clear").addEventListener("click", () => {
      ui.session = [];
      update();
    });
    $("search").disabled = false;
    $("clear").disabled = false;
    renderMatches(index);
  }

  async function fetchOk(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response;
  }

  async function load() {
    ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no cross-origin isolation needed
    ort.env.wasm.wasmPaths = new URL("./", document.baseURI).href; // the runtime files beside the page
    ort.env.logLevel = "error";
    const [model, namesDocument] = await Promise.all([
      fetchOk(CONFIG.model_file).then((r) => r.arrayBuffer()),
      fetchOk(CONFIG.names_file).then((r) => r.json()),
    ]);
    names = namesDocument.names || {};
    const start = performance.now();
    ortSession = await ort.InferenceSession.create(new Uint8Array(model), { executionProviders: ["wasm"] });
    state.createMs = performance.now() - start;
    state.loadMs = performance.now(); // since navigation start
    wireUp();
    showStatus();
    document.body.dataset.state = "ready";
  }

  window.recommend = recommend;
  window.recKd = { config: CONFIG, state };
  window.recKd.ready = load().catch((error) => {
    document.body.dataset.state = "error";
    $("status").textContent = "";
    showMessage(`could not load the model: ${error.message}`);
  });
})();
