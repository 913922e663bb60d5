"""The server in the int8 compute mode on a quantized GGUF: the same API, concurrent requests
batched together get what each gets alone, and streaming matches the one-shot response."""
import concurrent.futures
import json
import os
import subprocess
import time

from conftest import BIN, FIXTURES, Server


def test_int8_server_batches_like_solo_and_streams_consistently():
    s = Server(os.path.join(FIXTURES, "qwen3-tiny.gguf"), "--compute", "int8", "--kv-cache-gb", "0.05")
    try:
        prompts = [f"Item {i}: " + "word " * (3 + 5 * i) for i in range(6)]

        def complete(p):
            status, body = s.json("POST", "/v1/completions", {"prompt": p, "max_tokens": 12, "temperature": 0,
                                                               "ignore_eos": True, "logprobs": 1})
            assert status == 200, body
            return body["choices"][0]

        alone = [complete(p) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(complete, prompts))
        for a, b in zip(alone, together):
            assert a["text"] == b["text"]
            assert a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
            assert all(abs(x - y) < 1e-4 for x, y in zip(a["logprobs"]["token_logprobs"], b["logprobs"]["token_logprobs"]))

        events = s.stream("/v1/completions", {"prompt": prompts[2], "max_tokens": 12, "temperature": 0, "ignore_eos": True,
                                              "stream": True})
        assert events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["text"] for e in events[:-1] if e.get("choices")) == alone[2]["text"]
        # The engine publishes its gauges after the step that ended the request (the client can
        # hear [DONE] first): every block is back within moments.
        deadline = time.time() + 5
        while s.metric("qwen_kv_blocks_used") != 0 and time.time() < deadline:
            time.sleep(0.05)
        assert s.metric("qwen_kv_blocks_used") == 0
    finally:
        s.stop()


def test_auto_compute_is_the_default_and_says_what_ran():
    """Without --compute, quantized weights run in int8 where the CPU has AVX-512 VNNI or AVX2 and in
    f32 elsewhere; float weights always in f32. /v1/models and the start-up log say which."""
    flags = open("/proc/cpuinfo").read()
    fast8 = "avx512_vnni" in flags or ("avx2" in flags and " fma" in flags)
    for model, want in [(os.path.join(FIXTURES, "qwen3-tiny.gguf"), "int8" if fast8 else "f32"),
                        (os.path.join(FIXTURES, "qwen3-tiny-f32"), "f32")]:
        s = Server(model, "--kv-cache-gb", "0.05")
        try:
            _, models = s.json("GET", "/v1/models")
            assert models["data"][0]["compute"] == want
            assert any(f"compute: {want} (auto:" in line for line in s.log)
        finally:
            s.stop()
    s = Server(os.path.join(FIXTURES, "qwen3-tiny.gguf"), "--kv-cache-gb", "0.05", "--compute", "f32")
    try:
        assert s.json("GET", "/v1/models")[1]["data"][0]["compute"] == "f32"
    finally:
        s.stop()


def test_kernel_level_is_reported_and_capped_by_qwen_cpu_level():
    """/v1/models and the start-up log name the kernel level `qwen-serve cpu` reports; QWEN_CPU_LEVEL=portable
    caps it (int8 kernels too), and float weights then draw a warning that names --quantize q8_0; an unknown
    level is refused by name."""
    levels = subprocess.run([BIN, "cpu", "--levels"], capture_output=True, text=True, check=True).stdout.split()
    assert levels[-1] == "portable" and set(levels) <= {"avx512", "avx2", "portable"}
    for env, level in [({}, levels[0]), ({"QWEN_CPU_LEVEL": "portable"}, "portable")]:
        s = Server(os.path.join(FIXTURES, "qwen3-tiny-bf16"), "--kv-cache-gb", "0.05", env=env)
        try:
            model = s.json("GET", "/v1/models")[1]["data"][0]
            assert model["cpu_level"] == level
            if level == "portable":
                assert model["int8_kernel"] == "portable"
            assert any(f"kernels: {level} level" in line for line in s.log)
            warned = [line for line in s.log if "--quantize q8_0" in line]
            assert warned and ("level=warning" in warned[0]) == (level == "portable"), warned
        finally:
            s.stop()
    r = subprocess.run([BIN, "cpu"], capture_output=True, text=True, env={**os.environ, "QWEN_CPU_LEVEL": "avx9000"})
    assert r.returncode == 1 and "QWEN_CPU_LEVEL=avx9000 is not a kernel level" in r.stderr


