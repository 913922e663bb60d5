#!/usr/bin/env python3
"""Two builds of qwen-serve side by side (make bench-builds OLD=path/to/old/qwen-serve): did a change
cost serving speed? Single-stream prompt and generation speed (`qwen-serve bench`) and the
concurrency-10 server workload of bench-serve, in both compute modes, the builds alternated
round by round so machine noise falls on both alike; medians, and new/old ratios."""
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402
import benchmarks_md  # noqa: E402
from bench_serve import start_server  # noqa: E402


def single(binary, model, compute, a):
    out = subprocess.run([binary, "bench", "--model", model, "--compute", compute, "--prompt-tokens", str(a.prompt_tokens),
                          "--gen-tokens", "64", "--reps", "3"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["pp_tok_s"], r["tg_tok_s"]


def served(binary, model, compute, a):
    p, port = start_server(binary, model, 0, ["--compute", compute, "--max-running", "64"])
    try:
        r = asyncio.run(loadgen.run_level("127.0.0.1", port, 10, a.requests, a.prompt_tokens, a.max_tokens))
        assert r["succeeded"] == a.requests, r
        return r["output_tok_s"]
    finally:
        p.terminate()
        p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    loadgen.add_common_arguments(ap)
    ap.add_argument("--old", required=True, help="the baseline build's binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--computes", default="f32,int8")
    ap.add_argument("--title", default="", help="what the two builds are (the section's heading; one section per title and day)")
    a = ap.parse_args()
    model = subprocess.run([a.binary, "fetch", a.model], check=True, capture_output=True, text=True).stdout.strip()
    builds = {"old": a.old, "new": a.binary}
    figures = {}  # (compute, measure, build) -> [values]
    for rnd in range(a.rounds):
        for compute in a.computes.split(","):
            order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
            for b in order:
                pp, tg = single(builds[b], model, compute, a)
                figures.setdefault((compute, "prompt tok/s (128)", b), []).append(pp)
                figures.setdefault((compute, "generation tok/s", b), []).append(tg)
            for b in order:
                figures.setdefault((compute, "concurrency 10 output tok/s", b), []).append(served(builds[b], model, compute, a))
            print(f"round {rnd + 1}: " + json.dumps({f"{k[0]} {k[1]} {k[2]}": v[-1] for k, v in figures.items()}), file=sys.stderr)
    rows = []
    for compute in a.computes.split(","):
        for measure in ["prompt tok/s (128)", "generation tok/s", "concurrency 10 output tok/s"]:
            old = statistics.median(figures[(compute, measure, "old")])
            new = statistics.median(figures[(compute, measure, "new")])
            rows.append(f"| {compute} | {measure} | {old:.1f} | {new:.1f} | {new / old:.2f}× |")
    cmd = f"python3 scripts/bench_builds.py --old {a.old} --binary {a.binary} --rounds {a.rounds} --requests {a.requests}"
    from datetime import date
    text = "\n".join([
        f"## Build against build{': ' + a.title if a.title else ''} ({date.today()}, default model, 2 cores)", "",
        f"Command: `{cmd}`", "",
        f"Default model; builds alternated each round; medians of {a.rounds} rounds (single stream: each a median of 3"
        f" runs of {a.prompt_tokens} prompt + 64 generated tokens; concurrency 10: {a.requests} requests of"
        f" {a.prompt_tokens} prompt / {a.max_tokens} output tokens, streamed).", "",
        "| compute | measure | old | new | new/old |", "|---|---|---|---|---|", *rows, ""])
    print(text)
    if a.write:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # One section per title and day: earlier comparisons stay as they were.
        benchmarks_md.write_section(repo, f"Build against build{': ' + a.title if a.title else ''} ({date.today()}", text, a.write)


if __name__ == "__main__":
    main()
