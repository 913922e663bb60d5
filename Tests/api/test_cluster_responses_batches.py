"""Stored responses and batches on replicas that share one PostgreSQL (each with its own
--state-dir and node id): a conversation stored through one replica is read, continued and
deleted through another; a background response running on one is cancelled through the other,
and one whose replica was killed ends as failed; a batch created through one replica is listed
by the other, runs on one of them, is finished by the other when its runner is killed — every
custom_id exactly once — and is cancelled through the replica that does not run it; thirty batches
created through three replicas at once each run once."""
import os
import signal
import threading
import time

import openai
import pytest

from conftest import FIXTURES, Server, default_model, fresh_database, postgres_or_skip, psql
from test_batches import read_lines, upload
from test_batches import wait as wait_batch

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")


@pytest.fixture(autouse=True)
def _postgres():
    postgres_or_skip()


def replica(tmp_path, db, node, model=TINY, lease="2"):
    return Server(model, "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / node), "--state-db", db, "--node-id", node,
                  "--job-lease", lease)


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=300)


@pytest.fixture
def replicas(tmp_path):
    """make(model) → {"node-a": Server, "node-b": Server} on a fresh database; stopped at the end."""
    made = []

    def make(model=TINY, lease="2"):
        db = fresh_database()
        made.append({n: replica(tmp_path, db, n, model, lease) for n in ("node-a", "node-b")})
        made[-1]["db"] = db
        return made[-1]

    yield make
    for group in made:
        for k, s in group.items():
            if k != "db":
                s.stop()


def test_a_conversation_stored_through_one_replica_is_read_continued_and_deleted_through_another(replicas):
    r = replicas()
    a, b = client(r["node-a"]), client(r["node-b"])
    model = r["node-a"].name
    first = a.responses.create(model=model, input="my name is Ada", max_output_tokens=6, temperature=0)
    seen = b.responses.retrieve(first.id)
    assert (seen.output_text, seen.status, seen.usage.output_tokens) == (first.output_text, first.status, first.usage.output_tokens)
    assert [i.id for i in b.responses.input_items.list(first.id)] == [i.id for i in a.responses.input_items.list(first.id)]
    # Continued through either replica: the same conversation, so the same greedy answer.
    via_b = b.responses.create(model=model, input="what is my name?", previous_response_id=first.id, max_output_tokens=6, temperature=0)
    via_a = a.responses.create(model=model, input="what is my name?", previous_response_id=first.id, max_output_tokens=6, temperature=0)
    assert via_b.previous_response_id == first.id
    assert via_b.output_text == via_a.output_text
    # Without the stored turn the prompt differs, and so do the prompt tokens.
    alone = b.responses.create(model=model, input="what is my name?", max_output_tokens=6, temperature=0, store=False)
    assert via_b.usage.input_tokens > alone.usage.input_tokens
    # A third turn through a, on b's second: the chain crosses replicas.
    third = a.responses.create(model=model, input="and again?", previous_response_id=via_b.id, max_output_tokens=4, temperature=0)
    assert third.usage.input_tokens > via_b.usage.input_tokens
    # Deleted through b: gone for a, and a conversation through it can no longer be continued.
    b.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError):
        a.responses.create(model=model, input="more", previous_response_id=via_b.id, max_output_tokens=2)


