# The Quick start's two commands: `make experiment` and `make test`.
# Both create .venv with the pinned dependencies on first use: `make experiment` (and setup, smoke,
# compare) only what running mnist-cnn needs (requirements/runtime.txt); `make test` (and test-fast,
# lint, format, bench*) the development set on top (requirements/dev.txt: TensorFlow, pytest, ruff,
# Playwright, the notebook kernel), installing the rest into the same .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
ARGS ?=

.PHONY: setup setup-dev experiment bundle wheel smoke compare study better notebook test test-fast lint format docs docs-linkcheck bench bench-sweep bench-serve bench-augment bench-browser bench-study bench-better bench-faults bench-cli bench-serve-start \
	lock clean

$(RUNTIME): requirements/runtime.txt pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/runtime.txt
	$(PIP) --no-deps -e .
	touch $@

# onnxruntime-web, pinned by package-lock.json, for the draw-a-digit page's models in the browser
# (`mnist-cnn serve` serves its files from node_modules/). Without npm, one line says so and the
# page answers through the server's API.
WEB := node_modules/.installed-web
$(WEB): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "npm not found: the draw-a-digit page will answer on the server (install Node.js, then make setup, to run the models in the browser)"; \
	fi

$(DEV): $(RUNTIME) requirements/dev.txt
	$(PIP) -r requirements/dev.txt
	touch $@

setup: $(RUNTIME) $(WEB)

setup-dev: $(DEV)

## The full seed experiment: Model_A and Model_B, 60 epochs each, into runs/<timestamp>/.
experiment: $(RUNTIME)
	$(BIN)/mnist-cnn experiment $(ARGS)

## The bundled run (src/mnist_cnn/bundled, README "Trained models included"): the seed experiment,
## its ONNX exports, copied into the package with SHA256SUMS. BUNDLE_RUN names a finished run to use.
BUNDLE_RUN ?= runs/bundled
bundle: $(DEV)
	[ -f $(BUNDLE_RUN)/config.json ] || $(BIN)/mnist-cnn experiment --out $(BUNDLE_RUN)
	$(BIN)/mnist-cnn export $(BUNDLE_RUN) --format onnx
	$(BIN)/python -m mnist_cnn.store.bundled $(BUNDLE_RUN)

