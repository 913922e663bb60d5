#!/usr/bin/env python3
"""make bench-levels: single-stream speed at every kernel level this CPU runs (QWEN_CPU_LEVEL),
in one invocation, written as the table that opens BENCHMARKS.md.

Rows per level: the default GGUF in its default mode (int8) and with `--compute f32` (prompt of
128 tokens, generation after it and after a 2,048-token prompt), and a random checkpoint of
Qwen3-0.6B's exact shape in bf16 (f32 products; weights read per token against the machine's
measured read bandwidth) and with `--quantize q8_0` (int8). Medians of --reps runs each; the
f32/int8 ratio is taken within the level, in the same invocation. Where `make bench-compare` has
built llama.cpp into the cache, llama-bench runs the same rows in the same invocation (the bf16
model as the Q8_0 GGUF `qwen-serve quantize` writes of it), at its own best kernels.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmarks_md  # noqa: E402
from bench import random_qwen3  # noqa: E402
import bench_compare  # noqa: E402


def run(binary, level, model, pp, tg, reps, extra=()):
    env = dict(os.environ, QWEN_CPU_LEVEL=level)
    out = subprocess.run([binary, "bench", "--model", model, "--prompt-tokens", str(pp), "--gen-tokens", str(tg),
                          "--reps", str(reps), *extra], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=".build/release/qwen-serve")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--levels", help="comma-separated levels (default: every level this CPU runs)")
    ap.add_argument("--write", default="BENCHMARKS.md")
    a = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default = subprocess.run([a.binary, "fetch", "default"], check=True, capture_output=True, text=True).stdout.strip()
    qwen3 = random_qwen3(repo)
    levels = a.levels.split(",") if a.levels else subprocess.run(
        [a.binary, "cpu", "--levels"], check=True, capture_output=True, text=True).stdout.split()
    rows = []
    bindir = os.path.join(bench_compare.cache_dir(), "bin")
    llama = None
    if os.path.exists(os.path.join(bindir, "llama-bench")):
        q8 = os.path.join(os.path.dirname(qwen3), "qwen3-0.6b-random-q8_0.gguf")
        if not os.path.exists(q8):
            subprocess.run([a.binary, "quantize", "--model", qwen3, "--type", "q8_0", "--output", q8], check=True, capture_output=True)
        lb = lambda model, args: bench_compare.llama_bench(bindir, model, 2, args, a.reps)  # noqa: E731
        llama = {"pp": lb(default, ["-p", "128", "-n", "0"]), "tg": lb(default, ["-p", "0", "-n", "64"]),
                 "tg_2k": lb(default, ["-p", "0", "-n", "32", "-d", "2048"]),
                 "q8_pp": lb(q8, ["-p", "128", "-n", "0"]), "q8_tg": lb(q8, ["-p", "0", "-n", "32"])}
        print("llama.cpp", json.dumps(llama), flush=True)
    for level in levels:
        # The portable level's plain-C kernels take minutes over a 2k prompt: short rows, one run each.
        slow = level == "portable"
        gen, reps = (16, 1) if slow else (64, a.reps)
        r = {}
        r["int8"] = run(a.binary, level, default, 128, gen, reps, ["--compute", "int8"])
        r["int8_2k"] = None if slow else run(a.binary, level, default, 2048, 32, reps, ["--compute", "int8"])
        r["f32"] = run(a.binary, level, default, 128, gen, reps, ["--compute", "f32"])
        r["f32_2k"] = None if slow else run(a.binary, level, default, 2048, 32, reps, ["--compute", "f32"])
        r["bf16"] = run(a.binary, level, qwen3, 128, min(gen, 32), reps, ["--compute", "f32", "--bandwidth"])
        # `bench` takes an explicit mode; int8 is what `serve` picks (auto) for the quantized weights.
        r["q8"] = run(a.binary, level, qwen3, 128, min(gen, 32), reps, ["--quantize", "q8_0", "--compute", "int8"])
        rows.append((level, r))
        print(level, json.dumps(r), flush=True)

    cmd = f"make bench-levels  # python3 scripts/bench_levels.py --binary {a.binary} --reps {a.reps}"
    lines = [f"## At a glance: every kernel level of this CPU ({time.strftime('%Y-%m-%d')}, {cpu_name()}, "
             f"{os.cpu_count()} cores)", "",
             f"Command: `{cmd}`", "",
             "Single stream, tok/s, medians of the runs; each level capped with `QWEN_CPU_LEVEL` in the same invocation. "
             "Default model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (int8 is its default mode where the CPU has AVX2). "
             "bf16: a random checkpoint of Qwen3-0.6B's exact shape; \"share of read bandwidth\" is weights read per token × "
             "tok/s against what `bench --bandwidth` reads on this machine. The portable level (plain C, for CPUs without "
             "AVX2) runs short rows once (—: not measured; its 2k rows take minutes).", "",
             "| level | default model int8: prompt 128 / gen / gen at 2k | `--compute f32`: prompt 128 / gen / gen at 2k "
             "| f32 gen ÷ int8 gen | bf16 Qwen3-0.6B: prompt / gen / share of read bandwidth | same, `--quantize q8_0`: prompt / gen |",
             "|---|---|---|---|---|---|"]
    for level, r in rows:
        b = r["bf16"]
        share = b["achieved_gb_s"] / b["read_gb_s"] if b.get("read_gb_s") else float("nan")
        long = lambda k: f"{r[k]['tg_tok_s']:.1f}" if r[k] else "—"  # noqa: E731
        lines.append(
            f"| {level} | {r['int8']['pp_tok_s']:.1f} / {r['int8']['tg_tok_s']:.1f} / {long('int8_2k')} "
            f"| {r['f32']['pp_tok_s']:.1f} / {r['f32']['tg_tok_s']:.1f} / {long('f32_2k')} "
            f"| {r['f32']['tg_tok_s'] / r['int8']['tg_tok_s']:.2f}× "
            f"| {b['pp_tok_s']:.1f} / {b['tg_tok_s']:.1f} / {share:.0%} ({b['achieved_gb_s']:.1f} of {b.get('read_gb_s', float('nan')):.1f} GB/s) "
            f"| {r['q8']['pp_tok_s']:.1f} / {r['q8']['tg_tok_s']:.1f} |")
    if llama:
        lines.append(f"| llama.cpp (llama-bench, its best kernels) | {llama['pp']:.1f} / {llama['tg']:.1f} / {llama['tg_2k']:.1f} | | "
                     f"| | {llama['q8_pp']:.1f} / {llama['q8_tg']:.1f} (the same weights as a Q8_0 GGUF) |")
    lines += ["", f"int8 kernels per level: " + ", ".join(f"{lv} → {r['int8']['int8_kernel']}" for lv, r in rows) +
              f". OpenBLAS: {rows[0][1]['int8']['blas_core']} at the best level, {rows[0][1]['int8']['blas_threads']} threads.",
              "", "The sections below are the project's dated measurements, kept as they were taken (a lab notebook; "
              "each names its command, machine and baseline)."]
    section = "\n".join(lines) + "\n"
    print(section)
    if a.write:
        benchmarks_md.write_section(repo, "At a glance", section, a.write, first=True)


if __name__ == "__main__":
    main()
