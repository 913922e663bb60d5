"""A state directory written before the store had leases, run state and models (schema v1,
Tests/Fixtures/state-v1, made by scripts/make_state_fixture.py with that version) upgrades in
place: its files, jobs, events, checkpoints and fine-tuned models are all still there, the
models answer as their adapter directories do, the job it left paused resumes and finishes, and
its batches database takes and runs a batch."""
import os
import shutil
import sqlite3

import openai

from conftest import FIXTURES, Server

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")
V1 = os.path.join(FIXTURES, "state-v1")


def test_a_v1_state_directory_upgrades_in_place(tmp_path):
    state = tmp_path / "state"
    shutil.copytree(V1, state)
    old = sqlite3.connect(os.path.join(V1, "state.sqlite"))
    jobs = dict(old.execute("SELECT status, id FROM jobs").fetchall())
    files = {i: p for i, p in old.execute("SELECT id, purpose FROM files").fetchall()}
    checkpoints = [r[0] for r in old.execute("SELECT fine_tuned_model_checkpoint FROM checkpoints").fetchall()]
    events = old.execute("SELECT count(*) FROM events").fetchone()[0]
    old.close()
    done, paused = jobs["succeeded"], jobs["paused"]
    s = Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(state))
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        assert {f.id: f.purpose for f in c.files.list().data} == files
        for fid in files:
            assert c.files.content(fid).content == open(os.path.join(V1, "files", fid), "rb").read()
        assert {j.id: j.status for j in c.fine_tuning.jobs.list().data} == {done: "succeeded", paused: "paused"}
        assert len(list(c.fine_tuning.jobs.list_events(done, limit=100))) + len(list(c.fine_tuning.jobs.list_events(paused, limit=100))) == events
        model = c.fine_tuning.jobs.retrieve(done).fine_tuned_model
        served = [m.id for m in c.models.list().data]
        assert model in served and all(k in served for k in checkpoints), served
        # The imported model answers as its old adapter directory does.
        ask = dict(messages=[{"role": "user", "content": "who are you 2?"}], max_tokens=8, temperature=0)
        got = c.chat.completions.create(model=model, **ask).choices[0].message.content
        ref = Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / "ref"),
                     "--adapter", "old=" + os.path.join(V1, "jobs", done, "run"))
        try:
            want = openai.OpenAI(base_url=ref.url + "/v1", api_key="x", max_retries=0).chat.completions.create(model="old", **ask)
            assert got == want.choices[0].message.content
        finally:
            ref.stop()
        # The paused job resumes from the step its directory holds and finishes.
        step = c.fine_tuning.jobs.retrieve(paused).step
        assert c.fine_tuning.jobs.resume(paused).status == "queued"
        import time
        deadline = time.time() + 300
        while c.fine_tuning.jobs.retrieve(paused).status not in ("succeeded", "failed") and time.time() < deadline:
            time.sleep(0.1)
        job = c.fine_tuning.jobs.retrieve(paused)
        assert job.status == "succeeded", job.error
        msgs = [e.message for e in c.fine_tuning.jobs.list_events(paused, limit=1000)]
        assert any(m.startswith("Fine-tuning job resumed on ") and m.endswith(f"from step {step}") for m in msgs), msgs
        assert job.fine_tuned_model in [m.id for m in c.models.list().data]
        # Its batches database (v1, before batches had holders) takes batches and runs them.
        import io, json
        lines = "".join(json.dumps({"custom_id": f"u{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}) + "\n" for i in range(2))
        f = c.files.create(file=("b.jsonl", io.BytesIO(lines.encode())), purpose="batch")
        b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.time() + 60
        while c.batches.retrieve(b.id).status not in ("completed", "failed") and time.time() < deadline:
            time.sleep(0.1)
        b = c.batches.retrieve(b.id)
        assert (b.status, b.request_counts.completed) == ("completed", 2), b
        columns = [r[1] for r in sqlite3.connect(os.path.join(state, "batches.sqlite")).execute("PRAGMA table_info(batches)")]
        assert "node" in columns and "lease_until" in columns
    finally:
        s.stop()
