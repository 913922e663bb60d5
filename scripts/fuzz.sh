#!/usr/bin/env bash
# Fuzzes every parser that reads untrusted bytes with libFuzzer (make fuzz).
#   FUZZ_SECONDS=600 FUZZ_TARGETS="json jinja" scripts/fuzz.sh   (FUZZ_SKIP_BUILD=1: use the last build)
# Seeds come from the test fixtures; inputs that crash are copied to Tests/Fuzz/<target>/,
# where the test suite replays them for good (commit them with the fix). Leak detection is
# off: the Swift runtime's one-time allocations (metadata caches) read as leaks of the first
# input; AddressSanitizer's memory-safety checks stay on.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"safetensors gguf tokenizer jinja json request adapter-config schema regex"}
WORK=.build-fuzz/corpus
BIN=.build-fuzz/release/qwen-fuzz

[ -n "${FUZZ_SKIP_BUILD:-}" ] || QWEN_FUZZ=1 swift build -c release --product qwen-fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address

seed() {  # seed TARGET FILE...
    mkdir -p "$WORK/$1"
    local t=$1; shift
    for f in "$@"; do [ -f "$f" ] && cp "$f" "$WORK/$t/seed-$(basename "$(dirname "$f")")-$(basename "$f")"; done
    return 0
}
F=Tests/Fixtures
seed safetensors $F/adapters/*/*.safetensors
seed gguf $F/qwen3-tiny.gguf
seed adapter-config $F/adapters/*/adapter_config.json
seed json $F/adapters/*/adapter_config.json $F/qwen3-tiny-f32/config.json $F/tokenizer/tokenizer_config.json
mkdir -p "$WORK/jinja" "$WORK/tokenizer" "$WORK/request" "$WORK/schema" "$WORK/regex"
python3 - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]
for name in ["qwen3-tiny-f32", "qwen2-tiny"]:
    cfg = json.load(open(f"Tests/Fixtures/{name}/tokenizer_config.json"))
    if cfg.get("chat_template"):
        open(f"{work}/jinja/seed-{name}", "w").write(cfg["chat_template"])
shared = "../shared/data/templates/qwen3.jinja"
if os.path.exists(shared):
    open(f"{work}/jinja/seed-qwen3", "w").write(open(shared).read())
for i, t in enumerate(["Hello, world!", "a" * 300, "def f(x):\n    return x  # 汉字 émoji 🙂", "<|im_start|>user\nhi<|im_end|>",
                       "  \n\n\t  spaces", "'s 've 're 1234567 ..."]):
    open(f"{work}/tokenizer/seed-{i}", "w").write(t)
for i, body in enumerate([
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None,
          "tool_calls": [{"id": "c", "type": "function", "function": {"name": "w", "arguments": {"city": "x"}}}]},
          {"role": "tool", "content": "sunny"}],
         "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]},
        {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"enable_thinking": False}}]):
    open(f"{work}/request/seed-{i}", "w").write(json.dumps(body))
for i, schema in enumerate([
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": -5, "maximum": 99}, "b": {"type": "string", "maxLength": 3}},
         "required": ["a"]},
        {"$defs": {"n": {"type": "object", "properties": {"k": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}}, "$ref": "#/$defs/n"},
        {"anyOf": [{"enum": ["x", 1, None]}, {"type": "string", "format": "date-time"}, {"type": "number", "exclusiveMinimum": 0.5}]},
        {"type": "string", "pattern": "^[a-f0-9]{2,4}(-x)?$"}]):
    open(f"{work}/schema/seed-{i}", "w").write(json.dumps(schema))
for i, r in enumerate(["[a-z]+@[a-z]+\\.com", "(yes|no|maybe)", "\\d{3}-\\d{4}", "[^\\n]{0,5}é+"]):
    open(f"{work}/regex/seed-{i}", "w").write(r)
PY

status=0
for t in $TARGETS; do
    mkdir -p "$WORK/$t" "Tests/Fuzz/$t" ".build-fuzz/artifacts/$t"
    echo "== $t: ${SECONDS_EACH}s"
    if ! ASAN_OPTIONS=detect_leaks=0 QWEN_FUZZ_TARGET=$t "$BIN" -max_total_time="$SECONDS_EACH" -timeout=10 -detect_leaks=0 -rss_limit_mb=4096 -max_len=65536 \
            -artifact_prefix=".build-fuzz/artifacts/$t/" -print_final_stats=1 "$WORK/$t" "Tests/Fuzz/$t" 2>&1 | tail -n 12; then
        status=1
    fi
    for a in .build-fuzz/artifacts/$t/*; do
        [ -f "$a" ] || continue
        cp "$a" "Tests/Fuzz/$t/"
        echo "!! $t: $(basename "$a") saved to Tests/Fuzz/$t/"
        status=1
    done
done
exit $status