def test_each_key_sees_only_its_own_responses_on_every_replica_and_old_ones_are_purged(tmp_path):
    db = fresh_database()
    # 0.0001 days is 8.64 seconds.
    keys = ("--api-key", "alice-key", "--api-key", "bob-key", "--response-retention-days", "0.0001")
    a, b = (Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / n), "--state-db", db, "--node-id", n, *keys)
            for n in ("node-a", "node-b"))
    try:
        def c(s, key):
            return openai.OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)
        made = time.time()
        r = c(a, "alice-key").responses.create(model=a.name, input="secret", max_output_tokens=3)
        assert c(b, "alice-key").responses.retrieve(r.id).id == r.id
        bob = c(b, "bob-key")
        for call in (lambda: bob.responses.retrieve(r.id), lambda: bob.responses.input_items.list(r.id),
                     lambda: bob.responses.delete(r.id),
                     lambda: bob.responses.create(model=b.name, input="x", previous_response_id=r.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert c(a, "alice-key").responses.retrieve(r.id).id == r.id
        time.sleep(max(0, made + 9.5 - time.time()))
        with pytest.raises(openai.NotFoundError):
            c(b, "alice-key").responses.retrieve(r.id)
        # Purged from the shared database when the next response is stored, through either replica.
        new = c(b, "bob-key").responses.create(model=b.name, input="new", max_output_tokens=2)
        assert [row[0] for row in psql(db, "SELECT id FROM responses")] == [new.id]
    finally:
        a.stop()
        b.stop()


def wait_status(c, rid, until, timeout=60):
    """The response once its status is one of `until`: what retrieve says through `c`."""
    return wait_batch(c, rid, until, timeout, retrieve=c.responses.retrieve)


def test_background_responses_are_cancelled_through_the_other_replica_and_fail_when_their_replica_dies(replicas):
    # The real model: 2,000 tokens take it far longer than the test, so each run is surely mid-way.
    r = replicas(default_model())
    a, b = client(r["node-a"]), client(r["node-b"])
    model = r["node-a"].name
    long = dict(model=model, input="go on", background=True, max_output_tokens=2000, extra_body={"ignore_eos": True})
    run = a.responses.create(**long)
    wait_status(b, run.id, ("in_progress",))
    before = r["node-a"].metric("qwen_requests_cancelled_total") or 0
    started = time.time()
    done = b.responses.cancel(run.id)
    assert done.status == "cancelled"
    assert time.time() - started < 4, "the cancel reached the replica running it at its next heartbeat"
    assert a.responses.retrieve(run.id).status == "cancelled"
    # It was node-a's engine that stopped it (not only the row that changed).
    deadline = time.time() + 5
    while (r["node-a"].metric("qwen_requests_cancelled_total") or 0) <= before and time.time() < deadline:
        time.sleep(0.05)
    assert (r["node-a"].metric("qwen_requests_cancelled_total") or 0) > before
    assert r["node-a"].metric("qwen_running_sequences") == 0
    # A replica killed mid-run: once its lease (2 s) has run out, reading it says failed.
    run = a.responses.create(**long)
    wait_status(b, run.id, ("in_progress",))
    r["node-a"].proc.send_signal(signal.SIGKILL)
    r["node-a"].proc.wait(timeout=30)
    failed = wait_status(b, run.id, ("failed", "cancelled", "completed"), timeout=20)
    assert failed.status == "failed" and failed.error is not None


def lines(n, tokens=40):
    return [{"custom_id": f"k{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": f"go {i}"}], "max_tokens": tokens, "temperature": 0, "ignore_eos": True}}
            for i in range(n)]


def batch_runner(db, bid):
    rows = psql(db, f"SELECT coalesce(node, '') FROM batches WHERE id = '{bid}'")
    return rows[0][0] if rows and rows[0][0] else None


