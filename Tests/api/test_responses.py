"""The Responses API through the official openai client (max_retries=0): string and item input,
the streamed event sequence, parse() with Pydantic, a function-tool round trip, stored
conversations continued with previous_response_id, retrieve / input_items / delete, another
key's 404, background responses and cancel, truncation, errors; and /tokenize, /detokenize."""
import json
import os
import signal
import socket
import tempfile
import time

import openai
import pytest
from pydantic import BaseModel

from conftest import Server, default_model


def client(server, key="unused"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def real():
    """The default model with its default settings (int8 where the CPU allows)."""
    s = Server(default_model())
    yield s
    s.stop()


def chat_text(server, messages, max_tokens, **extra):
    st, r = server.json("POST", "/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra})
    assert st == 200, r
    return r["choices"][0]["message"]["content"], r


def raw_events(server, body):
    """The SSE stream as sent: (event name, data) pairs."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    data = json.dumps(body).encode()
    s.sendall(f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
              f"Connection: close\r\n\r\n".encode() + data)
    raw = b""
    while True:
        piece = s.recv(65536)
        if not piece:
            break
        raw += piece
    s.close()
    head, _, body_bytes = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], raw[:2000]
    if b"chunked" in head.lower():
        out, rest = b"", body_bytes
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        body_bytes = out
    events = []
    for block in body_bytes.decode().split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# ---------------------------------------------------------------------------------------------
# The tiny model: mechanics.

def test_string_and_item_input_equal_chat_completions(tiny):
    c = client(tiny)
    r = c.responses.create(model=tiny.name, input="Tell me a story", max_output_tokens=12, temperature=0)
    assert r.object == "response" and r.id.startswith("resp_") and r.status in ("completed", "incomplete")
    text, chat = chat_text(tiny, [{"role": "user", "content": "Tell me a story"}], 12)
    assert r.output_text == text
    assert r.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert r.usage.output_tokens == chat["usage"]["completion_tokens"]
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # Items: instructions become the system message; developer is system too; parts are joined.
    items = [{"role": "developer", "content": "Be brief."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_text", "text": "there"}]}]
    r = c.responses.create(model=tiny.name, instructions="You are a poet.", input=items, max_output_tokens=10, temperature=0)
    text, _ = chat_text(tiny, [{"role": "system", "content": "You are a poet."}, {"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hello\nthere"}], 10)
    assert r.output_text == text and r.instructions == "You are a poet."
    assert r.status == "incomplete" or r.status == "completed"
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens" and r.output[-1].status == "incomplete"


def test_stream_event_order_and_sequence_numbers(tiny):
    c = client(tiny)
    # A regex (the server's extension) makes the tiny model's answer end: the stream completes.
    with c.responses.stream(model=tiny.name, input="Say hello", max_output_tokens=40, temperature=0,
                            extra_body={"regex": "hello world"}) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "hello world" == final.output_text
    assert final.status == "completed" and final.usage.output_tokens > 0
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {final.output[0].id}
    # The same request unstreamed gives the same response.
    r = c.responses.create(model=tiny.name, input="Say hello", max_output_tokens=40, temperature=0, extra_body={"regex": "hello world"})
    assert r.output_text == final.output_text and r.usage.output_tokens == final.usage.output_tokens
    # As sent: every event's `event:` line names its type.
    raw = raw_events(tiny, {"model": tiny.name, "input": "hi", "max_output_tokens": 5, "stream": True, "temperature": 0})
    assert all(name == data["type"] for name, data in raw)
    assert raw[-1][0] == "response.incomplete" and raw[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [d["sequence_number"] for _, d in raw] == list(range(len(raw)))


def test_logprobs_are_the_chat_logprobs(tiny):
    c = client(tiny)
    r = c.responses.create(model=tiny.name, input="hi", max_output_tokens=6, temperature=0, top_logprobs=2,
                           include=["message.output_text.logprobs"])
    _, chat = chat_text(tiny, [{"role": "user", "content": "hi"}], 6, logprobs=True, top_logprobs=2)
    got = r.output[0].content[0].logprobs
    want = chat["choices"][0]["logprobs"]["content"]
    assert [x.token for x in got] == [x["token"] for x in want]
    assert all(abs(a.logprob - b["logprob"]) < 1e-5 for a, b in zip(got, want))
    assert all(len(x.top_logprobs) == 2 for x in got)


def test_stored_retrieve_input_items_delete(tiny):
    c = client(tiny)
    r = c.responses.create(model=tiny.name, input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
                           max_output_tokens=4, temperature=0, metadata={"run": "a"})
    got = c.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"run": "a"}
    items = c.responses.input_items.list(r.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["one", "two"] and all(i.id for i in items.data)
    page = c.responses.input_items.list(r.id, limit=1)
    assert page.has_more and page.data[0].content[0].text == "two"
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=tiny.name, input="x", previous_response_id=r.id)
    # store: false keeps nothing.
    r = c.responses.create(model=tiny.name, input="x", max_output_tokens=2, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)


def test_previous_response_id_sends_the_whole_conversation(tiny):
    c = client(tiny)
    r1 = c.responses.create(model=tiny.name, input="first", max_output_tokens=5, temperature=0)
    r2 = c.responses.create(model=tiny.name, input="second", previous_response_id=r1.id, max_output_tokens=5, temperature=0)
    r3 = c.responses.create(model=tiny.name, input="third", previous_response_id=r2.id, max_output_tokens=5, temperature=0)
    msgs = [{"role": "user", "content": "first"}, {"role": "assistant", "content": r1.output_text},
            {"role": "user", "content": "second"}, {"role": "assistant", "content": r2.output_text},
            {"role": "user", "content": "third"}]
    text, chat = chat_text(tiny, msgs, 5)
    assert r3.output_text == text and r3.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert r3.previous_response_id == r2.id
    # Only this turn's input is listed for it.
    assert [i.content[0].text for i in c.responses.input_items.list(r3.id).data] == ["third"]
    # The earlier turns came from the prefix cache.
    assert r3.usage.input_tokens_details.cached_tokens > 0
    # A conversation whose middle was deleted cannot be continued.
    c.responses.delete(r2.id)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=tiny.name, input="fourth", previous_response_id=r3.id, max_output_tokens=2)
    assert e.value.body["param"] == "previous_response_id"


def test_truncation_auto_drops_the_oldest_items(tiny):
    c = client(tiny)
    limit = tiny.json("GET", f"/v1/models/{tiny.name}")[1]["max_model_len"]
    items = [{"role": "user", "content": f"message number {i} " + "word " * 20} for i in range(40)]
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=tiny.name, input=items, max_output_tokens=8)
    assert e.value.body["code"] == "context_length_exceeded"
    r = c.responses.create(model=tiny.name, input=items, max_output_tokens=8, truncation="auto", temperature=0)
    assert r.truncation == "auto" and r.usage.input_tokens + 8 <= limit
    # The newest items were kept, as many as fit: one more would not have.
    def count(n):
        return tiny.json("POST", "/tokenize", {"messages": items[-n:]})[1]["count"]
    kept = next(n for n in range(1, 40) if count(n) == r.usage.input_tokens)
    assert count(kept + 1) + 8 > limit


@pytest.mark.parametrize("body,param", [
    ({"input": 5}, "input"),
    ({"input": [{"type": "input_image", "image_url": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"input": "x", "background": True, "store": False}, "background"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text"),
    ({"input": "x", "metadata": {"k": 5}}, "metadata"),
    ({"input": "x", "include": ["file_search_call.results"]}, "include"),
    ({"input": "x", "truncation": "sometimes"}, "truncation"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": 100000}, "max_output_tokens"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "reasoning": {"effort": "maximal"}}, "reasoning"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object", "patternProperties": {"a": {}}}}}}, "text"),
])
def test_bad_requests_are_400_naming_the_field(tiny, body, param):
    st, r = tiny.json("POST", "/v1/responses", body)
    assert st == 400, r
    assert r["error"]["param"] == param, r


def test_not_found_and_unknown_model(tiny):
    assert tiny.json("GET", "/v1/responses/resp_nope")[0] == 404
    assert tiny.json("GET", "/v1/responses/resp_" + "a" * 24 + "/input_items")[0] == 404
    assert tiny.json("DELETE", "/v1/responses/resp_" + "b" * 24)[0] == 404
    st, r = tiny.json("POST", "/v1/responses", {"input": "x", "previous_response_id": "resp_" + "c" * 24})
    assert st == 404 and r["error"]["code"] == "previous_response_not_found"
    st, r = tiny.json("POST", "/v1/responses", {"input": "x", "model": "no-such-model"})
    assert st == 404 and r["error"]["code"] == "model_not_found"


def test_another_key_cannot_see_or_continue_a_response():
    from conftest import FIXTURES
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--api-key", "alice-key", "--api-key", "bob-key", "--kv-cache-gb", "0.05")
    try:
        alice, bob = client(s, "alice-key"), client(s, "bob-key")
        r = alice.responses.create(model=s.name, input="secret", max_output_tokens=3)
        assert alice.responses.retrieve(r.id).id == r.id
        for call in (lambda: bob.responses.retrieve(r.id), lambda: bob.responses.input_items.list(r.id),
                     lambda: bob.responses.delete(r.id),
                     lambda: bob.responses.create(model=s.name, input="x", previous_response_id=r.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert alice.responses.retrieve(r.id).id == r.id
        with pytest.raises(openai.AuthenticationError):
            client(s, "mallory").responses.retrieve(r.id)
    finally:
        s.stop()


def test_stored_responses_survive_a_restart_and_unfinished_ones_fail():
    state = tempfile.mkdtemp(prefix="qwen-state-")
    # The real model: its 480 tokens take many seconds, so the kill surely lands mid-run.
    model = default_model()
    s = Server(model, "--state-dir", state)
    try:
        c = client(s)
        done = c.responses.create(model=s.name, input="keep me", max_output_tokens=3, temperature=0)
        running = c.responses.create(model=s.name, input="go", background=True, max_output_tokens=480, extra_body={"ignore_eos": True})
    finally:
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
    s = Server(model, "--state-dir", state)
    try:
        c = client(s)
        assert c.responses.retrieve(done.id).output_text == done.output_text
        failed = c.responses.retrieve(running.id)
        assert failed.status == "failed" and failed.error is not None
        r = c.responses.create(model=s.name, input="more", previous_response_id=done.id, max_output_tokens=2)
        assert r.previous_response_id == done.id
    finally:
        s.stop()


def test_responses_older_than_the_retention_are_deleted():
    from conftest import FIXTURES
    # 0.00002 days is 1.7 seconds.
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--response-retention-days", "0.00002", "--kv-cache-gb", "0.05")
    try:
        c = client(s)
        old = c.responses.create(model=s.name, input="old", max_output_tokens=2)
        assert c.responses.retrieve(old.id).id == old.id
        time.sleep(2.5)
        # Gone when asked for, and purged from the database by the next response stored.
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(old.id)
        new = c.responses.create(model=s.name, input="new", max_output_tokens=2)
        assert c.responses.retrieve(new.id).id == new.id
        import sqlite3
        state = s.proc.args[s.proc.args.index("--state-dir") + 1]
        ids = [r[0] for r in sqlite3.connect(os.path.join(state, "responses.sqlite")).execute("SELECT id FROM responses")]
        assert ids == [new.id]
    finally:
        s.stop()


def test_retention_setting_is_checked():
    from conftest import BIN, FIXTURES
    import subprocess
    out = subprocess.run([BIN, "serve", "--model", os.path.join(FIXTURES, "qwen3-tiny-f32"), "--response-retention-days", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "response-retention-days" in out.stderr


# ---------------------------------------------------------------------------------------------
# The real default model: answers that need a model.

def test_background_and_cancel(real):
    # The real model: 480 tokens take it many seconds, so the cancel surely lands mid-run.
    c = client(real)
    r = c.responses.create(model=real.name, input="go on", background=True, max_output_tokens=480, extra_body={"ignore_eos": True})
    assert r.status == "queued" and r.background
    for _ in range(200):
        now = c.responses.retrieve(r.id)
        if now.status == "in_progress":
            break
        time.sleep(0.01)
    done = c.responses.cancel(r.id)
    assert done.status == "cancelled"
    assert c.responses.retrieve(r.id).status == "cancelled"
    # A short one finishes on its own and is stored with its output.
    r = c.responses.create(model=real.name, input="hi", background=True, max_output_tokens=3, temperature=0)
    for _ in range(500):
        now = c.responses.retrieve(r.id)
        if now.status not in ("queued", "in_progress"):
            break
        time.sleep(0.02)
    assert now.status in ("completed", "incomplete") and now.usage.output_tokens > 0
    text, _ = chat_text(real, [{"role": "user", "content": "hi"}], 3)
    assert now.output_text == text
    # Only background responses can be cancelled.
    plain = c.responses.create(model=real.name, input="hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(plain.id)



class City(BaseModel):
    name: str
    country: str
    population_millions: float


def test_parse_with_a_pydantic_model(real):
    c = client(real)
    r = c.responses.parse(model=real.name, input="Describe Paris as JSON with its name, country and population in millions.",
                          text_format=City, max_output_tokens=200, temperature=0)
    assert r.status == "completed"
    assert isinstance(r.output_parsed, City) and r.output_parsed.name


def test_function_tool_round_trip(real):
    c = client(real)
    tools = [{"type": "function", "name": "get_weather", "description": "The current temperature in a city, in Celsius.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    r = c.responses.create(model=real.name, input="What is the temperature in Oslo right now?", tools=tools,
                           tool_choice="required", max_output_tokens=100, temperature=0)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) >= 1 and calls[0].name == "get_weather" and r.status == "completed"
    assert "city" in json.loads(calls[0].arguments)
    r2 = c.responses.create(model=real.name, previous_response_id=r.id, tools=tools, max_output_tokens=60, temperature=0,
                            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "{\"celsius\": 23}"}])
    assert r2.status == "completed" and "23" in r2.output_text
    # Streamed, the call arrives as argument events for the same item.
    with c.responses.stream(model=real.name, input="What is the temperature in Oslo right now?", tools=tools,
                            tool_choice="required", max_output_tokens=100, temperature=0) as s:
        events = list(s)
        final = s.get_final_response()
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == len([o for o in final.output if o.type == "function_call"]) >= 1
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == "".join(e.arguments for e in done)
    assert done[0].arguments == calls[0].arguments


def test_three_turns_recall_a_fact_from_the_first(real):
    c = client(real)
    r1 = c.responses.create(model=real.name, input="My name is Ada and my favourite number is 417.", max_output_tokens=40, temperature=0)
    r2 = c.responses.create(model=real.name, previous_response_id=r1.id, input="What is the capital of France?", max_output_tokens=30, temperature=0)
    r3 = c.responses.create(model=real.name, previous_response_id=r2.id, input="What is my favourite number?", max_output_tokens=30, temperature=0)
    assert "417" in r3.output_text
    # The third request carried only its own question; the server brought the rest.
    own = real.json("POST", "/tokenize", {"prompt": "What is my favourite number?"})[1]["count"]
    assert r3.usage.input_tokens > own + r1.usage.input_tokens


# ---------------------------------------------------------------------------------------------
# /tokenize and /detokenize

def test_tokenize_and_detokenize(tiny, tiny_tokenizer):
    st, r = tiny.json("POST", "/tokenize", {"prompt": "Hello world, 你好"})
    assert st == 200 and r["tokens"] == tiny_tokenizer.encode("Hello world, 你好").ids and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == tiny.json("GET", f"/v1/models/{tiny.name}")[1]["max_model_len"]
    st, r2 = tiny.json("POST", "/tokenize", {"content": "Hello world, 你好", "with_pieces": True})
    assert r2["tokens"] == r["tokens"] and "".join(r2["token_strs"]) == "Hello world, 你好"
    st, d = tiny.json("POST", "/detokenize", {"tokens": r["tokens"]})
    assert st == 200 and d["prompt"] == d["content"] == "Hello world, 你好"
    # A chat prompt counts as chat completions renders it.
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    st, t = tiny.json("POST", "/tokenize", {"messages": msgs})
    _, chat = chat_text(tiny, msgs, 1)
    assert t["count"] == chat["usage"]["prompt_tokens"]
    for body, param in [({"tokens": [-1]}, "tokens"), ({"tokens": [10 ** 9]}, "tokens"), ({"tokens": "x"}, "tokens"),
                        ({}, "prompt"), ({"prompt": 5}, "prompt"), ({"prompt": "x", "messages": msgs}, "messages"),
                        ({"messages": []}, "messages")]:
        path = "/detokenize" if "tokens" in body else "/tokenize"
        st, e = tiny.json("POST", path, body)
        assert st == 400 and e["error"]["param"] == param, (body, e)
    assert tiny.json("POST", "/tokenize", {"prompt": "x", "model": "nope"})[0] == 404


def test_qwen3_reasoning_items_and_effort(tmp_path, tiny_tokenizer):
    """With Qwen3's template the <think> block becomes a reasoning item before the answer, streamed
    as reasoning_text events; it is the chat API's reasoning_content for the same seeded request."""
    from conftest import thinking_tiny
    s = Server(str(thinking_tiny(tmp_path)), "--kv-cache-gb", "0.05")
    try:
        c = client(s)
        close = tiny_tokenizer.token_to_id("</think>")
        # The choice constraint makes the model open its reasoning and then answer one of two words.
        extra = {"choice": ["alpha", "beta"], "logit_bias": {str(close): 3}, "seed": 7}
        r = c.responses.create(model=s.name, input="hi", max_output_tokens=200, temperature=1, extra_body=extra)
        st, chat = s.json("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 200,
                                                          "temperature": 1, **extra})
        msg = chat["choices"][0]["message"]
        kinds = [o.type for o in r.output]
        assert kinds[0] == "reasoning"
        assert r.output[0].content[0].text == msg["reasoning_content"] != ""
        assert r.usage.output_tokens_details.reasoning_tokens > 0
        if chat["choices"][0]["finish_reason"] == "stop":
            assert kinds == ["reasoning", "message"] and r.output_text == msg["content"] and r.status == "completed"
            assert r.usage.output_tokens_details.reasoning_tokens < r.usage.output_tokens
        with c.responses.stream(model=s.name, input="hi", max_output_tokens=200, temperature=1, extra_body=extra) as stream:
            events = list(stream)
        types = [e.type for e in events]
        assert types[2:4] == ["response.output_item.added", "response.content_part.added"] and events[2].item.type == "reasoning"
        first_done = types.index("response.output_item.done")
        assert set(types[4:first_done - 2]) == {"response.reasoning_text.delta"}
        assert types[first_done - 2:first_done] == ["response.reasoning_text.done", "response.content_part.done"]
        assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == msg["reasoning_content"]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        # effort "none" is Qwen3's enable_thinking=false: the template closes the block, no reasoning item.
        r = c.responses.create(model=s.name, input="hi", max_output_tokens=20, temperature=0, reasoning={"effort": "none"},
                               extra_body={"choice": ["alpha", "beta"]})
        off = s.json("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
                                                     "chat_template_kwargs": {"enable_thinking": False}})[1]["usage"]["prompt_tokens"]
        assert [o.type for o in r.output] == ["message"] and r.usage.input_tokens == off
        assert r.reasoning.effort == "none" and r.output_text in ("alpha", "beta")
    finally:
        s.stop()
