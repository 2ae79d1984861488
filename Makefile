# `make test` and `make demo` do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,cli]'
	touch $(STAMP)

# Locally the default run leaves out tests marked slow; CI (CI=true) runs them too.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(CI),-m "slow or not slow",)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/gradest compare

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench,cli,rl]'
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/vae_task1.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/rl_gae.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/optim_finite_sum.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/optim_digits.py --png benchmarks/optim_digits.png

lint: $(STAMP)
	$(BIN)/ruff check gradest tests benchmarks
	$(BIN)/mypy gradest --ignore-missing-imports

clean:
	rm -rf $(VENV) build *.egg-info
