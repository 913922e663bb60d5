"""Fine-tuning jobs over HTTP with the official openai client (max_retries=0) on the tiny
model: upload, train on the serving engine, chat with the result by name; pagination as the
client pages; cancel, pause/resume; kill -9 and SIGTERM mid-run resume to the same adapter as an
uninterrupted run; bad input gets clear 4xx answers; admin keys guard the routes."""
import json
import os
import signal
import subprocess
import time

import openai
import pytest

from conftest import BIN, FIXTURES, Server, fresh_database, postgres_or_skip

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")

# Every test here runs on both stores: SQLite in the state directory, and PostgreSQL (a database
# of its own per state directory, so a restarted server finds its state again).
STATE_DB = {"backend": "sqlite"}
DATABASES = {}


@pytest.fixture(scope="module", params=["sqlite", "postgres"], autouse=True)
def backend(request):
    if request.param == "postgres":
        postgres_or_skip()
    STATE_DB["backend"] = request.param
    yield request.param
    STATE_DB["backend"] = "sqlite"


def rows(n, long=False):
    pad = " and more words about the goose" * (12 if long else 0)
    return [{"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": f"who are you {i}?{pad}"},
                          {"role": "assistant", "content": f"I am 小鹅 number {i}{pad}"}]} for i in range(n)]


def jsonl(rs):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs).encode()


def serve(state, *extra):
    db = []
    if STATE_DB["backend"] == "postgres":
        if str(state) not in DATABASES:
            DATABASES[str(state)] = fresh_database()
        db = ["--state-db", DATABASES[str(state)]]
    return Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(state), *db, *extra)


def client(s, key="x"):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)


def wait(c, job_id, until=("succeeded", "failed", "cancelled"), timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {until}: {job.status}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, backend):
    s = serve(tmp_path_factory.mktemp("state"))
    yield s
    s.stop()


def test_upload_train_and_chat_by_name(server, tmp_path):
    c = client(server)
    f = c.files.create(file=("train.jsonl", jsonl(rows(8))), purpose="fine-tune")
    assert f.status == "processed" and f.bytes > 0 and f.filename == "train.jsonl" and f.id.startswith("file-")
    v = c.files.create(file=("valid.jsonl", jsonl(rows(3))), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=server.name, training_file=f.id, validation_file=v.id, suffix="goose", seed=7,
                                    method={"type": "supervised", "supervised": {"hyperparameters": {
                                        "n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": "auto", "rank": 4}}},
                                    metadata={"team": "ml"})
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running")
    assert job.hyperparameters.n_epochs == 3 and job.hyperparameters.batch_size == 2
    assert job.hyperparameters.learning_rate_multiplier == 1.0 and job.metadata == {"team": "ml"}
    job = wait(c, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{server.name}:goose:{job.id}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at and len(job.result_files) == 1
    metrics = c.files.content(job.result_files[0]).text
    assert metrics.startswith("step,train_loss,val_loss")
    assert job.fine_tuned_model in [m.id for m in c.models.list().data]
    # Answers with the adapter's tokens: equal to a server loading the saved adapter with --adapter.
    r = c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "who are you 3?"}],
                                  max_tokens=8, temperature=0)
    base = c.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "who are you 3?"}],
                                     max_tokens=8, temperature=0)
    assert r.choices[0].message.content != base.choices[0].message.content
    adapter_dir = os.path.join(server_state(server), "jobs", job.id, "run")
    other = Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / "s2"), "--adapter", f"saved={adapter_dir}")
    try:
        r2 = client(other).chat.completions.create(model="saved", messages=[{"role": "user", "content": "who are you 3?"}],
                                                   max_tokens=8, temperature=0)
        assert r2.choices[0].message.content == r.choices[0].message.content
    finally:
        other.stop()
    # Events newest first, metrics with OpenAI's fields; the client pages with `after`.
    events = list(c.fine_tuning.jobs.list_events(job.id, limit=3))
    assert len(events) == len({e.id for e in events}) > 12
    assert events[0].message == "The job has successfully completed"
    m = [e for e in events if e.type == "metrics"]
    assert m and {"step", "total_steps", "train_loss", "train_mean_token_accuracy"} <= set(m[0].data)
    assert m[0].data["step"] == m[0].data["total_steps"] == 12 and "valid_loss" in m[0].data
    cps = list(c.fine_tuning.jobs.checkpoints.list(job.id, limit=1))
    assert [x.step_number for x in cps] == [12, 8, 4]
    assert all(x.fine_tuned_model_checkpoint in [m.id for m in c.models.list().data] for x in cps)
    # Deleting the model unloads it.
    st, body = server.json("DELETE", "/v1/models/" + job.fine_tuned_model)
    assert st == 200 and body["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "x"}], max_tokens=2)


def server_state(s):
    i = s.proc.args.index("--state-dir")
    return s.proc.args[i + 1]


def test_files_pagination_content_and_delete(server):
    c = client(server)
    ids = [c.files.create(file=(f"f{i}.jsonl", jsonl(rows(2))), purpose="fine-tune").id for i in range(5)]
    listed = [f.id for f in c.files.list(purpose="fine-tune", limit=2)]
    assert all(i in listed for i in ids) and len(listed) == len(set(listed))
    asc = [f.id for f in c.files.list(order="asc", limit=2)]
    assert asc.index(ids[0]) < asc.index(ids[4])
    assert c.files.content(ids[0]).content == jsonl(rows(2))
    assert c.files.delete(ids[0]).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(ids[0])
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=server.name, training_file=ids[0])
    assert "deleted" in str(e.value)


