#!/usr/bin/env python3
"""make bench-adapters: what serving LoRA adapters costs under concurrent load.

The default model is served with four random rank-8 adapters on every projection of every
layer (the heaviest common LoRA setup), and the evalscope-like workload of bench_serve.py
runs at one concurrency three ways: no adapter (the baseline), one adapter for every
request, and the four adapters mixed request by request. The three are interleaved over
several rounds so machine noise hits them alike; medians are reported, with the ratio to
the baseline of the same run. Writes the table into BENCHMARKS.md.
"""
import argparse
import array
import asyncio
import json
import os
import random
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmarks_md  # noqa: E402
import loadgen  # noqa: E402
from bench_serve import start_server  # noqa: E402

# Qwen2.5-Coder-0.5B: hidden 896, 14 heads / 2 KV heads of 64, MLP 4864, 24 layers.
SHAPES = {"self_attn.q_proj": (896, 896), "self_attn.k_proj": (128, 896), "self_attn.v_proj": (128, 896),
          "self_attn.o_proj": (896, 896), "mlp.gate_proj": (4864, 896), "mlp.up_proj": (4864, 896),
          "mlp.down_proj": (896, 4864)}


def write_adapter(d, seed, rank=8, layers=24, alpha=16):
    """A PEFT adapter with random A and B (B is zero after real initialisation; here it is
    not, so the update is computed for real)."""
    os.makedirs(d, exist_ok=True)
    rng = random.Random(seed)
    header, blobs, off = {}, [], 0
    for l in range(layers):
        for module, (out_dim, in_dim) in SHAPES.items():
            for which, shape in (("lora_A", [rank, in_dim]), ("lora_B", [out_dim, rank])):
                n = shape[0] * shape[1]
                data = array.array("f", ((rng.random() - 0.5) * 0.02 for _ in range(n))).tobytes()
                name = f"base_model.model.model.layers.{l}.{module}.{which}.weight"
                header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
                blobs.append(data)
                off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": False,
               "target_modules": [m.split(".")[1] for m in SHAPES]}, open(os.path.join(d, "adapter_config.json"), "w"))


def main():
    ap = argparse.ArgumentParser()
    loadgen.add_common_arguments(ap)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--requests", type=int, default=10, help="per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compute", default="f32", help="the server's --compute mode")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="qwen-bench-adapters-")
    names = [f"lora{i}" for i in range(4)]
    for i, n in enumerate(names):
        write_adapter(os.path.join(tmp, n), seed=i)
    extra = ["--max-running", "64", "--compute", a.compute]
    for n in names:
        extra += ["--adapter", f"{n}={os.path.join(tmp, n)}"]
    proc, port = start_server(a.binary, a.model, 0, extra)
    configs = [("no adapter", None), ("one adapter for all", [names[0]]), ("4 adapters mixed", names)]
    results = {c[0]: [] for c in configs}
    try:
        for rnd in range(a.rounds):
            for label, models in configs:
                r = asyncio.run(loadgen.run_level("127.0.0.1", port, a.concurrency, a.requests, a.prompt_tokens, a.max_tokens,
                                                  seed=100 * rnd + 1, models=models))
                assert r["succeeded"] == r["requests"], r
                results[label].append(r)
                print(label, r, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    def med(label, key):
        return statistics.median(r[key] for r in results[label])
    base = med("no adapter", "output_tok_s")
    cmd = (f"make bench-adapters  # python3 scripts/bench_adapters.py --concurrency {a.concurrency} --requests {a.requests} "
           f"--rounds {a.rounds} --prompt-tokens {a.prompt_tokens} --max-tokens {a.max_tokens} --compute {a.compute}")
    lines = [f"## LoRA adapters under load, {a.compute} compute ({time.strftime('%Y-%m-%d')}, default model, {os.cpu_count()} cores)", "",
             f"Command: `{cmd}`", "",
             f"Concurrency {a.concurrency}, random {a.prompt_tokens}-token prompts, {a.max_tokens} output tokens (ignore_eos), streamed. "
             "Adapters: rank 8 on all seven projections of all 24 layers. "
             f"Medians of {a.rounds} interleaved rounds of {a.requests} requests; baseline: no adapter, same run.", "",
             "| requests use | output tok/s | × no adapter | TTFT mean s | TPOT mean s |", "|---|---|---|---|---|"]
    for label, _ in configs:
        t = med(label, "output_tok_s")
        lines.append(f"| {label} | {t:.1f} | {t / base:.2f}× | {med(label, 'ttft_mean_s'):.2f} | {med(label, 'tpot_mean_s'):.3f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if a.write:
        benchmarks_md.write_section(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), f"LoRA adapters under load, {a.compute} compute", section, a.write)


if __name__ == "__main__":
    main()
