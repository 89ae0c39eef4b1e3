# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dynaquant-installed

.PHONY: setup demo test docs clean bench bench-quick

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[export,dev]'
	$(PY) -m pip install --quiet --no-deps finn-plus==1.6.1  # FINN front end; its pins clash with torch
	$(PY) -m pip install --quiet click pydantic 'rich<14'  # what the FINN stages we call import
	@touch $@

# The main job: committed float reference -> dynaquantize -> 4 minutes of fine-tuning ->
# real-bitstream evaluation of both, table, RD plot and bit heat map in runs/demo.
demo: setup
	$(VENV)/bin/dynaquant demo --minutes 4 --output runs/demo

test: setup
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
