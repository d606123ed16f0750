# The two commands: `make demo` and `make test`. Each sets everything up on a fresh machine, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo

.PHONY: demo test bench fashion-mnist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned in pyproject.toml (torch==2.13.0, the CPU wheel on these machines).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

# Debian's Fashion-MNIST, where we are root and apt exists; otherwise the loader finds or downloads it.
fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: could not install dataset-fashion-mnist; compactnn.data will download Fashion-MNIST when asked"; \
	else echo "note: not root or no apt; skipping dataset-fashion-mnist"; fi

demo: $(VENV)/.installed fashion-mnist
	$(BIN)/compactnn run recipes/demo.yaml --out $(OUT) --force

test: $(VENV)/.installed-test fashion-mnist
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-bench fashion-mnist
	$(BIN)/python benchmarks/deep_compression.py

clean:
	rm -rf $(VENV) runs .pytest_cache
