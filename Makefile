# The README's commands: `make demo` (main job on MovieLens-100k), `make test` (the fast suite: every
# test not marked slow, a few minutes) and `make test-all` (everything, the end-to-end runs of the
# real trainer included, on two pytest-xdist workers; what CI runs).
# Each creates or reuses .venv; the stamp file reinstalls when the pins change.
# `make web` serves the demo's student in a web page (rec_kd/serve/web.py); `make web-deps` installs the
# page's runtime, the npm package onnxruntime-web pinned in package.json / package-lock.json.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rec_kd-installed
DEMO_DIR ?= workdirs/demo
WEB_DIR ?= $(DEMO_DIR)/web
WEB_PORT ?= 8000
# One file of the installed package stands for all of node_modules/ (npm ci reinstalls on a pin change).
ORT_WEB := node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm

.PHONY: demo test test-all install web web-deps clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# MovieLens-100k lives inside RecBole's wheel; --no-deps keeps PyTorch out.
	$(PY) -m pip install --quiet --no-deps recbole==1.2.1
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m launch.demo --workdir=$(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# loadfile: a file's tests share one worker, so its module-scoped trained models are built once.
# The longest files are named first (pytest collects them first and drops the repeat under tests),
# so the two workers start on them and finish together: longest-first balancing.
LONGEST_TESTS := tests/test_launch.py tests/test_train.py tests/test_custom_data.py tests/test_refit_protocol.py \
	tests/test_codes.py tests/test_members.py tests/test_sweep.py tests/test_export.py tests/test_table_sharding.py \
	tests/test_student_step.py tests/test_sampling.py tests/test_core_ml100k.py tests/test_row_sparse.py
test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist=loadfile $(LONGEST_TESTS) tests

web-deps: $(ORT_WEB)

# --ignore-scripts: the runtime is plain files; no package needs to run code at install.
$(ORT_WEB): package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $(ORT_WEB)

# Trains the demo (teacher -> student) first only when its student has not finished.
web: $(STAMP) $(ORT_WEB)
	test -f $(DEMO_DIR)/student/results.json || $(PY) -m launch.demo --workdir=$(DEMO_DIR)
	$(PY) -m rec_kd.serve.web --workdir=$(DEMO_DIR)/student --out=$(WEB_DIR) --serve --port=$(WEB_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache node_modules
