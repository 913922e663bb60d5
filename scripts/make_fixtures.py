#!/usr/bin/env python3
"""Builds the reference fixtures that the Swift tests compare against.

Everything here comes from Hugging Face transformers / tokenizers (PyTorch on the CPU)
and gguf-py, the ground truth for numerics. The outputs are small and committed, so
`make test` needs no PyTorch. Regenerate with `make fixtures`.

Writes into --out:
  tokenizer/                 a small byte-level BPE with Qwen's pipeline and added tokens
  qwen3-tiny-{f32,bf16,f16}/ one random Qwen3 checkpoint in three dtypes (same values)
  qwen2-tiny/                a random Qwen2 checkpoint, tied head, sharded safetensors
  qwen3-tiny.gguf            the Qwen3 checkpoint as GGUF, some tensors Q8_0/Q4_0
  adapters/                  random LoRA adapters for the tiny models (PEFT and mlx-lm formats)
  train/                     LoRA adapters (A and B random) whose gradients expected/train.json holds, and
                             adapters qwen-serve lora trained, whose PEFT / mlx-lm logits trained_adapter.json holds
  expected/*.json            logits, greedy tokens, tokenizations, dequantized blocks
"""
import argparse
import copy
import json
import os
import random
import shutil
import sys

import numpy as np
import torch

QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
SPECIAL = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def dump(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


# ---------------------------------------------------------------- corpus

def corpus(rng, n):
    """Varied strings: English, code, Chinese, emoji, whitespace runs, digits, specials."""
    words = ("the of and to in is you that it he was for on are as with his they at be this have from or one had "
             "by word but not what all were we when your can said there use an each which she do how their if will "
             "up other about out many then them these so some her would make like him into time has look two more "
             "write go see number no way could people my than first water been call who oil its now find long down "
             "day did get come made may part Don't I'LL it's we've THEY'RE she'd you'll O'Neil rock'n'roll").split()
    code = [
        "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "import numpy as np\r\nx = np.zeros((3, 4))", "SELECT * FROM users WHERE id = 42;",
        "if (a && b || !c) { return -1; }", "    \n\n  \t x = {'k': [1, 2, 3]}  \n",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 7); }", "let s = \"héllo\"; // ✓",
        "fn main() -> Result<(), Box<dyn Error>> {}", "x+=1;y-=2;z*=3;w/=4;", "a_b_c = __init__(self)",
        "<html><body><p class=\"x\">Hi</p></body></html>", "$ ls -la ~/.cache | grep qwen >> out.txt",
    ]
    chinese = ["你好，世界！", "我的名字是小橙，你的名字是什么呀？", "深度学习模型在中央处理器上运行。", "今天天气很好。",
               "机器学习", "人工智能（AI）正在改变世界", "一二三四五六七八九十", "「引号」和『书名号』", "中文English混合123"]
    emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵🇫🇷", "❤️", "🤖🧠", "☕️", "🎉🎉🎉", "🏳️‍🌈", "a😀b"]
    spaces = [" ", "  ", "    ", "\t", "\n", "\r\n", "\n\n\n", " \n ", "\u3000", "\u00a0", "\u2003", "\u200b", "\x0b", "\x0c"]
    digits = ["0", "7", "42", "2024", "3.14159", "1,000,000", "1234567890123", "0x1F", "١٢٣", "Ⅻ", "½", "²"]
    odd = ["e\u0301", "Å", "A\u030a", "ﬁ", "Ｆｕｌｌ", "\ufffd", "ñ", "n\u0303", "Ω", "ǅ", "ß", "İ", "ſ", "'S", "'ll", "'Re",
           "\u0000", "\x7f", "\U0001F600"[:1], "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "עברית", "العربية", "हिन्दी", "ไทย", "Ελληνικά", "Кириллица"]
    pools = [words, code, chinese, emoji, spaces, digits, odd, ADDED]
    out = []
    for s in code + chinese + emoji + spaces + digits + odd + ADDED:
        out.append(s)
    while len(out) < n:
        k = rng.randint(1, 14)
        parts = []
        for _ in range(k):
            pool = rng.choice(pools)
            piece = rng.choice(pool)
            if pool is words and rng.random() < 0.3:
                piece = piece.capitalize() if rng.random() < 0.5 else piece.upper()
            parts.append(piece)
            parts.append(rng.choice(["", " ", " ", " ", "  ", "\n", ", ", ". ", "\t", "'s ", "!", "...", "—"]))
        out.append("".join(parts))
    return out[:n]


# ---------------------------------------------------------------- tokenizer

def build_tiny_tokenizer(out_dir, rng):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = corpus(random.Random(7), 3000)
    tok.train_from_iterator(text, trainer)
    from tokenizers import AddedToken
    tok.add_tokens([AddedToken(t, special=t in SPECIAL, normalized=False) for t in ADDED])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "bos_token": None, "chat_template": CHATML, "model_max_length": 4096}
    dump(os.path.join(out_dir, "tokenizer_config.json"), cfg)
    return tok


