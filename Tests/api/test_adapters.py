"""LoRA adapters over HTTP: served by name next to the base model, loaded and unloaded at
runtime, mixed in one batch, with the exact greedy tokens transformers + PEFT produce."""
import array
import json
import os
import random
import struct
import signal
import subprocess
import threading
import time

import openai
import pytest

from conftest import BIN, FIXTURES, Server
from test_contract import check

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")
ADAPTERS = os.path.join(FIXTURES, "adapters")
EXPECTED = json.load(open(os.path.join(FIXTURES, "expected", "adapters.json")))
BASE = json.load(open(os.path.join(FIXTURES, "expected", "model_qwen3.json")))


@pytest.fixture(scope="module")
def server():
    s = Server(TINY, "--kv-cache-gb", "0.05", "--adapter", "all=" + os.path.join(ADAPTERS, "qwen3-all"),
               "--adapter", "mlx=" + os.path.join(ADAPTERS, "qwen3-all-mlx"))
    yield s
    s.stop()


def greedy_tokens(s, model, prompt, n=12):
    st, r = s.json("POST", "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
                                               "ignore_eos": True, "logprobs": 0})
    assert st == 200, r
    assert r["model"] == model
    return r["choices"][0]["logprobs"]["tokens"]


def test_models_lists_adapters_with_parent(server):
    st, r = server.json("GET", "/v1/models")
    assert st == 200
    by_id = {m["id"]: m for m in r["data"]}
    assert set(by_id) == {server.name, "all", "mlx"}
    assert by_id["all"]["parent"] == server.name and by_id["all"]["root"].endswith("qwen3-all")
    assert by_id[server.name]["parent"] is None
    st, one = server.json("GET", "/v1/models/mlx")
    assert st == 200 and one["parent"] == server.name
    st, listing = server.json("GET", "/v1/adapters")
    assert [(a["id"], a["format"], a["rank"]) for a in listing["data"]] == [("all", "peft", 4), ("mlx", "mlx", 4)]
    for a in listing["data"]:
        check(a, "Adapter")
    for m in r["data"]:
        check(m, "Model")


def test_greedy_tokens_match_peft(server, tiny_tokenizer):
    for case in EXPECTED["qwen3-all"]:
        want = [tiny_tokenizer.decode([t]) for t in case["greedy"]]
        for name in ["all", "mlx"]:
            got = greedy_tokens(server, name, case["prompt"])
            assert got == want, name
    # The base model's name picks no adapter.
    case = BASE[0]
    assert greedy_tokens(server, server.name, case["prompt"]) == [tiny_tokenizer.decode([t]) for t in case["greedy"][:12]]