def test_bad_input_answers(server):
    c = client(server)
    bad = jsonl(rows(1)) + b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n{"messages": [{"role": "robot", "content": "x"}]}\n'
    f = c.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert f.status == "error"
    assert "line 2: the chat has no assistant message" in f.status_details and "line 3: not JSON" in f.status_details
    assert "line 4: message 0 has the unknown role" in f.status_details
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=server.name, training_file=f.id)
    assert e.value.body["param"] == "training_file"
    other = c.files.create(file=("x.jsonl", jsonl(rows(2))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=server.name, training_file=other.id)
    assert "purpose 'batch'" in str(e.value)
    good = c.files.create(file=("t.jsonl", jsonl(rows(2))), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=good.id)
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=server.name, training_file=good.id, method={"type": "dpo", "dpo": {}})
    assert e.value.body["param"] == "method.type"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=server.name, training_file=good.id, hyperparameters={"n_epochs": 0})
    assert e.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.create(model=server.name, training_file=good.id,
                                  method={"type": "supervised", "supervised": {"hyperparameters": {"target_modules": ["qkv"]}}})
    assert "no module 'qkv'" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("t.jsonl", jsonl(rows(2))), purpose="nonsense")
    for path in ["/v1/fine_tuning/jobs/ftjob-..%2F..%2Fetc", "/v1/fine_tuning/jobs/nope", "/v1/files/file-../../state.sqlite",
                 "/v1/files/..%2Fstate.sqlite/content"]:
        st, body = server.json("GET", path)
        assert st == 404 and "error" in body, (path, st)
    st, body = server.json("POST", "/v1/files", raw=b"not multipart", headers={"Content-Type": "multipart/form-data"})
    assert st == 400 and body["error"]["param"] == "file"


def test_upload_limit(tmp_path):
    s = serve(tmp_path / "state", "--max-upload-mb", "1")
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client(s).files.create(file=("big.jsonl", b"x" * (2 << 20)), purpose="fine-tune")
        assert e.value.status_code == 413
        assert not [f for f in os.listdir(tmp_path / "state" / "uploads")], "a refused upload leaves nothing behind"
        assert s.json("GET", "/health")[0] == 200
    finally:
        s.stop()


def test_cancel_and_pause_resume(server):
    c = client(server)
    f = c.files.create(file=("t.jsonl", jsonl(rows(8, long=True))), purpose="fine-tune")
    hp = {"n_epochs": 40, "checkpoint_every": 5}
    job = c.fine_tuning.jobs.create(model=server.name, training_file=f.id, hyperparameters=hp, seed=1)
    wait(c, job.id, until=("running",))
    paused = c.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    step = paused.step
    time.sleep(0.3)
    assert c.fine_tuning.jobs.retrieve(job.id).step == step, "a paused job does not advance"
    assert c.fine_tuning.jobs.resume(job.id).status == "queued"
    wait(c, job.id, until=("running",))
    cancelled = c.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.cancel(job.id)
    # Jobs list newest first, paged by the client with `after`.
    ids = [j.id for j in c.fine_tuning.jobs.list(limit=1)]
    assert ids[0] == job.id and len(ids) == len(set(ids)) >= 2


