#!/usr/bin/env python3
"""make bench-compare: qwen-serve side by side with llama.cpp on the same GGUF and threads.

llama.cpp's `llama-bench` and `llama-server` are built from PyPI's llama-cpp-python source
package (its vendored llama.cpp) into a cache directory on first use: benchmark-only, not part
of the product and not in `make test`. cmake and ninja come from PyPI into the same cache.

Rows, each program run in turn (llama.cpp first in odd rounds, qwen-serve first in even):
- llama-bench vs `qwen-serve bench`: prompt processing at 128 and 2,048 tokens, generation
  after a short prompt and after 2,048 tokens of context;
- llama-server (--parallel 50 --kv-unified --ctx-size 16384) vs `qwen-serve serve` (default
  settings) under the evalscope-perf workload (random 128-token prompts, 128 output tokens
  with ignore_eos, streamed) at concurrency 1, 10 and 50: output tokens/s and failures.
Prints each figure and its ratio and writes the table into BENCHMARKS.md.
"""
import argparse
import asyncio
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmarks_md  # noqa: E402
import loadgen  # noqa: E402

LLAMA_CPP_PYTHON = "0.3.36"


def cache_dir():
    base = os.environ.get("QWEN_SERVE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qwen-serve")
    return os.path.join(base, "llama.cpp", LLAMA_CPP_PYTHON)


def build_llama_cpp(threads):
    """llama-bench and llama-server in the cache (built once)."""
    d = cache_dir()
    bindir = os.path.join(d, "bin")
    if all(os.path.exists(os.path.join(bindir, b)) for b in ("llama-bench", "llama-server")):
        return bindir
    os.makedirs(d, exist_ok=True)
    venv = os.path.join(d, "venv")
    if not os.path.exists(os.path.join(venv, "bin", "cmake")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "cmake", "ninja"], check=True)
    src = os.path.join(d, "src")
    tarballs = glob.glob(os.path.join(src, "llama_cpp_python-*.tar.gz"))
    if not tarballs:
        subprocess.run([os.path.join(venv, "bin", "pip"), "download", "-q", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--no-binary",
                        "llama-cpp-python", "--no-deps", "-d", src], check=True)
        tarballs = glob.glob(os.path.join(src, "llama_cpp_python-*.tar.gz"))
    top = os.path.join(src, f"llama_cpp_python-{LLAMA_CPP_PYTHON}")
    if not os.path.exists(top):
        with tarfile.open(tarballs[0]) as t:
            t.extractall(src, filter="data")
    llama = os.path.join(top, "vendor", "llama.cpp")
    build = os.path.join(d, "build")
    env = {**os.environ, "PATH": os.path.join(venv, "bin") + os.pathsep + os.environ["PATH"]}
    subprocess.run(["cmake", "-S", llama, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                    "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF"],
                   check=True, env=env)
    subprocess.run(["cmake", "--build", build, "--target", "llama-bench", "llama-server", "-j", str(threads)], check=True, env=env)
    os.makedirs(bindir + ".tmp", exist_ok=True)
    for b in ("llama-bench", "llama-server"):
        shutil.copy2(os.path.join(build, "bin", b), os.path.join(bindir + ".tmp", b))
    os.replace(bindir + ".tmp", bindir)
    return bindir