# ---------------------------------------------------------------- models

def exact_in_all_dtypes(t):
    """Rounds to bf16 and flushes what f16 cannot hold exactly, so f32, bf16 and f16
    copies of the checkpoint have identical values."""
    t = t.to(torch.bfloat16).to(torch.float32)
    t[t.abs() < 2.0 ** -14] = 0
    return t


def randomize(model, rng_seed, scale):
    g = torch.Generator().manual_seed(rng_seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                v = 1 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.endswith("bias"):
                v = 0.3 * torch.randn(p.shape, generator=g)
            else:
                v = scale * torch.randn(p.shape, generator=g)
            p.copy_(exact_in_all_dtypes(v))


def reference(model, prompts, greedy_tokens):
    """Full logits for each prompt and a greedy continuation."""
    out = []
    model.eval()
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            logits = model(x).logits[0].float()
            # An explicit mask: generate() would otherwise mask prompt tokens equal to pad_token_id.
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=greedy_tokens,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
            out.append({"prompt": ids, "logits": [[round(float(v), 7) for v in row] for row in logits],
                        "greedy": gen[0, len(ids):].tolist()})
    return out


def make_models(out, tok, prompts_text):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
    vocab = tok.get_vocab_size()
    prompts = [tok.encode(p).ids for p in prompts_text]
    expected = {}

    q3 = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=512,
                     rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False,
                     eos_token_id=tok.token_to_id("<|im_end|>"), bos_token_id=None)
    torch.manual_seed(0)
    m3 = Qwen3ForCausalLM(q3).float()
    randomize(m3, 1, 0.15)
    expected["qwen3"] = reference(m3, prompts, 24)
    for dtype, name in [(torch.float32, "f32"), (torch.bfloat16, "bf16"), (torch.float16, "f16")]:
        d = os.path.join(out, f"qwen3-tiny-{name}")
        # A copy: Module.to() converts in place, buffers (RoPE's inv_freq) included.
        copy.deepcopy(m3).to(dtype).save_pretrained(d, safe_serialization=True)
        copy_tokenizer(out, d)

    q2 = Qwen2Config(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                     rope_theta=1000000.0, tie_word_embeddings=True, eos_token_id=tok.token_to_id("<|im_end|>"))
    torch.manual_seed(0)
    m2 = Qwen2ForCausalLM(q2).float()
    randomize(m2, 2, 0.2)
    d = os.path.join(out, "qwen2-tiny")
    m2.save_pretrained(d, safe_serialization=True, max_shard_size="40KB")
    copy_tokenizer(out, d)
    expected["qwen2"] = reference(m2, prompts, 24)

    gguf_path = os.path.join(out, "qwen3-tiny.gguf")
    deq = write_gguf(gguf_path, m3, q3, tok)
    m3g = Qwen3ForCausalLM(q3).float()
    m3g.load_state_dict(deq, strict=False)
    expected["qwen3_gguf"] = reference(m3g, prompts, 24)
    for k, v in expected.items():
        dump(os.path.join(out, "expected", f"model_{k}.json"), v)


def copy_tokenizer(out, d):
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(out, "tokenizer", f), os.path.join(d, f))


HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    layer = parts[2]
    module = ".".join(parts[3:-1])
    return f"blk.{layer}.{HF_TO_GGUF[module]}.{parts[-1]}"


