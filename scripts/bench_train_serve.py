#!/usr/bin/env python3
"""make bench-train-serve: chat latency with a fine-tuning job training on the same engine.

On the default model: 10 concurrent chat streams (128-token prompts, 128 tokens out) without a
job, then while the reference self-cognition job trains (rank 8 on q_proj/v_proj, scale 20, lr
1e-4, batch 1, max_seq_length 512) at the default --train-share; TTFT and TPOT p50 of the chat
requests, and the job's training tokens/s while sharing vs alone. With --finish it waits for the
job to succeed and asks base and fine-tuned model identity questions from the same server
(the README's walk-through, on the real model)."""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "Tests", "api"))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "self_cognition")
WORDS = "the of and to in is you that it he was for on are as with his they at be this have from or one had by word".split()


def chat_round(url, model, streams, prompt_words, out_tokens, seed):
    """`streams` concurrent streaming chats; per request TTFT and mean time per output token."""
    import openai
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    results = []

    def one(i):
        rng = random.Random(seed * 100 + i)
        prompt = " ".join(rng.choice(WORDS) for _ in range(prompt_words))
        t0 = time.perf_counter()
        first, n = None, 0
        for ch in c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=out_tokens,
                                            temperature=0, stream=True, extra_body={"ignore_eos": True}):
            if ch.choices and ch.choices[0].delta.content:
                n += 1
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
        results.append((first - t0, (end - first) / max(n - 1, 1)))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def job_rate(c, job_id, since):
    """Median tokens/s of the job's metrics events after `since`."""
    rates = [e.data["tokens_per_second"] for e in c.fine_tuning.jobs.list_events(job_id, limit=100)
             if e.type == "metrics" and e.created_at >= since and e.data and "tokens_per_second" in e.data]
    return statistics.median(rates) if rates else float("nan"), len(rates)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "qwen-serve"))
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--alone-seconds", type=float, default=90)
    ap.add_argument("--finish", action="store_true", help="wait for the job and compare answers")
    ap.add_argument("--extra", default="", help="more serve flags")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(DATA, "train.jsonl")):
        print(f"skipped: {DATA}/train.jsonl is not there (the reference data lives in ../shared)")
        return
    os.environ["QWEN_SERVE_BIN"] = a.binary
    import conftest
    conftest.BIN = a.binary
    import openai
    import subprocess
    model = subprocess.run([a.binary, "fetch", "default"], check=True, capture_output=True, text=True).stdout.strip()
    state = tempfile.mkdtemp(prefix="bench-train-serve-")
    s = conftest.Server(model, "--state-dir", state, *a.extra.split())
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=600)
        chat_round(s.url, s.name, 2, 16, 8, 0)  # warm-up
        base = [r for k in range(a.rounds) for r in chat_round(s.url, s.name, a.streams, 96, 128, k + 1)]
        tf = c.files.create(file=open(os.path.join(DATA, "train.jsonl"), "rb"), purpose="fine-tune")
        vf = c.files.create(file=open(os.path.join(DATA, "valid.jsonl"), "rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=s.name, training_file=tf.id, validation_file=vf.id, suffix="xiaoe", seed=0,
                                        hyperparameters={"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1,
                                                         "rank": 8, "scale": 20, "target_modules": ["q_proj", "v_proj"],
                                                         "max_seq_length": 512})
        while c.fine_tuning.jobs.retrieve(job.id).step < 3:
            time.sleep(1)
        t_shared = int(time.time())
        # Other prompts than the baseline's: the prefix cache must not serve them.
        shared = [r for k in range(a.rounds) for r in chat_round(s.url, s.name, a.streams, 96, 128, k + 101)]
        shared_rate, n_shared = job_rate(c, job.id, t_shared)
        t_alone = int(time.time()) + 1
        time.sleep(a.alone_seconds)
        alone_rate, n_alone = job_rate(c, job.id, t_alone)
        p50 = lambda xs: statistics.median(xs)
        report = {
            "chat_ttft_p50_s": {"alone": p50([r[0] for r in base]), "with_job": p50([r[0] for r in shared])},
            "chat_tpot_p50_s": {"alone": p50([r[1] for r in base]), "with_job": p50([r[1] for r in shared])},
            "job_tok_s": {"alone": alone_rate, "while_serving": shared_rate, "windows": [n_alone, n_shared]},
        }
        report["tpot_ratio"] = report["chat_tpot_p50_s"]["with_job"] / report["chat_tpot_p50_s"]["alone"]
        report["ttft_ratio"] = report["chat_ttft_p50_s"]["with_job"] / report["chat_ttft_p50_s"]["alone"]
        report["job_share_of_alone"] = shared_rate / alone_rate
        print(json.dumps(report, indent=2))
        if a.finish:
            job = c.fine_tuning.jobs.retrieve(job.id)
            while job.status not in ("succeeded", "failed", "cancelled"):
                time.sleep(5)
                job = c.fine_tuning.jobs.retrieve(job.id)
            print("job:", job.status, job.fine_tuned_model, "trained tokens", job.trained_tokens,
                  "wall", job.finished_at - job.created_at, "s")
            for q in ["What is your name?", "你叫什么名字？", "Which company made you?"]:
                for m in [s.name, job.fine_tuned_model]:
                    r = c.chat.completions.create(model=m, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=120)
                    text = r.choices[0].message.content
                    if "</think>" in text:
                        text = text.split("</think>", 1)[1]
                    print(f"{q} [{'base' if m == s.name else 'fine-tuned'}]: {text.strip()[:200]}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