## dist/mnist_cnn-<version>-py3-none-any.whl: the package, its bundled run and onnxruntime-web's files.
wheel: $(RUNTIME) $(WEB)
	rm -rf build dist
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir dist .
	@ls -l dist/*.whl

## A one-minute end-to-end run on 600 images, 2 epochs.
smoke: $(RUNTIME)
	$(BIN)/mnist-cnn experiment --limit 600 --epochs 2 --out runs/smoke $(ARGS)

## Is Model_B better? Both models over 5 seeds (60 epochs each) on a local Ray, with paired statistics.
compare: $(RUNTIME)
	$(BIN)/mnist-cnn compare --seeds 5 $(ARGS)

## A study: Model_A and variants x 5 seeds x 60 epochs on a local Ray, paired against Model_A
## (hours: it spans sessions). $(call study,NAME,FLAGS) continues runs/NAME, else the published
## docs/NAME, else starts; then publishes what has finished into docs/NAME (without models: a few
## MB, committed), so the next session resumes from the published copy.
define study
	[ -d runs/$(1) ] || [ ! -d docs/$(1) ] || cp -r docs/$(1) runs/$(1)
	if [ -f runs/$(1)/sweep.json ]; then $(BIN)/mnist-cnn compare --resume runs/$(1) $(ARGS); \
	else $(BIN)/mnist-cnn compare $(2) --seeds 5 --baseline A --out runs/$(1) $(ARGS); fi; \
	status=$$?; \
	[ $$status = 0 ] || $(BIN)/mnist-cnn report runs/$(1) || true; \
	$(BIN)/mnist-cnn publish runs/$(1) --out docs/$(1); exit $$status
endef

## How many filters does this CNN need? (README): six variants.
STUDY_MODELS := --models F8,F16,A,B,F128,AD --variants examples/study.toml
study: $(RUNTIME)
	$(call study,study,$(STUDY_MODELS))

## What makes this CNN better? (README): Model_A grown by one idea each, and the anchors' networks.
BETTER_MODELS := --models A,AD,A_ADAM,A_AUG,A_BN,A_CONV2,KERAS_IO,PYTORCH \
	--variants examples/anchors.toml --variants examples/better.toml
better: $(RUNTIME)
	$(call study,better,$(BETTER_MODELS))

## The specification as a notebook, in JupyterLab (the development set installs it).
notebook: $(DEV)
	$(BIN)/jupyter lab notebooks/mnist_cnn.ipynb $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(ARGS)

## The whole suite, as CI runs it: two processes, each taking one test file at a time (module
## fixtures such as a sweep are then made once, and no two files share a Ray).
TEST_WORKERS ?= 2
test: $(DEV) $(WEB)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

## The suite without the tests marked slow (Ray, browser, notebook, subprocess-kill).
test-fast: $(DEV) $(WEB)
	$(BIN)/python -m pytest -q -m "not slow"

## ruff: lint and format check (CI runs it before the tests).
LINTED := src tests bench docs/site
lint: $(DEV)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: $(DEV)
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

## The documentation site (docs/site: Sphinx, MyST Markdown, furo) into build/docs/html/; open its
## index.html. Warnings are errors: a broken cross-reference, image or internal link fails it
## (tests/test_docs.py builds it the same way in CI). -E reads every page again: the CLI reference
## and the result tables are written from the code and docs/*.json, which Sphinx does not watch.
DOCS_OUT := build/docs
docs: $(DEV)
	$(BIN)/python -m sphinx -W -n -E -q -b html docs/site $(DOCS_OUT)/html $(ARGS)
	@echo "the site: $(DOCS_OUT)/html/index.html"

## The site's external links too (needs the network, so not in CI).
docs-linkcheck: $(DEV)
	$(BIN)/python -m sphinx -W -n -q -b linkcheck docs/site $(DOCS_OUT)/linkcheck $(ARGS)

bench: $(DEV)
	$(BIN)/python bench/train_speed.py $(ARGS)

## Seeds per hour of a sweep: one 2-thread trial at a time vs 1-thread trials side by side.
bench-sweep: $(DEV)
	$(BIN)/python bench/sweep_layout.py --epochs 3 --rounds 2 --json docs/sweep-layout.json $(ARGS)

## The same for the filter study's six variants: its seeds per hour here, in both layouts.
bench-study: $(DEV)
	$(BIN)/python bench/sweep_layout.py $(STUDY_MODELS) --epochs 3 --json docs/study-layout.json $(ARGS)

## The same for the better study's eight networks.
bench-better: $(DEV)
	$(BIN)/python bench/sweep_layout.py $(BETTER_MODELS) --epochs 3 --json docs/better-layout.json $(ARGS)

## What --augment buys and costs: both models trained with and without it, 5 epochs.
bench-augment: $(DEV)
	$(BIN)/python bench/augment_effect.py --epochs 5 --out runs/augment-effect $(ARGS)

## Load benchmark of the server (wrk when installed: apt-get install wrk), on a briefly trained run.
SERVE_RUN ?= runs/bench-serve
bench-serve: $(DEV)
	[ -f $(SERVE_RUN)/Model_B/metrics.json ] || $(BIN)/mnist-cnn experiment --limit 12000 --epochs 2 \
		--optimizer adam --learning-rate 0.001 --out $(SERVE_RUN)
	[ -f $(SERVE_RUN)/exports/onnx/manifest.json ] || $(BIN)/mnist-cnn export $(SERVE_RUN) --format onnx
	$(BIN)/python bench/serve_load.py $(SERVE_RUN) --out docs/serve-bench.json $(ARGS)

## Time per prediction of the page's models in headless Chromium (the run needs its ONNX exports).
BROWSER_RUN ?= runs/bench-serve
bench-browser: $(DEV) $(WEB)
	$(BIN)/python bench/browser_predict.py $(BROWSER_RUN) --json docs/browser-bench.json $(ARGS)

## The server against hostile and faulty clients (slowloris, stalled bodies, huge headers, HTTP/0.9,
## decoder traps, SIGTERM under 32 clients): cases tried, handled and lost, into docs/faults-bench.json.
bench-faults: $(DEV)
	[ -f $(SERVE_RUN)/Model_B/metrics.json ] || $(BIN)/mnist-cnn experiment --limit 12000 --epochs 2 \
		--optimizer adam --learning-rate 0.001 --out $(SERVE_RUN)
	[ -f $(SERVE_RUN)/exports/onnx/manifest.json ] || $(BIN)/mnist-cnn export $(SERVE_RUN) --format onnx
	$(BIN)/python bench/faults.py $(SERVE_RUN) --out docs/faults-bench.json $(ARGS)

## How long a typo takes to be refused: ~27 bad flags, paths and ports, each a new mnist-cnn process
## (exit code and seconds each, the max and median; every one is checked before Keras loads).
bench-cli: $(DEV)
	$(BIN)/python bench/cli_refusals.py $(ARGS)

## How soon `serve` answers: from an empty numba cache (a first start on a machine), then again on
## it, 1 and 2 workers: seconds to the announced address, to /readyz 200, to the compiled preparation.
bench-serve-start: $(DEV)
	[ -f $(SERVE_RUN)/Model_B/metrics.json ] || $(BIN)/mnist-cnn experiment --limit 12000 --epochs 2 \
		--optimizer adam --learning-rate 0.001 --out $(SERVE_RUN)
	$(BIN)/python bench/serve_start.py $(SERVE_RUN) --workers 1,2 $(ARGS)

## Regenerate requirements/runtime.txt and requirements/dev.txt from pyproject.toml with pip-tools,
## installed into a throwaway venv. Pins already in the files are kept unless pyproject.toml needs
## others; ARGS='--upgrade' (or '--upgrade-package NAME') moves them. dev.txt is constrained to
## runtime.txt, so the two always agree on every package they share.
PIP_TOOLS := pip-tools==7.6.2
COMPILE_FLAGS := --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock:
	tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT && \
	$(PYTHON) -m venv "$$tools" && \
	"$$tools/bin/pip" install --quiet --disable-pip-version-check $(PIP_TOOLS) && \
	export CUSTOM_COMPILE_COMMAND="make lock" && \
	"$$tools/bin/pip-compile" $(COMPILE_FLAGS) $(ARGS) -o requirements/runtime.txt pyproject.toml && \
	"$$tools/bin/pip-compile" $(COMPILE_FLAGS) $(ARGS) --extra dev -c requirements/runtime.txt \
		-o requirements/dev.txt pyproject.toml && \
	"$$tools/bin/pip-compile" $(COMPILE_FLAGS) $(ARGS) --extra gpu -c requirements/runtime.txt \
		-o requirements/gpu.txt pyproject.toml

clean:
	rm -rf $(VENV) runs/smoke $(DOCS_OUT)