def write_gguf(path, model, cfg, tok):
    """The Qwen3 checkpoint as GGUF: the vocabulary inside, matrices in Q8_0/Q4_0/F16."""
    import gguf
    from gguf.quants import dequantize, quantize
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.USER_DEFINED if t in ADDED
             else gguf.TokenType.NORMAL for t in tokens]
    w.add_token_list(tokens)
    w.add_token_types(types)
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_eos_token_id(tok.token_to_id("<|im_end|>"))
    w.add_pad_token_id(tok.token_to_id("<|endoftext|>"))
    w.add_chat_template(CHATML)
    deq = {}
    for i, (name, p) in enumerate(model.state_dict().items()):
        a = p.detach().float().numpy()
        if a.ndim == 2 and a.shape[1] % 32 == 0:
            qt = [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0,
                  gguf.GGMLQuantizationType.Q5_1, gguf.GGMLQuantizationType.F16][i % 4]
            if qt == gguf.GGMLQuantizationType.F16:
                data = a.astype(np.float16)
                deq[name] = torch.from_numpy(data.astype(np.float32))
                w.add_tensor(gguf_name(name), data)
            else:
                data = quantize(a, qt)
                deq[name] = torch.from_numpy(dequantize(data, qt).reshape(a.shape).astype(np.float32))
                w.add_tensor(gguf_name(name), data, raw_dtype=qt)
        else:
            deq[name] = torch.from_numpy(a.copy())
            w.add_tensor(gguf_name(name), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return deq


# ---------------------------------------------------------------- dequantization

def make_dequant(out):
    """Random blocks of every supported type and gguf-py's dequantization of them."""
    import gguf
    from gguf.quants import dequantize
    rng = np.random.default_rng(3)
    cases = []
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"]:
        qt = gguf.GGMLQuantizationType[name]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        nblocks = 4
        raw = rng.integers(0, 256, size=nblocks * size, dtype=np.uint8)
        b = raw.reshape(nblocks, size)
        # Keep the f16 scale fields finite and modest so the expected values are ordinary numbers.
        scale_offsets = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q4_K": [0, 2],
                         "Q5_K": [0, 2], "Q6_K": [size - 2]}.get(name, [])
        for off in scale_offsets:
            vals = rng.uniform(-0.05, 0.05, size=nblocks).astype(np.float16).view(np.uint8).reshape(nblocks, 2)
            b[:, off:off + 2] = vals
        if name == "F16":
            b[:] = rng.uniform(-4, 4, size=nblocks * size // 2).astype(np.float16).view(np.uint8).reshape(nblocks, size)
        if name == "BF16":
            f = rng.uniform(-4, 4, size=nblocks * size // 2).astype(np.float32).view(np.uint32) >> 16
            b[:] = f.astype(np.uint16).view(np.uint8).reshape(nblocks, size)
        data = b.reshape(-1)
        y = dequantize(data, qt).reshape(-1).astype(np.float32)
        cases.append({"type": name, "ggml_type": int(qt), "bytes": data.tobytes().hex(),
                      "values": [float(v) for v in y]})
    dump(os.path.join(out, "expected", "dequant.json"), cases)


def make_quantize_q4k(out, llama_dir, f32_gguf):
    """llama.cpp's own Q4_K blocks (llama-quantize --pure, its reference quantizer) for rows of a
    float model's matrices: the gguf package has no Q4_K quantizer. `f32_gguf`: any f32 GGUF
    (convert_hf_to_gguf.py --outtype f32); `llama_dir`: a llama.cpp build (make bench-compare's)."""
    import subprocess
    import tempfile
    import numpy as np
    from gguf import GGUFReader
    with tempfile.TemporaryDirectory() as d:
        q = os.path.join(d, "q4k.gguf")
        subprocess.run([os.path.join(llama_dir, "bin", "llama-quantize"), "--pure", f32_gguf, q, "Q4_K", "2"], check=True,
                       capture_output=True)
        src, dst = GGUFReader(f32_gguf), GGUFReader(q)
        by_name = {t.name: t for t in dst.tensors}
        cases = []
        for t in src.tensors:
            if t.name not in ("blk.0.attn_q.weight", "blk.3.ffn_down.weight", "blk.7.ffn_up.weight"):
                continue
            cols = int(t.shape[0])
            x = np.asarray(t.data, dtype=np.float32).reshape(-1, cols)[:4]
            qt = by_name[t.name]
            assert qt.tensor_type.name == "Q4_K", qt.tensor_type
            row_bytes = cols // 256 * 144
            blocks = np.asarray(qt.data).reshape(-1).view(np.uint8)[: 4 * row_bytes]
            cases.append({"name": t.name, "rows": 4, "cols": cols, "x": [float(v) for v in x.flatten()], "q4_k": blocks.tobytes().hex()})
    dump(os.path.join(out, "expected", "quantize_q4k.json"), cases)


# ---------------------------------------------------------------- real model

def make_quantize(out):
    """ggml's reference Q8_0 and Q4_0 quantization (the gguf package's), for --quantize."""
    import numpy as np
    from gguf import GGMLQuantizationType as T, quants
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 96)) * np.array([[1.0], [0.01], [300.0]])).astype(np.float32)
    x[0, :32] = 0  # an all-zero block
    x[1, 40] = -5.0  # a dominant negative value
    cases = {"rows": 3, "cols": 96, "x": [float(v) for v in x.flatten()]}
    for name, t in [("q8_0", T.Q8_0), ("q4_0", T.Q4_0)]:
        cases[name] = quants.quantize(x, t).tobytes().hex()
    dump(os.path.join(out, "expected", "quantize.json"), cases)


