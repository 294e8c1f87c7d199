"""The tiny Llama model gpuforge writes for the lab (src/gpuforge/tinymodel.py): the files vLLM reads."""

import hashlib
import json
import math
import struct

import pytest

from gpuforge import tinymodel as tm

# Hand count for ARCH (hidden 64, intermediate 128, 2 layers, 2 heads, 2 KV heads -> head_dim 32) and a
# 320-token vocabulary, untied embeddings:
#   embed_tokens 320*64 = 20480, lm_head 320*64 = 20480, final norm 64
#   per layer: 2 norms 2*64 = 128, q/k/v/o 4*64*64 = 16384, gate/up/down 3*128*64 = 24576 -> 41088
#   total = 20480 + 20480 + 64 + 2*41088 = 123200
PARAMETERS = 123200
TENSORS = 1 + 2 * 9 + 2


def parse_safetensors(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    return n, header, blob[8 + n:]


def bf16_to_floats(raw):
    return [struct.unpack("<f", b"\0\0" + raw[k:k + 2])[0] for k in range(0, len(raw), 2)]


@pytest.fixture(scope="module")
def safetensors():
    return tm.safetensors_bytes()


def test_bf16_truncates_float32_to_its_upper_half_little_endian():
    # float32 1.0 = 0x3F800000, -2.0 = 0xC0000000, 0.5 = 0x3F000000 -> bf16 0x3F80, 0xC000, 0x3F00.
    assert tm.bf16([1.0, -2.0, 0.5]) == bytes([0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F])
    assert tm.bf16([]) == b""
    # 1 + 2**-10 is below bf16's 7-bit mantissa: truncation gives 1.0 again.
    assert tm.bf16([1.0 + 2**-10]) == bytes([0x80, 0x3F])


def test_safetensors_header_is_json_after_its_little_endian_length(safetensors):
    n, header, _ = parse_safetensors(safetensors)
    assert n % 8 == 0  # the header is padded so the data starts 8-byte aligned
    assert safetensors[8:9] == b"{"
    assert header["__metadata__"] == {"format": "pt"}
    assert len(header) - 1 == TENSORS


def test_safetensors_tensors_match_tensor_shapes_in_bf16(safetensors):
    _, header, _ = parse_safetensors(safetensors)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert {k: tuple(v["shape"]) for k, v in tensors.items()} == dict(tm.tensor_shapes())
    assert {v["dtype"] for v in tensors.values()} == {"BF16"}
    assert tensors["model.embed_tokens.weight"]["shape"] == [320, 64]
    assert tensors["lm_head.weight"]["shape"] == [320, 64]
    assert tensors["model.layers.1.self_attn.k_proj.weight"]["shape"] == [64, 64]
    assert tensors["model.layers.0.mlp.down_proj.weight"]["shape"] == [64, 128]


def test_safetensors_data_offsets_are_contiguous_and_cover_the_data(safetensors):
    _, header, data = parse_safetensors(safetensors)
    spans = sorted((v["data_offsets"], math.prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
    end = 0
    for (start, stop), count in spans:
        assert start == end, "a hole or an overlap between tensors"
        assert stop - start == 2 * count  # two bytes per bf16 value
        end = stop
    assert end == len(data) == 2 * PARAMETERS


def test_parameter_count_matches_the_hand_count():
    assert sum(math.prod(shape) for _, shape in tm.tensor_shapes()) == PARAMETERS


def test_weights_are_ones_for_norms_and_small_random_elsewhere(safetensors):
    _, header, data = parse_safetensors(safetensors)
    start, stop = header["model.norm.weight"]["data_offsets"]
    assert data[start:stop] == bytes([0x80, 0x3F]) * 64
    start, stop = header["model.layers.0.self_attn.q_proj.weight"]["data_offsets"]
    values = bf16_to_floats(data[start:stop])
    mean = sum(values) / len(values)
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / len(values))
    assert abs(mean) < 0.002 and 0.018 < std < 0.022  # N(0, 0.02) over 4096 values
    assert len(set(values)) > 100


def test_safetensors_are_deterministic_and_follow_the_seed(safetensors):
    assert tm.safetensors_bytes() == safetensors
    other = tm.safetensors_bytes(seed=tm.SEED + 1)
    assert len(other) == len(safetensors) and other != safetensors


def test_every_file_is_the_same_bytes_on_every_call():
    assert tm.files() == tm.files()


def test_config_head_dim_is_at_least_32_for_vllm_cpu_attention():
    config = json.loads(tm.files()["config.json"])
    head_dim, rest = divmod(config["hidden_size"], config["num_attention_heads"])
    assert rest == 0 and head_dim >= 32
    assert config["num_attention_heads"] % config["num_key_value_heads"] == 0
    assert config["vocab_size"] == tm.VOCAB_SIZE == 320
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == "bfloat16"


# ---------------------------------------------------------------- tokenizer

@pytest.fixture(scope="module")
def tokenizer():
    return json.loads(tm.files()["tokenizer.json"])


def test_tokenizer_ids_are_0_to_vocab_size_without_gaps(tokenizer):
    vocab = tokenizer["model"]["vocab"]
    added = tokenizer["added_tokens"]
    assert len(vocab) + len(added) == tm.VOCAB_SIZE
    ids = list(vocab.values()) + [t["id"] for t in added]
    assert sorted(ids) == list(range(tm.VOCAB_SIZE))
    assert not set(vocab) & {t["content"] for t in added}


def test_tokenizer_has_every_byte_and_every_merge(tokenizer):
    vocab = tokenizer["model"]["vocab"]
    merges = tokenizer["model"]["merges"]
    assert len(merges) == tm.VOCAB_SIZE - 256 - 2
    assert set(tm.bytes_to_unicode().values()) <= set(vocab)
    for merge in merges:
        parts = merge.split(" ")
        assert len(parts) == 2, f"merge {merge!r} is not two tokens"
        a, b = parts
        assert a in vocab and b in vocab and a + b in vocab, merge
    assert len(set(merges)) == len(merges)


def test_tokenizer_special_tokens_match_config(tokenizer):
    files = tm.files()
    config = json.loads(files["config.json"])
    generation = json.loads(files["generation_config.json"])
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert ids[tm.BOS] == config["bos_token_id"] == generation["bos_token_id"] == 318
    assert ids[tm.EOS] == config["eos_token_id"] == generation["eos_token_id"] == 319
    assert all(t["special"] for t in tokenizer["added_tokens"])
    # The post-processor prepends BOS by its id.
    assert tokenizer["post_processor"]["special_tokens"][tm.BOS]["ids"] == [ids[tm.BOS]]
    tokenizer_config = json.loads(files["tokenizer_config.json"])
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == (tm.BOS, tm.EOS)


def test_chat_template_renders_a_conversation_with_the_generation_prompt():
    """vLLM answers /v1/chat/completions only for a tokenizer with a chat template; it renders it with Jinja."""
    import jinja2

    template = json.loads(tm.files()["tokenizer_config.json"])["chat_template"]
    rendered = jinja2.Environment().from_string(template).render(
        bos_token=tm.BOS, add_generation_prompt=True,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    assert rendered == f"{tm.BOS}system: Be brief.\nuser: Hello\nassistant:"


def test_bytes_to_unicode_is_gpt2s_reversible_map():
    b2u = tm.bytes_to_unicode()
    assert len(b2u) == 256 and len(set(b2u.values())) == 256
    assert b2u[ord("A")] == "A" and b2u[ord("!")] == "!"
    assert b2u[0x00] == "\u0100"  # Ā
    assert b2u[0x20] == "\u0120"  # Ġ, the space that leads a word
    assert b2u[0x0A] == "\u010a"  # Ċ, newline
    assert not any(c.isspace() for c in b2u.values())


def test_train_merges_on_a_hand_counted_text():
    # Words: "ab" once, " ab" twice. Pairs: (a,b) 3, (Ġ,a) 2 -> merge a+b; then (Ġ,ab) 2 -> merge; then none.
    assert tm.train_merges("ab ab ab", 10) == [("a", "b"), ("\u0120", "ab")]
    assert tm.train_merges("ab ab ab", 1) == [("a", "b")]


def test_tokenizer_round_trips_text_when_tokenizers_is_installed():
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_str(tm.files()["tokenizer.json"].decode())
    text = "Hello, world: the cluster serves a model. Ünïcode too."
    enc = tok.encode(text)
    assert enc.ids[0] == tm.VOCAB_SIZE - 2
    assert tok.decode(enc.ids, skip_special_tokens=True) == text
    assert len(enc.ids) < len(text.encode())  # the merges do something


# ---------------------------------------------------------------- write

def test_write_creates_the_model_directory_with_matching_digests(tmp_path):
    out = tmp_path / "models" / tm.NAME
    digests = tm.write(out)
    assert set(digests) == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                            "tokenizer_config.json", "special_tokens_map.json", "README.md"}
    assert sorted(p.name for p in out.iterdir()) == sorted(digests)  # and no .tmp left behind
    for name, digest in digests.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert (out / "model.safetensors").stat().st_size == 8 + parse_safetensors(tm.safetensors_bytes())[0] \
        + 2 * PARAMETERS
    assert str(tm.SEED) in (out / "README.md").read_text()


def test_second_write_leaves_unchanged_files_alone_and_repairs_changed_ones(tmp_path):
    first = tm.write(tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    inodes = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    (tmp_path / "config.json").write_text("{}")
    changed_mtime = (tmp_path / "config.json").stat().st_mtime_ns

    assert tm.write(tmp_path) == first
    for p in tmp_path.iterdir():
        if p.name == "config.json":
            assert p.read_bytes() == tm.files()["config.json"]
            assert p.stat().st_ino != inodes[p.name] or p.stat().st_mtime_ns != changed_mtime
        else:
            assert (p.stat().st_mtime_ns, p.stat().st_ino) == (mtimes[p.name], inodes[p.name]), p.name