def start_batch(r, n=300, tokens=400):
    """A batch created through node-a, once some lines are done: (id, its runner, the other node)."""
    a = client(r["node-a"])
    batch = a.batches.create(input_file_id=upload(a, lines(n, tokens)).id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 120
    while a.batches.retrieve(batch.id).request_counts.completed < 5:
        assert time.time() < deadline, "the batch did not start"
        time.sleep(0.05)
    runner = batch_runner(r["db"], batch.id)
    assert runner in ("node-a", "node-b")
    return batch.id, runner, "node-b" if runner == "node-a" else "node-a"


def test_sigterm_hands_a_batch_back_at_once(replicas):
    # A 30 s lease: the other replica can only take the batch this soon if it was handed back.
    r = replicas(lease="30")
    bid, runner, other = start_batch(r)
    stopped = time.time()
    r[runner].stop()
    deadline = time.time() + 10
    while batch_runner(r["db"], bid) != other:
        assert time.time() < deadline, f"the batch is still held by {batch_runner(r['db'], bid)}"
        time.sleep(0.05)
    assert time.time() - stopped < 10
    done = wait_batch(client(r[other]), bid)
    assert done.status == "completed" and done.request_counts.completed == 300


def test_a_batch_runs_on_one_replica_and_the_other_finishes_it_when_that_one_is_killed(replicas):
    r = replicas()
    bid, runner, other = start_batch(r)
    assert bid in [x.id for x in client(r["node-b"]).batches.list().data], "a batch created through one replica is listed by the other"
    r[runner].proc.send_signal(signal.SIGKILL)
    r[runner].proc.wait(timeout=30)
    co = client(r[other])
    mid = co.batches.retrieve(bid)
    assert mid.status == "in_progress" and mid.request_counts.completed < 300, "the kill landed mid-batch"
    done = wait_batch(co, bid)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (300, 300, 0)
    assert batch_runner(r["db"], bid) is None, "the finishing replica let go of it"
    out = read_lines(co, done.output_file_id)
    ids = [o["custom_id"] for o in out]
    assert ids == [l["custom_id"] for l in lines(300)], "every line exactly once, in input order"
    assert all(o["response"]["status_code"] == 200 and o["response"]["body"]["usage"]["completion_tokens"] == 400 for o in out)
    assert done.error_file_id is None


def test_a_batch_is_cancelled_through_the_replica_that_does_not_run_it(replicas):
    r = replicas()
    # Long answers: the lines still to run take far longer than a cancel takes to arrive.
    bid, runner, other = start_batch(r, n=400)
    c = client(r[other])
    batch = c.batches.retrieve(bid)
    cancelling = c.batches.cancel(bid)
    assert cancelling.status == "cancelling"
    done = wait_batch(c, bid, timeout=60)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts.completed < 400
    # The runner's engine let go of the lines it had in flight.
    deadline = time.time() + 10
    while r[runner].metric("qwen_running_sequences") != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert r[runner].metric("qwen_running_sequences") == 0
    out = read_lines(c, done.output_file_id)
    ids = [o["custom_id"] for o in out]
    assert len(ids) == len(set(ids)) == done.request_counts.completed


def test_many_batches_from_three_replicas_each_run_once(tmp_path):
    db = fresh_database()
    nodes = [replica(tmp_path, db, f"node-{i}") for i in range(3)]
    try:
        clients = [client(s) for s in nodes]
        made, lock = {}, threading.Lock()

        def submit(k, c):
            for j in range(10):
                want = [dict(l, custom_id=f"r{k}-b{j}-{l['custom_id']}") for l in lines(5, tokens=8)]
                b = c.batches.create(input_file_id=upload(c, want).id, endpoint="/v1/chat/completions", completion_window="24h")
                with lock:
                    made[b.id] = [l["custom_id"] for l in want]

        threads = [threading.Thread(target=submit, args=(k, c)) for k, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(made) == 30
        for i, (bid, want) in enumerate(made.items()):
            done = wait_batch(clients[i % 3], bid, timeout=300)
            assert done.status == "completed" and done.request_counts.completed == 5, done
            out = read_lines(clients[0], done.output_file_id)
            assert [o["custom_id"] for o in out] == want
        assert psql(db, "SELECT count(*) FROM batches WHERE node IS NOT NULL") == [["0"]]
        assert psql(db, "SELECT count(*), count(DISTINCT (batch_id, line)) FROM batch_lines WHERE state = 'ok'") == [["150", "150"]]
        # Each line ran once, on one replica: the engines' finished requests add up to the lines.
        assert sum(s.metric("qwen_request_duration_seconds_count") for s in nodes) == 150
    finally:
        for s in nodes:
            s.stop()
