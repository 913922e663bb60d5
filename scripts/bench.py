#!/usr/bin/env python3
"""make bench: prompt-processing and generation speed of qwen-serve, with a baseline
(Hugging Face transformers on PyTorch, same weights in f32, same machine, same run).

Models: the default GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) and a random checkpoint with
the exact Qwen3-0.6B configuration (bf16 safetensors, made once into the cache).
Prints a table and writes it, with the command line, into BENCHMARKS.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmarks_md  # noqa: E402

QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
    "tie_word_embeddings": True, "attention_bias": False, "hidden_act": "silu", "torch_dtype": "bfloat16",
    "eos_token_id": 151645,
}


def cache_dir():
    return os.environ.get("QWEN_SERVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qwen-serve")


def write_bf16_safetensors(path, tensors):
    """Writes float32 numpy arrays as a BF16 safetensors file (truncating rounding is fine for random weights)."""
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def random_qwen3(repo):
    d = os.path.join(cache_dir(), "bench", "qwen3-0.6b-random")
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return d
    os.makedirs(d, exist_ok=True)
    c = QWEN3_06B
    rng = np.random.default_rng(0)
    h, i, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    t = {"model.embed_tokens.weight": rng.standard_normal((c["vocab_size"], h), dtype=np.float32) * 0.02,
         "model.norm.weight": np.ones(h, np.float32)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        for name, shape in [("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, q)), ("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)),
                            ("mlp.down_proj", (h, i))]:
            t[p + name + ".weight"] = rng.standard_normal(shape, dtype=np.float32) * 0.02
        for name, n in [("input_layernorm", h), ("post_attention_layernorm", h), ("self_attn.q_norm", hd),
                        ("self_attn.k_norm", hd)]:
            t[p + name + ".weight"] = np.ones(n, np.float32)
    write_bf16_safetensors(os.path.join(d, "model.safetensors"), t)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        with open(os.path.join(repo, "Tests", "Fixtures", "tokenizer", name)) as src, open(os.path.join(d, name), "w") as dst:
            dst.write(src.read())
    return d


def ours(binary, model, pp, tg, reps, extra=()):
    out = subprocess.run([binary, "bench", "--model", model, "--prompt-tokens", str(pp), "--gen-tokens", str(tg),
                          "--reps", str(reps), *extra], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def baseline(model, pp, tg, reps):
    """transformers, f32, 2 threads, the same random-token workload."""
    import resource
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    if model.endswith(".gguf"):
        d, f = os.path.split(model)
        m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    else:
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    m.eval()
    rng = np.random.default_rng(1)
    pps, tgs = [], []
    with torch.no_grad():
        for _ in range(reps):
            x = torch.tensor([rng.integers(0, 150000, pp).tolist()])
            t0 = time.perf_counter()
            out = m(x, use_cache=True)
            pps.append(pp / (time.perf_counter() - t0))
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(tg - 1):
                out = m(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            tgs.append((tg - 1) / (time.perf_counter() - t0))
    return {"pp_tok_s": statistics.median(pps), "tg_tok_s": statistics.median(tgs),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=".build/release/qwen-serve")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--write", default="BENCHMARKS.md")
    a = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default = subprocess.run([a.binary, "fetch", "default"], check=True, capture_output=True, text=True).stdout.strip()
    # (label, model, extra flags, index of an earlier row whose baseline applies)
    models = [("Qwen2.5-Coder-0.5B-Instruct Q4_K_M, `--compute f32`", default, ["--compute", "f32"], None),
              ("the same, `--f32-weights no` (blocks only)", default, ["--f32-weights", "no"], 0),
              ("the same, `--compute int8` (8-bit inputs, integer products)", default, ["--compute", "int8"], 0),
              ("Qwen3-0.6B config, random bf16", random_qwen3(repo), [], None)]
    rows = []
    for label, path, extra, same_as in models:
        r = ours(a.binary, path, a.prompt_tokens, a.gen_tokens, a.reps, extra)
        b = rows[same_as][2] if same_as is not None else None
        if not a.no_baseline and same_as is None:
            # The baseline runs in a child process so that its memory is its own.
            code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); import bench; "
                    f"print(json.dumps(bench.baseline({path!r}, {a.prompt_tokens}, {a.gen_tokens}, {a.reps})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            b = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
            if b is None:
                print(out.stderr[-2000:], file=sys.stderr)
        rows.append((label, r, b))
        print(label, json.dumps(r), json.dumps(b), flush=True)

    cmd = "make bench  # python3 scripts/bench.py --binary " + a.binary + \
          f" --prompt-tokens {a.prompt_tokens} --gen-tokens {a.gen_tokens} --reps {a.reps}"
    lines = [f"## Single stream ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores)", "",
             f"Command: `{cmd}`", "",
             f"Random prompt of {a.prompt_tokens} tokens, then {a.gen_tokens} greedy tokens; medians of {a.reps} runs. "
             "Baseline: transformers (PyTorch CPU, f32, 2 threads) on the same weights in the same run.", "",
             "| model | qwen-serve pp tok/s | baseline pp tok/s | pp ratio | qwen-serve tg tok/s | baseline tg tok/s | tg ratio | qwen-serve peak RSS MB | baseline peak RSS MB | load s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r, b in rows:
        bp = b["pp_tok_s"] if b else float("nan")
        bt = b["tg_tok_s"] if b else float("nan")
        lines.append(f"| {label} | {r['pp_tok_s']:.1f} | {bp:.1f} | {r['pp_tok_s'] / bp:.2f}× | {r['tg_tok_s']:.2f} | "
                     f"{bt:.2f} | {r['tg_tok_s'] / bt:.2f}× | {r['peak_rss_mb']:.0f} | {(b or {}).get('peak_rss_mb', float('nan')):.0f} | {r['load_s']:.1f} |")
    lines.append("")
    lines.append(f"OpenBLAS kernel set: {rows[0][1]['blas_core']}, {rows[0][1]['blas_threads']} threads.")
    section = "\n".join(lines) + "\n"
    print(section)
    if a.write:
        benchmarks_md.write_section(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Single stream", section, a.write)


if __name__ == "__main__":
    main()
