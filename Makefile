# rooftop: `make run` compiles the embedded default model; `make test` runs the test suite.
# Each target creates the virtual environment it needs (torch's CPU build first, then the rest).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test bench calibrate clean

$(BIN)/rooftop: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/rooftop
	$(BIN)/rooftop $(ARGS)

test: $(BIN)/rooftop
	$(BIN)/python -m pytest tests -n 2 --dist loadfile -q $(PYTEST_ARGS)

bench: $(BIN)/rooftop
	$(BIN)/python tests/bench/bench_spine.py
	$(BIN)/python tests/bench/bench_fusion.py
	$(BIN)/python tests/bench/bench_serving.py

clean:
	rm -rf outputs multirun .pytest_cache