def make_real(out, gguf_path, tiny_tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # GGUF keeps no normaliser, but Qwen's tokenizer.json on the hub applies NFC; the
    # reference is the hub's tokenizer, so restore it.
    from tokenizers import normalizers
    tok.backend_tokenizer.normalizer = normalizers.NFC()
    rng = random.Random(11)
    texts = corpus(rng, 2400)
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    # Decoding arbitrary id sequences exercises invalid UTF-8 and partial characters.
    drng = random.Random(5)
    dec_ids = [[drng.randrange(0, 151643) for _ in range(drng.randint(1, 12))] for _ in range(300)]
    dec = [tok.decode(ids) for ids in dec_ids]
    dump(os.path.join(out, "expected", "tokenizer_qwen.json"),
         {"texts": texts, "ids": enc, "decode_ids": dec_ids, "decoded": dec})
    tiny_ids = [tiny_tok.encode(t).ids for t in texts]
    dump(os.path.join(out, "expected", "tokenizer_tiny.json"), {"texts": texts, "ids": tiny_ids})

    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    import gguf
    r = gguf.GGUFReader(gguf_path)
    has_output = any(t.name == "output.weight" for t in r.tensors)
    assert model.config.tie_word_embeddings == (not has_output) or has_output is False, "head tying mismatch"
    if has_output:
        # Make sure the reference really uses output.weight and not the embedding.
        from gguf.quants import dequantize
        t = next(t for t in r.tensors if t.name == "output.weight")
        w = dequantize(t.data, t.tensor_type).reshape(151936, -1)
        if model.config.tie_word_embeddings or not torch.equal(model.lm_head.weight, torch.from_numpy(w)):
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(torch.from_numpy(w.astype(np.float32)))
    prompts = [
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWrite a Python function that checks whether a number is prime.<|im_end|>\n"
        "<|im_start|>assistant\n",
        "def quicksort(arr):\n",
        "The three most important properties of a hash function are",
        "<|im_start|>user\n用中文解释什么是递归。<|im_end|>\n<|im_start|>assistant\n",
    ]
    cases = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, add_special_tokens=False)["input_ids"]
            x = torch.tensor([ids])
            logits = model(x).logits[0, -1]
            top = torch.topk(logits, 20)
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=48, do_sample=False,
                                 eos_token_id=None, pad_token_id=151643)
            cases.append({"prompt": p, "ids": ids, "greedy": gen[0, len(ids):].tolist(),
                          "top_ids": top.indices.tolist(), "top_logits": [float(v) for v in top.values]})
            print("real:", repr(tok.decode(cases[-1]["greedy"]))[:100], file=sys.stderr)
    dump(os.path.join(out, "expected", "real_model.json"), cases)


# ---------------------------------------------------------------- chat templates

def conversations():
    """Conversations that exercise every branch of the Qwen2.5 and Qwen3 templates."""
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city — «now».",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "名字"}, "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            "units": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}}
    search = {"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}, "limit": {"type": "number", "default": 0.25}}}}}
    call = lambda name, args: {"type": "function", "function": {"name": name, "arguments": args}}
    sys_msg = {"role": "system", "content": "You are a terse assistant.\nAnswer in one line."}
    convs = [
        ([{"role": "user", "content": "Hi"}], None),
        ([sys_msg, {"role": "user", "content": "What is 2+2?"}], None),
        ([{"role": "user", "content": "你好 😀"}, {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "再见"}], None),
        ([sys_msg, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "late system"},
          {"role": "user", "content": "c"}], None),
        ([{"role": "user", "content": "Weather in Paris?"}], [weather]),
        ([sys_msg, {"role": "user", "content": "Weather in Paris?"}], [weather, search]),
        ([{"role": "user", "content": "Weather in Paris?"},
          {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Paris", "days": 2})]},
          {"role": "tool", "content": "{\"temp\": 21}"}], [weather]),
        ([{"role": "user", "content": "Both cities"},
          {"role": "assistant", "content": "Checking.", "tool_calls": [call("get_weather", {"city": "Paris"}), call("get_weather", {"city": "Oslo"})]},
          {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "snow"},
          {"role": "assistant", "content": "Paris sunny, Oslo snow."}, {"role": "user", "content": "thanks"}], [weather]),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [call("search", {"q": "x y", "limit": 3})]},
          {"role": "tool", "content": "r1"}], [search]),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "search", "arguments": {"q": "plain"}}}]},
          {"role": "tool", "content": "r"}, {"role": "user", "content": "<tool_response>\nfake\n</tool_response>"}], [search]),
        ([{"role": "user", "content": "Think first"}, {"role": "assistant", "content": "<think>\nstep 1\nstep 2\n</think>\n\nAnswer A"},
          {"role": "user", "content": "again"}], None),
        ([{"role": "user", "content": "Think"}, {"role": "assistant", "content": "Answer B", "reasoning_content": "because"},
          {"role": "user", "content": "more"}, {"role": "assistant", "content": "<think>inner</think>Final"}], None),
        ([{"role": "user", "content": "tabs\tand\nnewlines  "}, {"role": "assistant", "content": "  spaced  "}], None),
        ([{"role": "user", "content": "Quote ' and \" and \\ and {{ braces }} and {% tags %}"}], None),
        ([sys_msg], None),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], [search]),
        ([{"role": "user", "content": "call with string args"},
          {"role": "assistant", "content": "", "tool_calls": [call("search", "{\"q\": \"raw string\"}")]},
          {"role": "tool", "content": "done"}, {"role": "assistant", "content": "<think>\nreflect\n</think>\n\nok"}], [search]),
        ([{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "3"},
          {"role": "assistant", "content": "4"}, {"role": "user", "content": "5"}], None),
        ([{"role": "system", "content": ""}, {"role": "user", "content": "empty system"}], None),
        ([{"role": "user", "content": "multi\n\n\nline\n"}], [weather]),
        ([{"role": "user", "content": "Émoji 👨‍👩‍👧 and 中文 and ümlaut"}, {"role": "assistant", "content": "<think>\n\n</think>\n\nempty think"}], None),
        ([{"role": "user", "content": "tool then user"}, {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Rome", "units": "c"})]},
          {"role": "tool", "content": "hot"}, {"role": "user", "content": "and tomorrow?"}], [weather]),
    ]
    return convs


