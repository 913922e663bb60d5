#!/usr/bin/env python3
"""A small asyncio HTTP/1.1 load generator for qwen-serve (no third-party packages).

The workload is the one `evalscope perf` is usually run with for models of this size:
random prompts of --prompt-tokens tokens (sent as token ids to /v1/completions, so the
length is exact), --max-tokens output tokens with ignore_eos, streamed, at a given
concurrency. Reports output tokens/s, requests/s, time to first token, time per
output token and end-to-end latency.
"""
import asyncio
import json
import random
import statistics
import time


async def _request(host, port, path, body, disconnect_after=None):
    """POSTs JSON and reads the SSE stream. Returns (ttft, token_times, tokens, status).

    tokens is the server's usage.completion_tokens when the stream ends with usage (asked for
    with stream_options.include_usage, as evalscope perf does); otherwise, and for clients that
    hang up early, the number of events that carried text. Events undercount: a token whose
    text is not yet complete UTF-8 arrives merged into the next event."""
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()
    start = time.perf_counter()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    times, tokens, buf, usage_tokens = [], 0, b"", None
    try:
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    break
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    break
                piece = await reader.readexactly(size + 2)
                buf += piece[:-2]
            else:
                piece = await reader.read(65536)
                if not piece:
                    break
                buf += piece
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                obj = json.loads(event[6:])
                if obj.get("usage"):
                    usage_tokens = obj["usage"]["completion_tokens"]
                for c in obj.get("choices", []):
                    if c.get("text") or c.get("delta", {}).get("content"):
                        times.append(time.perf_counter() - start)
                        tokens += 1
                if disconnect_after is not None and tokens >= disconnect_after:
                    writer.close()
                    return (times[0] if times else None), times, tokens, status
    finally:
        writer.close()
    return (times[0] if times else None), times, (usage_tokens if usage_tokens is not None else tokens), status


async def run_level(host, port, concurrency, requests, prompt_tokens, max_tokens, vocab=150000, seed=0, models=None):
    """models: names to cycle through request by request (None: the server's base model)."""
    rng = random.Random(seed)
    queue = list(range(requests))
    results = []

    async def worker():
        while queue:
            i = queue.pop()
            prompt = [rng.randrange(100, vocab) for _ in range(prompt_tokens)]
            body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True, "temperature": 0,
                    "stream_options": {"include_usage": True}}
            if models:
                body["model"] = models[i % len(models)]
            t0 = time.perf_counter()
            ttft, times, tokens, status = await _request(host, port, "/v1/completions", body)
            results.append((ttft, times, tokens, time.perf_counter() - t0, status))

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[4] == 200 and r[0] is not None]
    ttfts = sorted(r[0] for r in ok)
    # Time per output token after the first, as evalscope computes it: (last - first) / (tokens - 1).
    tpots = [(r[1][-1] - r[1][0]) / (r[2] - 1) for r in ok if r[2] > 1 and len(r[1]) > 1]
    e2e = [r[3] for r in ok]
    out = sum(r[2] for r in ok)

    def pct(a, p):
        return a[min(len(a) - 1, int(round(p / 100 * (len(a) - 1))))] if a else float("nan")
    return {"concurrency": concurrency, "requests": requests, "succeeded": len(ok), "wall_s": wall,
            "output_tok_s": out / wall, "requests_s": len(ok) / wall,
            "ttft_mean_s": statistics.mean(ttfts) if ttfts else float("nan"), "ttft_p50_s": pct(ttfts, 50),
            "ttft_p99_s": pct(ttfts, 99), "tpot_mean_s": statistics.mean(tpots) if tpots else float("nan"),
            "e2e_mean_s": statistics.mean(e2e) if e2e else float("nan")}


async def disconnect_storm(host, port, clients, prompt_tokens, max_tokens, seed=1):
    """Clients that hang up at random points (some before the first token)."""
    rng = random.Random(seed)

    async def one():
        prompt = [rng.randrange(100, 150000) for _ in range(prompt_tokens)]
        body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        try:
            await asyncio.wait_for(_request(host, port, "/v1/completions", body, disconnect_after=rng.randrange(0, 8)),
                                   timeout=rng.uniform(0.05, 30))
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
    await asyncio.gather(*[one() for _ in range(clients)])


def get(host, port, path):
    async def go():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body
    return asyncio.run(go())


def add_common_arguments(ap):
    """The options every load benchmark takes: the binary, the model, the workload's sizes and the output file."""
    ap.add_argument("--binary", default=".build/release/qwen-serve")
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--write", default="BENCHMARKS.md")
