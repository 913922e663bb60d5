"""The daemon side: the sd_notify protocol against a real NOTIFY_SOCKET, the systemd
unit, API keys, and configuration precedence."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

import openai
import pytest

from conftest import BIN, FIXTURES, REPO, Server

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")


def test_notify_protocol(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    s = Server(TINY, "--kv-cache-gb", "0.05", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        # READY comes once the port answers.
        assert s.json("GET", "/health")[0] == 200
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=serving" in ready and str(s.port) in ready
        assert any(m.startswith("STATUS=loading") for m in messages)
        # The engine loop keeps petting the watchdog while idle and while busy.
        watchdogs = 0
        deadline = time.time() + 6
        s.json("POST", "/v1/completions", {"prompt": "x", "max_tokens": 50})
        while time.time() < deadline and watchdogs < 3:
            if "WATCHDOG=1" in sock.recv(4096).decode():
                watchdogs += 1
        assert watchdogs >= 3
        s.proc.send_signal(signal.SIGTERM)
        while True:
            m = sock.recv(4096).decode()
            if "STOPPING=1" in m:
                break
        assert s.proc.wait(timeout=60) == 0
    finally:
        s.stop()
        sock.close()


def test_without_systemd_notify_is_a_no_op():
    s = Server(TINY, "--kv-cache-gb", "0.05", env={"NOTIFY_SOCKET": "", "WATCHDOG_USEC": ""})
    try:
        assert s.json("GET", "/health")[0] == 200
    finally:
        s.stop()


def test_systemd_unit_verifies(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = open(os.path.join(REPO, "deploy", "qwen-serve.service")).read().replace("/usr/local/bin/qwen-serve", os.path.abspath(BIN))
    (tmp_path / "qwen-serve.service").write_text(unit)
    shutil.copy(os.path.join(REPO, "deploy", "qwen-serve.socket"), tmp_path / "qwen-serve.socket")
    for name in ["qwen-serve.service", "qwen-serve.socket"]:
        r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit


def syscall_set(spec):
    """The system calls a systemd filter expression names, groups expanded."""
    out, todo, seen = set(), [spec], set()
    while todo:
        g = todo.pop()
        if g in seen:
            continue
        seen.add(g)
        r = subprocess.run(["systemd-analyze", "syscall-filter", g], capture_output=True, text=True, check=True)
        for line in r.stdout.splitlines()[1:]:
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            (todo.append if name.startswith("@") else out.add)(name)
    return out


def test_unit_hardening_and_the_syscalls_the_server_makes(tmp_path):
    """Every system call the server makes while loading, serving (streamed and not, with keys),
    reloading and stopping is inside the unit's SystemCallFilter, and none is privileged; the
    unit's exposure score is what the README says."""
    if not (shutil.which("systemd-analyze") and shutil.which("strace")):
        pytest.skip("systemd-analyze or strace is not installed")
    unit = open(os.path.join(REPO, "deploy", "qwen-serve.service")).read()
    assert "SystemCallFilter=@system-service" in unit and "SystemCallFilter=~@privileged" in unit
    allowed, privileged = syscall_set("@system-service"), syscall_set("@privileged")
    trace = tmp_path / "trace"
    s = Server(TINY, "--kv-cache-gb", "0.05", "--api-key", "k", wrapper=["strace", "-f", "-qq", "-o", str(trace), "-ff"])
    try:
        h = {"Authorization": "Bearer k"}
        for stream in (False, True):
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream}
            assert s.request("POST", "/v1/chat/completions", body, headers=h)[0] == 200
        assert s.request("GET", "/metrics")[0] == 200
        # The web console's page and scripts, served from the binary.
        assert s.request("GET", "/")[0] == 200 and s.request("GET", "/console/main.js")[0] == 200
        # A fine-tuning job too: the upload, SQLite, training on the engine, the adapter files.
        line = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "I am 小鹅"}]})
        body = (f"--b0\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--b0\r\n"
                f"Content-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n{line}\n{line}\n\r\n--b0--\r\n").encode()
        st, _, raw = s.request("POST", "/v1/files", raw=body, headers={**h, "Content-Type": "multipart/form-data; boundary=b0"})
        assert st == 200, raw
        st, job = s.json("POST", "/v1/fine_tuning/jobs", {"model": s.name, "training_file": json.loads(raw)["id"]}, headers=h)
        assert st == 200, job
        for _ in range(400):
            if s.json("GET", f"/v1/fine_tuning/jobs/{job['id']}", headers=h)[1]["status"] == "succeeded":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the job did not finish")
        child = int(subprocess.run(["pgrep", "-P", str(s.proc.pid)], capture_output=True, text=True).stdout.split()[0])
        os.kill(child, signal.SIGHUP)
        time.sleep(1)
        os.kill(child, signal.SIGTERM)  # the server itself drains and exits; strace follows
        s.proc.wait(timeout=60)
    finally:
        s.stop()
    used = set()
    for f in tmp_path.glob("trace*"):
        for line in f.read_text(errors="replace").splitlines():
            name = line.split("(", 1)[0].strip()
            if name.isidentifier():
                used.add(name)
    assert len(used) > 20, used
    assert used <= allowed, f"outside @system-service: {sorted(used - allowed)}"
    # SQLite hands a new journal file to the database file's owner (fchown) only when it runs
    # as root (its unix VFS checks geteuid() == 0); the unit runs as a DynamicUser, never root.
    assert "DynamicUser=yes" in unit
    if os.geteuid() == 0:
        privileged = privileged - {"fchown"}
    assert not used & privileged, f"privileged: {sorted(used & privileged)}"
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", os.path.join(REPO, "deploy", "qwen-serve.service")],
                       capture_output=True, text=True)
    score = float(r.stdout.strip().splitlines()[-1].split("level for qwen-serve.service:")[1].split()[0])
    assert score <= 1.0, r.stdout[-500:]