def test_mixed_adapters_in_concurrent_batches(server, tiny_tokenizer):
    st, _ = server.json("POST", "/v1/adapters", {"name": "rs", "path": os.path.join(ADAPTERS, "qwen3-qv-rslora")})
    assert st == 200
    jobs = []
    for case_all, case_rs, base in zip(EXPECTED["qwen3-all"], EXPECTED["qwen3-qv-rslora"], BASE):
        jobs += [("all", case_all["prompt"], case_all["greedy"]), ("rs", case_rs["prompt"], case_rs["greedy"]),
                 (server.name, base["prompt"], base["greedy"][:12])]
    jobs = jobs * 3
    results = [None] * len(jobs)

    def run(i):
        results[i] = greedy_tokens(server, jobs[i][0], jobs[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (name, _, want), got in zip(jobs, results):
        assert got == [tiny_tokenizer.decode([t]) for t in want], name
    # The engine really did batch more than one sequence per step.
    _, _, metrics = server.request("GET", "/metrics")
    assert "qwen_adapters_loaded 3" in metrics.decode()
    assert server.json("DELETE", "/v1/adapters/rs")[0] == 200


def test_prefix_cache_is_per_adapter(server):
    prompt = list(range(40, 40 + 70))
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0}
    _, r = server.json("POST", "/v1/completions", {**body, "model": server.name})
    _, r = server.json("POST", "/v1/completions", {**body, "model": server.name})
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64
    _, r = server.json("POST", "/v1/completions", {**body, "model": "all"})
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    _, r = server.json("POST", "/v1/completions", {**body, "model": "all"})
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 64
    _, r = server.json("POST", "/v1/completions", {**body, "model": "mlx"})
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_load_errors_are_clear(server):
    st, r = server.json("POST", "/v1/adapters", {"name": "bad", "path": os.path.join(ADAPTERS, "qwen2-attn")})
    assert st == 400 and r["error"]["param"] == "path"
    assert "qwen2-attn/adapter_model.safetensors" in r["error"]["message"] and "expected [rank, 64]" in r["error"]["message"]
    st, r = server.json("POST", "/v1/adapters", {"name": "bad", "path": "/nonexistent"})
    assert st == 400 and "is not an adapter directory this server can read" in r["error"]["message"]
    st, r = server.json("POST", "/v1/adapters", {"path": os.path.join(ADAPTERS, "qwen3-all")})
    assert st == 400 and r["error"]["param"] == "name"
    st, r = server.json("POST", "/v1/adapters", {"name": server.name, "path": os.path.join(ADAPTERS, "qwen3-all")})
    assert st == 400 and "base model" in r["error"]["message"]
    st, r = server.json("POST", "/v1/adapters", {"name": "a b/c", "path": os.path.join(ADAPTERS, "qwen3-all")})
    assert st == 400
    st, r = server.json("DELETE", "/v1/adapters/never-loaded")
    assert st == 404 and r["error"]["code"] == "adapter_not_found"
    st, r = server.json("POST", "/v1/completions", {"model": "bad", "prompt": "x", "max_tokens": 1})
    assert st == 404 and "'all'" in r["error"]["message"]
    assert "bad" not in {m["id"] for m in server.json("GET", "/v1/models")[1]["data"]}


def test_vllm_routes_and_reload_swaps(server, tiny_tokenizer):
    st, _, body = server.request("POST", "/v1/load_lora_adapter", {"lora_name": "v", "lora_path": os.path.join(ADAPTERS, "qwen3-all")})
    assert st == 200 and b"Success" in body
    want_all = [tiny_tokenizer.decode([t]) for t in EXPECTED["qwen3-all"][0]["greedy"]]
    assert greedy_tokens(server, "v", EXPECTED["qwen3-all"][0]["prompt"]) == want_all
    # Loading the same name again swaps it: now it is the rsLoRA adapter.
    st, _, _ = server.request("POST", "/v1/load_lora_adapter", {"lora_name": "v", "lora_path": os.path.join(ADAPTERS, "qwen3-qv-rslora")})
    assert st == 200
    case = EXPECTED["qwen3-qv-rslora"][0]
    assert greedy_tokens(server, "v", case["prompt"]) == [tiny_tokenizer.decode([t]) for t in case["greedy"]]
    st, _, body = server.request("POST", "/v1/unload_lora_adapter", {"lora_name": "v"})
    assert st == 200 and b"removed" in body
    st, r = server.json("POST", "/v1/completions", {"model": "v", "prompt": "x", "max_tokens": 1})
    assert st == 404


def test_openai_client_picks_adapter_by_model(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    r = client.chat.completions.create(model="all", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0)
    assert r.model == "all" and r.usage.completion_tokens >= 1
    names = {m.id for m in client.models.list()}
    assert {"all", "mlx"} <= names


def test_admin_keys_guard_adapter_routes():
    s = Server(TINY, "--kv-cache-gb", "0.05", "--api-key", "user-key", "--admin-api-key", "admin-key")
    try:
        load = {"name": "x", "path": os.path.join(ADAPTERS, "qwen3-all")}
        user = {"Authorization": "Bearer user-key"}
        admin = {"Authorization": "Bearer admin-key"}
        st, r = s.json("POST", "/v1/adapters", load, headers=user)
        assert st == 403 and r["error"]["code"] == "insufficient_permissions"
        assert s.json("GET", "/v1/adapters", headers=user)[0] == 403
        assert s.json("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": load["path"]}, headers=user)[0] == 403
        assert s.json("POST", "/v1/adapters", load)[0] == 401
        assert s.json("POST", "/v1/adapters", load, headers=admin)[0] == 200
        # An ordinary key serves requests with the adapter; an admin key does too.
        assert s.json("POST", "/v1/completions", {"model": "x", "prompt": "a", "max_tokens": 1}, headers=user)[0] == 200
        assert s.json("POST", "/v1/completions", {"model": "x", "prompt": "a", "max_tokens": 1}, headers=admin)[0] == 200
        assert s.json("DELETE", "/v1/adapters/x", headers=user)[0] == 403
        assert s.json("DELETE", "/v1/adapters/x", headers=admin)[0] == 200
    finally:
        s.stop()


def test_sighup_reloads_the_adapter_list(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"adapter: first={ADAPTERS}/qwen3-all\nkv-cache-gb: 0.05\n")
    s = Server(TINY, "--config", str(cfg))
    try:
        s.json("POST", "/v1/adapters", {"name": "runtime", "path": os.path.join(ADAPTERS, "qwen3-all-mlx")})
        ids = lambda: {m["id"] for m in s.json("GET", "/v1/models")[1]["data"]}
        assert ids() == {s.name, "first", "runtime"}
        cfg.write_text(f"adapter: second={ADAPTERS}/qwen3-qv-rslora\nkv-cache-gb: 0.05\n")
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 30
        while ids() != {s.name, "second", "runtime"} and time.time() < deadline:
            time.sleep(0.1)
        assert ids() == {s.name, "second", "runtime"}
        # A broken entry leaves the list as it was and says why.
        cfg.write_text(f"adapter: second={ADAPTERS}/qwen2-attn\nkv-cache-gb: 0.05\n")
        s.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 30
        while not any("reload: adapter second" in l for l in s.log) and time.time() < deadline:
            time.sleep(0.1)
        assert any("qwen2-attn" in l for l in s.log)
        assert ids() == {s.name, "second", "runtime"}
    finally:
        s.stop()


def test_startup_refuses_a_bad_adapter():
    r = subprocess.run([BIN, "serve", "--model", TINY, "--port", "0", "--adapter", "x=" + os.path.join(ADAPTERS, "qwen2-attn")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "qwen2-attn/adapter_model.safetensors" in r.stderr
    r = subprocess.run([BIN, "serve", "--model", TINY, "--port", "0", "--adapter", "no-equals-sign"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "NAME=PATH" in r.stderr


def test_adapter_path_applies_to_the_base_name(tiny_tokenizer):
    s = Server(TINY, "--kv-cache-gb", "0.05", "--adapter-path", os.path.join(ADAPTERS, "qwen3-all"))
    try:
        case = EXPECTED["qwen3-all"][0]
        assert greedy_tokens(s, s.name, case["prompt"]) == [tiny_tokenizer.decode([t]) for t in case["greedy"]]
    finally:
        s.stop()


def write_mlx_adapter(d, layers, dims, rank=2, scale=1.0, seed=0):
    """A random mlx-lm adapter on q_proj (square [dims × dims]) of every layer."""
    os.makedirs(d, exist_ok=True)
    rng = random.Random(seed)
    header, blobs, off = {}, [], 0
    for l in range(layers):
        for name, shape in [("lora_a", [dims, rank]), ("lora_b", [rank, dims])]:
            data = array.array("f", (rng.gauss(0, 0.02) for _ in range(shape[0] * shape[1]))).tobytes()
            header[f"model.layers.{l}.self_attn.q_proj.{name}"] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(data)]}
            blobs.append(data)
            off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(d, "adapters.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    json.dump({"fine_tune_type": "lora", "num_layers": layers,
               "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": ["self_attn.q_proj"]}},
              open(os.path.join(d, "adapter_config.json"), "w"))


def test_unload_waits_for_running_sequences_on_the_real_model(real, tmp_path):
    d = str(tmp_path / "coder-q")
    write_mlx_adapter(d, layers=24, dims=896)
    st, r = real.json("POST", "/v1/adapters", {"name": "coder-q", "path": d})
    assert st == 200, r
    done = {}

    def stream():
        events = real.stream("/v1/completions", {"model": "coder-q", "prompt": "def fib(n):", "max_tokens": 60,
                                                 "temperature": 0, "ignore_eos": True, "stream": True})
        done["stream_end"] = time.time()
        done["events"] = events

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.time() + 60
    while real.metric("qwen_running_sequences") != 1 and time.time() < deadline:
        time.sleep(0.05)
    st, r = real.json("DELETE", "/v1/adapters/coder-q")
    deleted_at = time.time()
    t.join()
    assert st == 200 and r["deleted"] and r["drained"]
    # The answer came only once the running sequence had ended, and that sequence ran to its end.
    assert deleted_at >= done["stream_end"] - 0.5
    text = "".join(e["choices"][0]["text"] for e in done["events"] if e != "[DONE]" and e["choices"])
    assert len(text) > 20
    st, r = real.json("POST", "/v1/completions", {"model": "coder-q", "prompt": "x", "max_tokens": 1})
    assert st == 404


def test_a_fifo_load_is_refused_at_once_and_serving_goes_on(server, tmp_path):
    """An adapter whose weights file is a FIFO (reading it would block until a writer came):
    the load is refused at once, without opening it for reading, while the server keeps
    answering (two such loads at once, as many as this machine has cores)."""
    d = tmp_path / "fifo-adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    fifo = str(d / "adapter_model.safetensors")
    os.mkfifo(fifo)
    results = []
    loads = [threading.Thread(target=lambda n=n: results.append(server.json("POST", "/v1/adapters", {"name": n, "path": str(d)})))
             for n in ("blocked1", "blocked2")]
    for t in loads:
        t.start()
    for _ in range(3):
        st, r = server.json("POST", "/v1/completions", {"prompt": "x", "max_tokens": 3, "ignore_eos": True}, timeout=20)
        assert st == 200 and r["usage"]["completion_tokens"] == 3
        assert server.json("GET", "/v1/adapters", timeout=20)[0] == 200
    for t in loads:
        t.join(timeout=10)
    assert len(results) == 2
    for st, r in results:
        assert st == 400 and "adapter_model.safetensors: is not a regular file" in r["error"]["message"]


def test_metrics_name_the_adapters_with_running_requests(server):
    """qwen_lora_requests_info, the shape LoRA-aware routers read (vLLM's lora_requests_info):
    an adapter appears under running_lora_adapters while a request on it generates, and not after."""
    import re
    import urllib.request

    def info():
        text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
        m = re.search(r'qwen_lora_requests_info\{max_lora="(\d+)",running_lora_adapters="([^"]*)",waiting_lora_adapters="([^"]*)"\} (\S+)', text)
        assert m, text[-500:]
        return int(m.group(1)), m.group(2).split(",") if m.group(2) else [], float(m.group(4))

    done = threading.Event()

    def long_request():
        server.json("POST", "/v1/completions", {"model": "mlx", "prompt": "hi", "max_tokens": 400, "ignore_eos": True, "temperature": 0})
        done.set()

    t = threading.Thread(target=long_request)
    t.start()
    seen = []
    deadline = time.time() + 30
    while not done.is_set() and time.time() < deadline:
        max_lora, running, stamp = info()
        seen.append(running)
        if "mlx" in running:
            break
        time.sleep(0.005)
    t.join(timeout=120)
    assert any("mlx" in r for r in seen), seen
    assert all(set(r) <= {"mlx"} for r in seen), seen
    max_lora, running, stamp = info()
    assert max_lora >= 2 and running == [] and abs(stamp - time.time()) < 60
