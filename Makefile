# Two entry points for a fresh machine:
#   make demo   install and run the main job on built-in synthetic data
#   make test   install the test tools and run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test install install-test clean

# torch is installed on its own first: `torch==2.13.0` resolves to the local CPU build,
# while letting pip resolve a bare `torch` pulls GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .
	touch $@

# The test tools, and TorchRec for tests/integrations and tests/distributed. The torchrec wheel
# names the CUDA `fbgemm-gpu` as a requirement, so it and the CPU fbgemm build go in with
# --no-deps; its own needs (the `torchrec` extra) go in with torch pinned so pip never replaces
# the CPU build.
$(VENV)/.installed-test: $(VENV)/.installed
	echo 'torch==2.13.0' > $(VENV)/torch-pin.txt
	$(PIP) install -q -c $(VENV)/torch-pin.txt -e '.[test,torchrec]'
	$(PIP) install -q --no-deps fbgemm-gpu-cpu==1.8.0 torchrec==1.8.0
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/compembed demo

test: install-test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
