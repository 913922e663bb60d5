"""The web console at /, driven in headless Chromium (Debian's chromium and chromium-driver,
installed by `make deps`) against real servers on the tiny fixture model and the default model.

Each browser test ends by checking that the page made no request outside the server's origin and
that the browser logged no Content-Security-Policy violation or uncaught script error.
Screenshots land in .build/console-screenshots (CONSOLE_SCREENSHOTS overrides)."""
import json
import math
import os
import shutil
import time
import urllib.parse

import pytest

from conftest import FIXTURES, REPO, Server, default_model

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")
USER, ADMIN = "console-user-key", "console-admin-key"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS", os.path.join(REPO, ".build", "console-screenshots"))
WEB = os.path.join(REPO, "Sources", "QwenServer", "Console", "web")
PROBE = "<img src=x onerror=document.title='pwned'>"


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    driver_path = shutil.which("chromedriver")
    if not chromium() or not driver_path:
        pytest.skip("headless Chromium is not installed (make deps installs Debian's chromium and chromium-driver)")
    o = webdriver.ChromeOptions()
    o.binary_location = chromium()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(driver_path), options=o)
    d.set_page_load_timeout(60)
    os.makedirs(SHOTS, exist_ok=True)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(TINY, "--kv-cache-gb", "0.05", "--api-key", USER, "--admin-api-key", ADMIN,
               "--state-dir", str(tmp_path_factory.mktemp("console-state")))
    yield s
    s.stop()


def auth(key=USER):
    return {"Authorization": "Bearer " + key}


def wait(d, cond, timeout=60, what="the page"):
    # The page redraws a streaming answer as it grows: an element read mid-redraw is read again.
    return WebDriverWait(d, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
                         ).until(lambda _: cond(), message=f"waited for {what}")


def q(d, testid, many=False):
    sel = f"[data-testid='{testid}']"
    return d.find_elements(By.CSS_SELECTOR, sel) if many else d.find_element(By.CSS_SELECTOR, sel)


def set_field(el, value):
    el.clear()
    el.send_keys(str(value))


def open_console(d, srv, tab="chat", key=USER, admin=ADMIN):
    """A fresh tab state: no keys, no conversations; then the keys typed into the page."""
    fresh_logs(d)
    d.get(srv.url + "/#" + tab)
    d.execute_script("sessionStorage.clear(); localStorage.clear();")
    d.get(srv.url + "/?fresh#" + tab)
    d.refresh()
    for testid, value in (("api-key", key), ("admin-key", admin)):
        if value:
            f = q(d, testid)
            set_field(f, value)
            d.execute_script("arguments[0].dispatchEvent(new Event('change'))", f)
    wait(d, lambda: len(q(d, "model-select").find_elements(By.TAG_NAME, "option")) > 0, what="the model list")


def fresh_logs(d):
    """Leaves the last page and forgets what it logged: each test checks only its own requests."""
    d.get("about:blank")
    d.get_log("performance")
    d.get_log("browser")


def shot(d, name):
    d.save_screenshot(os.path.join(SHOTS, name + ".png"))


def check_clean(d, srv, allowed=()):
    """Every request the page made went to the server's origin (or a blob: it made), and the
    browser logged no CSP violation and no uncaught error."""
    origins = {srv.url, *allowed}
    for entry in d.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") != "Network.requestWillBeSent":
            continue
        url = msg["params"]["request"]["url"]
        if url.startswith(("blob:", "data:", "about:")):
            continue
        p = urllib.parse.urlsplit(url)
        assert f"{p.scheme}://{p.netloc}" in origins, f"the console requested {url}, outside {origins}"
    for entry in d.get_log("browser"):
        text = entry["message"]
        assert "Content Security Policy" not in text and "Uncaught" not in text, text


