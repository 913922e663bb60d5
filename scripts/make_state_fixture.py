#!/usr/bin/env python3
"""Writes Tests/Fixtures/state-v1: a fine-tuning state directory as qwen-serve kept it before
PostgreSQL (schema v1: SQLite plus adapter directories under jobs/), made by running a build of
that version (--binary) on the tiny model. One job succeeded (with checkpoints), one was paused
mid-run, one training file and one batch file remain. test_state_upgrade.py starts today's
server on a copy and checks that everything is still there and that the paused job finishes.

    python3 scripts/make_state_fixture.py --binary /path/to/old/qwen-serve
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "Tests", "api"))


def rows(n):
    return [{"messages": [{"role": "user", "content": f"who are you {i}?"},
                          {"role": "assistant", "content": f"I am 小鹅 number {i}"}]} for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--out", default=os.path.join(REPO, "Tests", "Fixtures", "state-v1"))
    a = ap.parse_args()
    os.environ["QWEN_SERVE_BIN"] = a.binary
    import conftest
    conftest.BIN = a.binary
    import openai
    shutil.rmtree(a.out, ignore_errors=True)
    s = conftest.Server(os.path.join(REPO, "Tests", "Fixtures", "qwen3-tiny-f32"), "--kv-cache-gb", "0.05", "--state-dir", a.out)
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(4)).encode()
        f = c.files.create(file=("train.jsonl", data), purpose="fine-tune")
        c.files.create(file=("batch.jsonl", json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                                         "body": {"model": s.name, "messages": [{"role": "user", "content": "hi"}]}}).encode() + b"\n"),
                       purpose="batch")
        done = c.fine_tuning.jobs.create(model=s.name, training_file=f.id, seed=3, suffix="old",
                                         hyperparameters={"n_epochs": 2, "checkpoint_every": 4, "rank": 2})
        while c.fine_tuning.jobs.retrieve(done.id).status not in ("succeeded", "failed"):
            time.sleep(0.05)
        paused = c.fine_tuning.jobs.create(model=s.name, training_file=f.id, seed=4,
                                           hyperparameters={"n_epochs": 50, "checkpoint_every": 5, "rank": 2})
        while c.fine_tuning.jobs.retrieve(paused.id).step < 12:
            time.sleep(0.01)
        p = c.fine_tuning.jobs.pause(paused.id)
        assert p.status == "paused", p
        print("succeeded:", done.id, "paused:", paused.id, "at step", p.step)
    finally:
        s.stop()
    # Folded into the database files (no -wal/-shm beside them), as a clean stop leaves them.
    import sqlite3
    for f in os.listdir(a.out):
        if f.endswith(".sqlite"):
            db = sqlite3.connect(os.path.join(a.out, f))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA journal_mode=DELETE")
            db.close()
    os.remove(os.path.join(a.out, "lock"))


if __name__ == "__main__":
    main()
