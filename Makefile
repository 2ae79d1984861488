# `make test`, `make demo` and `make docs` do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo docs bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,cli,docs]'
	touch $(STAMP)

# Locally the default run leaves out tests marked slow; CI (CI=true) runs them too.
# The docs are part of the test: they build with warnings as errors.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(CI),-m "slow or not slow",)
	$(MAKE) --no-print-directory docs

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

demo: $(STAMP)
	$(BIN)/gradest compare --sweeps n temperature=categorical-10 lambda

# HTML in docs/_build/html; -E rereads every source, so that no warning hides in a cached page.
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench,cli,rl]'
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/vae_task1.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/rl_gae.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/optim_finite_sum.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/optim_digits.py --png benchmarks/optim_digits.png

lint: $(STAMP)
	$(BIN)/ruff check gradest tests benchmarks examples docs
	$(BIN)/mypy gradest --ignore-missing-imports

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/_generated docs/api.rst docs/examples.md
