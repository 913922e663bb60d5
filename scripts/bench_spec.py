#!/usr/bin/env python3
"""make bench-spec: speculative decoding, single stream and under load, with llama-server beside it.

Single stream, greedy, on the default model: the code edits of spec_workload.py (the answer repeats
most of the prompt) and free chat (nothing to copy), one request at a time; output tok/s counts the
whole request (prompt included), summed over the prompts, median of the rounds. Servers, one after
the other in this invocation: qwen-serve with --speculative off and with the default (auto);
llama-server with no speculation and with each --spec-type asked for (its n-gram kinds need no draft
model). Then qwen-serve under the evalscope-style random load (128-token prompts, 128 tokens, ignore_eos)
at the concurrency levels asked for, off against auto. Baselines are measured in the same run: qwen-serve
off for the ratios, llama-server's best for the comparison.
Writes the tables, with the command line, into BENCHMARKS.md.
"""
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmarks_md  # noqa: E402
import bench_compare  # noqa: E402
import loadgen  # noqa: E402
import spec_workload  # noqa: E402


def post(port, body, timeout=900):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def single_stream(port, messages, max_tokens, extra):
    """(output tokens, seconds, texts, drafted, kept) over the prompts, one request at a time."""
    tokens, secs, texts, drafted, kept = 0, 0.0, [], 0, 0
    for m in messages:
        body = {"messages": m, "max_tokens": max_tokens, "temperature": 0, "top_p": 1, "seed": 0, "repetition_penalty": 1.0, **extra}
        t0 = time.perf_counter()
        r = post(port, body)
        secs += time.perf_counter() - t0
        tokens += r["usage"]["completion_tokens"]
        texts.append(r["choices"][0]["message"]["content"])
        d = r["usage"].get("completion_tokens_details") or {}
        kept += d.get("accepted_prediction_tokens") or 0
        drafted += (d.get("accepted_prediction_tokens") or 0) + (d.get("rejected_prediction_tokens") or 0)
    return tokens, secs, texts, drafted, kept