def llama_bench(bindir, model, threads, args, reps):
    out = subprocess.run([os.path.join(bindir, "llama-bench"), "-m", model, "-t", str(threads), "-r", str(reps), "-o", "json", *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["avg_ts"]


QWEN_BENCH_FLAGS = []


def qwen_bench(binary, model, prompt, gen, reps):
    # `bench` takes explicit modes: int8 is what `--compute auto` runs for this GGUF on x86 CPUs with VNNI or AVX2.
    out = subprocess.run([binary, "bench", "--model", model, "--prompt-tokens", str(prompt), "--gen-tokens", str(gen), "--reps", str(reps),
                          "--compute", "int8", *QWEN_BENCH_FLAGS], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def wait_health(port, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit("the server exited while starting")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not become healthy")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_llama_server(bindir, model, threads):
    port = free_port()
    p = subprocess.Popen([os.path.join(bindir, "llama-server"), "-m", model, "-t", str(threads), "--parallel", "50", "--kv-unified",
                          "--ctx-size", "16384", "--port", str(port), "--host", "127.0.0.1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_health(port, p)
    return p, port


def start_qwen_server(binary, model, kv_dtype, extra=()):
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--kv-cache-dtype", kv_dtype, *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        m = re.search(r"on http://[^:]+:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            port = int(m.group(1))
            wait_health(port, p)
            return p, port
    raise SystemExit("qwen-serve did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qwen-serve"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--levels", default="1:4,10:20,50:100", help="concurrency:requests,...")
    ap.add_argument("--contexts", default="2048,8192", help="long-context rows: prompt processing and generation after this many tokens")
    ap.add_argument("--kv-cache-dtype", default="f32", help="qwen-serve's KV cache (bench and serve)")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--write", default="BENCHMARKS.md")
    a = ap.parse_args()
    QWEN_BENCH_FLAGS[:] = ["--kv-cache-dtype", a.kv_cache_dtype]
    model = a.model
    if model == "default":
        model = subprocess.run([a.binary, "fetch", "default"], capture_output=True, text=True, check=True).stdout.strip()
    bindir = build_llama_cpp(a.threads)
    rows = []

    def row(name, llama, qwen):
        rows.append((name, llama, qwen))
        print(f"{name}: llama.cpp {llama:.1f}, qwen-serve {qwen:.1f}, ratio {qwen / llama:.2f}", flush=True)

    # llama-bench and qwen-serve bench, alternating which goes first.
    short_l = llama_bench(bindir, model, a.threads, ["-p", "128", "-n", "0"], a.reps)
    short_q = qwen_bench(a.binary, model, 128, 64, a.reps)
    tg_l = llama_bench(bindir, model, a.threads, ["-p", "0", "-n", "64"], a.reps)
    row("prompt tok/s, 128 tokens", short_l, short_q["pp_tok_s"])
    row("generation tok/s, short context", tg_l, short_q["tg_tok_s"])
    for k, n in enumerate(int(x) for x in a.contexts.split(",") if x):
        reps = max(1, a.reps - 1 - k)
        if k % 2 == 0:
            long_q = qwen_bench(a.binary, model, n, 64, reps)
        long_pp_l = llama_bench(bindir, model, a.threads, ["-p", str(n), "-n", "0"], reps)
        long_tg_l = llama_bench(bindir, model, a.threads, ["-p", "0", "-n", "64", "-d", str(n)], reps)
        if k % 2 == 1:
            long_q = qwen_bench(a.binary, model, n, 64, reps)
        row(f"prompt tok/s, {n:,} tokens", long_pp_l, long_q["pp_tok_s"])
        row(f"generation tok/s at {n:,} tokens of context", long_tg_l, long_q["tg_tok_s"])

    serving = []
    if not a.skip_server:
        for k, level in enumerate(a.levels.split(",")):
            c, n = map(int, level.split(":"))
            results = {}
            # qwen-serve as it starts (speculation auto) and with --speculative off: greedy answers to
            # random prompts often repeat, which prompt-lookup drafting turns into speed.
            order = ("llama", "qwen", "qwen-off")
            for who in (order if k % 2 == 0 else order[::-1]):
                if who == "llama":
                    p, port = start_llama_server(bindir, model, a.threads)
                else:
                    p, port = start_qwen_server(a.binary, model, a.kv_cache_dtype, ["--speculative", "off"] if who == "qwen-off" else [])
                try:
                    results[who] = asyncio.run(loadgen.run_level("127.0.0.1", port, c, n, 128, 128, seed=c))
                finally:
                    p.terminate()
                    p.wait(timeout=60)
            serving.append((c, n, results["llama"], results["qwen"], results["qwen-off"]))
            print(f"serving c={c}: llama.cpp {results['llama']['output_tok_s']:.1f} ({n - results['llama']['succeeded']} failed), "
                  f"qwen-serve {results['qwen']['output_tok_s']:.1f} ({n - results['qwen']['succeeded']} failed), "
                  f"with --speculative off {results['qwen-off']['output_tok_s']:.1f}", flush=True)

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"## Side by side with llama.cpp ({time.strftime('%Y-%m-%d')}, {cpu}, {a.threads} threads)", "",
             f"Command: `make bench-compare  # python3 scripts/bench_compare.py --threads {a.threads} --reps {a.reps} --levels {a.levels} "
             f"--contexts {a.contexts} --kv-cache-dtype {a.kv_cache_dtype}`", "",
             f"llama.cpp from llama-cpp-python {LLAMA_CPP_PYTHON}'s vendored source, built with GGML_NATIVE; both on the default GGUF "
             f"(Qwen2.5-Coder-0.5B-Instruct Q4_K_M); qwen-serve in int8 compute (what `auto` picks here) with a {a.kv_cache_dtype} KV cache. "
             "llama-bench's averages (generation after -d N tokens of context) against `qwen-serve bench`'s medians; "
             "servers: random 128-token prompts, 128 output tokens (ignore_eos), streamed, run one after the other; qwen-serve as it "
             "starts (speculative decoding `auto`) and with `--speculative off`, llama-server with its defaults (no speculation).", "",
             "| | llama.cpp | qwen-serve | ratio |", "|---|---|---|---|"]
    for name, l, q in rows:
        lines.append(f"| {name} | {l:.1f} | {q:.1f} | {q / l:.2f}× |")
    for c, n, l, q, off in serving:
        for label, r in (("", q), (", qwen-serve `--speculative off`", off)):
            lines.append(f"| serving output tok/s, concurrency {c} ({n} requests){label} | {l['output_tok_s']:.1f} ({n - l['succeeded']} failed) | "
                         f"{r['output_tok_s']:.1f} ({n - r['succeeded']} failed) | {r['output_tok_s'] / l['output_tok_s']:.2f}× |")
    section = "\n".join(lines) + "\n"
    print(section)
    if a.write:
        benchmarks_md.write_section(REPO, "Side by side with llama.cpp", section, a.write)


if __name__ == "__main__":
    main()
