# outguard: `make run` serves on the embedded default, `make test` runs lint and every test.
# Both create the virtual environment and install first, so a fresh clone needs nothing else.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench bench-training train evaluate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[training,dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/outguard serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.vs_rspamd
	$(BIN)/python -m bench.fingerprints
	$(BIN)/python -m bench.backends
	$(BIN)/python -m bench.redis_hung
	$(BIN)/python -m bench.clamav
	$(BIN)/python -m bench.rspamd_compat
	$(BIN)/python -m bench.milter
	$(BIN)/python -m bench.bulk

# Training time against rows, both engines; needs a replayed event log (see docs/retraining.md).
bench-training: $(STAMP)
	$(BIN)/python -m bench.training

train: $(STAMP)
	$(BIN)/outguard train

evaluate: $(STAMP)
	$(BIN)/outguard evaluate

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