def make_templates(out, gguf_path, qwen3_template_path):
    import gguf
    from transformers.utils.chat_template_utils import render_jinja_template
    r = gguf.GGUFReader(gguf_path)
    templates = {"qwen2.5": r.fields["tokenizer.chat_template"].contents()}
    if qwen3_template_path and os.path.exists(qwen3_template_path):
        templates["qwen3"] = open(qwen3_template_path).read()
    else:
        print("qwen3 template not found; its fixtures are skipped", file=sys.stderr)
    cases = []
    for name, tpl in templates.items():
        for i, (msgs, tools) in enumerate(conversations()):
            variants = [({}, True), ({}, False)]
            if name == "qwen3":
                variants += [({"enable_thinking": False}, True), ({"enable_thinking": True}, True)]
            for kwargs, gen in variants:
                (text,), _ = render_jinja_template([msgs], tools=tools, chat_template=tpl, add_generation_prompt=gen, **kwargs)
                cases.append({"template": name, "messages": msgs, "tools": tools, "kwargs": kwargs,
                              "add_generation_prompt": gen, "expected": text})
    dump(os.path.join(out, "expected", "chat_templates.json"), cases)


# ---------------------------------------------------------------- LoRA adapters

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_adapter(base_dir, out_dir, seed, **lora):
    """A PEFT LoRA on the checkpoint in base_dir with random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(lora_dropout=0.0, **lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(out_dir)
    pm.eval()
    return pm


def adapter_reference(model, prompts, greedy_tokens):
    out = []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0].float()
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=greedy_tokens,
                                 do_sample=False, pad_token_id=0, eos_token_id=None)
            out.append({"prompt": ids, "logits": [[round(float(v), 6) for v in row] for row in logits],
                        "greedy": gen[0, len(ids):].tolist()})
    return out


def mlx_from_peft(peft_dir, out_dir, layers):
    """The same adapter in mlx-lm's layout: lora_a [in × r] and lora_b [r × out] (the
    transposes of PEFT's A and B) and one `scale` (PEFT's alpha / r)."""
    from safetensors.torch import load_file, save_file
    cfg = json.load(open(os.path.join(peft_dir, "adapter_config.json")))
    src = load_file(os.path.join(peft_dir, "adapter_model.safetensors"))
    out = {}
    for k, v in src.items():
        name = k.removeprefix("base_model.model.")
        name = name.replace(".lora_A.weight", ".lora_a").replace(".lora_B.weight", ".lora_b")
        out[name] = v.t().contiguous()
    os.makedirs(out_dir, exist_ok=True)
    save_file(out, os.path.join(out_dir, "adapters.safetensors"), metadata={"format": "mlx"})
    keys = sorted({"self_attn." + m if m[0] in "qkvo" else "mlp." + m for m in cfg["target_modules"]})
    dump(os.path.join(out_dir, "adapter_config.json"), {
        "fine_tune_type": "lora", "num_layers": layers,
        "lora_parameters": {"rank": cfg["r"], "scale": cfg["lora_alpha"] / cfg["r"], "dropout": 0.0, "keys": keys}})


def make_adapters(out, tok, prompts_text):
    prompts = [tok.encode(p).ids for p in prompts_text[:2]]
    d = os.path.join(out, "adapters")
    expected = {}
    q3 = os.path.join(out, "qwen3-tiny-f32")
    m = peft_adapter(q3, os.path.join(d, "qwen3-all"), 11, r=4, lora_alpha=8, target_modules=ALL_PROJ)
    expected["qwen3-all"] = adapter_reference(m, prompts, 12)
    mlx_from_peft(os.path.join(d, "qwen3-all"), os.path.join(d, "qwen3-all-mlx"), 3)
    m = peft_adapter(q3, os.path.join(d, "qwen3-qv-rslora"), 12, r=2, lora_alpha=6, use_rslora=True,
                     target_modules=["q_proj", "v_proj"])
    expected["qwen3-qv-rslora"] = adapter_reference(m, prompts, 12)
    m = peft_adapter(q3, os.path.join(d, "qwen3-mlp-last"), 13, r=3, lora_alpha=3, target_modules=["down_proj", "up_proj"],
                     layers_to_transform=[2])
    expected["qwen3-mlp-last"] = adapter_reference(m, prompts, 12)
    m = peft_adapter(os.path.join(out, "qwen2-tiny"), os.path.join(d, "qwen2-attn"), 14, r=4, lora_alpha=16,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    expected["qwen2-attn"] = adapter_reference(m, prompts, 12)
    for sub in os.listdir(d):  # PEFT writes a README model card; the fixtures need only the weights
        readme = os.path.join(d, sub, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
    dump(os.path.join(out, "expected", "adapters.json"), expected)


# ---------------------------------------------------------------- LoRA training

def gguf_state(path, cfg):
    """The committed GGUF's tensors, dequantized, under their Hugging Face names."""
    import gguf
    from gguf.quants import dequantize
    inv = {v: k for k, v in HF_TO_GGUF.items()}
    r = gguf.GGUFReader(path)
    sd = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            hf = "model.norm.weight"
        elif t.name == "output.weight":
            hf = "lm_head.weight"
        else:
            hf = f"model.layers.{parts[1]}.{inv[parts[2]]}.{parts[3]}"
        sd[hf] = torch.from_numpy(a.reshape(shape).copy())
    return sd


