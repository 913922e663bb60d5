"""`qwen-serve quantize`: a Hugging Face checkpoint written as a quantized GGUF serves exactly as
the checkpoint quantized at load does; bad input is refused by name; llama.cpp (when
`make bench-compare` has built it) loads the file and continues a prompt with the same tokens."""
import glob
import json
import os
import subprocess
import time
import urllib.request

import pytest

from conftest import BIN, FIXTURES, Server, default_model

BODY = {"prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0, "ignore_eos": True, "logprobs": 2}


def quantize(*args):
    return subprocess.run([BIN, "quantize", *args], capture_output=True, text=True, timeout=120)


def answer(model, *args):
    s = Server(model, "--kv-cache-gb", "0.05", *args)
    try:
        st, r = s.json("POST", "/v1/completions", BODY)
        assert st == 200, r
        return r["choices"][0]["text"], r["choices"][0]["logprobs"]
    finally:
        s.stop()


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_written_gguf_serves_as_quantize_on_load(tmp_path, kind):
    out = str(tmp_path / f"tiny-{kind}.gguf")
    r = quantize("--model", os.path.join(FIXTURES, "qwen3-tiny-bf16"), "--type", kind, "--output", out)
    assert r.returncode == 0, r.stderr
    assert f"quantized to {kind}" in r.stderr + r.stdout
    for compute in ["f32", "int8"]:
        assert answer(out, "--compute", compute) == answer(os.path.join(FIXTURES, "qwen3-tiny-bf16"), "--quantize", kind,
                                                          "--compute", compute)


def test_bad_input_is_refused_by_name(tmp_path):
    existing = tmp_path / "exists.gguf"
    existing.write_text("keep")
    r = quantize("--model", os.path.join(FIXTURES, "qwen3-tiny-bf16"), "--type", "q8_0", "--output", str(existing))
    assert r.returncode != 0 and "already exists" in r.stderr and str(existing) in r.stderr
    assert existing.read_text() == "keep"
    gguf = default_model()  # every matrix already in blocks
    r = quantize("--model", gguf, "--type", "q8_0", "--output", str(tmp_path / "a.gguf"))
    assert r.returncode != 0 and gguf in r.stderr and "already quantized" in r.stderr
    r = quantize("--model", os.path.join(FIXTURES, "qwen3-tiny-bf16"), "--type", "q3_k", "--output", str(tmp_path / "b.gguf"))
    assert r.returncode != 0 and "q3_k" in r.stderr and "q4_k" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    r = quantize("--model", str(bad), "--type", "q8_0", "--output", str(tmp_path / "c.gguf"))
    assert r.returncode != 0 and "config.json" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad", "exists.gguf"]


def test_llama_cpp_reads_the_written_gguf(tmp_path):
    servers = sorted(glob.glob(os.path.expanduser("~/.cache/qwen-serve/llama.cpp/*/bin/llama-server")))
    if not servers:
        pytest.skip("llama.cpp is not built here (make bench-compare builds it)")
    out = str(tmp_path / "tiny.gguf")
    assert quantize("--model", os.path.join(FIXTURES, "qwen3-tiny-f32"), "--type", "q8_0", "--output", out).returncode == 0
    port = 18000 + os.getpid() % 1000
    p = subprocess.Popen([servers[-1], "-m", out, "--port", str(port), "-t", "2", "-c", "512"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"prompt": BODY["prompt"], "n_predict": 16, "temperature": 0, "top_k": 1,
                           "cache_prompt": False, "ignore_eos": True}).encode()
        theirs = None
        for _ in range(100):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body, {"Content-Type": "application/json"})
                theirs = json.load(urllib.request.urlopen(req, timeout=10))["content"]
                break
            except OSError:
                time.sleep(0.2)
        assert theirs is not None, "llama-server did not answer"
    finally:
        p.terminate()
        p.wait()
    # llama.cpp multiplies Q8_0 weights with 8-bit inputs: the int8 mode's method.
    assert answer(out, "--compute", "int8")[0] == theirs
