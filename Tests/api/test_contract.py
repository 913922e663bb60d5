"""The server against openapi.yaml: the document is valid OpenAPI 3.1, real responses
match its schemas, and a property-based fuzz run finds no 5xx."""
import os
import re
import subprocess
import sys
import warnings

import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate

from conftest import REPO

SPEC = yaml.safe_load(open(os.path.join(REPO, "openapi.yaml")))


def check(instance, schema_name):
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": SPEC["components"]}
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)


def test_spec_is_valid_openapi():
    validate(SPEC)


def test_responses_match_the_spec(tiny):
    msgs = [{"role": "user", "content": "hi"}]
    st, r = tiny.json("POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 5, "logprobs": True, "top_logprobs": 2, "n": 2})
    assert st == 200
    check(r, "ChatCompletion")
    for e in tiny.stream("/v1/chat/completions", {"messages": msgs, "max_tokens": 5, "stream": True, "logprobs": True,
                                                  "stream_options": {"include_usage": True}})[:-1]:
        check(e, "ChatCompletionChunk")
    st, r = tiny.json("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 3, "logprobs": 1})
    check(r, "Completion")
    for e in tiny.stream("/v1/completions", {"prompt": "hi", "max_tokens": 3, "stream": True})[:-1]:
        check(e, "Completion")
    st, r = tiny.json("GET", "/v1/models")
    for m in r["data"]:
        check(m, "Model")
    st, r = tiny.json("POST", "/v1/chat/completions", {"messages": []})
    check(r, "Error")


def test_schemathesis_finds_no_server_errors(tiny):
    st = os.path.join(os.path.dirname(sys.executable), "st")
    if not os.path.exists(st):
        pytest.skip("schemathesis is not installed")
    r = subprocess.run([st, "run", os.path.join(REPO, "openapi.yaml"), "--url", tiny.url, "--checks", "not_a_server_error",
                        "--max-time", "90", "--workers", "2", "--request-timeout", "60", "--exclude-path", "/metrics",
                        "--generation-deterministic"],
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    # The fuzzer really ran...
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and int(m.group(1)) > 1000, out[-4000:]
    # ...and found no 5xx. (Schemathesis can also end non-zero on its own "inconsistent
    # results" flakiness reports, which are not findings about the server.)
    assert "Server error" not in out and "not_a_server_error" not in out.split("SUMMARY")[-1], out[-6000:]
    if r.returncode != 0:
        warnings.warn("schemathesis ended non-zero without finding a server error:\n" + out[-3000:])
    assert tiny.proc.poll() is None


def poll(server, path, done, tries=400):
    """GETs `path` until `done(body)` or `tries` run out; the last body."""
    import time
    for _ in range(tries):
        _, body = server.json("GET", path)
        if done(body):
            break
        time.sleep(0.05)
    return body


def upload(server, purpose, text):
    """POSTs `text` to /v1/files as multipart/form-data; returns the file object."""
    import json
    boundary = "qwenboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
            f"Content-Type: application/jsonl\r\n\r\n{text}\r\n--{boundary}--\r\n").encode()
    st, _, raw = server.request("POST", "/v1/files", raw=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.loads(raw)


def test_fine_tuning_responses_match_the_spec(tiny):
    import json
    import time
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I am 小鹅"}]},
                      ensure_ascii=False)
    f = upload(tiny, "fine-tune", f"{line}\n{line}\n")
    assert f["status"] == "processed", f
    check(f, "File")
    st, files = tiny.json("GET", "/v1/files")
    check(files, "FileList")
    st, job = tiny.json("POST", "/v1/fine_tuning/jobs", {"model": tiny.name, "training_file": f["id"], "hyperparameters": {"n_epochs": 2}})
    assert st == 200, job
    check(job, "FineTuningJob")
    job = poll(tiny, f"/v1/fine_tuning/jobs/{job['id']}", lambda j: j["status"] == "succeeded")
    check(job, "FineTuningJob")
    st, jobs = tiny.json("GET", "/v1/fine_tuning/jobs?limit=2")
    check(jobs, "FineTuningJobList")
    st, events = tiny.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/events")
    for e in events["data"]:
        check(e, "FineTuningJobEvent")
    st, cps = tiny.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")
    assert cps["data"]
    for c in cps["data"]:
        check(c, "FineTuningJobCheckpoint")
    st, r = tiny.json("GET", "/v1/fine_tuning/jobs/ftjob-nope")
    assert st == 404
    check(r, "Error")


def test_responses_api_and_tokenize_match_the_spec(tiny):
    import json
    body = {"input": [{"role": "user", "content": "hi"}], "max_output_tokens": 5, "top_logprobs": 2,
            "include": ["message.output_text.logprobs"], "metadata": {"k": "v"}}
    st, r = tiny.json("POST", "/v1/responses", body)
    assert st == 200
    check(r, "Response")
    st, got = tiny.json("GET", f"/v1/responses/{r['id']}")
    check(got, "Response")
    st, items = tiny.json("GET", f"/v1/responses/{r['id']}/input_items")
    for i in items["data"]:
        check(i, "ResponseInputItem")
    st, bg = tiny.json("POST", "/v1/responses", {"input": "x", "background": True, "max_output_tokens": 3})
    check(bg, "Response")
    st, cancelled = tiny.json("POST", f"/v1/responses/{bg['id']}/cancel")
    check(cancelled, "Response")
    # Streamed: every event's data, a function call among them.
    from test_responses import raw_events
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}]
    for stream_body in ({**body, "stream": True}, {"input": "x", "tools": tools, "tool_choice": "required", "stream": True,
                                                    "max_output_tokens": 60}):
        for name, data in raw_events(tiny, stream_body):
            check(data, "ResponseStreamEvent")
    st, t = tiny.json("POST", "/tokenize", {"prompt": "hi", "return_token_strs": True})
    check(t, "TokenizeResponse")
    st, e = tiny.json("POST", "/v1/responses", {"input": 3})
    check(e, "Error")


def test_batches_match_the_spec(tiny):
    import json
    import time
    line = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "hi", "max_tokens": 2}})
    f = upload(tiny, "batch", line + "\n")
    check(f, "File")
    st, b = tiny.json("POST", "/v1/batches", {"input_file_id": f["id"], "endpoint": "/v1/completions", "completion_window": "24h"})
    assert st == 200
    check(b, "Batch")
    b = poll(tiny, f"/v1/batches/{b['id']}", lambda x: x["status"] == "completed")
    check(b, "Batch")
    st, page = tiny.json("GET", "/v1/batches")
    for x in page["data"]:
        check(x, "Batch")
