"""/v1/chat/completions and /v1/completions against a real server on the tiny model."""
import concurrent.futures
import json
import os
import time

import openai
import pytest

from conftest import FIXTURES, Server, thinking_tiny


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chatml(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, world! It's a test."}]


def test_openai_client_non_stream_and_usage(tiny, tiny_tokenizer):
    r = client(tiny).chat.completions.create(model=tiny.name, messages=MSGS, max_tokens=12, temperature=0,
                                             extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.model == tiny.name
    c = r.choices[0]
    assert c.message.role == "assistant" and c.finish_reason == "length"
    # Usage equals the tokenizer's own counts: the rendered ChatML prompt, and every sampled token.
    assert r.usage.prompt_tokens == len(tiny_tokenizer.encode(chatml(MSGS)).ids)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_openai_client_stream_matches_non_stream(tiny):
    cl = client(tiny)
    full = cl.chat.completions.create(model=tiny.name, messages=MSGS, max_tokens=16, temperature=0, logprobs=True,
                                      top_logprobs=3, extra_body={"ignore_eos": True})
    chunks = list(cl.chat.completions.create(model=tiny.name, messages=MSGS, max_tokens=16, temperature=0, logprobs=True,
                                             top_logprobs=3, stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    lps = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    ref = full.choices[0].logprobs.content
    assert len(lps) == len(ref) == 16
    for a, b in zip(lps, ref):
        assert a.token == b.token and abs(a.logprob - b.logprob) < 1e-5
        assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]
        assert a.logprob <= 0 and len(a.top_logprobs) == 3
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].choices == []
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_raw_sse_ends_with_done(tiny):
    events = tiny.stream("/v1/chat/completions", {"messages": MSGS, "max_tokens": 4, "stream": True, "ignore_eos": True})
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_n_and_seed(tiny):
    cl = client(tiny)
    kw = dict(model=tiny.name, messages=MSGS, max_tokens=10, temperature=1.0, n=2, seed=1234, extra_body={"ignore_eos": True})
    a = cl.chat.completions.create(**kw)
    b = cl.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content
    assert a.usage.completion_tokens == 20
    c = cl.chat.completions.create(**{**kw, "seed": 99})
    assert [x.message.content for x in c.choices] != [x.message.content for x in a.choices]


def test_stop_sequences_are_never_emitted(tiny):
    cl = client(tiny)
    base = cl.completions.create(model=tiny.name, prompt="The number 1234567 and", max_tokens=30, temperature=0,
                                 extra_body={"ignore_eos": True}).choices[0].text
    assert len(base) > 8
    stop = base[len(base) // 2: len(base) // 2 + 3]
    cut = base[:base.index(stop)]
    r = cl.completions.create(model=tiny.name, prompt="The number 1234567 and", max_tokens=30, temperature=0, stop=[stop, "\u0000never"],
                              extra_body={"ignore_eos": True})
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = tiny.stream("/v1/completions", {"prompt": "The number 1234567 and", "max_tokens": 30, "temperature": 0,
                                               "stop": stop, "stream": True, "ignore_eos": True})
    assert "".join(e["choices"][0]["text"] for e in streamed[:-1] if e["choices"]) == cut
    assert streamed[-2]["choices"][0]["finish_reason"] == "stop"


def test_completions_token_prompt_echo_and_logprobs(tiny):
    ids = [5, 17, 42, 99, 3]
    st, r = tiny.json("POST", "/v1/completions", {"prompt": ids, "max_tokens": 5, "temperature": 0, "logprobs": 2, "ignore_eos": True})
    assert st == 200 and r["usage"]["prompt_tokens"] == 5 and r["usage"]["completion_tokens"] == 5
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 5 and len(lp["token_logprobs"]) == 5 and all(len(t) <= 2 for t in lp["top_logprobs"])
    st, e = tiny.json("POST", "/v1/completions", {"prompt": "abc", "max_tokens": 3, "echo": True, "temperature": 0})
    assert st == 200 and e["choices"][0]["text"].startswith("abc")


def test_sixteen_concurrent_requests(tiny):
    cl = client(tiny)

    def one(i):
        return cl.chat.completions.create(model=tiny.name, messages=[{"role": "user", "content": f"request {i % 4}"}],
                                          max_tokens=8 + i, temperature=0, logprobs=True, extra_body={"ignore_eos": True})
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        rs = list(ex.map(one, range(16)))
    assert all(r.usage.completion_tokens == 8 + i for i, r in enumerate(rs))
    # Same prompt, greedy: the shorter answer's tokens begin the longer one's, however they were batched.
    toks = [[t.bytes for t in r.choices[0].logprobs.content] for r in rs]
    for i in range(16):
        for j in range(i + 4, 16, 4):
            assert toks[j][:len(toks[i])] == toks[i]


def test_client_disconnect_frees_the_sequence(tiny):
    events = tiny.stream("/v1/chat/completions", {"messages": MSGS, "stream": True, "ignore_eos": True},
                         disconnect_after=3)
    assert len(events) == 3
    for _ in range(200):
        if tiny.metric("qwen_kv_blocks_used") == 0 and tiny.metric("qwen_running_sequences") == 0:
            break
        time.sleep(0.05)
    assert tiny.metric("qwen_kv_blocks_used") == 0
    assert tiny.metric("qwen_running_sequences") == 0
    st, r = tiny.json("POST", "/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})
    assert st == 200
    assert tiny.metric("qwen_requests_cancelled_total") >= 1


def error_of(server, method, path, body=None, raw=None):
    st, _, data = server.request(method, path, body, raw=raw)
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return st, err


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": MSGS, "temperature": 3}, "temperature"),
    ({"messages": MSGS, "temperature": "hot"}, "temperature"),
    ({"messages": MSGS, "top_p": 0}, "top_p"),
    ({"messages": MSGS, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSGS, "n": 17}, "n"),
    ({"messages": MSGS, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": MSGS, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": MSGS, "stop": [1, 2]}, "stop"),
    ({"messages": MSGS, "logit_bias": {"999999": 1}}, "logit_bias"),
    ({"messages": MSGS, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": MSGS, "max_tokens": 100000}, "max_tokens"),
])
def test_bad_parameters_are_400_naming_the_parameter(tiny, body, param):
    st, err = error_of(tiny, "POST", "/v1/chat/completions", body)
    assert st == 400 and err["param"] == param, err


def test_other_errors(tiny):
    st, err = error_of(tiny, "POST", "/v1/chat/completions", {"model": "gpt-4", "messages": MSGS})
    assert st == 404 and err["code"] == "model_not_found"
    st, err = error_of(tiny, "POST", "/v1/chat/completions", raw=b"{not json")
    assert st == 400
    st, err = error_of(tiny, "POST", "/v1/chat/completions", raw=b"[1,2]")
    assert st == 400
    st, err = error_of(tiny, "POST", "/v1/chat/completions", raw=b"x" * (9 << 20))
    assert st == 413
    st, err = error_of(tiny, "POST", "/v1/completions", {"prompt": list(range(600))})
    assert st == 400 and err["code"] == "context_length_exceeded"
    st, err = error_of(tiny, "GET", "/v1/nothing")
    assert st == 404
    st, err = error_of(tiny, "GET", "/v1/chat/completions")
    assert st in (404, 405)
    st, err = error_of(tiny, "GET", "/v1/models/nope")
    assert st == 404
    # The server is still fine.
    assert tiny.json("GET", "/health")[0] == 200


def test_models_health_metrics(tiny):
    st, m = tiny.json("GET", "/v1/models")
    assert st == 200 and m["data"][0]["id"] == tiny.name
    assert tiny.json("GET", f"/v1/models/{tiny.name}")[1]["id"] == tiny.name
    assert tiny.json("GET", "/healthz") == (200, {"status": "ok"})
    _, _, text = tiny.request("GET", "/metrics")
    for name in ["qwen_time_to_first_token_seconds_bucket", "qwen_time_per_output_token_seconds_count", "qwen_prompt_tokens_total",
                 "qwen_generation_tokens_total", "qwen_waiting_requests", "qwen_batch_size_bucket", "qwen_kv_blocks_free",
                 'qwen_requests_total{endpoint="/v1/chat/completions",status="200"}']:
        assert name in text.decode(), name


def test_qwen3_template_thinking_switch(tmp_path):
    """With Qwen3's real template, enable_thinking=false adds the empty think block (server default or per request)."""
    d = thinking_tiny(tmp_path)
    s = Server(str(d), "--chat-template-args", '{"enable_thinking": false}', "--kv-cache-gb", "0.05")
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        off = s.json("POST", "/v1/chat/completions", body)[1]["usage"]["prompt_tokens"]
        on = s.json("POST", "/v1/chat/completions", {**body, "chat_template_kwargs": {"enable_thinking": True}})[1]["usage"]["prompt_tokens"]
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        assert off - on == len(tok.encode("<think>\n\n</think>\n\n").ids)
    finally:
        s.stop()


def test_full_queue_answers_429_with_retry_after():
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--max-running", "1", "--max-waiting", "1", "--kv-cache-gb", "0.05")
    try:
        body = {"messages": MSGS, "max_tokens": 400, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            results = list(ex.map(lambda _: s.request("POST", "/v1/chat/completions", body), range(8)))
        busy = [r for r in results if r[0] == 429]
        assert busy and any(r[0] == 200 for r in results)
        for status, headers, data in busy:
            assert headers.get("Retry-After") == "1"
            assert json.loads(data)["error"]["type"] == "rate_limit_error"
    finally:
        s.stop()


def test_sigterm_finishes_streams_and_exits_cleanly():
    import signal
    import threading
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--shutdown-grace", "0.3", "--kv-cache-gb", "0.05", "--max-running", "1")
    results = []

    def consume():
        results.append(s.stream("/v1/completions", {"prompt": "x", "max_tokens": 500, "stream": True, "ignore_eos": True,
                                                    "stream_options": {"include_usage": True}}))
    threads = [threading.Thread(target=consume) for _ in range(24)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    assert s.proc.wait(timeout=60) == 0
    assert len(results) == 24 and all(r[-1] == "[DONE]" for r in results)
    # Queued requests were cut short after the grace period rather than run to the end.
    generated = [r[-2]["usage"]["completion_tokens"] for r in results]
    assert sum(generated) < 24 * 500, generated
    assert any("stopped" in line for line in s.log)
