# The README's two commands: `make demo` (the main job) and `make test` (the fast suite).
# Each creates or reuses .venv, installs what it needs, and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-slow install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m glonet_keras.demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15 tests

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -v tests

clean:
	rm -rf $(VENV) build *.egg-info
