# Two commands on a fresh machine: `make demo`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-unit lint install peers clean bench bench-quick conformance

# Real peers for the top test tier, pinned: a llama.cpp server (built from source by pip, ~6 min
# once, then pip's wheel cache) and the real claude and codex CLIs from the npm registry,
# installed into a git-ignored folder. claude-code 2.1.197 is the newest that runs on Node 20.
PEERS        := .peers
LLAMA_PKGS   := 'llama-cpp-python[server]==0.3.36' 'gguf==0.19.0'
NPM_PKGS     := @openai/codex@0.169.0 @anthropic-ai/claude-code@2.1.197
LLAMA_STAMP  := $(PEERS)/.llama-$(shell echo $(LLAMA_PKGS) | cksum | cut -d' ' -f1)
NPM_STAMP    := $(PEERS)/.npm-$(shell echo $(NPM_PKGS) | cksum | cut -d' ' -f1)
# The same llama-cpp-python sdist, unpacked: its vendored llama.cpp carries ~70 real chat
# templates (models/templates/, read in place by the conformance tier, never copied into the
# repo) and the C++ llama-server, built here once (Release, portable, server target only,
# no curl: it only ever loads local files) as the llama.cpp rendering engine.
SDIST_VER    := 0.3.36
SDIST_DIR    := $(PEERS)/llama_cpp_python-$(SDIST_VER)
LLAMA_CPP    := $(SDIST_DIR)/vendor/llama.cpp
SERVER_BUILD := $(PEERS)/llama-server-build
SERVER_STAMP := $(PEERS)/.llama-server-$(SDIST_VER)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

$(LLAMA_STAMP): $(STAMP)
	@mkdir -p $(PEERS)
	@echo "make: installing $(LLAMA_PKGS) (a source build: minutes the first time)" >&2
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -qq --disable-pip-version-check $(LLAMA_PKGS)
	@touch $@

$(NPM_STAMP):
	@mkdir -p $(PEERS)
	npm install --silent --no-audit --no-fund --prefix $(PEERS)/npm $(NPM_PKGS)
	@touch $@

$(SDIST_DIR)/.unpacked: | $(STAMP)
	@mkdir -p $(PEERS)
	$(BIN)/pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
		-d $(PEERS) llama-cpp-python==$(SDIST_VER)
	tar -xzf $(PEERS)/llama_cpp_python-$(SDIST_VER).tar.gz -C $(PEERS)
	@touch $@

$(SERVER_STAMP): $(SDIST_DIR)/.unpacked
	@echo "make: building the C++ llama-server (minutes the first time)" >&2
	cmake -S $(LLAMA_CPP) -B $(SERVER_BUILD) -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
		-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
		-DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >/dev/null
	cmake --build $(SERVER_BUILD) --target llama-server -j2 >/dev/null
	@touch $@

peers: $(LLAMA_STAMP) $(NPM_STAMP) $(SDIST_DIR)/.unpacked

# nex on the embedded stub model: a full autonomous run with tools, no server needed.
demo: $(STAMP)
	@mkdir -p .demo/work
	cd .demo/work && NEX_HOME=$(CURDIR)/.demo/home $(CURDIR)/$(BIN)/nex -m stub:demo --autonomous \
		"Write a small Python program, run it, and tell me what it printed."

# Every tier: lint, types, unit, stub integration (sockets, subprocesses, tmux, the bwrap
# sandbox), real peers.
test: $(STAMP) peers
	@command -v tmux >/dev/null || { echo "make test: installing tmux (REPL tier) with apt-get" >&2; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null; }
	@command -v bwrap >/dev/null || { echo "make test: installing bubblewrap (bash sandbox tier) with apt-get" >&2; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }
	$(BIN)/ruff check nexpy handlers stubs tests bench
	$(BIN)/ruff format --check nexpy handlers stubs tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -rs -p no:cacheprovider --ignore=tests/conformance

# Every real chat template on both rendering engines (README, "Chat templates"). Not yet part of
# `make test`: nex does not apply the adaptations itself yet (the tier's proxy does), and the
# tier's time on a quiet machine is unmeasured; it joins `make test` when both are settled.
conformance: $(STAMP) peers $(SERVER_STAMP)
	$(BIN)/pytest -q -rs -p no:cacheprovider tests/conformance

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check nexpy handlers stubs tests bench
	$(BIN)/ruff format --check nexpy handlers stubs tests bench
	$(BIN)/mypy

# The benchmark suite: nex against stub servers, every figure beside a floor measured in the
# same run; prints the table and writes bench/results/latest.json. Targets missed do not fail it.
bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
