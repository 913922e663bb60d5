#!/usr/bin/env python3
"""make bench-batch: the Batch API on the default model, against interactive clients in the same run.

Throughput: the same --requests short requests (random --prompt-tokens token prompts to /v1/completions,
--max-tokens tokens with ignore_eos, greedy) sent by --clients concurrent streaming clients, then run as one
batch (from POST /v1/batches to `completed`, output tokens from its output file); the ratio is batch over clients.

Interactive latency under a batch: --interactive clients (128-token prompts, 64 tokens, streamed) with the
engine idle and with a batch of long requests running, alternated --rounds times; mean TTFT and TPOT per run,
medians over the rounds, and their ratio busy over idle.
Writes the tables, with the command line, into BENCHMARKS.md.
"""
import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmarks_md  # noqa: E402
import loadgen  # noqa: E402
from bench_spec import start_qwen  # noqa: E402


def call(port, method, path, body=None, raw=None, headers=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=900) as r:
        return r.read()


def upload(port, lines):
    boundary = "benchbatchboundary"
    payload = "".join(json.dumps(l) + "\n" for l in lines)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n{payload}\r\n--{boundary}--\r\n").encode()
    f = json.loads(call(port, "POST", "/v1/files", raw=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    assert f["status"] == "processed", f
    return f["id"]


def start_batch(port, lines):
    b = json.loads(call(port, "POST", "/v1/batches", {"input_file_id": upload(port, lines), "endpoint": "/v1/completions",
                                                     "completion_window": "24h"}))
    return b["id"]


def wait_batch(port, bid):
    while True:
        b = json.loads(call(port, "GET", f"/v1/batches/{bid}"))
        if b["status"] in ("completed", "failed", "cancelled", "expired"):
            return b
        time.sleep(0.2)


def prompts(n, tokens, seed):
    rng = random.Random(seed)
    return [[rng.randrange(100, 150000) for _ in range(tokens)] for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    loadgen.add_common_arguments(ap)
    ap.set_defaults(prompt_tokens=32, max_tokens=32)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--interactive", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    state = tempfile.mkdtemp(prefix="qwen-bench-state-")
    proc, port = start_qwen(args.binary, args.model, ["--state-dir", state])
    rows = []
    try:
        if not args.skip_throughput:
            # Interactive clients first, then the same requests as one batch.
            r = asyncio.run(loadgen.run_level("127.0.0.1", port, args.clients, args.requests, args.prompt_tokens, args.max_tokens, seed=0))
            clients_tps = r["output_tok_s"]
            lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                      "body": {"prompt": p, "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0}}
                     for i, p in enumerate(prompts(args.requests, args.prompt_tokens, 0))]
            t0 = time.perf_counter()
            b = wait_batch(port, start_batch(port, lines))
            wall = time.perf_counter() - t0
            out = [json.loads(l) for l in call(port, "GET", f"/v1/files/{b['output_file_id']}/content").decode().split("\n") if l.strip()]
            tokens = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in out)
            batch_tps = tokens / wall
            print(f"{args.clients} clients {clients_tps:.1f} tok/s; batch {batch_tps:.1f} tok/s ({len(out)} lines, {wall:.1f} s)", flush=True)
            rows.append(("throughput", clients_tps, batch_tps))
        idle, busy = [], []
        for k in range(args.rounds):
            # Each run its own prompts (seeds), so neither finds the other's in the prefix cache.
            r = asyncio.run(loadgen.run_level("127.0.0.1", port, args.interactive, args.interactive * 3, 128, 64, seed=10 + 2 * k))
            idle.append(r)
            long_lines = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/completions",
                           "body": {"prompt": p, "max_tokens": 256, "ignore_eos": True}} for i, p in enumerate(prompts(400, 64, 100 + k))]
            bid = start_batch(port, long_lines)
            while json.loads(call(port, "GET", f"/v1/batches/{bid}"))["status"] != "in_progress":
                time.sleep(0.1)
            time.sleep(2)  # the batch fills the engine
            r = asyncio.run(loadgen.run_level("127.0.0.1", port, args.interactive, args.interactive * 3, 128, 64, seed=11 + 2 * k))
            done = json.loads(call(port, "GET", f"/v1/batches/{bid}"))["request_counts"]["completed"]
            call(port, "POST", f"/v1/batches/{bid}/cancel")
            wait_batch(port, bid)
            busy.append({**r, "batch_done": done})
            print(f"round {k + 1}: idle ttft {idle[-1]['ttft_mean_s']:.3f} tpot {idle[-1]['tpot_mean_s']:.4f}; "
                  f"under batch ttft {r['ttft_mean_s']:.3f} tpot {r['tpot_mean_s']:.4f} (batch lines done meanwhile: {done})", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    med = lambda rs, k: statistics.median(x[k] for x in rs)  # noqa: E731
    cmd = "python3 " + " ".join(["scripts/bench_batch.py"] + sys.argv[1:])
    lines = ["## Batch API: throughput and interactive latency under a batch", "",
             f"`{cmd}` (`make bench-batch`), {time.strftime('%Y-%m-%d')}, default model and settings, "
             f"{os.cpu_count()} cores. Baselines measured in the same run.", ""]
    if rows:
        _, c, b = rows[0]
        lines += [f"{args.requests} requests ({args.prompt_tokens}-token prompts, {args.max_tokens} tokens) | output tok/s | ratio",
                  "|---|---|---|",
                  f"{args.clients} concurrent streaming clients | {c:.1f} | 1.00",
                  f"one batch (create → completed) | {b:.1f} | **{b / c:.2f}×**", ""]
    lines += [f"{args.interactive} interactive clients (128-token prompts, 64 tokens), {args.rounds} rounds alternated | "
              "TTFT mean (s) | TPOT mean (s) | output tok/s",
              "|---|---|---|---|",
              f"engine idle | {med(idle, 'ttft_mean_s'):.3f} | {med(idle, 'tpot_mean_s'):.4f} | {med(idle, 'output_tok_s'):.1f}",
              f"a batch running | {med(busy, 'ttft_mean_s'):.3f} | {med(busy, 'tpot_mean_s'):.4f} | {med(busy, 'output_tok_s'):.1f}",
              f"ratio | **{med(busy, 'ttft_mean_s') / med(idle, 'ttft_mean_s'):.2f}×** | **{med(busy, 'tpot_mean_s') / med(idle, 'tpot_mean_s'):.2f}×** | "
              f"{med(busy, 'output_tok_s') / med(idle, 'output_tok_s'):.2f}×", "",
              "Per round, busy over idle: TTFT " + ", ".join(f"{b['ttft_mean_s'] / i['ttft_mean_s']:.2f}" for i, b in zip(idle, busy))
              + "; TPOT " + ", ".join(f"{b['tpot_mean_s'] / i['tpot_mean_s']:.2f}" for i, b in zip(idle, busy)) + ".",
              f"Batch lines finished while the interactive clients ran (per round): {', '.join(str(x['batch_done']) for x in busy)}.", ""]
    benchmarks_md.write_section(repo, "Batch API", "\n".join(lines), file=args.write)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
