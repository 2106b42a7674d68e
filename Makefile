# Set-up is shared by every target: a .venv with the pinned dependencies (requirements*.txt:
# the core, Ray, and the optional Lightning / TensorBoard / import-linter extras the tests use).
# torch is installed first, pinned, so pip never resolves a bare or newer (CUDA, 5 GB) build.
PY ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-run reproduce-quick test test-all lint bench data clean

$(STAMP): requirements.txt requirements-ray.txt requirements-extras.txt requirements-extras-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-ray.txt -r requirements-extras.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-extras-nodeps.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/catapults reproduce gd-multi --quick --out runs/demo
	@echo "Figures: runs/demo/gd-multi/gd-multi.png (numbers in gd-multi.csv, claims in claims.json)"

demo-run: $(STAMP)
	$(BIN)/catapults run examples/demo-multi-catapult.yaml --out runs/demo-run --overwrite
	@echo "Figures: runs/demo-run/figures/ (loss.png, events.png, ntk_loss_split.png, ntk_spectrum.png)"

reproduce-quick: $(STAMP)
	$(BIN)/catapults reproduce all --quick --out runs/reproduce-quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-logo --no-cache

bench: $(STAMP)
	bash benchmarks/run.sh

data:
	bash scripts/get_data.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