def chat(d, text, temperature=0, max_tokens=24, tokens=False, timeout=120):
    set_field(d.find_element(By.ID, "chat-temperature"), temperature)
    set_field(d.find_element(By.ID, "chat-max-tokens"), max_tokens)
    toggle = q(d, "token-toggle")
    if toggle.is_selected() != tokens:
        toggle.click()
    before = len(d.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant"))
    set_field(q(d, "chat-input"), text)
    q(d, "chat-send").click()
    wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant")) > before, what="the answer to appear")
    wait(d, lambda: q(d, "chat-send").is_enabled(), timeout=timeout, what="the answer to finish")
    return q(d, "chat-output")


def api_chat(srv, model, text, max_tokens, **extra):
    status, body = srv.json("POST", "/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0, **extra},
        headers=auth())
    assert status == 200, body
    return body["choices"][0]


# ---- served files and headers (no browser) ----

def test_console_files_headers_and_ui_off(server, tmp_path):
    status, headers, body = server.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    html = body.decode()
    assert "<script>" not in html and " on" + "click=" not in html and "style=" not in html, "inline code would break the CSP"
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in sorted(os.listdir(WEB)):
        if name == "index.html":
            continue
        status, headers, body = server.request("GET", "/console/" + name)
        assert status == 200, name
        assert headers["Content-Type"].startswith(types[os.path.splitext(name)[1]]), (name, headers["Content-Type"])
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body == open(os.path.join(WEB, name), "rb").read(), f"{name}: the binary serves another version of the file"
    for path in ("/console/nope.js", "/console/..%2Fconsole.css", "/console/index.html"):
        status, _, body = server.request("GET", path)
        assert status == 404 and json.loads(body)["error"]["message"], path
    # --ui off: no console, the API unchanged.
    off = Server(TINY, "--kv-cache-gb", "0.05", "--ui", "off")
    try:
        status, _, body = off.request("GET", "/")
        assert status == 404 and "error" in json.loads(body)
        assert off.request("GET", "/console/main.js")[0] == 404
        assert off.json("GET", "/v1/models")[0] == 200
    finally:
        off.stop()
    cfg = tmp_path / "serve.conf"
    cfg.write_text("ui: maybe\n")
    import subprocess
    from conftest import BIN
    r = subprocess.run([BIN, "serve", "--model", TINY, "--config", str(cfg), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "ui must be on or off" in r.stderr, r.stderr


# ---- chat ----

def test_chat_streams_and_token_view_matches_the_api(browser, server):
    d = browser
    open_console(d, server)
    out = chat(d, "Hello there", max_tokens=24, tokens=True)
    spans = q(d, "token-view").find_elements(By.CSS_SELECTOR, "span.tok")
    ref = api_chat(server, server.name, "Hello there", 24, logprobs=True, top_logprobs=5)
    want = ref["logprobs"]["content"]
    assert out.get_attribute("data-raw") == ref["message"]["content"], "the streamed answer is the API's greedy answer"
    assert len(spans) == len(want) == 24
    for span, w in zip(spans, want):
        assert span.get_attribute("data-token") == w["token"]
        assert math.isclose(float(span.get_attribute("data-logprob")), w["logprob"], abs_tol=1e-5)
    # The colour follows the probability, and hovering shows the alternatives.
    from selenium.webdriver import ActionChains
    ActionChains(d).move_to_element(spans[0]).perform()
    tip = d.find_element(By.ID, "tooltip")
    wait(d, lambda: tip.is_displayed(), what="the tooltip")
    assert f"p={math.exp(want[0]['logprob']):.4f}" in tip.text
    for alt in want[0]["top_logprobs"][:3]:
        assert json.dumps(alt["token"], ensure_ascii=False) in tip.text
    shot(d, "chat")
    # The conversation is kept in the browser and comes back after a reload.
    d.refresh()
    wait(d, lambda: q(d, "chat-output").get_attribute("data-raw") == ref["message"]["content"], what="the kept conversation")
    stored = json.loads(d.execute_script("return localStorage.getItem('qwen-serve.conversations')"))
    assert stored[0]["messages"][0]["content"] == "Hello there"
    check_clean(d, server)


def test_conversations_export_as_json(browser, server, tmp_path):
    d = browser
    open_console(d, server)
    set_field(d.find_element(By.ID, "chat-system"), "be brief")
    out = chat(d, "first question", max_tokens=6)
    first = out.get_attribute("data-raw")
    out = chat(d, "second question", max_tokens=6)
    d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    q(d, "chat-export").click()
    path = tmp_path / "qwen-serve-conversations.json"
    wait(d, lambda: path.exists() and path.stat().st_size > 0, what="the download")
    time.sleep(0.2)
    convs = json.loads(path.read_text())
    msgs = convs[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "first question" and msgs[1]["content"] == first and msgs[1]["model"] == server.name
    # The second turn was sent with the whole conversation, as the API would answer it.
    st, ref = server.json("POST", "/v1/chat/completions", {"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "first question"},
        {"role": "assistant", "content": first}, {"role": "user", "content": "second question"}], "max_tokens": 6, "temperature": 0},
        headers=auth())
    assert msgs[3]["content"] == ref["choices"][0]["message"]["content"] == out.get_attribute("data-raw")
    # Bad extra fields are refused on the page, before any request.
    d.find_element(By.CSS_SELECTOR, "details.extra summary").click()
    set_field(q(d, "chat-extra"), "{not json")
    set_field(q(d, "chat-input"), "third")
    q(d, "chat-send").click()
    wait(d, lambda: "not JSON" in q(d, "chat-status").text, what="the refusal")
    assert len(d.find_elements(By.CSS_SELECTOR, "#chat-log .msg.user")) == 2
    check_clean(d, server)


def test_qwen3_reasoning_shows_in_its_own_block(browser, tmp_path, tiny_tokenizer):
    from conftest import thinking_tiny
    s = Server(str(thinking_tiny(tmp_path)), "--kv-cache-gb", "0.05", "--api-key", USER)
    try:
        d = browser
        open_console(d, s, admin=None)
        close = tiny_tokenizer.token_to_id("</think>")
        # As in the Responses test: a choice constraint makes the model reason, then answer a word.
        extra = {"choice": ["alpha", "beta"], "logit_bias": {str(close): 3}, "seed": 7}
        d.find_element(By.CSS_SELECTOR, "details.extra summary").click()
        set_field(q(d, "chat-extra"), json.dumps(extra))
        out = chat(d, "hi", temperature=1, max_tokens=200)
        st, ref = s.json("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
                                                          "temperature": 1, **extra}, headers=auth())
        want = ref["choices"][0]["message"]
        assert want["reasoning_content"]
        block = q(d, "chat-reasoning")
        assert block.tag_name == "details" and block.get_attribute("open") is None, "reasoning starts folded"
        block.find_element(By.TAG_NAME, "summary").click()
        assert block.find_element(By.TAG_NAME, "div").text.strip() == want["reasoning_content"].strip()
        assert out.get_attribute("data-raw") == (want["content"] or "")
        shot(d, "chat-reasoning")
        check_clean(d, s)
    finally:
        s.stop()


def test_keys_come_from_the_page(browser, server, tmp_path):
    d = browser
    fresh_logs(d)
    d.get(server.url + "/#chat")
    d.execute_script("sessionStorage.clear(); localStorage.clear();")
    d.refresh()
    banner = d.find_element(By.ID, "banner")
    wait(d, lambda: banner.is_displayed() and "API key" in banner.text, what="the key prompt")
    # A user key chats but may not fine-tune: the server's 403 is shown where the action was.
    f = q(d, "api-key")
    set_field(f, USER)
    d.execute_script("arguments[0].dispatchEvent(new Event('change'))", f)
    wait(d, lambda: len(q(d, "model-select").find_elements(By.TAG_NAME, "option")) == 1, what="the model list")
    assert d.execute_script("return sessionStorage.getItem('qwen-serve.api-key')") == USER
    assert d.execute_script("return localStorage.getItem('qwen-serve.api-key')") is None, "keys stay in the tab"
    path = str(tmp_path / "upload.jsonl")
    open(path, "w").write(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    d.get(server.url + "/#tuning")
    q(d, "job-upload").send_keys(path)
    status = q(d, "upload-status")
    wait(d, lambda: "error" in status.get_attribute("class") and "admin" in status.text.lower(), what="the refusal")
    check_clean(d, server)


def test_stop_ends_the_generation_on_the_server(browser):
    real = Server(default_model(), "--api-key", USER)
    try:
        d = browser
        open_console(d, real, admin=None)
        set_field(d.find_element(By.ID, "chat-max-tokens"), 3000)
        set_field(d.find_element(By.ID, "chat-temperature"), 0.7)
        set_field(q(d, "chat-input"), "Write a very long story about a lighthouse keeper, chapter by chapter.")
        cancelled = real.metric("qwen_requests_cancelled_total")
        q(d, "chat-send").click()
        wait(d, lambda: len(q(d, "chat-output").text) > 20, what="streamed text")
        assert real.metric("qwen_running_sequences") == 1
        q(d, "chat-stop").click()
        wait(d, lambda: real.metric("qwen_running_sequences") == 0, timeout=10, what="the server to stop generating")
        assert real.metric("qwen_requests_cancelled_total") == cancelled + 1
        assert real.metric("qwen_generation_tokens_total") < 1000
        wait(d, lambda: "stopped" in d.find_element(By.CSS_SELECTOR, "#chat-log .msg.assistant:last-child .meta").text,
             what="the answer marked stopped")
        assert q(d, "chat-send").is_enabled() and not q(d, "chat-stop").is_enabled()
        check_clean(d, real)
    finally:
        real.stop()


def test_model_text_and_file_names_render_as_text(browser, server, tmp_path):
    d = browser
    open_console(d, server)
    # A real answer that is the probe: the model constrained to say exactly it, streamed into the page.
    d.find_element(By.CSS_SELECTOR, "details.extra summary").click()
    set_field(q(d, "chat-extra"), json.dumps({"choice": [PROBE + " **<b>x</b>**"]}))
    out = chat(d, "say it", max_tokens=64)
    assert out.get_attribute("data-raw") == PROBE + " **<b>x</b>**"
    assert PROBE in out.text and out.find_element(By.TAG_NAME, "strong").text == "<b>x</b>"
    assert not d.find_elements(By.CSS_SELECTOR, "#chat-log img, #chat-log b")
    assert d.title == "qwen-serve"
    # A kept conversation whose answer holds HTML and script, rendered by the path every answer takes.
    answer = (f"<think>\nplanning {PROBE}\n</think>\n\n"
              f"Here: {PROBE}\n\n```html\n<script>document.title='pwned'</script>\n```\n\n**bold** <b>not bold</b>")
    conv = [{"id": "x", "title": PROBE, "created": 0, "model": server.name,
             "messages": [{"role": "user", "content": PROBE}, {"role": "assistant", "content": answer, "model": server.name}]}]
    d.execute_script("localStorage.setItem('qwen-serve.conversations', arguments[0])", json.dumps(conv))
    d.refresh()
    out = wait(d, lambda: q(d, "chat-output"), what="the kept answer")
    assert PROBE in out.text and "<script>document.title='pwned'</script>" in out.text and "<b>not bold</b>" in out.text
    assert out.find_element(By.TAG_NAME, "strong").text == "bold"
    assert out.find_element(By.TAG_NAME, "pre").text == "<script>document.title='pwned'</script>"
    # A <think> block left in the answer (a template that does not separate reasoning) is folded apart.
    assert "<think>" not in out.text and "planning" not in out.text
    assert q(d, "chat-reasoning").find_element(By.TAG_NAME, "div").get_attribute("textContent").strip() == f"planning {PROBE}"
    assert PROBE in d.find_element(By.CSS_SELECTOR, "#chat-log .msg.user").text
    assert PROBE in q(d, "chat-list").text
    # A training file named like the probe: its name shows as text in the table.
    bad_name = tmp_path / (PROBE.replace("/", "_") + ".jsonl")
    bad_name.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    d.get(server.url + "/#tuning")
    q(d, "job-upload").send_keys(str(bad_name))
    wait(d, lambda: PROBE in q(d, "files-table").text, what="the file listed")
    assert not d.find_elements(By.CSS_SELECTOR, "img[src='x'], img[onerror], script:not([src])")
    assert d.title == "qwen-serve", "no injected handler ran"
    check_clean(d, server)


def test_upload_shows_the_servers_line_errors(browser, server, tmp_path):
    d = browser
    open_console(d, server, tab="tuning")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n"
                    + "not json at all\n")
    q(d, "job-upload").send_keys(str(path))
    status = q(d, "upload-status")
    wait(d, lambda: "error" in status.get_attribute("class"), what="the upload's check")
    assert "bad.jsonl" in status.text and "line 2" in status.text, status.text
    row = wait(d, lambda: [r for r in q(d, "files-table").find_elements(By.TAG_NAME, "tr") if "bad.jsonl" in r.text], what="the row")
    assert "error" in row[0].text
    # A file that failed its check is not offered for training.
    assert "bad.jsonl" not in q(d, "job-train").text
    shot(d, "upload-error")
    # The self-cognition chats (../shared), as a user would bring them, pass the same check.
    from conftest import SHARED
    data = os.path.join(SHARED, "data", "self_cognition")
    if os.path.isdir(data):
        for name in sorted(os.listdir(data)):
            if name.endswith(".jsonl"):
                lines = sum(1 for line in open(os.path.join(data, name)) if line.strip())
                q(d, "job-upload").send_keys(os.path.join(data, name))
                wait(d, lambda: name in status.text and "ok" in status.get_attribute("class"), what=f"{name} accepted")
                assert f"{lines} examples" in status.text
    else:
        print(f"the self-cognition data is not at {data}: only the generated files are uploaded")
    check_clean(d, server)


def training_rows(n):
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"who are you {i}? tell me about the goose"},
                                            {"role": "assistant", "content": f"I am 小鹅 number {i}, a small goose."}]},
                              ensure_ascii=False) + "\n" for i in range(n))


