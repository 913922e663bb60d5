#!/usr/bin/env python3
"""make bench-structured: what constrained decoding costs under load.

On the default model with the default settings: 10 clients each keep one chat request in
flight for a fixed window, every request under a JSON schema (five schemas, one per client
pair, so several grammars share the batch), then the same prompts unconstrained; rounds
alternate and the medians are compared. Every request asks for the same number of tokens (free ones ignore the end-of-sequence token,
and the schemas ask for long answers), so both modes run the same work; output tokens/s
counts what the clients received until the last request of the window ended.
Also the first request's compile + first-mask latency for a schema never seen before."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "Tests", "api"))

SCHEMAS = [
    ("Give me a grocery order as JSON.",
     {"type": "object", "properties": {"order_id": {"type": "string"}, "items": {"type": "array", "items": {
         "type": "object", "properties": {"product": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                                          "price": {"type": "number", "minimum": 0}},
         "required": ["product", "quantity", "price"], "additionalProperties": False}, "minItems": 8}},
      "required": ["order_id", "items"], "additionalProperties": False}),
    ("Describe three employees of a company as JSON.",
     {"type": "object", "properties": {"employees": {"type": "array", "items": {"type": "object", "properties": {
         "name": {"type": "string"}, "email": {"type": "string", "format": "email"}, "role": {"enum": ["engineer", "manager", "designer"]},
         "hired": {"type": "string", "format": "date"}}, "required": ["name", "email", "role", "hired"], "additionalProperties": False},
                                   "minItems": 8}},
      "required": ["employees"], "additionalProperties": False}),
    ("Write a short story outline as JSON.",
     {"type": "object", "properties": {"title": {"type": "string"}, "genre": {"enum": ["fantasy", "mystery", "science fiction"]},
                                       "chapters": {"type": "array", "items": {"type": "object", "properties": {
                                           "title": {"type": "string"}, "summary": {"type": "string"}},
                                           "required": ["title", "summary"], "additionalProperties": False}, "minItems": 8}},
      "required": ["title", "genre", "chapters"], "additionalProperties": False}),
    ("List the planets with facts as JSON.",
     {"type": "object", "properties": {"planets": {"type": "array", "items": {"type": "object", "properties": {
         "name": {"type": "string", "maxLength": 20}, "moons": {"type": "integer", "minimum": 0}, "gas_giant": {"type": "boolean"},
         "fact": {"type": "string"}}, "required": ["name", "moons", "gas_giant", "fact"], "additionalProperties": False},
                                 "minItems": 8}},
      "required": ["planets"], "additionalProperties": False}),
    ("Plan a week of meals as JSON.", {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}, "minItems": 3},
                                       "minProperties": 7}),
]


def run_window(url, model, clients, seconds, constrained, max_tokens):
    import openai
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    stop_at = time.perf_counter() + seconds
    counts = [0] * clients
    done = [0] * clients
    cut = [0] * clients
    failures = []

    def loop(i):
        prompt, schema = SCHEMAS[i // 2 % len(SCHEMAS)]
        k = 0
        while time.perf_counter() < stop_at:
            kw = {"extra_body": {"ignore_eos": True}}
            if constrained:
                kw["response_format"] = {"type": "json_schema", "json_schema": {"name": f"s{i // 2}", "schema": schema}}
            try:
                r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=1, seed=i * 1000 + k,
                                              max_tokens=max_tokens, **kw)
            except Exception as e:  # noqa: BLE001 - a benchmark counts failures
                failures.append(str(e))
                continue
            k += 1
            counts[i] += r.usage.completion_tokens
            done[i] += 1
            cut[i] += r.choices[0].finish_reason == "length"
            if constrained and r.choices[0].finish_reason == "stop":
                json.loads(r.choices[0].message.content)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), sum(done), sum(cut), failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qwen-serve"))
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=45)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=160)
    a = ap.parse_args()
    from conftest import Server
    path = subprocess.run([a.binary, "fetch", "default"], capture_output=True, text=True).stdout.strip()
    os.environ["QWEN_SERVE_BIN"] = a.binary
    import conftest
    conftest.BIN = a.binary
    s = Server(path)
    try:
        import openai
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=600)
        # A never-seen schema: compile, vocabulary trie (first use) and the first masks, against the same request unconstrained.
        msgs = [{"role": "user", "content": "Hi"}]
        t = time.perf_counter()
        c.chat.completions.create(model=s.name, messages=msgs, max_tokens=1, temperature=0)
        free_first = time.perf_counter() - t
        t = time.perf_counter()
        c.chat.completions.create(model=s.name, messages=msgs, max_tokens=1, temperature=0,
                                  response_format={"type": "json_schema", "json_schema": {"name": "cold", "schema": SCHEMAS[0][1]}})
        cold_first = time.perf_counter() - t
        print(f"first token, unconstrained: {free_first * 1000:.0f} ms; first constrained request (vocabulary trie, compile, first mask): {cold_first * 1000:.0f} ms")
        free, cons = [], []
        for r in range(a.rounds):
            for constrained in ((False, True) if r % 2 == 0 else (True, False)):
                tps, n, cut, fails = run_window(s.url, s.name, a.clients, a.seconds, constrained, a.max_tokens)
                (cons if constrained else free).append(tps)
                print(f"round {r + 1} {'json_schema' if constrained else 'free       '}: {tps:6.1f} output tok/s, {n} requests "
                      f"({cut} reached max_tokens), {len(fails)} failed", flush=True)
        mf, mc = statistics.median(free), statistics.median(cons)
        print(f"median output tok/s at concurrency {a.clients}: free {mf:.1f}, json_schema {mc:.1f}, ratio {mc / mf:.2f}")
        metrics = s.request("GET", "/metrics")[2].decode()
        for line in metrics.splitlines():
            if line.startswith("qwen_batch_size_sum") or line.startswith("qwen_batch_size_count"):
                print(line)
    finally:
        s.stop()


if __name__ == "__main__":
    main()
