#!/usr/bin/env python3
"""make bench-serve: qwen-serve under concurrent load over HTTP, like `evalscope perf`
(random 128-token prompts, 128 output tokens with ignore_eos, concurrency 1, 10 and 50) in
each --compute mode (f32, int8), then 200 clients that disconnect at random while /health is
polled. Concurrency 1 of the same mode is the baseline: scaling is reported as a ratio to
it, measured in the same run.
Writes the table, with the command line, into BENCHMARKS.md.
"""
import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402
import benchmarks_md  # noqa: E402


def start_server(binary, model, port, extra):
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", str(port)] + extra,
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        sys.stderr.write(line)
        m = re.search(r"on http://[^:]+:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(m.group(1))
    raise SystemExit("server did not start")


def run_levels(a, compute, storm_clients):
    """One server in `compute` mode: every concurrency level, then (if asked) the disconnect storm."""
    proc, port = start_server(a.binary, a.model, 0, ["--max-running", "64", "--compute", compute])
    host = "127.0.0.1"
    rows, storm = [], None
    try:
        for level in a.levels.split(","):
            c, n = map(int, level.split(":"))
            r = asyncio.run(loadgen.run_level(host, port, c, n, a.prompt_tokens, a.max_tokens, seed=c))
            r["compute"] = compute
            rows.append(r)
            print(r, flush=True)
        if storm_clients:
            health = {"ok": 0, "bad": 0, "max_s": 0.0}
            stop = threading.Event()

            def poll():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        s, _ = loadgen.get(host, port, "/health")
                        health["ok" if s == 200 else "bad"] += 1
                    except OSError:
                        health["bad"] += 1
                    health["max_s"] = max(health["max_s"], time.perf_counter() - t0)
                    time.sleep(0.2)
            t = threading.Thread(target=poll)
            t.start()
            t0 = time.perf_counter()
            asyncio.run(loadgen.disconnect_storm(host, port, storm_clients, a.prompt_tokens, a.max_tokens))
            # The pool must drain back to empty.
            used = None
            for _ in range(300):
                s, body = loadgen.get(host, port, "/metrics")
                m = dict(re.findall(r"^(qwen_kv_blocks_used|qwen_running_sequences|qwen_waiting_requests) (\d+)$", body.decode(), re.M))
                used = {k: int(v) for k, v in m.items()}
                if used.get("qwen_kv_blocks_used") == 0 and used.get("qwen_running_sequences") == 0:
                    break
                time.sleep(0.1)
            stop.set()
            t.join()
            storm = {"compute": compute, "clients": storm_clients, "seconds": time.perf_counter() - t0, "health": health,
                     "after": used, "alive": proc.poll() is None}
            print(storm, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return rows, storm


def engine_rates(a, compute):
    """Decode steps alone (no HTTP, no prefill), 1 and 10 sequences in lockstep, and prompt
    processing, which costs the same per token at any concurrency."""
    engine = {}
    for b in (1, 10):
        out = subprocess.run([a.binary, "bench", "--model", a.model, "--compute", compute, "--prompt-tokens", str(a.prompt_tokens),
                              "--gen-tokens", "64", "--reps", "3", "--batch", str(b)], capture_output=True, text=True, check=True).stdout
        engine[b] = json.loads(out.strip().splitlines()[-1])
    return engine


def main():
    ap = argparse.ArgumentParser()
    loadgen.add_common_arguments(ap)
    ap.add_argument("--levels", default="1:4,10:20,50:100", help="concurrency:requests,...")
    ap.add_argument("--storm", type=int, default=200)
    ap.add_argument("--computes", default="f32,int8", help="the --compute modes to measure, each with its own baseline")
    a = ap.parse_args()
    computes = a.computes.split(",")
    rows, storms, engines = [], [], {}
    for k, compute in enumerate(computes):
        r, storm = run_levels(a, compute, a.storm if k == len(computes) - 1 else 0)
        rows += r
        if storm:
            storms.append(storm)
        engines[compute] = engine_rates(a, compute)

    cmd = (f"make bench-serve  # python3 scripts/bench_serve.py --levels {a.levels} --prompt-tokens {a.prompt_tokens} "
           f"--max-tokens {a.max_tokens} --storm {a.storm} --computes {a.computes}")
    lines = [f"## Concurrent load ({time.strftime('%Y-%m-%d')}, default model, {os.cpu_count()} cores)", "", f"Command: `{cmd}`", "",
             f"Random prompts of {a.prompt_tokens} tokens, {a.max_tokens} output tokens each with ignore_eos, streamed over HTTP "
             "(the `evalscope perf` random workload), one server per `--compute` mode. Baseline: concurrency 1 of the same mode "
             "in the same run.", "",
             "| compute | concurrency | requests | output tok/s | × concurrency 1 | requests/s | TTFT mean s | TTFT p50 s | TTFT p99 s | TPOT mean s | latency mean s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in rows:
        base.setdefault(r["compute"], r["output_tok_s"])
        lines.append(f"| {r['compute']} | {r['concurrency']} | {r['succeeded']}/{r['requests']} | {r['output_tok_s']:.1f} | "
                     f"{r['output_tok_s'] / base[r['compute']]:.2f}× | {r['requests_s']:.3f} | {r['ttft_mean_s']:.2f} | "
                     f"{r['ttft_p50_s']:.2f} | {r['ttft_p99_s']:.2f} | {r['tpot_mean_s']:.3f} | {r['e2e_mean_s']:.1f} |")
    for compute in computes:
        e = engines[compute]
        d1, d10, pp = e[1]["batch_tg_tok_s"], e[10]["batch_tg_tok_s"], e[1]["pp_tok_s"]
        line = (f"`{compute}`: decode steps alone (`qwen-serve bench --compute {compute} --batch`, no HTTP and no prefill): "
                f"1 sequence {d1:.1f} tok/s, 10 in lockstep {d10:.1f} tok/s ({d10 / d1:.2f}×). Prompts run at {pp:.0f} tok/s "
                f"whatever the concurrency: each {a.prompt_tokens}-token prompt costs {a.prompt_tokens / pp:.2f} s that batching "
                "cannot share.")
        # The scaling these engine rates allow: a server with no cost beyond prefill and decode steps.
        ideal1 = a.max_tokens / (a.prompt_tokens / pp + a.max_tokens / d1)
        ideal10 = 10 * a.max_tokens / (10 * a.prompt_tokens / pp + 10 * a.max_tokens / d10)
        c10 = next((r["output_tok_s"] for r in rows if r["concurrency"] == 10 and r["compute"] == compute), None)
        if c10:
            line += (f" With these rates a server with no other costs would reach {ideal1:.1f} tok/s at concurrency 1 and "
                     f"{ideal10:.1f} at 10, a ratio of {ideal10 / ideal1:.2f}× (measured: {c10 / base[compute]:.2f}×).")
        lines += ["", line]
    if len(computes) > 1:
        first, last = computes[0], computes[-1]
        gains = []
        for c in sorted({r["concurrency"] for r in rows}):
            pair = [next((r["output_tok_s"] for r in rows if r["concurrency"] == c and r["compute"] == m), None) for m in (first, last)]
            if None not in pair:
                gains.append(f"{pair[1] / pair[0]:.2f}× at concurrency {c}")
        lines += ["", f"`{last}` against `{first}`, output tokens/s: " + ", ".join(gains) + "."]
    for storm in storms:
        lines += ["", f"Disconnect storm (`{storm['compute']}`): {storm['clients']} clients hanging up at random; server alive: "
                  f"{storm['alive']}; /health answered {storm['health']['ok']} times, failed {storm['health']['bad']}, slowest "
                  f"{storm['health']['max_s']:.3f} s; afterwards {storm['after']}."]
    section = "\n".join(lines) + "\n"
    print(section)
    if a.write:
        benchmarks_md.write_section(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Concurrent load", section, a.write)


if __name__ == "__main__":
    main()
