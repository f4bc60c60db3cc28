# The Quick start's two commands: `make experiment` and `make test`.
# Both create .venv with the pinned dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup experiment smoke compare test lint format bench bench-sweep bench-serve bench-augment clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

## The full seed experiment: Model_A and Model_B, 60 epochs each, into runs/<timestamp>/.
experiment: $(STAMP)
	$(BIN)/mnist-cnn experiment $(ARGS)

## A one-minute end-to-end run on 600 images, 2 epochs.
smoke: $(STAMP)
	$(BIN)/mnist-cnn experiment --limit 600 --epochs 2 --out runs/smoke $(ARGS)

## Is Model_B better? Both models over 5 seeds (60 epochs each) on a local Ray, with paired statistics.
compare: $(STAMP)
	$(BIN)/mnist-cnn compare --seeds 5 $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

## ruff: lint and format check (CI runs it before the tests).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP)
	$(BIN)/python bench/train_speed.py $(ARGS)

## Seeds per hour of a sweep: one 2-thread trial at a time vs 1-thread trials side by side.
bench-sweep: $(STAMP)
	$(BIN)/python bench/sweep_layout.py --epochs 3 --rounds 2 --json docs/sweep-layout.json $(ARGS)

## What --augment buys and costs: both models trained with and without it, 5 epochs.
bench-augment: $(STAMP)
	$(BIN)/python bench/augment_effect.py --epochs 5 --out runs/augment-effect $(ARGS)

## Load benchmark of the server (wrk when installed: apt-get install wrk), on a briefly trained run.
SERVE_RUN ?= runs/bench-serve
bench-serve: $(STAMP)
	[ -f $(SERVE_RUN)/Model_B/metrics.json ] || $(BIN)/mnist-cnn experiment --limit 12000 --epochs 2 \
		--optimizer adam --learning-rate 0.001 --out $(SERVE_RUN)
	$(BIN)/python bench/serve_load.py $(SERVE_RUN) --out docs/serve-bench.json $(ARGS)

clean:
	rm -rf $(VENV) runs/smoke