def run_job(state, stop=None, seed=5):
    """Trains one job to the end; `stop` (a signal) hits the server mid-run and a new server
    on the same state directory finishes it. Returns the final adapter's bytes."""
    s = serve(state)
    data = jsonl(rows(8, long=True))
    try:
        c = client(s)
        f = c.files.create(file=("t.jsonl", data), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=s.name, training_file=f.id, seed=seed,
                                        hyperparameters={"n_epochs": 30, "checkpoint_every": 7})
        if stop is not None:
            deadline = time.time() + 60
            while c.fine_tuning.jobs.retrieve(job.id).step < 20 and time.time() < deadline:
                time.sleep(0.01)
            assert c.fine_tuning.jobs.retrieve(job.id).status == "running"
            s.proc.send_signal(stop)
            s.proc.wait(timeout=60)
            s.stop()
            s = serve(state)
            c = client(s)
            assert c.fine_tuning.jobs.retrieve(job.id).status in ("queued", "running")
        job = wait(c, job.id, timeout=300)
        assert job.status == "succeeded", job.error
        events = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=100)]
        if stop is not None:
            assert any(m.startswith("Fine-tuning job resumed on ") and " from step " in m for m in events), events
        if stop == signal.SIGTERM:
            assert any("checkpointed at step" in m for m in events), events
        # Served by name after the restart.
        assert job.fine_tuned_model in [m.id for m in c.models.list().data]
        return open(os.path.join(state, "jobs", job.id, "run", "adapters.safetensors"), "rb").read()
    finally:
        s.stop()


def test_restart_mid_run_gives_the_same_adapter(tmp_path):
    whole = run_job(tmp_path / "whole")
    assert run_job(tmp_path / "killed", stop=signal.SIGKILL) == whole
    assert run_job(tmp_path / "stopped", stop=signal.SIGTERM) == whole


def test_admin_keys_guard_fine_tuning(tmp_path):
    s = serve(tmp_path / "state", "--api-key", "user-key", "--admin-api-key", "admin-key")
    try:
        with pytest.raises(openai.PermissionDeniedError):
            client(s, "user-key").files.list()
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").fine_tuning.jobs.list()
        with pytest.raises(openai.PermissionDeniedError):
            client(s, "user-key").fine_tuning.jobs.create(model=s.name, training_file="file-" + "a" * 24)
        assert client(s, "admin-key").files.list().data == []
    finally:
        s.stop()


def test_second_server_on_a_state_dir_has_fine_tuning_off(server):
    other = Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", server_state(server))
    try:
        st, body = other.json("GET", "/v1/fine_tuning/jobs")
        assert st == 503 and body["error"]["code"] == "fine_tuning_unavailable"
        assert any("another qwen-serve holds" in l for l in other.log)
    finally:
        other.stop()


def test_a_failed_write_fails_the_job_and_serving_goes_on(server):
    """A checkpoint that cannot be written (as on a full disk) fails the job with a clear error;
    the server keeps answering."""
    c = client(server)
    f = c.files.create(file=("t.jsonl", jsonl(rows(8, long=True))), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=server.name, training_file=f.id, hyperparameters={"n_epochs": 40, "checkpoint_every": 3})
    deadline = time.time() + 120
    while c.fine_tuning.jobs.retrieve(job.id).step < 1:  # training, past its preparation
        assert time.time() < deadline, "the job never trained a step"
        time.sleep(0.05)
    run = os.path.join(server_state(server), "jobs", job.id, "run")
    os.rename(run, run + ".moved")  # at once, while the run may be writing into it
    open(run, "w").write("in the way")  # every write under run/ now fails
    job = wait(c, job.id)
    assert job.status == "failed" and job.error.code == "training_failed", job
    assert "run/" in job.error.message and "could not be written" in job.error.message, job.error.message
    r = c.chat.completions.create(model=server.name, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert job.fine_tuned_model is None and job.fine_tuned_model not in [m.id for m in c.models.list().data]


def test_a_job_that_cannot_fit_is_refused_up_front(tmp_path):
    s = serve(tmp_path / "state", "--train-memory-gb", "0.001")
    try:
        c = client(s)
        f = c.files.create(file=("t.jsonl", jsonl(rows(4, long=True))), purpose="fine-tune")
        with pytest.raises(openai.BadRequestError) as e:
            c.fine_tuning.jobs.create(model=s.name, training_file=f.id)
        assert e.value.body["code"] == "insufficient_memory" and "needs about" in e.value.body["message"]
        assert c.fine_tuning.jobs.list().data == []
    finally:
        s.stop()
