#!/usr/bin/env python3
"""make bench-train: LoRA training speed and memory on the default model with the reference
settings (rank 8 on q_proj/v_proj of every layer, scale 20, AdamW, lr 1e-4, batch 1,
max_seq_length 512, ../shared/data/self_cognition), against transformers + PEFT (CPU torch,
f32, 2 threads) on the same data and LoRA settings in the same invocation.

Speeds are medians over report windows after a warm-up; tokens/s counts the tokens the model
ran (every token but each sequence's last) and, without mask_prompt, that is also the trained
tokens. Peak RSS is each process's own VmHWM."""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "self_cognition")

CONFIG = """model: {model}
train: true
data: {data}
fine_tune_type: lora
optimizer: adamw
seed: 0
num_layers: -1
batch_size: 1
iters: {iters}
val_batches: 1
learning_rate: 1.0e-4
steps_per_report: {report}
steps_per_eval: 100000
save_every: 100000
adapter_path: {out}
max_seq_length: 512
grad_checkpoint: {ckpt}
lora_parameters:
  keys: [self_attn.q_proj, self_attn.v_proj]
  rank: 8
  scale: 20.0
  dropout: 0.0
"""


def ours(binary, model, data, iters, report, warmup, compute, ckpt=False):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "ft.yaml")
        open(cfg, "w").write(CONFIG.format(model=model, data=data, iters=iters, report=report, out=os.path.join(tmp, "a"),
                                           ckpt=str(ckpt).lower()))
        t0 = time.time()
        out = subprocess.run([binary, "lora", "-c", cfg, "--compute", compute], check=True, capture_output=True, text=True)
        wall = time.time() - t0
        rows = [r.split(",") for r in open(os.path.join(tmp, "a", "metrics.csv")).read().splitlines()[1:]]
    rates = [float(r[5]) for r in rows if r[5] and int(r[0]) > warmup]
    trained = [float(r[4]) for r in rows if r[4] and int(r[0]) > warmup]
    peak = [float(l.split("Peak mem ")[1].split()[0]) for l in out.stdout.splitlines() if "Peak mem" in l][-1]
    losses = [float(r[1]) for r in rows if r[1]]
    return {"tok_s": statistics.median(rates), "trained_tok_s": statistics.median(trained), "peak_gb": peak,
            "wall_s": wall, "losses": losses}


def examples(model_path, data, limit):
    """The training chats as the model's own template renders them, cut at 512 tokens."""
    from transformers import AutoTokenizer
    d, f = os.path.split(model_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    rows = [json.loads(l) for l in open(os.path.join(data, "train.jsonl")) if l.strip()]
    ids = [tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False)[:512] for r in rows]
    random.Random(0).shuffle(ids)
    return (ids * (limit // len(ids) + 1))[:limit]


def peft_child(model_path, data, iters, report, warmup):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    torch.manual_seed(0)
    d, f = os.path.split(model_path)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=160, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    rates, window, wtoks, losses = [], 0.0, 0, []
    for it, ids in enumerate(examples(model_path, data, iters), start=1):
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        loss = pm(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        window += time.perf_counter() - t0
        wtoks += len(ids) - 1
        losses.append(float(loss))
        if it % report == 0:
            if it > warmup:
                rates.append(wtoks / window)
            window, wtoks = 0.0, 0
    hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1e6
    print(json.dumps({"tok_s": statistics.median(rates), "trained_tok_s": statistics.median(rates), "peak_gb": hwm,
                      "losses": losses}))


def peft(model_path, data, iters, report, warmup):
    t0 = time.time()
    out = subprocess.run([sys.executable, __file__, "--peft-child", "--model", model_path, "--data", data, "--iters", str(iters),
                          "--report", str(report), "--warmup", str(warmup)], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.time() - t0
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qwen-serve"))
    ap.add_argument("--model", default=None, help="the GGUF (default: the default model)")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--report", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peft-child", action="store_true")
    ap.add_argument("--skip-peft", action="store_true")
    a = ap.parse_args()
    if a.peft_child:
        return peft_child(a.model, a.data, a.iters, a.report, a.warmup)
    if not os.path.exists(os.path.join(a.data, "train.jsonl")):
        print(f"skipped: {a.data}/train.jsonl is not there (the reference data lives in ../shared)")
        return
    model = a.model or subprocess.run([a.binary, "fetch", "default"], check=True, capture_output=True, text=True).stdout.strip()
    runs = {}
    runs["qwen-serve f32"] = ours(a.binary, model, a.data, a.iters, a.report, a.warmup, "f32")
    runs["qwen-serve int8 forward"] = ours(a.binary, model, a.data, a.iters, a.report, a.warmup, "int8")
    runs["qwen-serve int8, grad_checkpoint"] = ours(a.binary, model, a.data, a.iters, a.report, a.warmup, "int8", ckpt=True)
    if not a.skip_peft:
        runs["transformers + PEFT (f32)"] = peft(model, a.data, a.iters, a.report, a.warmup)
    base = runs.get("transformers + PEFT (f32)")
    print(f"{'run':34} {'tok/s':>8} {'vs PEFT':>8} {'peak RSS GB':>12} {'wall s':>8}")
    for k, r in runs.items():
        ratio = f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        print(f"{k:34} {r['tok_s']:8.1f} {ratio:>8} {r['peak_gb']:12.2f} {r['wall_s']:8.0f}")
    print("first/last losses:", {k: (round(r["losses"][0], 3), round(r["losses"][-1], 3)) for k, r in runs.items()})
    json.dump(runs, open(os.path.join(tempfile.gettempdir(), "bench_train.json"), "w"))


if __name__ == "__main__":
    main()
