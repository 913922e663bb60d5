# qwen-serve — build, test, run and benchmark. Every install step the project needs lives here.
SWIFT       ?= swift
CONFIG      ?= release
BIN         := .build/$(CONFIG)/qwen-serve
APT_PKGS    := libopenblas-dev libsystemd-dev libssl-dev pkg-config python3-pip python3-venv
VENV        := .venv-test
PYTHON      ?= python3

.PHONY: all deps build model run test bench bench-serve fixtures fixture-deps clean

all: build

# System libraries (Debian/Ubuntu). Installs only what is missing; needs root or sudo.
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build -c $(CONFIG)

# The default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M), fetched once into ~/.cache/qwen-serve.
model: build
	$(BIN) fetch default

# The OpenAI-compatible server on the default model, on http://127.0.0.1:8080.
run: model
	$(BIN) serve --model default

# Tests run on release builds: the real-model tests are far too slow unoptimised.
# Then the HTTP API tests (pytest, the official openai client, schemathesis) in a venv.
test: model $(VENV)/ok
	$(SWIFT) test -c $(CONFIG)
	QWEN_SERVE_BIN=$(BIN) $(VENV)/bin/pytest -q Tests/api

$(VENV)/ok: Tests/api/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r Tests/api/requirements.txt
	touch $@

bench-serve: model
	$(PYTHON) scripts/bench_serve.py --binary $(BIN)

bench: model
	$(PYTHON) scripts/bench.py --binary $(BIN)

# Regenerating the committed fixtures needs PyTorch and transformers (CPU build of torch).
fixture-deps:
	$(PYTHON) -m pip install -q torch==2.13.0 transformers peft gguf

fixtures: fixture-deps model
	$(PYTHON) scripts/make_fixtures.py --gguf $$($(BIN) fetch default) --out Tests/Fixtures

clean:
	rm -rf .build
