# The newcomer's commands: `make repro` runs the pipeline, `make test` runs the tests. Both set
# up .venv first (the README's "Set up", with the pins of constraints.txt) when it is missing or
# older than pyproject.toml or constraints.txt, and use .venv/bin/... directly: nothing to
# `source`, nothing to export. `make` alone lists the targets.
#
# Variables (on the command line, `make repro PYTHON=python3.12`, or in the environment,
# `PYTHON=python3.12 make repro`):
#   PYTHON       the interpreter .venv is made with (default python3; remove .venv to change it)
#   PYTEST_ARGS  extra arguments for pytest: make test PYTEST_ARGS='-m "not slow"'
#   PORT         the MLflow UI's port on 127.0.0.1 (default 5000; command line only)
#   TB_PORT      TensorBoard's port on 127.0.0.1 (default 6006; command line only)
#   DOCS_PORT    the docs' port on 127.0.0.1 (default 8000; command line only)
#   UV           the uv to set up with; found on PATH, `make repro UV=` uses pip instead

PYTHON ?= python3
PYTEST_ARGS ?=
PORT = 5000
TB_PORT = 6006
DOCS_PORT = 8000
ifeq ($(origin UV),undefined)
UV := $(if $(shell command -v uv 2>/dev/null),uv)
endif

VENV := .venv
BIN := $(VENV)/bin
# Written last by a set-up that succeeded: make compares it with what it installed from.
STAMP := $(VENV)/.installed
# What `source .venv/bin/activate` would do, for one command: dvc.yaml's stage commands run
# `python -m pipeline.stages...`, and the tests start `dvc`, `mlflow` and `python` by name.
IN_VENV := VIRTUAL_ENV="$(CURDIR)/$(VENV)" PATH="$(CURDIR)/$(BIN):$$PATH"
# The tracking store the pipeline writes to (pipeline/tracking/server.py): MLFLOW_TRACKING_URI,
# else mlflow.db at the project root (artifacts under mlruns/, recorded in each run).
DEFAULT_TRACKING_URI := sqlite:///mlflow.db

# The make goal that advice names, e.g. "run `PYTHON=python3.12 make test`".
GOAL = $(firstword $(filter repro test ui setup,$(MAKECMDGOALS)) repro)
INSTALLER = $(if $(UV),uv,pip)
# One line when the interpreter cannot make .venv (tools/check_python.sh), else empty. Expanded
# only when the set-up recipe runs, so `make help` and an up-to-date .venv never pay for it.
PYTHON_PROBLEM = $(shell sh tools/check_python.sh "$(PYTHON)" $(INSTALLER) $(GOAL))

ifneq ($(UV),)
CREATE_VENV = $(UV) venv --seed --python $(PYTHON) $(VENV)
# --compile-bytecode, as pip does by default: without it every process compiles TensorFlow's
# modules again where .pyc files are not written (PYTHONDONTWRITEBYTECODE): the suite took 19 min, not 13.
INSTALL = $(UV) pip install --compile-bytecode --python $(BIN)/python -c constraints.txt -e ".[dev]"
else
CREATE_VENV = $(PYTHON) -m venv $(VENV)
INSTALL = [ -x $(BIN)/pip ] || $(BIN)/python -m ensurepip --upgrade; \
	$(BIN)/pip install --upgrade pip && $(BIN)/pip install -c constraints.txt -e ".[dev]"
endif

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.PHONY: help setup repro test ui tensorboard plots docs docs-build

repro: $(STAMP) ## run the pipeline on the default dataset and print each strategy's metrics
	$(IN_VENV) $(BIN)/dvc repro
	@echo
	@echo "Test metrics of each strategy (reports/comparison.csv; all of them: $(BIN)/dvc metrics show reports/metrics.json):"
	@$(BIN)/python tools/show_results.py reports/comparison.csv reports/metrics.json
	@echo
	@echo "The report:  reports/index.html (open it in a browser)"
	@echo "MLflow runs: make ui, then open http://127.0.0.1:$(PORT)"

test: $(STAMP) ## run the tests; make test PYTEST_ARGS='-m "not slow"' for the fast ones
	$(IN_VENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

ui: $(STAMP) ## start the MLflow UI on 127.0.0.1 (make ui PORT=5001), Ctrl-C stops it
	@uri="$${MLFLOW_TRACKING_URI:-$(DEFAULT_TRACKING_URI)}"; \
	case "$$uri" in \
		http://* | https://*) echo "The runs are on $$uri (MLFLOW_TRACKING_URI): open it in a browser."; exit 0 ;; \
	esac; \
	echo "MLflow UI on $$uri: http://127.0.0.1:$(PORT) (Ctrl-C stops it)"; \
	exec $(BIN)/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port $(PORT)

plots: $(STAMP) ## draw the training curves and confusion matrices, offline: dvc_plots/index.html
	$(IN_VENV) $(BIN)/dvc plots show --html-template tools/dvc_plots/template.html

tensorboard: $(STAMP) ## serve the trainings' TensorBoard logs (logs/) on 127.0.0.1 (TB_PORT=6006)
	@echo "TensorBoard on http://127.0.0.1:$(TB_PORT) (logs/<strategy>/<run>; Ctrl-C stops it)"
	exec $(BIN)/tensorboard --logdir logs --host 127.0.0.1 --port $(TB_PORT)

docs: $(STAMP) ## serve the documentation on 127.0.0.1 (make docs DOCS_PORT=8001), Ctrl-C stops it
	@echo "The documentation on http://127.0.0.1:$(DOCS_PORT) (docs/; Ctrl-C stops it)"
	NO_MKDOCS_2_WARNING=1 exec $(BIN)/mkdocs serve -a 127.0.0.1:$(DOCS_PORT)

docs-build: $(STAMP) ## build the documentation into site/; a broken link or anchor fails it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	@echo "The documentation: site/index.html"

setup: $(STAMP) ## make .venv with the pinned packages, if missing or older than the pins

help: ## list the targets
	@echo "make <target>, from the project root:"
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-11s %s\n", $$1, $$2 }' \
		$(firstword $(MAKEFILE_LIST))
	@echo "variables: PYTHON=$(PYTHON) PYTEST_ARGS=... PORT=$(PORT) (see the top of the Makefile)"

# Reuses a .venv whose python runs (after checking its version), else makes it with PYTHON.
# The stamp is removed first and written last, so a set-up that fails is redone next time.
# Quiet: the installer's hundreds of lines go to SETUP_LOG; a failure prints its end (pip's or
# uv's own error) and stops.
SETUP_LOG := $(VENV)/setup.log
SETUP_FAILED = { echo "make: the set-up failed; the end of $(SETUP_LOG):" >&2; \
	tail -n 40 $(SETUP_LOG) >&2; exit 1; }
$(STAMP): pyproject.toml constraints.txt
	$(eval PROBLEM := $(PYTHON_PROBLEM))$(if $(PROBLEM),$(error $(PROBLEM)))
	@rm -f $(STAMP)
	@echo "Setting up $(VENV) with $(INSTALLER) and the pins of constraints.txt (a few minutes the first time; log: $(SETUP_LOG))"
	@$(BIN)/python -c '' 2>/dev/null || { rm -rf $(VENV) && $(CREATE_VENV) >/dev/null || { rm -rf $(VENV); exit 1; }; }
	@sh tools/check_python.sh --fail "$(PYTHON)" $(INSTALLER) $(GOAL)
	@{ $(INSTALL); } >$(SETUP_LOG) 2>&1 || $(SETUP_FAILED)
	@touch $(STAMP)
	@echo "Set up $(VENV): every package at the version constraints.txt pins"
