# qwen-serve — build, test, run and benchmark. Every install step the project needs lives here.
SWIFT       ?= swift
CONFIG      ?= release
BIN         := .build/$(CONFIG)/qwen-serve
# chromium and chromium-driver: the web console's tests run in a real headless browser.
# postgresql: the shared-state tests run several replicas on a real PostgreSQL (scripts/with_postgres.sh).
APT_PKGS    := libopenblas-dev libsystemd-dev libssl-dev libsqlite3-dev pkg-config python3-pip python3-venv strace libc6-dev-arm64-cross \
               chromium chromium-driver postgresql openssl
VENV        := .venv-test
PYTHON      ?= python3

.PHONY: all deps build model run test test-suites check-aarch64 fuzz bench bench-kernels bench-levels bench-builds bench-serve bench-adapters bench-train bench-train-serve bench-structured bench-compare bench-spec bench-cluster bench-batch finetune-demo console-demo fixtures fixture-deps clean install uninstall
PREFIX      ?= /usr/local
UNITDIR     ?= /etc/systemd/system

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
# One build serves both: tests compiled with the same flags as the binary they start.
# The kernel, engine and parity suites run again at every lower kernel level this CPU has
# (QWEN_CPU_LEVEL: avx512 > avx2 > portable), so any machine tests every path it can run.
LEVEL_TESTS := AttentionKernelTests|DequantTests|CompactMatrixTests|ElementwiseTests|Int8KernelTests|LoRATests|ModelNumericsTests|EngineTests|SpeculationTests|RealModelTests|TrainingGradientTests|QuantizeTests
test: deps $(VENV)/ok check-aarch64
	$(SWIFT) build -c $(CONFIG) --build-tests
	$(BIN) fetch default
	$(BIN) cpu
	scripts/with_postgres.sh $(MAKE) --no-print-directory test-suites

# The suites themselves, beside the throwaway PostgreSQL that `make test` starts and stops.
test-suites:
	$(SWIFT) test -c $(CONFIG) --skip-build
	for level in $$($(BIN) cpu --levels | tail -n +2); do \
	  echo "== the kernel, engine and parity tests at kernel level $$level"; \
	  QWEN_CPU_LEVEL=$$level $(SWIFT) test -c $(CONFIG) --skip-build --filter '$(LEVEL_TESTS)' || exit 1; \
	done
	QWEN_SERVE_BIN=$(BIN) $(VENV)/bin/pytest -q Tests/api

