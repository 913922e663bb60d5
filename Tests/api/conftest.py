"""Starts real qwen-serve processes on loopback ports for the API tests."""
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("QWEN_SERVE_BIN", os.path.join(REPO, ".build", "release", "qwen-serve"))
FIXTURES = os.path.join(REPO, "Tests", "Fixtures")
SHARED = os.path.join(os.path.dirname(REPO), "shared")


class Server:
    def __init__(self, model, *extra, env=None, wrapper=()):
        self.log = []
        if "--state-dir" not in extra:  # never the user's own fine-tuning state
            import tempfile
            extra = (*extra, "--state-dir", tempfile.mkdtemp(prefix="qwen-state-"))
        self.proc = subprocess.Popen([*wrapper, BIN, "serve", "--model", model, "--port", "0", *extra],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 300
        self.port = None
        for line in self.proc.stderr:
            self.log.append(line)
            m = re.search(r"serving (\S+) on https?://[^:]+:(\d+)", line)
            if m:
                self.name, self.port = m.group(1), int(m.group(2))
                break
            if time.time() > deadline:
                break
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method, path, body=None, raw=None, headers=None, timeout=120):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method, path, body=None, **kw):
        status, headers, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None

    def stream(self, path, body, disconnect_after=None):
        """POSTs and parses the SSE stream as a client would; returns the decoded events."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        data = json.dumps(body).encode()
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + data)
        f = s.makefile("rb")
        status = int(f.readline().split()[1])
        chunked = False
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        assert status == 200, f.read()
        events, buf = [], b""
        while True:
            if chunked:
                size = int(f.readline().strip() or b"0", 16)
                if size == 0:
                    break
                buf += f.read(size)
                f.read(2)
            else:
                piece = f.read(4096)
                if not piece:
                    break
                buf += piece
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if ev.startswith(b":"):
                    continue  # an SSE comment: the server's keep-alive
                assert ev.startswith(b"data: "), ev
                payload = ev[6:].decode()
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                if disconnect_after is not None and len(events) >= disconnect_after:
                    s.close()
                    return events
        s.close()
        return events

    def metric(self, name):
        _, _, data = self.request("GET", "/metrics")
        m = re.search(rf"^{name} (\S+)$", data.decode(), re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def tiny():
    s = Server(os.path.join(FIXTURES, "qwen3-tiny-f32"), "--kv-cache-gb", "0.05", "--max-waiting", "64")
    yield s
    s.stop()


def default_model():
    """The default model's path (`make model` fetches it), or a skip."""
    path = subprocess.run([BIN, "fetch", "default"], capture_output=True, text=True).stdout.strip()
    if not path or not os.path.exists(path):
        pytest.skip("the default model is not available (make model fetches it)")
    return path


def thinking_tiny(tmp_path):
    """The tiny Qwen3 with Qwen3's real chat template (from ../shared), or a skip."""
    import shutil
    tpl = os.path.join(SHARED, "data", "templates", "qwen3.jinja")
    if not os.path.exists(tpl):
        pytest.skip(f"Qwen3's template is not at {tpl}")
    d = tmp_path / "qwen3-tiny-thinking"
    shutil.copytree(os.path.join(FIXTURES, "qwen3-tiny-f32"), d)
    cfg = json.load(open(d / "tokenizer_config.json"))
    cfg["chat_template"] = open(tpl).read()
    json.dump(cfg, open(d / "tokenizer_config.json", "w"))
    return d


@pytest.fixture(scope="session")
def real():
    # Pinned to f32: these tests hold the server to transformers' greedy tokens.
    s = Server(default_model(), "--compute", "f32")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(FIXTURES, "qwen3-tiny-f32", "tokenizer.json"))


# PostgreSQL for the shared-state tests: the cluster scripts/with_postgres.sh started (make test
# runs the API tests inside it). Each caller gets a database of its own.
POSTGRES = os.environ.get("QWEN_TEST_POSTGRES")


def postgres_or_skip():
    if not POSTGRES:
        pytest.skip("no PostgreSQL: run through scripts/with_postgres.sh (make test does)")


def fresh_database(prefix="qwen"):
    """A new empty database on the test cluster; returns its URL."""
    postgres_or_skip()
    name = f"{prefix}_{os.getpid()}_{int(time.time() * 1000) % 10**9}_{threading.get_ident() % 1000}"
    admin = POSTGRES.split("?")[0]
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    base, _, query = POSTGRES.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")


def psql(url, sql):
    """Runs SQL on a test database; returns psql's unaligned rows."""
    out = subprocess.run(["psql", url.split("?")[0], "-qAtc", sql], check=True, capture_output=True, text=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]
