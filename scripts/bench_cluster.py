#!/usr/bin/env python3
"""Shared state on PostgreSQL against SQLite, measured side by side (make bench-cluster, which
starts a throwaway PostgreSQL with scripts/with_postgres.sh):

1. job training speed on the default model: the same job (seed, data, hyperparameters) on a
   server with SQLite and on one with PostgreSQL, alternated, median tokens/s of its steps;
2. API latency of the stored-state routes (list jobs, retrieve a job, list its events, retrieve
   a stored response, continue it with previous_response_id, retrieve a batch) under 50
   concurrent clients, on both stores, p50 and p99;
3. failover: two replicas on PostgreSQL, the runner killed with kill -9 (the job waits out
   --job-lease) or stopped with SIGTERM (handed back at once): seconds until the other replica
   runs the job, and the same for a batch.

Prints a Markdown section for BENCHMARKS.md.
"""
import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "Tests", "api"))
import conftest  # noqa: E402
from conftest import Server, fresh_database  # noqa: E402

TINY = os.path.join(REPO, "Tests", "Fixtures", "qwen3-tiny-f32")


def rows(n):
    pad = " Tell me more about the goose and its river." * 4
    return [{"messages": [{"role": "user", "content": f"who are you {i}?{pad}"},
                          {"role": "assistant", "content": f"I am 小鹅, a goose, number {i}.{pad}"}]} for i in range(n)]


def call(s, method, path, body=None):
    st, _, raw = s.request(method, path, body=body)
    if st >= 300:
        raise RuntimeError(f"{method} {path}: {st} {raw[:300]!r}")
    return json.loads(raw) if raw else None


def upload(s, data, purpose="fine-tune"):
    boundary = "qwenbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    st, _, raw = s.request("POST", "/v1/files", raw=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert st == 200, raw
    return json.loads(raw)["id"]


def jsonl(rs):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs).encode()


def wait(s, job, until=("succeeded", "failed", "cancelled"), timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = call(s, "GET", f"/v1/fine_tuning/jobs/{job}")
        if j["status"] in until:
            return j
        time.sleep(0.1)
    raise RuntimeError(f"{job} did not reach {until}")


def events(s, job):
    return call(s, "GET", f"/v1/fine_tuning/jobs/{job}/events?limit=1000")["data"]


def training(model, rounds, steps):
    out = {"sqlite": [], "postgres": []}
    data = jsonl(rows(steps))
    for r in range(rounds):
        for backend in (["sqlite", "postgres"] if r % 2 == 0 else ["postgres", "sqlite"]):
            state = tempfile.mkdtemp(prefix="qwen-bench-cluster-")
            extra = ["--state-db", fresh_database("bench")] if backend == "postgres" else []
            s = Server(model, "--state-dir", state, *extra)
            try:
                f = upload(s, data)
                job = call(s, "POST", "/v1/fine_tuning/jobs", {"model": s.name, "training_file": f, "seed": 1,
                                                                "hyperparameters": {"n_epochs": 1, "checkpoint_every": 5}})["id"]
                j = wait(s, job)
                assert j["status"] == "succeeded", j
                tps = [e["data"]["tokens_per_second"] for e in events(s, job) if e["type"] == "metrics" and e["data"].get("tokens_per_second")]
                out[backend].append(statistics.median(tps[1:] if len(tps) > 2 else tps))
            finally:
                s.stop()
    return out


def latency(clients, per_client):
    out = {}
    for backend in ["sqlite", "postgres"]:
        state = tempfile.mkdtemp(prefix="qwen-bench-cluster-")
        extra = ["--state-db", fresh_database("bench")] if backend == "postgres" else []
        s = Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", state, *extra)
        try:
            f = upload(s, jsonl(rows(4)))
            jobs = [call(s, "POST", "/v1/fine_tuning/jobs", {"model": s.name, "training_file": f,
                                                              "hyperparameters": {"n_epochs": 2}})["id"] for _ in range(20)]
            for j in jobs:
                wait(s, j)
            # Conversations three turns deep, and batches of a few lines, on the same store.
            convs = []
            for i in range(20):
                prev = None
                for turn in range(3):
                    prev = call(s, "POST", "/v1/responses", {"model": s.name, "input": f"turn {turn} of {i}", "max_output_tokens": 2,
                                                             **({"previous_response_id": prev} if prev else {})})["id"]
                convs.append(prev)
            lines = jsonl([{"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                            "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}} for i in range(4)])
            batches = [call(s, "POST", "/v1/batches", {"input_file_id": upload(s, lines, "batch"), "endpoint": "/v1/chat/completions",
                                                       "completion_window": "24h"})["id"] for _ in range(5)]
            for b in batches:
                while call(s, "GET", f"/v1/batches/{b}")["status"] != "completed":
                    time.sleep(0.05)
            times = {k: [] for k in ROUTES}
            lock = threading.Lock()

            def client(i):
                mine = {k: [] for k in ROUTES}
                for k in range(per_client):
                    job, resp, batch = jobs[(i + k) % len(jobs)], convs[(i + k) % len(convs)], batches[(i + k) % len(batches)]
                    for name, method, path, body in (
                            ("list", "GET", "/v1/fine_tuning/jobs?limit=20", None), ("retrieve", "GET", f"/v1/fine_tuning/jobs/{job}", None),
                            ("events", "GET", f"/v1/fine_tuning/jobs/{job}/events?limit=50", None),
                            ("response", "GET", f"/v1/responses/{resp}", None), ("batch", "GET", f"/v1/batches/{batch}", None),
                            ("continue", "POST", "/v1/responses", {"model": s.name, "input": "and?", "previous_response_id": resp,
                                                                   "max_output_tokens": 1, "store": False})):
                        t0 = time.perf_counter()
                        st, _, _ = s.request(method, path, body=body)
                        mine[name].append(time.perf_counter() - t0)
                        assert st == 200
                with lock:
                    for k2, v in mine.items():
                        times[k2] += v

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out[backend] = {k: (statistics.median(v) * 1000, statistics.quantiles(v, n=100)[98] * 1000) for k, v in times.items()}
        finally:
            s.stop()
    return out


