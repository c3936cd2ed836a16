# Everything goes into ./.venv; pip takes torch/torchvision from this machine's local wheel store.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install quickstart test benchmark notebooks clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH) 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/pip install -q -e '.[test]' $(TORCH) 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/python -c "import hardcl_lightning, torch, lightning; print('installed: torch', torch.__version__, 'lightning', lightning.__version__)"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/hardcl fit --config configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q tests

benchmark: install
	$(BIN)/python benchmarks/throughput.py

notebooks: install
	$(BIN)/python scripts/execute_notebooks.py

clean:
	rm -rf $(VENV) lightning_logs runs .pytest_cache
