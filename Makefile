# Two commands on a fresh machine: `make demo`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-unit lint install peers apt-tools clean bench bench-quick conformance

# Real peers for the top test tier, pinned: llama.cpp from the llama-cpp-python 0.3.36 sdist and
# the real claude and codex CLIs from the npm registry, in a git-ignored folder. claude-code
# 2.1.197 is the newest that runs on Node 20.
#
# The sdist, unpacked, carries ~70 real chat templates (vendor/llama.cpp/models/templates, read
# in place by the conformance tier, never copied into the repo) and the llama.cpp it binds. That
# llama.cpp is built once, here, with CMake (Release, portable, shared libraries, no curl: it
# only loads local files): the build gives the C++ `llama-server` (the llama.cpp rendering engine)
# and the shared libraries llama-cpp-python's ctypes bindings load (LLAMA_CPP_LIB_PATH, set by
# the tests), so the Python package installs with LLAMA_BUILD=OFF and compiles nothing. One
# compile of llama.cpp instead of two; ccache (installed below) keeps it across fresh clones
# (CCACHE_BASEDIR: paths inside the clone are hashed relative to it, so another clone hits).
PEERS        := .peers
SDIST_VER    := 0.3.36
SDIST_DIR    := $(PEERS)/llama_cpp_python-$(SDIST_VER)
LLAMA_CPP    := $(SDIST_DIR)/vendor/llama.cpp
LLAMA_BUILD  := $(PEERS)/llama.cpp-build
LLAMA_FLAGS  := -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
	-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
BUILD_STAMP  := $(PEERS)/.llama.cpp-$(shell echo $(SDIST_VER) $(LLAMA_FLAGS) | cksum | cut -d' ' -f1)
PY_PKGS      := gguf==0.19.0
LLAMA_STAMP  := $(PEERS)/.llama-python-$(shell echo $(SDIST_VER) $(PY_PKGS) | cksum | cut -d' ' -f1)
NPM_PKGS     := @openai/codex@0.169.0 @anthropic-ai/claude-code@2.1.197
NPM_STAMP    := $(PEERS)/.npm-$(shell echo $(NPM_PKGS) | cksum | cut -d' ' -f1)
APT_TOOLS    := tmux:tmux bwrap:bubblewrap ccache:ccache

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

$(SDIST_DIR)/.unpacked: | $(STAMP)
	@mkdir -p $(PEERS)
	$(BIN)/pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
		-d $(PEERS) llama-cpp-python==$(SDIST_VER)
	tar -xzf $(PEERS)/llama_cpp_python-$(SDIST_VER).tar.gz -C $(PEERS)
	@touch $@

$(BUILD_STAMP): $(SDIST_DIR)/.unpacked | apt-tools
	@echo "make: building llama.cpp $(SDIST_VER) (llama-server + shared libraries; minutes the first time)" >&2
	cmake -S $(LLAMA_CPP) -B $(LLAMA_BUILD) $(LLAMA_FLAGS) >/dev/null
	CCACHE_BASEDIR=$(CURDIR) CCACHE_NOHASHDIR=1 cmake --build $(LLAMA_BUILD) --target llama-server -j$$(nproc) >/dev/null
	@touch $@

$(LLAMA_STAMP): $(STAMP) $(SDIST_DIR)/.unpacked
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/pip install -qq --disable-pip-version-check \
		--no-cache-dir '$(SDIST_DIR)[server]' $(PY_PKGS)
	@touch $@

$(NPM_STAMP):
	@mkdir -p $(PEERS)
	npm install --silent --no-audit --no-fund --prefix $(PEERS)/npm $(NPM_PKGS)
	@touch $@

# Tools the tiers need from Debian: tmux (REPL tier), bubblewrap (bash sandbox), ccache.
apt-tools:
	@for pair in $(APT_TOOLS); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then echo "make: installing$$missing with apt-get" >&2; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

peers: $(BUILD_STAMP) $(LLAMA_STAMP) $(NPM_STAMP)

# nex on the embedded stub model: a full autonomous run with tools, no server needed.
demo: $(STAMP)
	@mkdir -p .demo/work
	cd .demo/work && NEX_HOME=$(CURDIR)/.demo/home $(CURDIR)/$(BIN)/nex -m stub:demo --autonomous \
		"Write a small Python program, run it, and tell me what it printed."

# Every tier: lint, types, unit, stub integration (sockets, subprocesses, tmux, the bwrap
# sandbox), real peers, and the chat-template conformance tier (README, "Chat templates").
# Hundreds of tests start `nex`: compiled first, they run from bytecode as an installed nex does
# instead of compiling every module at each launch (PYTHONDONTWRITEBYTECODE, set on many
# machines, stops Python writing the cache itself; a stale .pyc is never used).
test: $(STAMP) peers apt-tools
	$(BIN)/ruff check nexpy handlers stubs tests bench
	$(BIN)/ruff format --check nexpy handlers stubs tests bench
	$(BIN)/mypy
	$(BIN)/python -m compileall -q nexpy handlers stubs
	$(BIN)/pytest -q -rs -p no:cacheprovider -n 2 --dist loadfile --durations=15

# The conformance tier alone: every real chat template on both rendering engines, and its table.
conformance: $(STAMP) peers
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