def test_every_int8_kernel_set_gives_the_same_answers():
    """The AVX2 and AVX-VNNI kernels (for CPUs without AVX-512 VNNI) and the plain C ones are
    bit-identical to VNNI: a server forced onto each gives the same tokens and log-probabilities
    (AVX-VNNI's code runs as vnni256 where the CPU lacks AVX-VNNI)."""
    flags = open("/proc/cpuinfo").read()
    sets = (["portable"] + (["avx2"] if "avx2" in flags else []) + (["vnni", "vnni256"] if "avx512_vnni" in flags else [])
            + (["avxvnni"] if "avx_vnni" in flags else []))
    body = {"prompt": "The kernels agree:", "max_tokens": 12, "temperature": 0, "logprobs": 3, "ignore_eos": True}
    answers = {}
    for k in sets:
        s = Server(os.path.join(FIXTURES, "qwen3-tiny.gguf"), "--compute", "int8", "--kv-cache-gb", "0.05",
                   env={"QWEN_INT8_KERNEL": k})
        try:
            assert any(f"{k} kernels" in line for line in s.log), s.log
            st, r = s.json("POST", "/v1/completions", body)
            assert st == 200
            answers[k] = (r["choices"][0]["text"], r["choices"][0]["logprobs"])
        finally:
            s.stop()
    assert len(set(json.dumps(a, sort_keys=True) for a in answers.values())) == 1, answers


def test_quantize_on_load_gives_float_checkpoints_the_int8_kernels():
    """A bf16 checkpoint (as Qwen3 is published) with --quantize q8_0 runs its products in int8
    under auto compute and answers; an unknown type is refused by name."""
    flags = open("/proc/cpuinfo").read()
    fast8 = "avx512_vnni" in flags or "avx2" in flags
    body = {"prompt": "Quantized:", "max_tokens": 1, "temperature": 0}
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-bf16"), "--kv-cache-gb", "0.05", "--quantize", "q8_0")
    try:
        assert s.json("GET", "/v1/models")[1]["data"][0]["compute"] == ("int8" if fast8 else "f32")
        st, r = s.json("POST", "/v1/completions", body)
        assert st == 200 and r["usage"]["completion_tokens"] == 1
    finally:
        s.stop()
    r = __import__("subprocess").run([os.environ.get("QWEN_SERVE_BIN", "qwen-serve"), "serve", "--model", "x",
                                      "--quantize", "q3_k", "--print-config"], capture_output=True, text=True)
    assert r.returncode != 0 and "quantize must be q8_0, q4_0, q4_k or none" in r.stderr


def test_q8_kv_cache_serves_batches_like_solo():
    """--kv-cache-dtype q8_0 (the tiny model's 24-wide heads take padded blocks): requests answer,
    alone and batched alike, and the log states the cache type."""
    s = Server(os.path.join(FIXTURES, "qwen3-tiny.gguf"), "--kv-cache-gb", "0.05", "--kv-cache-dtype", "q8_0")
    try:
        prompts = [f"Cache {i}: " + "token " * (2 + 7 * i) for i in range(4)]

        def complete(p):
            status, body = s.json("POST", "/v1/completions", {"prompt": p, "max_tokens": 10, "temperature": 0,
                                                               "ignore_eos": True})
            assert status == 200, body
            return body["choices"][0]["text"]

        alone = [complete(p) for p in prompts]
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            assert list(pool.map(complete, prompts)) == alone
        assert any("q8_0" in line for line in s.log), s.log
    finally:
        s.stop()
