# Two commands on a fresh machine: `make demo`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-unit lint install clean bench bench-quick

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

# nex on the embedded stub model: a full autonomous run with tools, no server needed.
demo: $(STAMP)
	@mkdir -p .demo/work
	cd .demo/work && NEX_HOME=$(CURDIR)/.demo/home $(CURDIR)/$(BIN)/nex -m stub:demo --autonomous \
		"Write a small Python program, run it, and tell me what it printed."

# Every tier: lint, types, unit, stub integration (sockets, subprocesses, tmux), real peers.
test: $(STAMP)
	@command -v tmux >/dev/null || { echo "make test: installing tmux (REPL tier) with apt-get" >&2; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null; }
	$(BIN)/ruff check nexpy handlers stubs tests
	$(BIN)/ruff format --check nexpy handlers stubs tests
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check nexpy handlers stubs tests
	$(BIN)/ruff format --check nexpy handlers stubs tests
	$(BIN)/mypy

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
