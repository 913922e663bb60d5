#!/usr/bin/env python3
"""Shared state on PostgreSQL against SQLite, measured side by side (make bench-cluster, which
starts a throwaway PostgreSQL with scripts/with_postgres.sh):

1. job training speed on the default model: the same job (seed, data, hyperparameters) on a
   server with SQLite and on one with PostgreSQL, alternated, median tokens/s of its steps;
2. API latency of the fine-tuning routes (list jobs, retrieve a job, list its events) under 50
   concurrent clients, on both stores, p50 and p99;
3. failover: two replicas on PostgreSQL, the runner killed with kill -9 (the job waits out
   --job-lease) or stopped with SIGTERM (handed back at once): seconds until the other replica
   runs the job.

Prints a Markdown section for BENCHMARKS.md.
"""
import argparse
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


def upload(s, data):
    boundary = "qwenbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
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
            times = {"list": [], "retrieve": [], "events": []}
            lock = threading.Lock()

            def client(i):
                mine = {"list": [], "retrieve": [], "events": []}
                for k in range(per_client):
                    job = jobs[(i + k) % len(jobs)]
                    for name, path in (("list", "/v1/fine_tuning/jobs?limit=20"), ("retrieve", f"/v1/fine_tuning/jobs/{job}"),
                                       ("events", f"/v1/fine_tuning/jobs/{job}/events?limit=50")):
                        t0 = time.perf_counter()
                        st, _, _ = s.request("GET", path)
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


def failover(lease, rounds):
    out = {"kill": [], "term": []}
    for _ in range(rounds):
        for how in ("kill", "term"):
            db = fresh_database("bench")
            tmp = tempfile.mkdtemp(prefix="qwen-bench-cluster-")
            reps = {n: Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", os.path.join(tmp, n), "--state-db", db, "--node-id", n,
                              "--job-lease", str(lease)) for n in ("a", "b")}
            try:
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
            finally:
                for s in reps.values():
                    s.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/qwen-serve/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20, help="rounds of the three calls per client")
    ap.add_argument("--lease", type=float, default=5)
    a = ap.parse_args()
    if not conftest.POSTGRES:
        sys.exit("bench_cluster: no PostgreSQL; run it through scripts/with_postgres.sh (make bench-cluster does)")
    print(f"## Shared state: PostgreSQL against SQLite\n\n`make bench-cluster` ({time.strftime('%Y-%m-%d')}, "
          f"`python3 scripts/bench_cluster.py --rounds {a.rounds} --steps {a.steps} --clients {a.clients} --requests {a.requests} --lease {a.lease}`; "
          "PostgreSQL 15 on loopback from scripts/with_postgres.sh, fsync off as in the tests).\n")
    tr = training(a.model, a.rounds, a.steps)
    ratios = [p / q for p, q in zip(tr["postgres"], tr["sqlite"])]
    print(f"Job training speed on the default model ({a.steps} steps of one job, median tokens/s of its steps, alternated, "
          f"{a.rounds} rounds): SQLite {statistics.median(tr['sqlite']):.1f}, PostgreSQL {statistics.median(tr['postgres']):.1f} "
          f"tok/s; PostgreSQL/SQLite per round {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}×).\n")
    lat = latency(a.clients, a.requests)
    print(f"Fine-tuning routes under {a.clients} concurrent clients ({a.requests} rounds of list, retrieve, events each; 20 jobs):\n")
    print("| route | SQLite p50 / p99 (ms) | PostgreSQL p50 / p99 (ms) |\n|---|---|---|")
    for k in ("list", "retrieve", "events"):
        print(f"| {k} | {lat['sqlite'][k][0]:.1f} / {lat['sqlite'][k][1]:.1f} | {lat['postgres'][k][0]:.1f} / {lat['postgres'][k][1]:.1f} |")
    fo = failover(a.lease, a.rounds)
    print(f"\nFailover (two replicas, `--job-lease {a.lease:g}`, {a.rounds} rounds): from the runner's end to the other replica "
          f"running the job — kill -9 median {statistics.median(fo['kill']):.1f} s "
          f"({', '.join(f'{x:.1f}' for x in fo['kill'])}; the lease runs out first), "
          f"SIGTERM median {statistics.median(fo['term']):.1f} s ({', '.join(f'{x:.1f}' for x in fo['term'])}; handed back at once).")


if __name__ == "__main__":
    main()
