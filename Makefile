# Every target creates or reuses the virtual environment and installs what it needs.
#   make demo        raw sample corpora -> data pipeline -> tiny GPT trained -> exported to Hugging Face
#   make test        the whole test suite (what CI runs)
#   make test-fast   the suite without the slow multi-process end-to-end runs
#   make lint        ruff (rules and exclusions in pyproject.toml; CI runs it before the tests)
#   make bench       training throughput: our DeepSpeed stack vs a bare PyTorch loop; ZeRO memory per rank
#                    at dp1 vs dp2 and the tp2 vs tp1 step time
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed first and pinned, so nothing later pulls another build: 2.13.0 is the local CPU wheel
# on CPU machines and the CUDA wheel from PyPI on GPU machines. Override e.g. TORCH_SPEC="torch==2.13.0+cu128".
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
# The suite runs on this many pytest-xdist workers, a test file per worker at a time (its module fixtures are
# built once); the end-to-end runs several files share are trained once for all of them (tests/conftest.py).
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml data_pipelines/_native.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(PY) -m data_pipelines.run output_dir=$(DEMO_DIR)/data
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) -m pretrain.train experiment=gpt_tiny run_dir=$(DEMO_DIR)/train \
		data.path=$(DEMO_DIR)/data data.split=80/20
	$(PY) -m pretrain.export $(DEMO_DIR)/train $(DEMO_DIR)/hf --overwrite
	@echo "demo done: data report $(DEMO_DIR)/data/report.md, metrics $(DEMO_DIR)/train/metrics.jsonl, Hugging Face model $(DEMO_DIR)/hf"

test: install
	WANDB_MODE=disabled $(PY) -m pytest tests -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	WANDB_MODE=disabled $(PY) -m pytest tests -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m pretrain.bench.train
	$(PY) -m pretrain.bench.parallel

clean:
	rm -rf runs outputs .pytest_cache
