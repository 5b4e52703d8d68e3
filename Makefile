# The README's two commands: `make demo` (the main job) and `make test` (the fast suite).
# Each creates or reuses .venv, installs what it needs, and runs. `make data` gets Fashion-MNIST.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make demo DATASET=fashion_mnist` runs the demo on Fashion-MNIST (after `make data`).
DATASET ?= digits
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-slow install data clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m glonet_keras.demo --dataset $(DATASET)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist worksteal --durations=15 tests

# Fashion-MNIST's four gzip IDX files, where glonet_keras.data looks for them. As root with apt-get,
# installs the Debian package (`apt-get update` only when the install fails without it); otherwise
# says what to run. Exits 0 only when the files are there afterwards. Never needs the venv.
FASHION_MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
	t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
FASHION_MNIST_DIRS := $(GLONET_KERAS_FASHION_MNIST_DIR) /usr/share/datasets/fashion-mnist \
	$(or $(KERAS_HOME),$(HOME)/.keras)/datasets/fashion-mnist
fashion_mnist_found = for dir in $(FASHION_MNIST_DIRS); do \
	  complete=yes; for file in $(FASHION_MNIST_FILES); do [ -f "$$dir/$$file" ] || complete=no; done; \
	  if [ $$complete = yes ]; then echo "Fashion-MNIST: found in $$dir"; exit 0; fi; \
	done; exit 1

data:
	@if ( $(fashion_mnist_found) ); then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q dataset-fashion-mnist \
	    || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	fi; \
	if ( $(fashion_mnist_found) ); then exit 0; fi; \
	echo "Fashion-MNIST is not installed. Get its four files in one of two ways:"; \
	echo "  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu)"; \
	echo "  python -c \"import keras; keras.datasets.fashion_mnist.load_data()\"   (with internet: fills ~/.keras/datasets/fashion-mnist)"; \
	echo "or set GLONET_KERAS_FASHION_MNIST_DIR to a folder that holds $(FASHION_MNIST_FILES)."; \
	exit 1

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -v tests

clean:
	rm -rf $(VENV) build *.egg-info
