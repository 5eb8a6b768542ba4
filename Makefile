PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

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

bench: $(STAMP)
	$(BIN)/python benchmarks/graph_overhead.py
	$(BIN)/python benchmarks/jit_overhead.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
