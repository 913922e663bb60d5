"""Speculative decoding over HTTP: every endpoint and feature gives the same output with drafts
verified as without, the drafts are real (usage and /metrics count them), and bad settings are
400s naming the field.

Each case runs once with speculation off, then with `speculative: true` and the first answer as
OpenAI's `prediction`: drafts then come from a text the output repeats, so most are kept, and where
the output leaves it (a seed, a stop string, a grammar) they are refused and rolled back."""
import os

import openai
import pytest

from conftest import FIXTURES, Server, thinking_tiny
from test_contract import check

ADAPTERS = os.path.join(FIXTURES, "adapters")
MSGS = [{"role": "system", "content": "Repeat after me."}, {"role": "user", "content": "one two three, one two three, one two"}]


@pytest.fixture(scope="module")
def server():
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--kv-cache-gb", "0.05",
               "--adapter", "all=" + os.path.join(ADAPTERS, "qwen3-all"))
    yield s
    s.stop()


def output_of(r):
    """What a client sees of a response, without ids, timestamps and the usage."""
    return [{k: v for k, v in c.items()} for c in r["choices"]]


def same(a, b, path="choices"):
    """Equal, log-probabilities within 1e-4: the tiny model's f32 weights take sgemm for a few rows
    where one row takes sgemv, so the last bits of a logit may differ (the int8 mode's are exact)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-4), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def text_of(r, chat):
    c = r["choices"][0]
    return c["message"]["content"] or "" if chat else c["text"]


def both(s, path, body):
    """The response with speculation off, and with it forced on and the first answer as prediction."""
    chat = path.endswith("chat/completions")
    st, off = s.json("POST", path, {**body, "speculative": False})
    assert st == 200, off
    assert off["usage"]["completion_tokens_details"] == {"accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    st, on = s.json("POST", path, {**body, "speculative": {"mode": "ngram", "max_draft_tokens": 5},
                                   "prediction": {"type": "content", "content": text_of(off, chat) + " tail"}})
    assert st == 200, on
    check(on["usage"], "Usage")
    return off, on


CASES = [
    ("chat, greedy, logprobs", "/v1/chat/completions",
     {"messages": MSGS, "max_tokens": 40, "temperature": 0, "logprobs": True, "top_logprobs": 3, "ignore_eos": True}),
    ("completions, greedy, logprobs", "/v1/completions",
     {"prompt": "one two three one two three one", "max_tokens": 40, "temperature": 0, "logprobs": 2, "ignore_eos": True}),
    ("n=3 with a seed", "/v1/chat/completions",
     {"messages": MSGS, "max_tokens": 30, "temperature": 0.8, "top_p": 0.9, "n": 3, "seed": 11, "ignore_eos": True}),
    ("penalties and logit_bias", "/v1/completions",
     {"prompt": "a b c a b c a b", "max_tokens": 30, "temperature": 0, "presence_penalty": 0.5, "frequency_penalty": 0.3,
      "repetition_penalty": 1.1, "logit_bias": {"17": 2.5}, "ignore_eos": True}),
    ("json_schema", "/v1/chat/completions",
     {"messages": MSGS, "max_tokens": 60, "temperature": 0,
      "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": {
          "type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
          "required": ["words"], "additionalProperties": False}}}}),
    ("regex", "/v1/completions", {"prompt": "digits:", "max_tokens": 30, "temperature": 0.7, "seed": 3, "regex": "[0-9]{3}(-[0-9]{3})+"}),
    ("an adapter", "/v1/chat/completions", {"model": "all", "messages": MSGS, "max_tokens": 30, "temperature": 0, "ignore_eos": True}),
    ("the end token", "/v1/completions", {"prompt": "x y z", "max_tokens": 60, "temperature": 0.9, "seed": 5}),
]


@pytest.mark.parametrize("name,path,body", CASES, ids=[c[0] for c in CASES])
def test_same_output_with_speculation_on_and_off(server, name, path, body):
    off, on = both(server, path, body)
    same(output_of(on), output_of(off))
    assert on["usage"]["completion_tokens"] == off["usage"]["completion_tokens"]
    details = on["usage"]["completion_tokens_details"]
    assert details["accepted_prediction_tokens"] > 0, f"{name}: no draft was kept ({details})"


def test_stop_strings_cut_the_same_text(server):
    body = {"prompt": "one two three one two three one", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    st, base = server.json("POST", "/v1/completions", {**body, "speculative": False})
    text = base["choices"][0]["text"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    off, on = both(server, "/v1/completions", {**body, "stop": [stop]})
    same(on["choices"], off["choices"])
    assert on["choices"][0]["finish_reason"] == "stop"
    assert stop not in on["choices"][0]["text"]
    # Streamed, the same text arrives in the same order.
    events = server.stream("/v1/completions", {**body, "stop": [stop], "stream": True, "speculative": True,
                                               "prediction": {"type": "content", "content": text}})
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == off["choices"][0]["text"]


def test_streaming_with_speculation_matches_non_streaming(server):
    body = {"messages": MSGS, "max_tokens": 40, "temperature": 0, "ignore_eos": True, "logprobs": True}
    st, off = server.json("POST", "/v1/chat/completions", {**body, "speculative": False})
    cl = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(cl.chat.completions.create(model=server.name, stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True, "speculative": True,
                                                         "prediction": {"type": "content", "content": off["choices"][0]["message"]["content"]}},
                                             **{k: v for k, v in body.items() if k != "ignore_eos"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == off["choices"][0]["message"]["content"]
    lps = [t.logprob for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    ref = [t["logprob"] for t in off["choices"][0]["logprobs"]["content"]]
    assert lps == pytest.approx(ref, abs=1e-4)
    assert chunks[-1].usage.completion_tokens_details.accepted_prediction_tokens > 0


def test_drafts_are_counted_in_metrics(server):
    before = server.metric("qwen_spec_draft_tokens_total"), server.metric("qwen_spec_accepted_tokens_total")
    off, on = both(server, "/v1/completions", CASES[1][2])
    after = server.metric("qwen_spec_draft_tokens_total"), server.metric("qwen_spec_accepted_tokens_total")
    d = on["usage"]["completion_tokens_details"]
    assert after[0] - before[0] == d["accepted_prediction_tokens"] + d["rejected_prediction_tokens"]
    assert after[1] - before[1] == d["accepted_prediction_tokens"]
    assert 0 < server.metric("qwen_spec_acceptance_rate") <= 1


def test_thinking_model_with_a_schema(tmp_path):
    """Qwen3's template: the reasoning block opens first, then the grammar applies; the same either way."""
    d = thinking_tiny(tmp_path)
    s = Server(str(d), "--kv-cache-gb", "0.05")
    try:
        body = {"messages": [{"role": "user", "content": "one two one two one two"}], "max_tokens": 40, "temperature": 0,
                "response_format": {"type": "json_object"}}
        off, on = both(s, "/v1/chat/completions", body)
        same(output_of(on), output_of(off))
        assert on["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0
    finally:
        s.stop()


def test_server_flag_turns_it_off(tmp_path):
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--kv-cache-gb", "0.05", "--speculative", "off")
    try:
        body = {"prompt": "one two three one two three one", "max_tokens": 20, "temperature": 0, "ignore_eos": True,
                "prediction": {"type": "content", "content": "one two three one two three one two three"}}
        st, r = s.json("POST", "/v1/completions", body)
        assert st == 200 and r["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] == 0
        # A request may still ask for it.
        st, r = s.json("POST", "/v1/completions", {**body, "speculative": {"mode": "ngram"}})
        assert st == 200 and r["usage"]["completion_tokens_details"]["rejected_prediction_tokens"] + \
            r["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0
    finally:
        s.stop()


@pytest.mark.parametrize("field,value,needle", [
    ("speculative", "yes", "must be a boolean or an object"),
    ("speculative", {"mode": "fast"}, "'speculative.mode' must be one of"),
    ("speculative", {"mode": "draft"}, "no draft model"),
    ("speculative", {"max_draft_tokens": 0}, "from 1 to 64"),
    ("speculative", {"depth": 3}, "unknown field 'depth'"),
    ("prediction", "text", "'prediction' must be"),
    ("prediction", {"type": "content", "content": [{"type": "image"}]}, "parts must be"),
])
def test_bad_settings_are_400s(server, field, value, needle):
    st, r = server.json("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2, field: value})
    assert st == 400 and r["error"]["param"] == field and needle in r["error"]["message"], r


def test_a_bad_server_setting_is_refused_by_name():
    import subprocess
    from conftest import BIN
    p = subprocess.run([BIN, "serve", "--model", os.path.join(FIXTURES, "qwen3-tiny-f32"), "--speculative", "always"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "speculative" in p.stderr and "auto, ngram, draft or off" in p.stderr
    p = subprocess.run([BIN, "serve", "--model", os.path.join(FIXTURES, "qwen3-tiny-f32"), "--speculative", "draft"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "draft needs a draft model" in p.stderr, p.stderr


# ---- a draft model (--draft-model) ----

@pytest.fixture(scope="module")
def drafted():
    """The tiny Qwen3 drafting for itself, as its GGUF re-quantization (Q8_0/Q4_0 weights): a
    smaller model of the same vocabulary, as Qwen3-0.6B is for Qwen3-8B."""
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--kv-cache-gb", "0.05", "--draft-model", os.path.join(FIXTURES, "qwen3-tiny.gguf"),
               "--adapter", "all=" + os.path.join(ADAPTERS, "qwen3-all"))
    yield s
    s.stop()


@pytest.mark.parametrize("name,path,body", CASES, ids=[c[0] for c in CASES])
def test_a_draft_model_changes_no_output(drafted, name, path, body):
    st, off = drafted.json("POST", path, {**body, "speculative": False})
    assert st == 200, off
    st, on = drafted.json("POST", path, {**body, "speculative": {"mode": "draft", "max_draft_tokens": 4}})
    assert st == 200, on
    same(output_of(on), output_of(off))
    assert on["usage"]["completion_tokens"] == off["usage"]["completion_tokens"]
    d = on["usage"]["completion_tokens_details"]
    assert d["accepted_prediction_tokens"] + d["rejected_prediction_tokens"] > 0, f"{name}: nothing was drafted"


def test_a_draft_model_drafts_by_default_and_counts(drafted):
    assert "draft model: qwen3-tiny" in "".join(drafted.log)
    before = drafted.metric("qwen_spec_draft_tokens_total")
    body = {"prompt": "one two three", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    st, auto = drafted.json("POST", "/v1/completions", body)  # the server's auto mode: the draft model
    st, off = drafted.json("POST", "/v1/completions", {**body, "speculative": False})
    assert auto["choices"][0]["text"] == off["choices"][0]["text"]
    d = auto["usage"]["completion_tokens_details"]
    assert d["accepted_prediction_tokens"] > 0
    assert drafted.metric("qwen_spec_draft_tokens_total") - before == d["accepted_prediction_tokens"] + d["rejected_prediction_tokens"]
    # Streamed: the same text.
    events = drafted.stream("/v1/completions", {**body, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == off["choices"][0]["text"]


def test_a_draft_model_with_another_tokenizer_is_refused(tmp_path):
    import json
    import shutil
    import subprocess
    from conftest import BIN
    d = tmp_path / "other-vocab"
    shutil.copytree(os.path.join(FIXTURES, "qwen3-tiny-f32"), d)
    tok = json.load(open(d / "tokenizer.json"))
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: the same size, other meanings
    json.dump(tok, open(d / "tokenizer.json", "w"))
    p = subprocess.run([BIN, "serve", "--model", os.path.join(FIXTURES, "qwen3-tiny-f32"), "--draft-model", str(d), "--port", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--draft-model" in p.stderr and "tokenizer" in p.stderr, p.stderr[-800:]