def training_batch(rng, vocab, lengths, offsets):
    """Random token sequences (right-padded with 0 when batched) and, per sequence, the
    index of its first trained target (mask_prompt's prompt length; 0 trains all)."""
    seqs = [[rng.randrange(vocab) for _ in range(n)] for n in lengths]
    return {"sequences": seqs, "offsets": offsets}


def batch_loss(model, batch):
    """Mean cross-entropy over the trained targets: for sequence s, target j (the token at
    index j, predicted from those before it) counts when max(offset, 1) <= j < len(s)."""
    seqs = batch["sequences"]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    total, count = 0.0, 0
    for i, s in enumerate(seqs):
        lo = max(batch["offsets"][i], 1)
        if lo >= len(s):
            continue
        lp = torch.log_softmax(logits[i, lo - 1:len(s) - 1], dim=-1)
        tgt = torch.tensor(s[lo:])
        total = total - lp.gather(1, tgt[:, None]).sum()
        count += len(s) - lo
    return total / count


def lora_tensors(pm):
    """{(layer, module short name): (A param, B param)} of a PEFT model."""
    out = {}
    for name, p in pm.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            parts = name.split(".")
            layer = int(parts[parts.index("layers") + 1])
            module = parts[parts.index("lora_A" if ".lora_A." in name else "lora_B") - 1]
            a_or_b = 0 if ".lora_A." in name else 1
            out.setdefault((layer, module), [None, None])[a_or_b] = p
    return out


def rounded(t):
    return [float(f"{v:.8g}") for v in t.detach().reshape(-1).tolist()]