def test_fine_tune_live_then_chat_with_a_checkpoint_and_compare(browser, server, tmp_path):
    d = browser
    open_console(d, server, tab="tuning")
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    train.write_text(training_rows(12))
    valid.write_text(training_rows(3))
    for f in (train, valid):
        q(d, "job-upload").send_keys(str(f))
        wait(d, lambda: f.name in q(d, "upload-status").text and "ok" in q(d, "upload-status").get_attribute("class"),
             what=f"{f.name} accepted")
    wait(d, lambda: "train.jsonl" in q(d, "job-train").text and "valid.jsonl" in q(d, "job-valid").text, what="the file choices")
    Select(q(d, "job-train")).select_by_visible_text("train.jsonl (12 examples)")
    Select(q(d, "job-valid")).select_by_visible_text("valid.jsonl (3 examples)")
    set_field(d.find_element(By.ID, "job-epochs"), 40)
    set_field(q(d, "job-every"), 60)
    set_field(d.find_element(By.ID, "job-suffix"), "goose")
    set_field(d.find_element(By.ID, "job-seed"), 3)
    q(d, "job-create").click()
    title = wait(d, lambda: q(d, "job-title").text.startswith("ftjob-") and q(d, "job-title").text, what="the job page")

    def points(series="train"):  # read in one script: the chart is redrawn as events arrive
        return d.execute_script("return [...document.querySelectorAll(`[data-testid='loss-chart'] circle[data-series='${arguments[0]}']`)]"
                                ".map(c => Number(c.dataset.step))", series)
    wait(d, lambda: len(points()) >= 1, what="the first loss point")
    first = len(points())
    # Pause from the page, see it hold, resume, and watch the curve gain points.
    q(d, "job-pause").click()
    wait(d, lambda: q(d, "job-status").text == "paused", what="the pause")
    q(d, "job-resume").click()
    wait(d, lambda: len(points()) > first, timeout=120, what="new loss points")
    shot(d, "fine-tuning-running")
    wait(d, lambda: q(d, "job-status").text == "succeeded", timeout=300, what="the job to finish")
    assert server.metric("qwen_training_seconds_total") > 0, "the engine time training took is in /metrics (the server view's share)"
    wait(d, lambda: q(d, "job-checkpoints", many=True) and len(q(d, "open-checkpoint", many=True)) >= 2, what="the checkpoints")
    # What is plotted is what the API reports, step for step.
    status, body = server.json("GET", f"/v1/fine_tuning/jobs/{title}/events?limit=1000", headers=auth(ADMIN))
    steps = sorted({e["data"]["step"] for e in body["data"] if e.get("type") == "metrics" and "train_loss" in e["data"]})
    try:
        wait(d, lambda: sorted(points()) == steps, what="every reported step plotted")
    except TimeoutException:
        got = sorted(points())
        raise AssertionError(f"plotted {len(got)} {got[:10]}…{got[-10:]}, reported {len(steps)} {steps[:10]}…{steps[-10:]}")
    rows = sorted((e["data"] for e in body["data"] if e.get("type") == "metrics" and "valid_loss" in e["data"]), key=lambda r: r["step"])
    evaluated = [r["step"] for i, r in enumerate(rows) if i == 0 or r["valid_loss"] != rows[i - 1]["valid_loss"]]
    assert len(evaluated) >= 2 and sorted(points("validation")) == evaluated, "validation points where an evaluation reported"
    shot(d, "fine-tuning")
    # A checkpoint opens in Chat with that model chosen, and answers.
    button = q(d, "open-checkpoint", many=True)[0]
    ckpt = button.get_attribute("data-model")
    assert ":ckpt-step-" in ckpt
    button.click()
    wait(d, lambda: d.find_element(By.ID, "page-chat").is_displayed(), what="the chat page")
    wait(d, lambda: Select(q(d, "model-select")).first_selected_option.get_attribute("value") == ckpt, what="the checkpoint chosen")
    out = chat(d, "who are you 3? tell me about the goose", max_tokens=16)
    assert out.get_attribute("data-raw") == api_chat(server, ckpt, "who are you 3? tell me about the goose", 16)["message"]["content"]
    # Compare: the base and the fine-tune side by side, each the API's own answer.
    status, job = server.json("GET", f"/v1/fine_tuning/jobs/{title}", headers=auth(ADMIN))
    tuned = job["fine_tuned_model"]
    assert tuned and ":goose:" in tuned
    d.get(server.url + "/#compare")
    wait(d, lambda: tuned in q(d, "compare-model-b").text, what="the fine-tune listed")
    Select(q(d, "compare-model-a")).select_by_value(server.name)
    Select(q(d, "compare-model-b")).select_by_value(tuned)
    set_field(d.find_element(By.ID, "compare-max-tokens"), 16)
    set_field(q(d, "compare-input"), "who are you 5? tell me about the goose")
    d.find_element(By.ID, "compare-send").click()
    wait(d, lambda: d.find_element(By.ID, "compare-send").is_enabled() and q(d, "compare-output-b").get_attribute("data-raw"),
         what="both answers")
    for side, model in (("a", server.name), ("b", tuned)):
        want = api_chat(server, model, "who are you 5? tell me about the goose", 16)["message"]["content"]
        assert q(d, "compare-output-" + side).get_attribute("data-raw") == want, side
    assert "小鹅" in q(d, "compare-output-b").text, "the fine-tune learnt its name"
    shot(d, "compare")
    check_clean(d, server)


def test_models_page_loads_and_unloads_an_adapter(browser, server):
    d = browser
    open_console(d, server, tab="models")
    set_field(q(d, "adapter-name"), "console-adapter")
    set_field(q(d, "adapter-path"), os.path.join(FIXTURES, "adapters", "qwen3-all"))
    q(d, "adapter-load").click()
    wait(d, lambda: "console-adapter" in q(d, "models-table").text, what="the adapter listed")
    assert server.json("GET", "/v1/models/console-adapter", headers=auth())[0] == 200
    assert "console-adapter" in q(d, "model-select").get_attribute("textContent")
    shot(d, "models")
    button = d.find_element(By.CSS_SELECTOR, "[data-testid='model-remove'][data-model='console-adapter']")
    button.click()
    d.switch_to.alert.accept()
    wait(d, lambda: "console-adapter" not in q(d, "models-table").text, what="the adapter gone")
    assert server.json("GET", "/v1/models/console-adapter", headers=auth())[0] == 404
    # A bad path: the server's message, shown as text.
    set_field(q(d, "adapter-name"), "broken")
    set_field(q(d, "adapter-path"), "/nonexistent/adapter")
    q(d, "adapter-load").click()
    wait(d, lambda: "error" in q(d, "models-status").get_attribute("class") and "/nonexistent/adapter" in q(d, "models-status").text,
         what="the load error")
    # A fine-tune (trained through the API) is deleted from the page.
    boundary = "b0"
    data = training_rows(4)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n{data}\r\n--{boundary}--\r\n").encode()
    st, _, raw = server.request("POST", "/v1/files", raw=body, headers={**auth(ADMIN), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert st == 200, raw
    st, job = server.json("POST", "/v1/fine_tuning/jobs", {"model": server.name, "training_file": json.loads(raw)["id"],
                                                           "suffix": "doomed", "hyperparameters": {"n_epochs": 1}}, headers=auth(ADMIN))
    assert st == 200, job
    for _ in range(600):
        job = server.json("GET", f"/v1/fine_tuning/jobs/{job['id']}", headers=auth(ADMIN))[1]
        if job["status"] == "succeeded":
            break
        time.sleep(0.1)
    tuned = job["fine_tuned_model"]
    assert tuned
    assert server.json("GET", "/v1/models/" + urllib.parse.quote(tuned, safe=""), headers=auth())[1]["id"] == tuned, \
        "a percent-encoded name is the same name"
    row = f"#models-table tr[data-model='{tuned}']"  # its checkpoints' names begin with its name
    wait(d, lambda: d.find_elements(By.CSS_SELECTOR, row), timeout=20, what="the fine-tune listed")
    d.find_element(By.CSS_SELECTOR, f"[data-testid='model-remove'][data-model='{tuned}']").click()
    d.switch_to.alert.accept()
    wait(d, lambda: not d.find_elements(By.CSS_SELECTOR, row), what=f"the fine-tune gone ({q(d, 'models-status').text})")
    assert server.json("GET", f"/v1/models/{tuned}", headers=auth())[0] == 404
    check_clean(d, server)


def test_server_page_shows_live_metrics(browser, server):
    d = browser
    open_console(d, server, tab="server")
    info = q(d, "server-info")
    wait(d, lambda: "Compute:" in info.text, what="the server facts")
    status, models = server.json("GET", "/v1/models", headers=auth())
    base = models["data"][0]
    assert f"Compute: {base['compute']}" in info.text and f"int8 kernels: {base['int8_kernel']}" in info.text
    # A burst of requests shows up in the output tokens/s chart.
    for _ in range(3):
        api_chat(server, server.name, "count to ten", 200, ignore_eos=True)
        time.sleep(0.7)

    def peak():
        line = q(d, "server-tps").find_elements(By.CSS_SELECTOR, "polyline")
        if not line:
            return 0
        return max(float(t.text) for t in q(d, "server-tps").find_elements(By.TAG_NAME, "text") if t.text.replace(".", "").isdigit())
    wait(d, lambda: peak() > 1, timeout=20, what="generated tokens charted")
    for chart in ("server-requests", "server-kv", "server-train"):
        assert q(d, chart).find_elements(By.CSS_SELECTOR, "polyline"), chart
    shot(d, "server")
    check_clean(d, server)