def start_qwen(binary, model, extra):
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    import re
    import threading
    for line in p.stderr:
        m = re.search(r"on http://[^:]+:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            port = int(m.group(1))
            bench_compare.wait_health(port, p)
            return p, port
    raise SystemExit("qwen-serve did not start")


def start_llama(bindir, model, threads, spec):
    port = bench_compare.free_port()
    args = [os.path.join(bindir, "llama-server"), "-m", model, "-t", str(threads), "--ctx-size", "8192", "--port", str(port),
            "--host", "127.0.0.1", "--parallel", "1"]
    if spec != "none":
        args += ["--spec-type", spec]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench_compare.wait_health(port, p)
    return p, port


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=".build/release/qwen-serve")
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=700)
    ap.add_argument("--llama-spec", default="none,ngram-simple,ngram-mod", help="llama-server --spec-type values ('' for none)")
    ap.add_argument("--levels", default="10:20,50:100", help="concurrency:requests for the load rows ('' for none)")
    ap.add_argument("--load-rounds", type=int, default=3)
    ap.add_argument("--single", type=int, default=1, help="0: the load rows only")
    ap.add_argument("--draft", default="", help="also qwen-serve with this --draft-model (`default`: the model drafting for itself)")
    ap.add_argument("--write", default="BENCHMARKS.md")
    a = ap.parse_args()
    model = a.model
    if model == "default":
        model = subprocess.run([a.binary, "fetch", "default"], capture_output=True, text=True, check=True).stdout.strip()
    bindir = bench_compare.build_llama_cpp(a.threads) if a.llama_spec else None

    servers = [("qwen-serve --speculative off", "qwen", ["--speculative", "off"]), ("qwen-serve (auto, the default)", "qwen", [])]
    draft_name = None
    if a.draft:
        draft = model if a.draft == "default" else a.draft
        draft_name = f"qwen-serve --draft-model {os.path.basename(draft)} --speculative draft"
        servers.append((draft_name, "qwen", ["--draft-model", draft, "--speculative", "draft"]))
    servers += [(f"llama-server --spec-type {s}" if s != "none" else "llama-server", "llama", s) for s in a.llama_spec.split(",") if s]
    if not a.single:
        servers = []
    results = {}
    reference_texts = None
    for name, kind, arg in servers:
        proc, port = start_qwen(a.binary, model, arg) if kind == "qwen" else start_llama(bindir, model, a.threads, arg)
        try:
            post(port, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})  # warm-up
            rows = {"edit": [], "chat": []}
            for rnd in range(a.rounds):
                for kind_name, msgs in (("edit", spec_workload.edit_messages(f"round {rnd}")),
                                        ("chat", spec_workload.chat_messages(f"round {rnd}"))):
                    tokens, secs, texts, drafted, kept = single_stream(port, msgs, a.max_tokens, {})
                    rows[kind_name].append((tokens / secs, tokens, drafted, kept, texts))
                    print(name, kind_name, rnd, f"{tokens / secs:.1f} tok/s", tokens, f"drafts {kept}/{drafted}", flush=True)
            results[name] = rows
            if kind == "qwen" and reference_texts is None:
                reference_texts = [r[4] for r in rows["edit"]] + [r[4] for r in rows["chat"]]
            elif kind == "qwen":
                same = reference_texts == [r[4] for r in rows["edit"]] + [r[4] for r in rows["chat"]]
                results[name + " same"] = same
                print("same greedy text as --speculative off:", same, flush=True)
        finally:
            proc.terminate()
            proc.wait()

    # Under load: both servers up at once, the levels alternated between them round by round
    # (off first, then auto first), so the machine's drift falls on both alike; medians.
    load = {}
    if a.levels:
        procs = {name: start_qwen(a.binary, model, ["--max-running", "64", *extra])
                 for name, extra in (("off", ["--speculative", "off"]), ("auto", []))}
        try:
            for rnd in range(a.load_rounds):
                for level in a.levels.split(","):
                    c, n = map(int, level.split(":"))
                    for name in (("off", "auto") if rnd % 2 == 0 else ("auto", "off")):
                        r = asyncio.run(loadgen.run_level("127.0.0.1", procs[name][1], c, n, 128, 128, seed=c * 100 + rnd))
                        load.setdefault((name, c), []).append(r)
                        print(name, rnd, c, f"{r['output_tok_s']:.1f} tok/s", f"{r['succeeded']}/{r['requests']}", flush=True)
        finally:
            for p, _ in procs.values():
                p.terminate()
                p.wait()

    def med(name, kind):
        return statistics.median(r[0] for r in results[name][kind])

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    cmd = "make bench-spec  # python3 scripts/bench_spec.py " + " ".join(sys.argv[1:])
    if servers:
        base = servers[0][0]
        llama_names = [s[0] for s in servers if s[1] == "llama"]
        best_llama = max(llama_names, key=lambda n: med(n, "edit")) if llama_names else None
        out = [f"## Speculative decoding, single stream (bench-spec, {time.strftime('%Y-%m-%d')}, {cpu}, {a.threads} threads)", "",
               f"Command: `{cmd}`", "",
               f"Default model ({os.path.basename(model)}), greedy, one request at a time, up to {a.max_tokens} tokens. Code edits: "
               f"{len(spec_workload.EDITS)} requests whose answer repeats most of the prompt (scripts/spec_workload.py); free chat: "
               f"{len(spec_workload.CHATS)} with nothing to copy. Output tok/s over each set's whole requests (prompt time included), "
               f"median of {a.rounds} rounds (each round's prompts start with a new nonce, so no server reuses a cached prefix). "
               "Drafts kept: tokens of drafts the model kept, of all drafted (last round). Servers run one after the other.", "",
               "| server | code edits tok/s | × qwen-serve off | free chat tok/s | × qwen-serve off | drafts kept (edits) |",
               "|---|---|---|---|---|---|"]
        for name, _, _ in servers:
            e, c = med(name, "edit"), med(name, "chat")
            d = results[name]["edit"][-1]
            drafts = f"{d[3]} of {d[2]}" if d[2] else "—"
            out.append(f"| {name} | {e:.1f} | {e / med(base, 'edit'):.2f}× | {c:.1f} | {c / med(base, 'chat'):.2f}× | {drafts} |")
        out.append("")
        if best_llama and "llama-server" in results:
            auto = servers[1][0]
            out.append(f"qwen-serve (auto) against the best llama-server ({best_llama}) on the code edits: "
                       f"{med(auto, 'edit') / med(best_llama, 'edit'):.2f}×; free chat against plain llama-server: "
                       f"{med(auto, 'chat') / med('llama-server', 'chat'):.2f}×.")
        out.append(f"Greedy text with speculation on equal to off, every request: {results.get(servers[1][0] + ' same')}.")
        if draft_name:
            out.append(f"Greedy text with the draft model equal to off, every request: {results.get(draft_name + ' same')}.")
        section = "\n".join(out) + "\n"
        print(section)
        # Without llama-server's rows this run is not the comparison table: a draft-model run goes to its own section.
        if a.write and llama_names:
            benchmarks_md.write_section(repo, "Speculative decoding, single stream", section, file=a.write)
        elif a.write and draft_name:
            title = "Speculative decoding with a draft model"
            benchmarks_md.write_section(repo, title, section.replace("## Speculative decoding, single stream", "## " + title, 1),
                                        file=a.write)
    if load:
        out = [f"## Speculative decoding under load (bench-spec, {time.strftime('%Y-%m-%d')}, {cpu}, {a.threads} threads)", "",
               f"Command: `{cmd}`", "",
               "evalscope perf's random workload (128-token prompts, 128 output tokens, ignore_eos, streamed) on the default model: "
               f"qwen-serve --speculative off against auto (the default), both servers up, the two alternated round by round; "
               f"medians of {a.load_rounds} rounds.", "",
               "| concurrency | requests each round | off output tok/s | auto output tok/s | auto ÷ off | failed |", "|---|---|---|---|---|---|"]
        for c in sorted({k[1] for k in load}):
            off = statistics.median(r["output_tok_s"] for r in load[("off", c)])
            on = statistics.median(r["output_tok_s"] for r in load[("auto", c)])
            failed = sum(r["requests"] - r["succeeded"] for k in (("off", c), ("auto", c)) for r in load[k])
            out.append(f"| {c} | {load[('off', c)][0]['requests']} | {off:.1f} | {on:.1f} | {on / off:.2f}× | {failed} |")
        section = "\n".join(out) + "\n"
        print(section)
        if a.write:
            benchmarks_md.write_section(repo, "Speculative decoding under load", section, file=a.write)


if __name__ == "__main__":
    main()