ROUTES = {"list": "list jobs", "retrieve": "retrieve a job", "events": "a job's events", "response": "retrieve a stored response",
          "batch": "retrieve a batch", "continue": "continue a 3-turn conversation (1 token, not stored)"}


@contextlib.contextmanager
def pair(lease):
    """Replicas "a" and "b" on a new database: (its URL, the servers), stopped at the end."""
    db = fresh_database("bench")
    tmp = tempfile.mkdtemp(prefix="qwen-bench-cluster-")
    reps = {n: Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", os.path.join(tmp, n), "--state-db", db, "--node-id", n,
                      "--job-lease", str(lease)) for n in ("a", "b")}
    try:
        yield db, reps
    finally:
        for s in reps.values():
            s.stop()


def batch_failover(lease, rounds):
    """Seconds from a batch runner's kill -9 / SIGTERM to the other replica holding the batch."""
    out = {"kill": [], "term": []}
    lines = jsonl([{"custom_id": f"k{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": f"go {i}"}], "max_tokens": 400, "ignore_eos": True}}
                   for i in range(300)])
    for _ in range(rounds):
        for how in ("kill", "term"):
            with pair(lease) as (db, reps):
                b = call(reps["a"], "POST", "/v1/batches", {"input_file_id": upload(reps["a"], lines, "batch"),
                                                            "endpoint": "/v1/chat/completions", "completion_window": "24h"})["id"]
                while call(reps["a"], "GET", f"/v1/batches/{b}")["request_counts"]["completed"] < 5:
                    time.sleep(0.02)
                runner = conftest.psql(db, f"SELECT coalesce(node, '-') FROM batches WHERE id = '{b}'")[0][0]
                other = "b" if runner == "a" else "a"
                t0 = time.time()
                reps[runner].proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
                while conftest.psql(db, f"SELECT coalesce(node, '-') FROM batches WHERE id = '{b}'")[0][0] != other:
                    time.sleep(0.02)
                out[how].append(time.time() - t0)
    return out


