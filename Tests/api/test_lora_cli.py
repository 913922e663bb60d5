"""`qwen-serve lora` end to end on the tiny model: the adapter it writes (mlx-lm's layout or
PEFT's) is served by name, applied by `generate`, merged by `fuse`; bad input stops the run with
a message naming the file, and a full disk while saving leaves the previous checkpoint whole."""
import json
import os
import subprocess

import pytest

from conftest import BIN, FIXTURES, Server

TINY = os.path.join(FIXTURES, "qwen3-tiny-f32")


def chats(n, seed):
    return [{"messages": [{"role": "user", "content": f"question {i * 7 + seed} " * (1 + i % 3)},
                          {"role": "assistant", "content": f"answer {i} is 小鹅"}]} for i in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for name, rows in [("train", chats(12, 1)), ("valid", chats(4, 2)), ("test", chats(4, 3))]:
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return d


def lora(*args, check=True, **kw):
    r = subprocess.run([BIN, "lora", "--model", TINY, *args], capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def generate(*args):
    r = subprocess.run([BIN, "generate", "--prompt", "question 8 question 8", "--max-tokens", "10", "--ignore-eos", *args],
                       capture_output=True, text=True, check=True)
    return r.stdout


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = {}
    for fmt in ["mlx", "peft"]:
        path = str(tmp_path_factory.mktemp(fmt) / "adapter")
        r = lora("--train", "--test", "--data", str(data), "--iters", "30", "--batch-size", "2", "--num-layers", "-1",
                 "--learning-rate", "3e-2", "--steps-per-report", "10", "--adapter-path", path, "--save-format", fmt,
                 "--save-every", "15")
        out[fmt] = (path, r.stdout)
    return out


def test_output_as_mlx_lm_prints_it(trained):
    path, stdout = trained["mlx"]
    lines = stdout.splitlines()
    assert any(l.startswith("Iter 1: Val loss ") for l in lines), stdout
    assert any(l.startswith("Iter 10: Train loss ") and "Tokens/sec" in l and l.endswith(" GB") for l in lines), stdout
    assert f"Iter 15: Saved adapter weights to {path}/adapters.safetensors and {path}/0000015_adapters.safetensors." in lines
    assert f"Saved final weights to {path}/adapters.safetensors." in lines
    assert any(l.startswith("Test loss ") and "Test ppl" in l for l in lines)
    rows = open(os.path.join(path, "metrics.csv")).read().splitlines()
    assert rows[0].startswith("step,train_loss,val_loss,learning_rate")
    train = [float(r.split(",")[1]) for r in rows[1:] if r.split(",")[1]]
    assert train[-1] < train[0], rows  # it learned
    assert open(os.path.join(path, "loss.svg")).read().startswith("<svg")
    cfg = json.load(open(os.path.join(path, "adapter_config.json")))
    assert cfg["fine_tune_type"] == "lora" and cfg["num_layers"] == -1 and cfg["lora_parameters"]["rank"] == 8
    peft = json.load(open(os.path.join(trained["peft"][0], "adapter_config.json")))
    assert peft["peft_type"] == "LORA" and peft["r"] == 8 and peft["lora_alpha"] == 160
    assert os.path.exists(os.path.join(trained["peft"][0], "adapter_model.safetensors"))


def test_served_by_name_as_generate_and_fuse_apply_it(trained, tmp_path):
    base = generate("--model", TINY)
    for fmt, (path, _) in trained.items():
        with_adapter = generate("--model", TINY, "--adapter-path", path)
        assert with_adapter != base, "the trained adapter must change the output"
        s = Server(TINY, "--kv-cache-gb", "0.05", "--adapter", f"ft={path}")
        try:
            st, r = s.json("POST", "/v1/completions", {"model": "ft", "prompt": "question 8 question 8", "max_tokens": 10,
                                                       "temperature": 0, "ignore_eos": True})
            assert st == 200, r
            assert r["choices"][0]["text"] == with_adapter.rstrip("\n")
        finally:
            s.stop()
        fused = str(tmp_path / f"fused-{fmt}")
        subprocess.run([BIN, "fuse", "--model", TINY, "--adapter-path", path, "--save-path", fused], check=True,
                       capture_output=True)
        assert generate("--model", fused) == with_adapter


def test_bad_input_names_the_problem(data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = lora("--train", "--data", str(data), "--num-layers", "-1", "--adapter-path", str(blocker / "sub"), check=False)
    assert r.returncode == 1 and "adapter_path" in r.stderr and "cannot create it" in r.stderr, r.stderr
    r = lora("--train", "--data", str(tmp_path / "nowhere"), "--num-layers", "-1", check=False)
    assert r.returncode == 1 and "is not a directory holding train.jsonl" in r.stderr, r.stderr
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("train: true\nlora_parameters: {rank: 0, scale: 1}\n")
    r = lora("-c", str(cfg), check=False)
    assert r.returncode == 1 and "rank must be at least 1" in r.stderr, r.stderr
    cfg.write_text("train: true\nlora_parameters: {keys: [self_attn.qkv_proj]}\n")
    r = lora("-c", str(cfg), check=False)
    assert r.returncode == 1 and str(cfg) in r.stderr and "no module self_attn.qkv_proj" in r.stderr, r.stderr
    r = lora("--train", "--data", str(data), "--num-layers", "9", check=False)
    assert r.returncode == 1 and "num_layers" in r.stderr and "3 layers" in r.stderr, r.stderr


def test_full_disk_while_saving_keeps_the_previous_checkpoint(data, tmp_path):
    path = str(tmp_path / "adapter")
    common = ["--train", "--data", str(data), "--batch-size", "2", "--num-layers", "-1", "--adapter-path", path,
              "--save-every", "2", "--steps-per-report", "2"]
    lora(*common, "--iters", "4")
    before = {f: open(os.path.join(path, f), "rb").read() for f in os.listdir(path)}
    # A file-size limit makes every larger write fail with EFBIG, as a full disk fails them.
    cmd = " ".join(f"'{a}'" for a in [BIN, "lora", "--model", TINY, *common, "--iters", "8", "--resume"])
    r = subprocess.run(["bash", "-c", f"trap '' XFSZ; ulimit -f 4; exec {cmd}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Resuming at iteration 5" in r.stdout
    assert "qwen-serve:" in r.stderr and "adapters.safetensors" in r.stderr, r.stderr
    after = {f: open(os.path.join(path, f), "rb").read() for f in os.listdir(path)}
    for f in ["adapters.safetensors", "training_state.json", "0000004_checkpoint.safetensors", "0000004_adapters.safetensors"]:
        assert after[f] == before[f], f
    assert not [f for f in after if ".tmp-" in f], "no temporary file is left behind"
    # With room again, the run resumes from that checkpoint and finishes.
    r = lora(*common, "--iters", "8", "--resume")
    assert "Resuming at iteration 5" in r.stdout and "Saved final weights" in r.stdout


def test_a_flag_wins_over_the_file(data, tmp_path):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"train: true\ndata: {data}\nnum_layers: -1\nbatch_size: 2\niters: 6\nsteps_per_report: 1\n"
                   f"adapter_path: {tmp_path / 'a'}\n")
    r = lora("-c", str(cfg), "--iters", "3")
    assert "Iter 3: Train loss" in r.stdout and "Iter 4:" not in r.stdout, r.stdout
    assert json.load(open(tmp_path / "a" / "adapter_config.json"))["iters"] == 3