# The C kernels compile for Linux on aarch64 (Graviton, Ampere): x86 code stays behind #if, the
# portable kernels remain. Cross headers from Debian's libc6-dev-arm64-cross (make deps).
CLANG ?= clang
check-aarch64: deps
	@for f in Sources/CQwenKernels/*.c; do \
	  $(CLANG) --target=aarch64-linux-gnu --sysroot=/usr/aarch64-linux-gnu -O2 -ffast-math -fno-finite-math-only -Wall -Werror \
	    -ISources/CQwenKernels/include -c $$f -o /dev/null || exit 1; \
	done; echo "aarch64: every C kernel source compiles for aarch64-linux-gnu"

$(VENV)/ok: Tests/api/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r Tests/api/requirements.txt
	touch $@

# libFuzzer on every parser of untrusted input (FUZZ_SECONDS each, default 60); crashing inputs
# land in Tests/Fuzz/<target>/, which the tests replay.
fuzz: deps
	scripts/fuzz.sh

bench-batch: model
	$(PYTHON) scripts/bench_batch.py --binary $(BIN)

bench-serve: model
	$(PYTHON) scripts/bench_serve.py --binary $(BIN)

bench-adapters: model
	$(PYTHON) scripts/bench_adapters.py --binary $(BIN) --compute f32
	$(PYTHON) scripts/bench_adapters.py --binary $(BIN) --compute int8

bench: model
	$(PYTHON) scripts/bench.py --binary $(BIN)

# One thread's compact f32 products per stored type (Q5_0, Q8_0, Q4_K, Q6_K, bf16, f16 of the default
# model's shapes), straight on the C kernels; QWEN_CPU_LEVEL=... to compare levels.
KC := Sources/CQwenKernels
bench-kernels:
	$(CLANG) -O3 -ffast-math -fno-finite-math-only -I$(KC)/include -I$(KC) scripts/bench_kernels.c $(KC)/quant_matmul.c $(KC)/int8_matmul.c $(KC)/quantize.c \
	  $(KC)/cpu.c $(KC)/f16_table.c -lpthread -lm -o .build/bench_kernels
	for t in "6 4864 896" "8 4864 896" "12 896 4864" "14 896 4864" "30 4864 896" "1 4864 896"; do .build/bench_kernels $$t; done

# Single-stream speed at every kernel level this CPU runs (QWEN_CPU_LEVEL): BENCHMARKS.md's first table.
bench-levels: model
	$(PYTHON) scripts/bench_levels.py --binary $(BIN)

# LoRA training speed and peak memory against transformers + PEFT (needs make fixture-deps).
bench-train: model
	$(PYTHON) scripts/bench_train.py --binary $(BIN)

# Chat latency with a fine-tuning job on the same engine, and the job's speed shared vs alone.
bench-train-serve: model
	$(VENV)/bin/python scripts/bench_train_serve.py --binary $(BIN)

# Side by side with llama.cpp (llama-bench, llama-server) built from llama-cpp-python's sdist into the cache.
bench-compare: model
	$(VENV)/bin/python scripts/bench_compare.py --binary $(BIN)

# Speculative decoding: code edits and free chat, single stream, qwen-serve off/auto beside
# llama-server with and without its n-gram speculation; then random load at concurrency 10 and 50.
# Shared state: PostgreSQL against SQLite (training speed, API latency, failover), beside a throwaway PostgreSQL.
bench-cluster: model $(VENV)/ok
	scripts/with_postgres.sh $(VENV)/bin/python scripts/bench_cluster.py

bench-spec: model
	$(VENV)/bin/python scripts/bench_spec.py --binary $(BIN)

# Structured outputs under load: 10 clients, every request under a JSON schema vs unconstrained.
bench-structured: model
	$(VENV)/bin/python scripts/bench_structured.py --binary $(BIN)

# The reference fine-tune: the default model learns the name 小鹅 (../shared/data/self_cognition).
finetune-demo: model
	$(PYTHON) scripts/finetune_demo.py --binary $(BIN)

# The web console's walk-through on the default model in headless Chromium: chat, fine-tune on
# the self-cognition data from the page, compare; screenshots in .build/console-demo.
console-demo: model $(VENV)/ok
	$(VENV)/bin/python scripts/console_demo.py --binary $(BIN)

# This build against another (OLD=path/to/its/qwen-serve), alternated: did a change cost speed?
bench-builds: model
	$(PYTHON) scripts/bench_builds.py --binary $(BIN) --old $(OLD)

# Regenerating the committed fixtures needs PyTorch and transformers (CPU build of torch).
fixture-deps:
	$(PYTHON) -m pip install -q torch==2.13.0 transformers peft gguf accelerate "mlx[cpu]==0.32.4" mlx-lm==0.32.2

fixtures: fixture-deps model
	$(PYTHON) scripts/make_fixtures.py --gguf $$($(BIN) fetch default) --out Tests/Fixtures

# The binary, the systemd unit and an example config (kept if one is there already).
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/qwen-serve
	install -D -m 0644 deploy/qwen-serve.service $(DESTDIR)$(UNITDIR)/qwen-serve.service
	install -D -m 0644 deploy/qwen-serve.socket $(DESTDIR)$(UNITDIR)/qwen-serve.socket
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/qwen-serve/README.md
	[ -e $(DESTDIR)/etc/qwen-serve/config.yaml ] || install -D -m 0644 deploy/config.yaml $(DESTDIR)/etc/qwen-serve/config.yaml
	[ -e $(DESTDIR)/etc/qwen-serve/env ] || install -D -m 0600 deploy/env $(DESTDIR)/etc/qwen-serve/env
	# The unit allows loopback traffic only, so the default model is fetched into its cache now.
	[ -n "$(DESTDIR)" ] || QWEN_SERVE_CACHE=/var/cache/qwen-serve $(BIN) fetch default >/dev/null
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true

uninstall:
	-systemctl disable --now qwen-serve.socket qwen-serve 2>/dev/null || true
	rm -f $(DESTDIR)$(PREFIX)/bin/qwen-serve $(DESTDIR)$(UNITDIR)/qwen-serve.service $(DESTDIR)$(UNITDIR)/qwen-serve.socket
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/qwen-serve
	-[ -z "$(DESTDIR)" ] && systemctl daemon-reload 2>/dev/null || true
	@echo "kept /etc/qwen-serve (your configuration)"

clean:
	rm -rf .build
