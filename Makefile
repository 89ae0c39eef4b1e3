# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dynaquant-installed
FINN_STAMP := $(VENV)/.dynaquant-finn-installed
# -qq: pip's own errors still print (and stop make); its notes about the machine's index settings do not
PIP := $(PY) -m pip install -qq --disable-pip-version-check

.PHONY: setup finn demo test docs clean bench bench-quick

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing torch, CompressAI, Brevitas, qonnx, onnxruntime and the package into $(VENV) ..."
	$(PIP) --upgrade pip
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[export,dev]'
	@touch $@

# FINN's front end, for `dynaquant export --finn` and its tests. finn-plus pins versions that clash
# with torch, onnx and brevitas, so it goes in last without its dependencies (the `finn` extra
# lists the few it needs for the stages we call).
finn: $(FINN_STAMP)

$(FINN_STAMP): $(STAMP)
	$(PIP) -e '.[finn]'
	$(PIP) --no-deps finn-plus==1.6.1
	@touch $@

# The main job (no training, same numbers on any machine): the committed reference family, float
# and quantized, evaluated with real bitstreams: RD curves, robustness on photos never trained on
# and on unusual content, one live post-training quantization, the dynamic model's bit choices.
demo: setup
	$(VENV)/bin/dynaquant demo --output runs/demo

test: setup finn
	$(PY) -m pytest -n 2 -q

# Comparison against baselines (benchmarks/run.py): every method fine-tuned from the float
# references, Kodak with real bitstreams, bits, packed size, latency, step time. The full run takes
# hours on one core and resumes where it stopped; it writes benchmarks/results/summary.{json,md}.
bench: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/run.py

# Smoke test of the same pipeline (2 steps, 2 Kodak crops, one reference), into runs/bench-quick.
bench-quick: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/run.py --quick --output runs/bench-quick

docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
