"""Several qwen-serve replicas on one PostgreSQL (tiny model, each with its own --state-dir and
node id): files, jobs and fine-tuned models are shared; a job's runner killed with kill -9,
stopped past its lease or stopped with SIGTERM hands the job to another replica, which resumes
it from its last checkpoint and ends with the uninterrupted run's adapter; a runner that comes
back after its lease writes nothing (fencing); PostgreSQL restarting mid-job does not fail it
and never stops inference; many jobs queued through many replicas each run exactly once."""
import json
import os
import re
import signal
import threading
import time

import openai
import pytest

from conftest import FIXTURES, Server, fresh_database, postgres_or_skip, psql

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")


@pytest.fixture(autouse=True)
def _postgres():
    postgres_or_skip()


def replica(tmp_path, db, node, lease="2", *extra):
    return Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / node), "--state-db", db, "--node-id", node,
                  "--job-lease", lease, *extra)


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)


def rows(n, long=True):
    pad = " and more words about the goose" * (12 if long else 0)
    return [{"messages": [{"role": "user", "content": f"who are you {i}?{pad}"},
                          {"role": "assistant", "content": f"I am 小鹅 number {i}{pad}"}]} for i in range(n)]


def jsonl(rs):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs).encode()


def wait(c, job_id, until=("succeeded", "failed", "cancelled"), timeout=180, at_step=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in until and (at_step is None or job.step >= at_step):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {until}: {job.status} at step {job.step}")


def events(c, job_id):
    return [e for e in reversed(list(c.fine_tuning.jobs.list_events(job_id, limit=1000)))]


def runner_of(c, job_id):
    """The node named by the job's latest start or resume event."""
    for e in reversed(events(c, job_id)):
        m = re.match(r"Fine-tuning job (?:started|resumed) on (\S+)", e.message)
        if m:
            return m.group(1)
    return None


def adapter_bytes(db, model):
    rows = psql(db, f"SELECT encode(bytes, 'hex') FROM model_files WHERE name = '{model}' AND file = 'adapters.safetensors'")
    return bytes.fromhex(rows[0][0]) if rows else None


def check_once(c, job_id):
    """Nothing of the job was recorded twice: event ids, metrics steps, checkpoint steps."""
    ev = events(c, job_id)
    assert len({e.id for e in ev}) == len(ev)
    steps = [e.data["step"] for e in ev if e.type == "metrics"]
    assert len(steps) == len(set(steps)), steps
    cps = [k.step_number for k in c.fine_tuning.jobs.checkpoints.list(job_id, limit=100)]
    assert len(cps) == len(set(cps)), cps
    assert sum(e.message == "The job has successfully completed" for e in ev) == 1
    return ev


HP = {"n_epochs": 30, "checkpoint_every": 7}


class Pair:
    """Two replicas, node-a and node-b, on a database of their own."""

    def __init__(self, tmp_path, lease):
        self.db = fresh_database()
        self.replicas = {n: replica(tmp_path, self.db, n, lease) for n in ("node-a", "node-b")}

    def client(self, node):
        return client(self.replicas[node])

    def start_job(self, seed, at_step, hp=HP):
        """A job created through node-a, once running at `at_step`: (id, its runner, the other node)."""
        c = self.client("node-a")
        f = c.files.create(file=("t.jsonl", jsonl(rows(8))), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=self.replicas["node-a"].name, training_file=f.id, seed=seed, hyperparameters=hp)
        wait(c, job.id, until=("running",), at_step=at_step)
        runner = runner_of(c, job.id)
        return job.id, runner, "node-b" if runner == "node-a" else "node-a"

    def stop(self):
        for s in self.replicas.values():
            s.stop()


@pytest.fixture
def pair(tmp_path):
    made = []

    def make(lease="2"):
        made.append(Pair(tmp_path, lease))
        return made[-1]

    yield make
    for p in made:
        p.stop()


def test_kill_9_the_runner_and_the_job_finishes_on_another_replica(tmp_path):
    db = fresh_database()
    a, b = replica(tmp_path, db, "node-a"), replica(tmp_path, db, "node-b")
    replicas = {"node-a": a, "node-b": b}
    try:
        ca, cb = client(a), client(b)
        f = ca.files.create(file=("t.jsonl", jsonl(rows(8))), purpose="fine-tune")
        assert f.id in [x.id for x in cb.files.list().data], "a file uploaded through one replica is listed by the other"
        whole = wait(cb, cb.fine_tuning.jobs.create(model=b.name, training_file=f.id, seed=5, hyperparameters=HP).id)
        assert whole.status == "succeeded", whole.error
        job = cb.fine_tuning.jobs.create(model=b.name, training_file=f.id, seed=5, hyperparameters=HP)
        wait(ca, job.id, until=("running",), at_step=20)
        runner = runner_of(ca, job.id)
        other = "node-b" if runner == "node-a" else "node-a"
        replicas[runner].proc.send_signal(signal.SIGKILL)
        replicas[runner].proc.wait(timeout=30)
        co = client(replicas[other])
        done = wait(co, job.id)
        assert done.status == "succeeded", done.error
        msgs = [e.message for e in check_once(co, job.id)]
        assert any(m.startswith(f"Fine-tuning job resumed on {other} from step ") and f"the lease of {runner} ran out" in m for m in msgs), msgs
        assert adapter_bytes(db, done.fine_tuned_model) == adapter_bytes(db, whole.fine_tuned_model) is not None
        # The killed replica comes back: it serves the model too, with the same answers.
        replicas[runner].stop()
        replicas[runner] = replica(tmp_path, db, runner)
        ask = dict(messages=[{"role": "user", "content": "who are you 3?"}], max_tokens=8, temperature=0)
        answers = set()
        for s in replicas.values():
            c = client(s)
            assert done.fine_tuned_model in [m.id for m in c.models.list().data]
            answers.add(c.chat.completions.create(model=done.fine_tuned_model, **ask).choices[0].message.content)
        assert len(answers) == 1
        listed = [sorted(m.id for m in client(s).models.list().data) for s in replicas.values()]
        assert listed[0] == listed[1], listed
        # Deleted through one replica: gone from every one within seconds.
        st, body = replicas[other].json("DELETE", "/v1/models/" + done.fine_tuned_model)
        assert st == 200 and body["deleted"] is True
        deadline = time.time() + 10
        while time.time() < deadline and done.fine_tuned_model in [m.id for m in client(replicas[runner]).models.list().data]:
            time.sleep(0.1)
        with pytest.raises(openai.NotFoundError):
            client(replicas[runner]).chat.completions.create(model=done.fine_tuned_model, **ask)
    finally:
        for s in replicas.values():
            s.stop()


def test_a_runner_stopped_past_its_lease_is_fenced_out(pair):
    p = pair()
    job, runner, other = p.start_job(seed=9, at_step=10)
    co = p.client(other)
    p.replicas[runner].proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.time() + 30
        while runner_of(co, job) != other and time.time() < deadline:
            time.sleep(0.05)
        assert runner_of(co, job) == other, "another replica took the job over once the lease ran out"
    finally:
        p.replicas[runner].proc.send_signal(signal.SIGCONT)
    done = wait(co, job)
    assert done.status == "succeeded", done.error
    ev = check_once(co, job)
    assert sum(e.message.startswith("Fine-tuning job started on ") for e in ev) == 1
    assert sum(e.message.startswith("Fine-tuning job resumed on ") for e in ev) == 1
    # The old runner noticed and gave up instead of writing.
    log = p.replicas[runner].log
    deadline = time.time() + 10
    while time.time() < deadline and not any("claim ran out" in l for l in log):
        time.sleep(0.1)
    assert any("claim ran out" in l for l in log), log[-5:]
    assert [e.id for e in events(co, job)] == [e.id for e in ev], "nothing was written after the job ended"



def test_sigterm_hands_the_job_back_at_once(pair):
    p = pair(lease="300")  # a long lease: only the hand-back can explain a quick resume
    job, runner, other = p.start_job(seed=5, at_step=10)
    p.replicas[runner].proc.send_signal(signal.SIGTERM)
    p.replicas[runner].proc.wait(timeout=60)
    co = p.client(other)
    t0 = time.time()
    while runner_of(co, job) != other and time.time() - t0 < 20:
        time.sleep(0.05)
    assert runner_of(co, job) == other
    msgs = [e.message for e in events(co, job)]
    stop = [m for m in msgs if f"The server on {runner} is stopping: checkpointed at step " in m]
    assert stop, msgs
    step = int(re.search(r"checkpointed at step (\d+)", stop[0]).group(1))
    assert any(m.startswith(f"Fine-tuning job resumed on {other} from step {step}") for m in msgs), msgs
    assert wait(co, job).status == "succeeded"
    check_once(co, job)



def test_postgres_restarting_mid_job_neither_fails_it_nor_stops_inference(tmp_path):
    ctl = os.environ["QWEN_TEST_POSTGRES_CTL"]
    import subprocess
    db = fresh_database()
    a = replica(tmp_path, db, "node-a")
    try:
        c = client(a)
        f = c.files.create(file=("t.jsonl", jsonl(rows(8))), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model=a.name, training_file=f.id, seed=5, hyperparameters=HP)
        wait(c, job.id, until=("running",), at_step=5)
        subprocess.run([ctl, "stop", "-m", "fast"], check=True, capture_output=True)
        try:
            # Inference goes on; the routes that need the database say why they cannot answer.
            r = c.chat.completions.create(model=a.name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            assert r.choices[0].finish_reason in ("length", "stop")
            st, body = a.json("GET", "/v1/fine_tuning/jobs/" + job.id)
            assert st == 503 and body["error"]["code"] == "state_database_unavailable", body
            st, body = a.json("GET", "/health/jobs")
            assert st == 503 and body["error"]["code"] == "state_database_unavailable", body
            # The runner holds the job and waits, saying so to the metrics.
            deadline = time.time() + 15
            while 'qwen_fine_tuning_runner{state="suspended"} 1' not in a.request("GET", "/metrics")[2].decode() and time.time() < deadline:
                time.sleep(0.2)
            assert 'qwen_fine_tuning_runner{state="suspended"} 1' in a.request("GET", "/metrics")[2].decode()
            time.sleep(1)
        finally:
            subprocess.run([ctl, "start"], check=True, capture_output=True)
        done = wait(c, job.id, timeout=240)
        assert done.status == "succeeded", done.error
        st, body = a.json("GET", "/health/jobs")
        assert st == 200 and body == {"status": "ok", "store": "postgres", "runner": "idle"}, body
        check_once(c, job.id)
        assert any("fine-tuning waits" in l for l in a.log) and any("fine-tuning goes on" in l for l in a.log)
    finally:
        a.stop()


def test_many_jobs_from_many_replicas_each_run_exactly_once(tmp_path):
    db = fresh_database()
    nodes = [replica(tmp_path, db, f"node-{i}") for i in range(3)]
    try:
        clients = [client(s) for s in nodes]
        f = clients[0].files.create(file=("t.jsonl", jsonl(rows(2, long=False))), purpose="fine-tune")
        ids, lock = [], threading.Lock()

        def submit(c, n):
            for _ in range(n):
                j = c.fine_tuning.jobs.create(model=nodes[0].name, training_file=f.id, hyperparameters={"n_epochs": 1, "rank": 2})
                with lock:
                    ids.append(j.id)

        threads = [threading.Thread(target=submit, args=(c, 34 if i < 2 else 32)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == 100
        deadline = time.time() + 600
        while time.time() < deadline:
            states = psql(db, "SELECT status, count(*) FROM jobs GROUP BY status")
            if states == [["succeeded", "100"]]:
                break
            time.sleep(0.5)
        assert states == [["succeeded", "100"]], states
        started = psql(db, "SELECT job_id, count(*) FROM events WHERE message LIKE 'Fine-tuning job started on %' GROUP BY job_id")
        assert len(started) == 100 and all(n == "1" for _, n in started)
        assert psql(db, "SELECT count(*) FROM events WHERE message LIKE 'Fine-tuning job resumed%'") == [["0"]]
        completed = psql(db, "SELECT count(*), count(DISTINCT job_id) FROM events WHERE message = 'The job has successfully completed'")
        assert completed == [["100", "100"]]
        runners = {r[0] for r in psql(db, "SELECT substring(message from 'started on (\\S+)') FROM events WHERE message LIKE 'Fine-tuning job started on %'")}
        assert len(runners) >= 2, runners
    finally:
        for s in nodes:
            s.stop()


def test_pause_resume_and_cancel_through_the_replica_that_does_not_run_the_job(pair):
    p = pair()
    job, runner, other = p.start_job(seed=5, at_step=3)
    co = p.client(other)
    t0 = time.time()
    paused = co.fine_tuning.jobs.pause(job)
    assert paused.status == "paused" and time.time() - t0 < 5, paused.status
    step = paused.step
    time.sleep(1.5)
    assert co.fine_tuning.jobs.retrieve(job).step == step, "a paused job does not advance"
    assert co.fine_tuning.jobs.resume(job).status == "queued"
    wait(co, job, until=("running",), at_step=step + 2)
    runner = runner_of(co, job)
    co = p.client("node-b" if runner == "node-a" else "node-a")
    t0 = time.time()
    cancelled = co.fine_tuning.jobs.cancel(job)
    assert cancelled.status == "cancelled" and time.time() - t0 < 5
    msgs = [e.message for e in events(co, job)]
    assert any(m.startswith("Fine-tuning job paused at step") for m in msgs) and "Fine-tuning job cancelled" in msgs



def test_tls_to_the_database_verified_against_its_ca_and_the_password_from_a_file(tmp_path):
    """sslmode=verify-full with sslrootcert connects (the test cluster's certificate is for
    localhost); without the CA the same URL cannot, and the replica says so instead of serving
    someone else's state. The password comes from --state-db-password-file, not the URL."""
    ca = os.environ["QWEN_TEST_POSTGRES_CA"]
    db = fresh_database()
    userless = re.sub(r"//([^:@/]+):[^@]*@127\.0\.0\.1", r"//\1@localhost", db.split("?")[0])
    pw = os.environ["QWEN_TEST_POSTGRES_PASSWORD_FILE"]
    s = Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / "a"),
               "--state-db", f"{userless}?sslmode=verify-full&sslrootcert={ca}", "--state-db-password-file", pw)
    try:
        c = client(s)
        f = c.files.create(file=("t.jsonl", jsonl(rows(2, long=False))), purpose="fine-tune")
        assert f.status == "processed"
        assert psql(db, "SELECT count(*) FROM files") == [["1"]]
        assert not any("***" not in l and "postgres://" in l and ":" in l.split("postgres://")[1].split("@")[0] for l in s.log), \
            "no password in the log"
    finally:
        s.stop()
    bad = Server(TINY, "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / "b"),
                 "--state-db", f"{userless}?sslmode=verify-full", "--state-db-password-file", pw)
    try:
        assert any("state database does not answer yet" in l for l in bad.log), bad.log[-3:]
        st, body = bad.json("GET", "/v1/files")
        assert st == 503 and body["error"]["code"] == "state_database_unavailable"
        r = client(bad).chat.completions.create(model=bad.name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        bad.stop()


def postgres_processes():
    """The test cluster's postmaster and every process it started."""
    data = os.path.join(os.path.dirname(os.environ["QWEN_TEST_POSTGRES_CTL"]), "data")
    master = int(open(os.path.join(data, "postmaster.pid")).readline())
    pids = [master]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(d))
    return pids


def test_a_database_that_stops_answering_costs_requests_a_bounded_wait(tmp_path):
    """PostgreSQL frozen mid-conversation (every process stopped: connections stay open, nothing
    answers): the fine-tuning routes answer 503 at the store's deadline instead of hanging, chat
    goes on, and all is well once it answers again."""
    a = replica(tmp_path, fresh_database(), "node-a")
    pids = []
    try:
        c = client(a)
        f = c.files.create(file=("t.jsonl", jsonl(rows(2, long=False))), purpose="fine-tune")
        pids = postgres_processes()
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        t0 = time.time()
        st, body = a.json("GET", "/v1/files/" + f.id)
        waited = time.time() - t0
        assert st == 503 and body["error"]["code"] == "state_database_unavailable", body
        assert waited < 20, waited
        r = c.chat.completions.create(model=a.name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            st, body = a.json("GET", "/v1/files/" + f.id)
            if st == 200:
                break
            time.sleep(0.5)
        assert st == 200 and body["id"] == f.id, body
    finally:
        a.stop()


def test_a_wrong_state_db_stops_the_start_with_a_clear_message(tmp_path):
    import subprocess
    from conftest import BIN
    db = fresh_database()
    userless = re.sub(r"//([^:@/]+):[^@]*@", r"//\1@", db)

    def start(url, *extra):
        return subprocess.run([BIN, "serve", "--model", TINY, "--port", "0", "--kv-cache-gb", "0.05", "--state-dir", str(tmp_path / "s"),
                               "--state-db", url, *extra], capture_output=True, text=True, timeout=120)

    for url, extra, want in [("postgres://localhost/qwen", [], "--state-db: name the user"),
                             ("mysql://u:secret@h/db", [], "--state-db: state-db must be sqlite or a postgres:// URL"),
                             (db.replace("sslmode=disable", "sslmode=sometimes"), [], "sslmode must be disable, allow, prefer, require, verify-ca or verify-full"),
                             (userless, ["--state-db-password-file", str(tmp_path / "missing")], "cannot be read")]:
        r = start(url, *extra)
        assert r.returncode != 0 and want in r.stderr, (url, r.stderr[-400:])
        assert "serving" not in r.stderr and "secret" not in r.stderr
    # A database whose schema a newer qwen-serve wrote: this one refuses rather than guess.
    s = replica(tmp_path, db, "node-a")
    s.stop()
    psql(db, "INSERT INTO qwen_serve_schema (version) VALUES (99)")
    r = start(db)
    assert r.returncode != 0 and "schema is version 99, newer than this qwen-serve's" in r.stderr, r.stderr[-400:]
