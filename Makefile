# Two commands on a fresh machine (Python 3.10+ only):
#   make demo   - the main job, end to end, on the built-in synthetic dataset
#   make test   - the whole test suite
# Both create .venv on first use; torch is pinned to the CPU build (an unpinned torch pulls CUDA).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCHVISION_VERSION ?= 0.28.0
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test]"
	# torchvision's Python code only (its compiled ops need a CUDA build of torch): the parity test
	# runs torchvision's Mask R-CNN with instaseg's kernels. Kept outside site-packages on purpose.
	-$(PY) -m pip install -q --no-deps --target $(VENV)/torchvision-site torchvision==$(TORCHVISION_VERSION)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m instaseg demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/ops.py

clean-venv:
	rm -rf $(VENV)