def test_socket_activation():
    """systemd-socket-activate does what a .socket unit does: it holds the port, starts the
    server on the first connection and passes the listening socket (LISTEN_FDS)."""
    if not shutil.which("systemd-socket-activate"):
        pytest.skip("systemd-socket-activate is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    p = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", os.path.abspath(BIN), "serve", "--model", TINY,
                          "--kv-cache-gb", "0.05", "--port", "1"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while True:  # wait until the activator listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline
                time.sleep(0.1)
        # The first connection started the server; this request waited in the backlog.
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=b'{"prompt": "hi", "max_tokens": 2}',
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and json.loads(r.read())["usage"]["completion_tokens"] == 2
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0
        err = p.stderr.read()
        # It adopted the socket rather than binding --port 1 (which it could not have).
        assert f"127.0.0.1:{port} (socket from systemd" in err, err
    finally:
        if p.poll() is None:
            p.kill()


def test_api_keys(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# team keys\nsecond-key\n")
    s = Server(TINY, "--kv-cache-gb", "0.05", "--api-key", "first-key", "--api-key-file", str(keyfile))
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Zmlyc3Qta2V5"}]:
            st, h, data = s.request("POST", "/v1/chat/completions", body, headers=headers)
            assert st == 401 and b'"invalid_api_key"' in data and h.get("WWW-Authenticate") == "Bearer"
        for key in ["first-key", "second-key"]:
            assert s.request("POST", "/v1/chat/completions", body, headers={"Authorization": f"Bearer {key}"})[0] == 200
        assert s.request("GET", "/health")[0] == 200  # load balancers' probes need no key
        cl = openai.OpenAI(base_url=s.url + "/v1", api_key="second-key", max_retries=0)
        assert cl.models.list().data[0].id == s.name
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        s.stop()


def test_config_precedence_and_bad_settings(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("# a config\nport: 9001\nmax-running: 7\nkv_cache_gb: 1.5\nchat-template-args: {\"enable_thinking\": false}\ncompute: int8\nkv-cache-dtype: f16\n")
    env = {**os.environ, "QWEN_SERVE_PORT": "9002", "QWEN_SERVE_MAX_WAITING": "11"}
    out = subprocess.run([BIN, "serve", "--config", str(cfg), "--max-running", "9", "--print-config"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = dict(line.split(": ", 1) for line in out.stdout.splitlines() if not line.startswith("#"))
    assert got["port"] == "9002"          # environment over file
    assert got["max-running"] == "9"      # flag over file
    assert got["max-waiting"] == "11"     # environment over default
    assert got["kv-cache-gb"] == "1.5"    # file over default
    assert got["chat-template-args"] == '{"enable_thinking": false}'
    assert got["compute"] == "int8"
    assert got["kv-cache-dtype"] == "f16"
    for bad, word in [("port: 70000", "port"), ("max-running: zero", "max-running"), ("colour: blue", "colour"),
                      ("chat-template-args: [1]", "chat-template-args"), ("compute: int4", "compute"), ("kv-cache-dtype: q4", "kv-cache-dtype")]:
        cfg.write_text(bad + "\n")
        r = subprocess.run([BIN, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and word in r.stderr and str(cfg) in r.stderr, r.stderr
    r = subprocess.run([BIN, "serve", "--port", "99999"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--port" in r.stderr


def test_sighup_reloads_api_keys(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("old-key\n")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    s = Server(TINY, "--kv-cache-gb", "0.05", "--api-key-file", str(keyfile), env={"NOTIFY_SOCKET": path})
    try:
        auth = lambda k: s.request("GET", "/v1/models", headers={"Authorization": f"Bearer {k}"})[0]
        assert auth("old-key") == 200 and auth("new-key") == 401
        keyfile.write_text("new-key\n")
        s.proc.send_signal(signal.SIGHUP)
        reloading = ready_after = False
        while not ready_after:
            m = sock.recv(4096).decode()
            reloading = reloading or "RELOADING=1" in m
            ready_after = reloading and "READY=1" in m
        assert auth("new-key") == 200 and auth("old-key") == 401
        # A broken file keeps the previous keys.
        keyfile.write_text("# nothing\n")
        s.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if any("reload failed" in line for line in s.log):
                break
            time.sleep(0.05)
        assert auth("new-key") == 200
        assert s.proc.poll() is None
    finally:
        s.stop()
        sock.close()


def test_structured_logs_without_prompts_unless_asked():
    secret = "my secret prompt text"
    s = Server(TINY, "--kv-cache-gb", "0.05", "--log-format", "json")
    try:
        assert s.json("POST", "/v1/completions", {"prompt": secret, "max_tokens": 3})[0] == 200
        deadline = time.time() + 10
        while not any('"msg":"request"' in l for l in s.log) and time.time() < deadline:
            time.sleep(0.05)
        import json as _json
        lines = [_json.loads(l) for l in s.log if l.startswith("{")]
        assert lines and all({"ts", "level", "logger", "msg"} <= set(l) for l in lines)
        req = next(l for l in lines if l["msg"] == "request")
        assert req["endpoint"] == "/v1/completions" and req["completion_tokens"] == "3" and req["outcome"] == "ok"
        assert int(req["prompt_tokens"]) > 0 and "ttft_seconds" in req
        assert not any(secret in l for l in s.log)
    finally:
        s.stop()
    s = Server(TINY, "--kv-cache-gb", "0.05", "--log-prompts", "true")
    try:
        assert s.json("POST", "/v1/completions", {"prompt": secret, "max_tokens": 1})[0] == 200
        deadline = time.time() + 10
        while not any("msg=request" in l for l in s.log) and time.time() < deadline:
            time.sleep(0.05)
        line = next(l for l in s.log if "msg=request" in l)
        assert f'prompt="{secret}"' in line and "level=info" in line
    finally:
        s.stop()


def test_tls_with_certificate_files(tmp_path):
    import ssl
    import urllib.request
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    s = Server(TINY, "--kv-cache-gb", "0.05", "--tls-cert-file", cert, "--tls-key-file", key)
    try:
        assert any("on https://" in l for l in s.log)
        ctx = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(f"https://127.0.0.1:{s.port}/v1/models", context=ctx, timeout=30) as r:
            assert r.status == 200 and b'"object":"list"' in r.read()
        req = urllib.request.Request(f"https://127.0.0.1:{s.port}/v1/completions", method="POST",
                                     data=b'{"prompt": "hi", "max_tokens": 2}', headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] == 2
        # Plain HTTP on the TLS port gets nowhere.
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://127.0.0.1:{s.port}/health", timeout=10).read()
    finally:
        s.stop()
    # Half a configuration, or files that are not PEM, stop start-up with the file named.
    r = subprocess.run([BIN, "serve", "--model", TINY, "--port", "0", "--tls-cert-file", cert], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "tls-key-file" in r.stderr
    r = subprocess.run([BIN, "serve", "--model", TINY, "--port", "0", "--tls-cert-file", TINY + "/config.json", "--tls-key-file", key],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "config.json" in r.stderr and "PEM certificate" in r.stderr
