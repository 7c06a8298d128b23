# Set-up and entry points. `make demo` and `make test` are the two commands a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Train a small CNN on the embedded digits data, certify its test split, print the table, write plots.
DEMO := outputs/demo
demo: install
	rm -rf $(DEMO)
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO)/train
	$(PY) certify.py ckpt_path=$(DEMO)/train/checkpoints/last.ckpt certify=demo hydra.run.dir=$(DEMO)/certify

test: install
	$(PY) -m pytest -q tests

test-quick: install
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf outputs multirun .pytest_cache
