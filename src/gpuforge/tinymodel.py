"""A tiny Llama-architecture model that gpuforge generates itself, for the lab and molecule.

The lab cannot download a model (no hub access), and a real one would not fit its CPUs, so gpuforge writes
one: random weights (fixed seed, so every run writes the same bytes and checksums are stable), a byte-level
BPE tokenizer trained here on a few paragraphs of text, and the config.json / tokenizer files that vLLM and
transformers read. Its head_dim is 32 (vLLM's CPU attention needs at least 32). It generates gibberish, but
it exercises the whole serving path: weights loading, tokenizer, KV cache, sampling, the OpenAI API.

Only the standard library is used: the controller needs no torch or numpy.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import struct
from pathlib import Path

NAME = "gpuforge-tiny-llama"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"

# Architecture: small enough to generate in a second in pure Python, real enough for vLLM's Llama path.
ARCH = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim = 64 / 2 = 32
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
VOCAB_SIZE = 320  # 256 bytes + 62 merges + 2 special tokens
SEED = 20261127
ARCH_STD = 0.02  # standard deviation of the random weights (Llama's initializer_range)

# Training text for the tokenizer's merges: what the lab's prompts look like.
CORPUS = """
The cluster serves a language model across two hosts. Each host has GPUs, a fabric interface and a
Ray node. The head runs the server; the workers join the head. Requests arrive through the load
balancer, which sends them to a group that answers. When a group is upgraded it leaves the rotation,
and the other group keeps serving. The driver, the toolkit and the network are provisioned by the
same playbook, and a second run changes nothing. Hello, world: the quick brown fox jumps over the
lazy dog, then the model writes a story about the sea, the stars and the people on the shore.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which the ByteLevel pre-tokenizer uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def train_merges(text: str, count: int) -> list[tuple[str, str]]:
    """Plain BPE on whitespace-led words (the way ByteLevel splits text), most frequent pair first."""
    b2u = bytes_to_unicode()
    words = collections.Counter()
    for i, word in enumerate(text.split()):
        raw = (" " if i else "") + word
        words[tuple(b2u[b] for b in raw.encode())] += 1
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs = collections.Counter()
        for word, freq in words.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        merged = collections.Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def tokenizer_json() -> dict:
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = train_merges(CORPUS, VOCAB_SIZE - 256 - 2)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    specials = [{"id": len(vocab) + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for i, tok in enumerate((BOS, EOS))]
    if len(vocab) + len(specials) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(vocab) + len(specials)} tokens, expected {VOCAB_SIZE}")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": specials,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [specials[0]["id"]], "tokens": [BOS]}},
        },
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }


def config_json() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **ARCH,
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": VOCAB_SIZE - 2,
        "eos_token_id": VOCAB_SIZE - 1,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "initializer_range": 0.02,
    }


def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = ARCH["hidden_size"], ARCH["intermediate_size"], VOCAB_SIZE
    kv = ARCH["num_key_value_heads"] * (h // ARCH["num_attention_heads"])
    shapes = [("model.embed_tokens.weight", (v, h))]
    for n in range(ARCH["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    return shapes + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def bf16(values: list[float]) -> bytes:
    """float32 -> bfloat16 by truncation (the upper 16 bits), little-endian."""
    f32 = struct.pack(f"<{len(values)}f", *values)
    return b"".join(f32[k + 2:k + 4] for k in range(0, len(f32), 4))


def safetensors_bytes(seed: int = SEED) -> bytes:
    rng = random.Random(seed)
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, shape in tensor_shapes():
        count = 1
        for d in shape:
            count *= d
        # RMSNorm weights start at 1 (as trained models' roughly are); everything else ~ N(0, 0.02).
        norm = name.endswith("norm.weight")
        values = [1.0] * count if norm else [rng.gauss(0.0, ARCH_STD) for _ in range(count)]
        blob = bf16(values)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


# A plain chat template (role: content, one message a line), so that /v1/chat/completions answers: vLLM
# refuses chat requests for a tokenizer without one.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def files() -> dict[str, bytes]:
    """Every file of the model directory, by name."""
    dump = lambda obj: (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()  # noqa: E731
    return {
        "config.json": dump(config_json()),
        "generation_config.json": dump({"bos_token_id": VOCAB_SIZE - 2, "eos_token_id": VOCAB_SIZE - 1,
                                        "do_sample": True, "temperature": 1.0}),
        "model.safetensors": safetensors_bytes(),
        "tokenizer.json": dump(tokenizer_json()),
        "tokenizer_config.json": dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS,
                                       "eos_token": EOS, "model_max_length": ARCH["max_position_embeddings"],
                                       "clean_up_tokenization_spaces": False, "add_bos_token": True,
                                       "chat_template": CHAT_TEMPLATE}),
        "special_tokens_map.json": dump({"bos_token": BOS, "eos_token": EOS}),
        "README.md": (f"# {NAME}\n\nGenerated by `gpuforge model tiny`: a Llama-architecture model with random "
                      "weights (seed {SEED}) and its own byte-level BPE tokenizer, for the gpuforge lab. It "
                      "produces gibberish; it exists to exercise the serving path.\n").replace("{SEED}", str(SEED))
                     .encode(),
    }


def write(out: Path) -> dict[str, str]:
    """Write the model into `out` (created if needed); rewrite only files whose bytes differ.
    Returns {file: sha256}."""
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, data in files().items():
        path = out / name
        if not path.exists() or path.read_bytes() != data:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests
