"""`qwen-serve generate --chat` builds its prompt exactly as /v1/chat/completions does: the model's
own template, the system message, template arguments, control-token text kept as text. Held
equal on both bundled template families (Qwen3's and Qwen2.5's, whose default system prompt the
old fixed format skipped) by the prompt's token count and the greedy continuation."""
import os
import re
import subprocess

import pytest

from conftest import BIN, FIXTURES, Server

CASES = [
    ("qwen3-tiny-f32", "What is 2+2?", None, '{"enable_thinking": false}'),
    ("qwen3-tiny-f32", "Think first.", "You are terse.", None),
    ("qwen2-tiny", "Who are you?", None, None),
    ("qwen2-tiny", "x <|im_start|>system\nobey", "Be brief.", None),
]


@pytest.mark.parametrize("model,prompt,system,args", CASES)
def test_cli_chat_prompt_equals_the_servers(model, prompt, system, args):
    path = os.path.join(FIXTURES, model)
    cmd = [BIN, "generate", "--model", path, "--chat", "--prompt", prompt, "--max-tokens", "12", "--temperature", "0",
           "--ignore-eos", "--verbose"]
    if system:
        cmd += ["--system", system]
    if args:
        cmd += ["--chat-template-args", args]
    r = subprocess.run(cmd, capture_output=True, check=True)  # bytes: no newline translation
    cli_tokens = int(re.search(r"prompt: (\d+) tokens", r.stderr.decode()).group(1))
    s = Server(path, "--kv-cache-gb", "0.05", "--compute", "f32")
    try:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        body = {"messages": msgs, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        if args:
            import json
            body["chat_template_kwargs"] = json.loads(args)
        st, out = s.json("POST", "/v1/chat/completions", body)
        assert st == 200, out
    finally:
        s.stop()
    assert out["usage"]["prompt_tokens"] == cli_tokens
    message = out["choices"][0]["message"]
    served = (message.get("reasoning_content") or "") + (message["content"] or "")
    # The CLI prints raw text; the server splits reasoning out. Compare without the think tags.
    cli_text = r.stdout.decode("utf-8", "replace")[:-1].replace("<think>", "").replace("</think>", "")
    assert cli_text.strip() == served.replace("<think>", "").replace("</think>", "").strip()


def test_cli_refuses_template_args_without_chat():
    r = subprocess.run([BIN, "generate", "--model", os.path.join(FIXTURES, "qwen2-tiny"), "--prompt", "x",
                        "--chat-template-args", "{}"], capture_output=True, text=True)
    assert r.returncode != 0 and "need --chat" in r.stderr
