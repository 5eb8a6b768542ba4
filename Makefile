PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

COMPAT_VENV := .venv-compat
COMPAT_STAMP := $(COMPAT_VENV)/.installed

.PHONY: demo test bench lint clean compat

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,examples]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/digits.py

test: $(STAMP)
	XLA_FLAGS="--xla_backend_optimization_level=0 $$XLA_FLAGS" JAX_PLATFORMS=cpu $(BIN)/python -m pytest -x -q

# Flax's own nnx tests against this nnx; slow, not part of `make test`. A venv of its own,
# with flax installed for the tests that compare against Linen.
$(COMPAT_VENV)/bin/python:
	$(PYTHON) -m venv $(COMPAT_VENV)

$(COMPAT_STAMP): $(COMPAT_VENV)/bin/python pyproject.toml
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install --quiet -e ".[dev,compat]"
	touch $(COMPAT_STAMP)

compat: $(COMPAT_STAMP)
	$(COMPAT_VENV)/bin/python compat/flax_tests.py

bench: $(STAMP)
	$(BIN)/python benchmarks/graph_overhead.py
	$(BIN)/python benchmarks/jit_overhead.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT_VENV)
