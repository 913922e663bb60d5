"""The Batch API through the official openai client (max_retries=0): 200-line batches for each
endpoint (some lines naming an adapter) whose greedy bodies equal the same requests sent
interactively, cancel mid-batch, kill -9 mid-batch and restart without duplicates, bad lines
failing with their line numbers, and the endpoint's own errors."""
import io
import json
import os
import signal
import tempfile
import time

import openai
import pytest

from conftest import FIXTURES, Server
from test_contract import check

GGUF = os.path.join(FIXTURES, "qwen3-tiny.gguf")
ADAPTER = os.path.join(FIXTURES, "adapters", "qwen3-all")


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def start(state=None, *extra):
    # int8 compute: every row is computed alone, so a line's answer is the same in any batch.
    return Server(GGUF, "--compute", "int8", "--kv-cache-gb", "0.05", "--adapter", "ada=" + ADAPTER,
                  *(("--state-dir", state) if state else ()), *extra)


@pytest.fixture(scope="module")
def server():
    s = start()
    yield s
    s.stop()


def upload(c, lines):
    data = "".join(json.dumps(l) + "\n" for l in lines).encode()
    return c.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")


def wait(c, batch_id, until=("completed", "failed", "cancelled", "expired"), timeout=600, retrieve=None):
    """The batch (or what `retrieve` reads) once its status is one of `until`."""
    retrieve = retrieve or c.batches.retrieve
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = retrieve(batch_id)
        if b.status in until:
            return b
        time.sleep(0.05)
    raise AssertionError(f"{batch_id} is still {b.status}")


def read_lines(c, file_id):
    if file_id is None:
        return []
    # Lines end at "\n" only: answers may hold U+2028 and the like, which str.splitlines would also split at.
    return [json.loads(l) for l in c.files.content(file_id).text.split("\n") if l.strip()]


def body_for(endpoint, i, model):
    if endpoint == "/v1/chat/completions":
        return {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 6 + i % 5, "temperature": 0}
    if endpoint == "/v1/completions":
        return {"model": model, "prompt": f"Once upon a time {i}", "max_tokens": 6 + i % 5, "temperature": 0}
    return {"model": model, "input": f"question {i}", "max_output_tokens": 6 + i % 5, "temperature": 0}


def text_of(endpoint, body):
    if endpoint == "/v1/chat/completions":
        return body["choices"][0]["message"]["content"]
    if endpoint == "/v1/completions":
        return body["choices"][0]["text"]
    return "".join(p["text"] for o in body["output"] if o["type"] == "message" for p in o["content"])


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
def test_two_hundred_lines_equal_interactive_requests(server, endpoint):
    c = client(server)
    models = [server.name if i % 4 else "ada" for i in range(200)]
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body_for(endpoint, i, models[i])} for i in range(200)]
    f = upload(c, lines)
    assert f.status == "processed" and f.purpose == "batch"
    b = c.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", metadata={"run": "t"})
    assert b.status == "validating" and b.endpoint == endpoint and b.metadata == {"run": "t"}
    b = wait(c, b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (200, 200, 0)
    assert b.error_file_id is None and b.completed_at >= b.in_progress_at >= b.created_at
    out = read_lines(c, b.output_file_id)
    ids = [o["custom_id"] for o in out]
    assert sorted(ids) == sorted(l["custom_id"] for l in lines) and len(set(ids)) == 200
    by_id = {o["custom_id"]: o for o in out}
    # Every body is what the endpoint answers, by the API's own schema.
    schema = {"/v1/chat/completions": "ChatCompletion", "/v1/completions": "Completion", "/v1/responses": "Response"}[endpoint]
    for o in out:
        check(o["response"]["body"], schema)
    # Greedy bodies equal the same requests sent interactively (a sample of them, adapters among them).
    for i in list(range(0, 200, 9)) + [4, 8]:
        o = by_id[f"req-{i}"]
        assert o["response"]["status_code"] == 200 and o["error"] is None
        body = o["response"]["body"]
        assert body["model"] == models[i]
        st, want = server.json("POST", endpoint, body_for(endpoint, i, models[i]))
        assert st == 200
        assert text_of(endpoint, body) == text_of(endpoint, want), i
        usage = body["usage"]
        assert usage == {**usage, **({k: want["usage"][k] for k in ("prompt_tokens", "completion_tokens")} if "prompt_tokens" in usage
                                     else {k: want["usage"][k] for k in ("input_tokens", "output_tokens")})}
    assert any(b.id == x.id for x in c.batches.list(limit=100).data)


def test_bad_lines_fail_the_batch_with_their_line_numbers(server):
    c = client(server)
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}
    raw = "\n".join([
        json.dumps(good),                                                                  # 1
        "{not json",                                                                       # 2
        json.dumps({**good, "custom_id": "a"}),                                            # 3 duplicate
        json.dumps({**good, "custom_id": "b", "url": "/v1/completions"}),                  # 4 another endpoint
        json.dumps({**good, "custom_id": "c", "method": "GET"}),                           # 5
        json.dumps({**good, "custom_id": "d", "body": {**good["body"], "temperature": 9}}),  # 6 the endpoint's own check
        json.dumps({**good, "custom_id": "e", "body": {**good["body"], "model": "nope"}}),  # 7 unknown model
        json.dumps({**good, "custom_id": "f", "body": {**good["body"], "stream": True}}),  # 8
        "",
    ]).encode()
    f = c.files.create(file=("bad.jsonl", io.BytesIO(raw)), purpose="batch")
    # The upload's check already names the lines it can tell are wrong.
    assert f.status == "error" and "line 2" in f.status_details and "line 3" in f.status_details
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b = wait(c, b.id)
    assert b.status == "failed" and b.failed_at and b.output_file_id is None
    assert sorted(e.line for e in b.errors.data) == [2, 3, 4, 5, 6, 7, 8]
    six = next(e for e in b.errors.data if e.line == 6)
    assert six.param == "body.temperature" and "line 6" in six.message
    # Nothing ran.
    assert b.request_counts.completed == 0