def trained_peft(model, out_dir, seed, **lora):
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(model, LoraConfig(lora_dropout=0.0, **lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:  # B random too: at B = 0 the gradient of A is zero and proves nothing
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(out_dir)
    readme = os.path.join(out_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    return pm


def gradient_case(pm, batches):
    cases = []
    for batch in batches:
        pm.zero_grad()
        loss = batch_loss(pm, batch)
        loss.backward()
        grads = [{"layer": l, "module": m, "a": rounded(ab[0].grad), "b": rounded(ab[1].grad)}
                 for (l, m), ab in sorted(lora_tensors(pm).items())]
        cases.append({"batch": batch, "loss": float(loss.detach()), "grads": grads})
    return cases


def adam_steps(pm, batch, steps, lr, betas, eps, wd, bias_correction):
    """Losses of `steps` AdamW updates (mlx-lm's arithmetic: decoupled decay p *= 1 - lr*wd,
    then p -= lr * m / (sqrt(v) + eps), m and v bias-corrected only when asked)."""
    params = [p for _, p in pm.named_parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    losses = []
    for t in range(1, steps + 1):
        pm.zero_grad()
        loss = batch_loss(pm, batch)
        loss.backward()
        losses.append(float(loss))
        with torch.no_grad():
            for p, mi, vi in zip(params, m, v):
                mi.mul_(betas[0]).add_((1 - betas[0]) * p.grad)
                vi.mul_(betas[1]).add_((1 - betas[1]) * p.grad * p.grad)
                mh, vh = (mi / (1 - betas[0] ** t), vi / (1 - betas[1] ** t)) if bias_correction else (mi, vi)
                p.mul_(1 - lr * wd)
                p.sub_(lr * mh / (vh.sqrt() + eps))
    return losses


def make_train(out):
    """LoRA gradients and AdamW losses from PEFT on the tiny checkpoints, for the trainer."""
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM
    rng = random.Random(7)
    d = os.path.join(out, "train")
    expected = {}

    def base(name):
        return AutoModelForCausalLM.from_pretrained(os.path.join(out, name), dtype=torch.float32)

    def batches(vocab):
        lengths = [11, 17, 6]
        return [training_batch(rng, vocab, lengths, [0, 0, 0]),        # every token trained, batch of 3, padded
                training_batch(rng, vocab, lengths, [4, 9, 2]),        # mask_prompt
                training_batch(rng, vocab, [23], [5])]                 # one sequence
    q3 = base("qwen3-tiny-f32")
    vocab = q3.config.vocab_size
    pm = trained_peft(q3, os.path.join(d, "qwen3-all"), 21, r=4, lora_alpha=8, target_modules=ALL_PROJ)
    expected["qwen3-all"] = gradient_case(pm, batches(vocab))
    pm = trained_peft(base("qwen3-tiny-f32"), os.path.join(d, "qwen3-qv-top"), 22, r=3, lora_alpha=60,
                      target_modules=["q_proj", "v_proj"], layers_to_transform=[1, 2])
    expected["qwen3-qv-top"] = gradient_case(pm, batches(vocab))
    pm = trained_peft(base("qwen2-tiny"), os.path.join(d, "qwen2-all"), 23, r=3, lora_alpha=6, target_modules=ALL_PROJ)
    expected["qwen2-all"] = gradient_case(pm, batches(vocab))
    cfg = Qwen3Config.from_pretrained(os.path.join(out, "qwen3-tiny-f32"))
    mg = Qwen3ForCausalLM(cfg).float()
    mg.load_state_dict(gguf_state(os.path.join(out, "qwen3-tiny.gguf"), cfg), strict=False)
    pm = trained_peft(mg, os.path.join(d, "qwen3-gguf-qv"), 24, r=8, lora_alpha=160, target_modules=["q_proj", "v_proj"])
    expected["qwen3-gguf-qv"] = gradient_case(pm, batches(vocab))

    batch = training_batch(rng, vocab, [13, 8], [3, 0])
    adam = {"batch": batch, "lr": 5e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    for bc in [False, True]:
        pm = trained_peft(base("qwen3-tiny-f32"), os.path.join(d, "qwen3-adam"), 25, r=4, lora_alpha=8,
                          target_modules=["q_proj", "v_proj", "down_proj"])
        adam["losses_bias_correction" if bc else "losses"] = adam_steps(pm, batch, 10, adam["lr"], adam["betas"],
                                                                        adam["eps"], adam["weight_decay"], bc)
    # torch's own AdamW agrees with the bias-corrected arithmetic above (the same update).
    pm = trained_peft(base("qwen3-tiny-f32"), os.path.join(d, "qwen3-adam"), 25, r=4, lora_alpha=8,
                      target_modules=["q_proj", "v_proj", "down_proj"])
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=adam["lr"], betas=adam["betas"],
                            eps=adam["eps"], weight_decay=adam["weight_decay"])
    torch_losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = batch_loss(pm, batch)
        loss.backward()
        torch_losses.append(float(loss))
        opt.step()
    assert np.allclose(torch_losses, adam["losses_bias_correction"], rtol=1e-5), (torch_losses, adam)
    expected["adam"] = adam
    dump(os.path.join(out, "expected", "train.json"), expected)


def make_mlx_optim(out):
    """mlx's own learning-rate schedules (through mlx-lm's build_schedule) and optimizer
    updates, for the trainer's mlx_lm.lora compatibility."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import build_schedule
    schedules = [
        {"name": "cosine_decay", "arguments": [1e-3, 20]},
        {"name": "cosine_decay", "arguments": [1e-3, 20, 1e-5], "warmup": 5},
        {"name": "cosine_decay", "arguments": [2e-4, 12], "warmup": 4, "warmup_init": 1e-6},
        {"name": "linear_schedule", "arguments": [1e-3, 1e-4, 10]},
        {"name": "linear_schedule", "arguments": [0.0, 1e-3, 10], "warmup": 3, "warmup_init": 1e-7},
        {"name": "exponential_decay", "arguments": [1e-3, 0.9]},
        {"name": "step_decay", "arguments": [1e-3, 0.5, 4]},
    ]
    sched = []
    for s in schedules:
        f = build_schedule(dict(s))
        sched.append({"config": s, "rates": [float(f(mx.array(i))) for i in range(30)]})
    rng = np.random.default_rng(9)
    p0 = rng.standard_normal(12).astype(np.float32)
    grads = [rng.standard_normal(12).astype(np.float32) for _ in range(6)]
    opts = [("adam", {}), ("adam", {"bias_correction": True}), ("adamw", {}),
            ("adamw", {"weight_decay": 0.1, "betas": [0.8, 0.99], "eps": 1e-6, "bias_correction": True}),
            ("sgd", {}), ("sgd", {"momentum": 0.9, "weight_decay": 0.01})]
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD}
    updates = []
    for name, cfg in opts:
        o = cls[name](learning_rate=1e-2, **cfg)
        params = {"p": mx.array(p0)}
        o.init(params)
        values = []
        for g in grads:
            params = o.apply_gradients({"p": mx.array(g)}, params)
            values.append([float(v) for v in np.array(params["p"])])
        updates.append({"optimizer": name, "config": cfg, "values": values})
    dump(os.path.join(out, "expected", "mlx_optim.json"), {
        "schedules": sched, "p0": [float(v) for v in p0], "grads": [[float(v) for v in g] for g in grads],
        "lr": 1e-2, "updates": updates})


def make_trained_roundtrip(out, binary):
    """An adapter trained by `qwen-serve lora` on the tiny Qwen3, in both layouts, loaded by
    PEFT (transformers) and by mlx-lm: their logits, which the server must give with it."""
    import subprocess
    import tempfile
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    d = os.path.join(out, "train")
    data = tempfile.mkdtemp()
    rng = random.Random(4)
    for name, n in [("train", 10), ("valid", 3)]:
        with open(os.path.join(data, f"{name}.jsonl"), "w") as f:
            for i in range(n):
                q = " ".join(rng.choice(["who", "are", "you", "name", "what", "is", "your"]) for _ in range(3 + i % 4))
                f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                                 {"role": "assistant", "content": f"I am 小鹅, number {i}."}]},
                                   ensure_ascii=False) + "\n")
    base = os.path.join(out, "qwen3-tiny-f32")
    for fmt in ["peft", "mlx"]:
        path = os.path.join(d, f"trained-{fmt}")
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([binary, "lora", "--model", base, "--train", "--data", data, "--iters", "20", "--batch-size", "2",
                        "--num-layers", "2", "--learning-rate", "2e-2", "--optimizer", "adamw", "--adapter-path", path,
                        "--save-format", fmt, "--save-every", "1000", "--steps-per-eval", "1000"], check=True,
                       stdout=subprocess.DEVNULL)
        for f in os.listdir(path):  # keep only the adapter itself
            if f not in ("adapter_config.json", "adapters.safetensors", "adapter_model.safetensors"):
                os.remove(os.path.join(path, f))
    prompts = [[5, 77, 301, 12, 9, 44], [600, 3, 3, 120]]
    expected = {"prompts": prompts}
    pm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                   os.path.join(d, "trained-peft"))
    pm.eval()
    with torch.no_grad():
        expected["peft"] = [[round(float(v), 6) for v in pm(input_ids=torch.tensor([p])).logits[0, -1]] for p in prompts]
    try:
        import mlx.core as mx
        from mlx_lm import load as mlx_load
        mm, _ = mlx_load(base, adapter_path=os.path.join(d, "trained-mlx"))
        expected["mlx"] = [[round(float(v), 6) for v in np.array(mm(mx.array([p]))[0, -1].astype(mx.float32))]
                           for p in prompts]
    except ImportError:
        print("mlx-lm is not installed: expected/trained_adapter.json has no mlx logits", file=sys.stderr)
    dump(os.path.join(out, "expected", "trained_adapter.json"), expected)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--gguf", required=True, help="the default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M)")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--only-adapters", action="store_true", help="rebuild only adapters/ from the committed models")
    ap.add_argument("--only-train", action="store_true", help="rebuild only train/ (gradients) from the committed models")
    ap.add_argument("--q4k-from", nargs=2, metavar=("LLAMA_CPP_DIR", "F32_GGUF"),
                    help="rebuild only expected/quantize_q4k.json with llama-quantize from this build, on this f32 GGUF")
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "qwen-serve"),
                    help="the built qwen-serve, which trains the round-trip adapter")
    ap.add_argument("--qwen3-template", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                             "templates", "qwen3.jinja"))
    a = ap.parse_args()
    if a.q4k_from:
        make_quantize_q4k(a.out, *a.q4k_from)
        return
    torch.set_num_threads(2)
    os.makedirs(os.path.join(a.out, "expected"), exist_ok=True)
    rng = random.Random(1)
    tok = build_tiny_tokenizer(os.path.join(a.out, "tokenizer"), rng)
    prompts = ["Hello, world! It's a test.", "<|im_start|>user\n你好 😀 def f(x): return 42<|im_end|>\n",
               "a", "The number 1234567 and    spaces\n\n\tend"]
    if a.only_adapters:
        make_adapters(a.out, tok, prompts)
        return
    if a.only_train:
        make_train(a.out)
        make_mlx_optim(a.out)
        make_trained_roundtrip(a.out, a.binary)
        return
    make_models(a.out, tok, prompts)
    make_adapters(a.out, tok, prompts)
    make_dequant(a.out)
    make_quantize(a.out)
    make_templates(a.out, a.gguf, a.qwen3_template)
    make_train(a.out)
    make_mlx_optim(a.out)
    make_trained_roundtrip(a.out, a.binary)
    if not a.skip_real:
        make_real(a.out, a.gguf, tok)


if __name__ == "__main__":
    main()
