# The two commands of the README: `make demo` (main job on MovieLens-100k) and `make test`.
# Both create or reuse .venv; the stamp file reinstalls when the pins change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rec_kd-installed
DEMO_DIR ?= workdirs/demo

.PHONY: demo test install clean

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
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache
