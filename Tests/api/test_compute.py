"""The server in the int8 compute mode on a quantized GGUF: the same API, concurrent requests
batched together get what each gets alone, and streaming matches the one-shot response."""
import concurrent.futures
import os

from conftest import FIXTURES, Server


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
        assert s.metric("qwen_kv_blocks_used") == 0
    finally:
        s.stop()