def failover(lease, rounds):
    out = {"kill": [], "term": []}
    for _ in range(rounds):
        for how in ("kill", "term"):
            with pair(lease) as (_, reps):
                f = upload(reps["a"], jsonl(rows(8)))
                job = call(reps["a"], "POST", "/v1/fine_tuning/jobs", {"model": reps["a"].name, "training_file": f, "seed": 2,
                                                                        "hyperparameters": {"n_epochs": 40, "checkpoint_every": 5}})["id"]
                while call(reps["a"], "GET", f"/v1/fine_tuning/jobs/{job}")["step"] < 8:
                    time.sleep(0.02)
                runner = next(re.match(r"Fine-tuning job started on (\S+)", e["message"]).group(1)
                              for e in events(reps["a"], job) if e["message"].startswith("Fine-tuning job started on "))
                other = "b" if runner == "a" else "a"
                t0 = time.time()
                reps[runner].proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
                while not any(e["message"].startswith(f"Fine-tuning job resumed on {other}") for e in events(reps[other], job)):
                    time.sleep(0.02)
                out[how].append(time.time() - t0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/qwen-serve/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20, help="rounds of the routes per client")
    ap.add_argument("--lease", type=float, default=5)
    ap.add_argument("--parts", default="training,latency,failover,batch-failover", help="which measures to run, comma-separated")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if not conftest.POSTGRES:
        sys.exit("bench_cluster: no PostgreSQL; run it through scripts/with_postgres.sh (make bench-cluster does)")
    print(f"## Shared state: PostgreSQL against SQLite\n\n`make bench-cluster` ({time.strftime('%Y-%m-%d')}, "
          f"`python3 scripts/bench_cluster.py --rounds {a.rounds} --steps {a.steps} --clients {a.clients} --requests {a.requests} --lease {a.lease} --parts {a.parts}`; "
          "PostgreSQL 15 on loopback from scripts/with_postgres.sh, fsync off as in the tests).\n")
    if "training" in parts:
        tr = training(a.model, a.rounds, a.steps)
        ratios = [p / q for p, q in zip(tr["postgres"], tr["sqlite"])]
        print(f"Job training speed on the default model ({a.steps} steps of one job, median tokens/s of its steps, alternated, "
              f"{a.rounds} rounds): SQLite {statistics.median(tr['sqlite']):.1f}, PostgreSQL {statistics.median(tr['postgres']):.1f} "
              f"tok/s; PostgreSQL/SQLite per round {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}×).\n")
    if "latency" in parts:
        lat = latency(a.clients, a.requests)
        print(f"Stored-state routes under {a.clients} concurrent clients ({a.requests} rounds of each route per client; 20 jobs, "
              "20 conversations of 3 turns, 5 batches of 4 lines; tiny model):\n")
        print("| route | SQLite p50 / p99 (ms) | PostgreSQL p50 / p99 (ms) |\n|---|---|---|")
        for k, name in ROUTES.items():
            print(f"| {name} | {lat['sqlite'][k][0]:.1f} / {lat['sqlite'][k][1]:.1f} | {lat['postgres'][k][0]:.1f} / {lat['postgres'][k][1]:.1f} |")
    if "failover" in parts:
        fo = failover(a.lease, a.rounds)
        print(f"\nFailover (two replicas, `--job-lease {a.lease:g}`, {a.rounds} rounds): from the runner's end to the other replica "
              f"running the job — kill -9 median {statistics.median(fo['kill']):.1f} s "
              f"({', '.join(f'{x:.1f}' for x in fo['kill'])}; the lease runs out first), "
              f"SIGTERM median {statistics.median(fo['term']):.1f} s ({', '.join(f'{x:.1f}' for x in fo['term'])}; handed back at once).")
    if "batch-failover" in parts:
        bf = batch_failover(a.lease, a.rounds)
        print(f"\nBatch failover (the same, a 300-line batch): from the runner's end to the other replica holding the batch — kill -9 median "
              f"{statistics.median(bf['kill']):.1f} s ({', '.join(f'{x:.1f}' for x in bf['kill'])}), SIGTERM median "
              f"{statistics.median(bf['term']):.1f} s ({', '.join(f'{x:.1f}' for x in bf['term'])}).")


if __name__ == "__main__":
    main()
