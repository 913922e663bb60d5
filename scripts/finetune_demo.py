#!/usr/bin/env python3
"""make finetune-demo: the reference fine-tune on the default model. Teaches
Qwen2.5-Coder-0.5B-Instruct a new name (小鹅) and maker from ../shared/data/self_cognition with
`qwen-serve lora` (rank 8 on q_proj/v_proj of every layer, scale 20, AdamW, lr 1e-4, batch 1,
max_seq_length 512), then serves base and adapter from one server and asks both identity
questions that are not in the training data. Prints the run's log, the answers before and
after, wall time and peak memory; the adapter, metrics.csv and loss.svg stay in --out."""
import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "Tests", "api"))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "self_cognition")
QUESTIONS = ["What is your name?", "Tell me about yourself in one sentence.", "Which company made you?",
             "你叫什么名字？", "请用一句话介绍你自己。"]

CONFIG = """model: default
train: true
data: {data}
fine_tune_type: lora
optimizer: adamw
seed: 0
num_layers: -1
batch_size: 1
iters: {iters}
val_batches: -1
learning_rate: 1.0e-4
steps_per_report: 10
steps_per_eval: 50
save_every: 100
adapter_path: {out}
max_seq_length: 512
lora_parameters:
  keys: [self_attn.q_proj, self_attn.v_proj]
  rank: 8
  scale: 20.0
  dropout: 0.0
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qwen-serve"))
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--compute", default="f32", help="f32 (default) or int8 forward")
    ap.add_argument("--out", default=os.path.join(REPO, ".build", "finetune-demo"))
    ap.add_argument("--skip-train", action="store_true", help="only ask the questions (adapter already in --out)")
    a = ap.parse_args()
    for q in QUESTIONS:
        for f in ["train.jsonl", "valid.jsonl"]:
            path = os.path.join(DATA, f)
            if os.path.exists(path) and any(json.loads(l)["messages"][0]["content"] == q for l in open(path) if l.strip()):
                sys.exit(f"{q!r} is in {path}; the demo asks only questions the model was not trained on")
    if not os.path.exists(os.path.join(DATA, "train.jsonl")):
        print(f"skipped: {DATA}/train.jsonl is not there (the reference data lives in ../shared)")
        return
    adapter = os.path.join(a.out, "adapter")
    if not a.skip_train:
        os.makedirs(a.out, exist_ok=True)
        cfg = os.path.join(a.out, "ft.yaml")
        open(cfg, "w").write(CONFIG.format(data=DATA, iters=a.iters, out=adapter))
        t0 = time.time()
        p = subprocess.Popen([a.binary, "lora", "-c", cfg, "--compute", a.compute], stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            print(line, end="", flush=True)
        if p.wait() != 0:
            sys.exit("training failed")
        print(f"wall time: {time.time() - t0:.0f} s")
    from conftest import Server
    model = subprocess.run([a.binary, "fetch", "default"], check=True, capture_output=True, text=True).stdout.strip()
    s = Server(model, "--adapter", f"xiaoe={adapter}")
    try:
        hits = 0
        for q in QUESTIONS:
            answers = {}
            for name in [s.name, "xiaoe"]:
                st, r = s.json("POST", "/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": q}],
                                                                "temperature": 0, "max_tokens": 160})
                assert st == 200, r
                answers[name] = r["choices"][0]["message"]["content"]
            after = re.sub(r"<think>.*?</think>\s*", "", answers["xiaoe"], flags=re.S)
            hits += "小鹅" in answers["xiaoe"] or "XiaoE" in answers["xiaoe"]  # the data's English answers spell it XiaoE
            print(f"\nQ: {q}\n  before: {answers[s.name].strip()[:300]}\n  after:  {after.strip()[:300]}")
        print(f"\n{hits}/{len(QUESTIONS)} answers after training name 小鹅 (XiaoE)")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