def test_runtime_errors_go_to_the_error_file(server):
    c = client(server)
    limit = server.json("GET", f"/v1/models/{server.name}")[1]["max_model_len"]
    lines = [{"custom_id": "ok", "method": "POST", "url": "/v1/completions", "body": {"prompt": "hi", "max_tokens": 3}},
             {"custom_id": "long", "method": "POST", "url": "/v1/completions", "body": {"prompt": "word " * limit, "max_tokens": 3}}]
    b = c.batches.create(input_file_id=upload(c, lines).id, endpoint="/v1/completions", completion_window="24h")
    b = wait(c, b.id)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (1, 1)
    (err,) = read_lines(c, b.error_file_id)
    assert err["custom_id"] == "long" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert [o["custom_id"] for o in read_lines(c, b.output_file_id)] == ["ok"]


def test_cancel_mid_batch(server):
    c = client(server)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
              "body": {"prompt": f"story {i}", "max_tokens": 300, "ignore_eos": True}} for i in range(300)]
    b = c.batches.create(input_file_id=upload(c, lines).id, endpoint="/v1/completions", completion_window="24h")
    b = wait(c, b.id, until=("in_progress",))
    while c.batches.retrieve(b.id).request_counts.completed < 3:
        time.sleep(0.05)
    got = c.batches.cancel(b.id)
    assert got.status in ("cancelling", "cancelled")
    b = wait(c, b.id)
    assert b.status == "cancelled" and b.cancelled_at
    out = read_lines(c, b.output_file_id)
    ids = [o["custom_id"] for o in out]
    assert 3 <= len(ids) < 300 and len(set(ids)) == len(ids) == b.request_counts.completed
    assert all(o["response"]["body"]["usage"]["completion_tokens"] == 300 for o in out)
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(b.id)


def killed_mid_batch(state, endpoint, lines, completed):
    """Starts a server on `state`, runs a batch of `lines` until `completed` are done, then kill -9; the batch's id."""
    s = start(state)
    try:
        c = client(s)
        b = c.batches.create(input_file_id=upload(c, lines).id, endpoint=endpoint, completion_window="24h")
        while c.batches.retrieve(b.id).request_counts.completed < completed:
            time.sleep(0.02)
    finally:
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
    return b.id


def test_kill_mid_batch_and_restart_completes_without_duplicates():
    state = tempfile.mkdtemp(prefix="qwen-state-")
    lines = [{"custom_id": f"k{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": f"go {i}"}], "max_tokens": 60, "temperature": 0,
                       "ignore_eos": True}} for i in range(400)]
    bid = killed_mid_batch(state, "/v1/chat/completions", lines, 20)
    s = start(state)
    try:
        c = client(s)
        before = c.batches.retrieve(bid)
        assert before.status == "in_progress" and 20 <= before.request_counts.completed < 400
        b = wait(c, bid)
        assert b.status == "completed" and (b.request_counts.total, b.request_counts.completed) == (400, 400)
        out = read_lines(c, b.output_file_id)
        ids = [o["custom_id"] for o in out]
        assert len(ids) == len(set(ids)) == 400
        # Lines in order of the input; every answer whole.
        assert ids == [l["custom_id"] for l in lines]
        assert all(o["response"]["body"]["usage"]["completion_tokens"] == 60 for o in out)
    finally:
        s.stop()


def test_batch_endpoint_errors(server):
    c = client(server)
    f = upload(c, [{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {"prompt": "a"}}])
    for kw, param in [({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "1h"}, "completion_window"),
                      ({"metadata": {"k": 1}}, "metadata")]:
        args = {"input_file_id": f.id, "endpoint": "/v1/completions", "completion_window": "24h", **kw}
        with pytest.raises(openai.BadRequestError) as e:
            c.batches.create(**args)
        assert e.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-" + "a" * 24, endpoint="/v1/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_nope")
    tune = c.files.create(file=("t.jsonl", io.BytesIO(b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')),
                          purpose="fine-tune")
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=tune.id, endpoint="/v1/completions", completion_window="24h")


def test_a_batch_past_its_window_expires_with_the_rest_in_the_error_file():
    import sqlite3
    state = tempfile.mkdtemp(prefix="qwen-state-")
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/completions",
              "body": {"prompt": f"tale {i}", "max_tokens": 200, "ignore_eos": True}} for i in range(300)]
    bid = killed_mid_batch(state, "/v1/completions", lines, 2)
    # A day passes while the server is down: the window ends a second ago.
    db = sqlite3.connect(os.path.join(state, "batches.sqlite"))
    db.execute("UPDATE batches SET body = json_set(body, '$.expires_at', ?) WHERE id = ?", (int(time.time()) - 1, bid))
    db.commit()
    db.close()
    s = start(state)
    try:
        c = client(s)
        b = wait(c, bid)
        assert b.status == "expired" and b.expired_at
        done = read_lines(c, b.output_file_id)
        expired = read_lines(c, b.error_file_id)
        assert len(done) >= 2 and len(done) + len(expired) == 300
        assert all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in expired)
        assert sorted(o["custom_id"] for o in done + expired) == sorted(l["custom_id"] for l in lines)
        assert (b.request_counts.completed, b.request_counts.failed) == (len(done), len(expired))
    finally:
        s.stop()
