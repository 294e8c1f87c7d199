"""Memory and parallelism planner for vLLM serving groups.

Plain Python, shared by the `gpuforge plan` command and Ansible (the filter `gpuforge_serving_plan` and
preflight, in plugins/filter). It computes
the weights and KV-cache footprint per GPU for a tensor-parallel (TP) x pipeline-parallel (PP) layout and
validates or chooses that layout. The model is described by the fields of a Hugging Face config.json.

The arithmetic, stated once so it can be checked by hand:

- weights = parameters x bytes per parameter of the dtype/quantization (int4 formats add 1/32 for their
  per-group scales), split evenly over TP x PP GPUs;
- KV cache per token = 2 (K and V) x layers x KV heads x head dim x KV dtype bytes; per GPU, the layers are
  split by PP and the KV heads by TP (a KV head is never split: with TP above the KV heads, each GPU keeps
  one); total tokens = context length x concurrent sequences;
- usable memory per GPU = GPU memory x gpu_memory_utilization - a fixed reserve for activations and CUDA
  graphs (default 2 GiB).
"""

from __future__ import annotations

import json
import math

GIB = 1024 ** 3
BYTES_PER_PARAM = {
    "float32": 4.0, "fp32": 4.0,
    "bfloat16": 2.0, "bf16": 2.0, "float16": 2.0, "fp16": 2.0, "half": 2.0,
    "fp8": 1.0, "int8": 1.0,
    # 4-bit weights plus one 16-bit scale per group of 128 weights (AWQ/GPTQ default):
    # 0.5 + 2/128 = 0.5 x (1 + 1/32) bytes per parameter.
    "int4": 0.5 * (1 + 1 / 32), "awq": 0.5 * (1 + 1 / 32), "gptq": 0.5 * (1 + 1 / 32),
}
KV_BYTES = {"auto": None, "fp16": 2.0, "bf16": 2.0, "float16": 2.0, "bfloat16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0,
            "fp8_e5m2": 1.0}


class PlanError(ValueError):
    """The request cannot be planned (bad input, or no layout fits)."""


# config.json fields the arithmetic reads: each must be a whole number of at least 1 where present.
_CONFIG_SIZES = ("num_parameters", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                 "intermediate_size", "num_key_value_heads", "head_dim", "max_position_embeddings")


def _positive_int(value):
    """value as an int when it is a whole number >= 1 (int, or a string or float that is one), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number < 1 or number != int(number):
        return None
    return int(number)


def check_config(config):
    """Refuse a config.json the arithmetic cannot use: not an object, or a size that is not a whole number >= 1."""
    if not isinstance(config, dict):
        raise PlanError(f"config.json must be a JSON object (a model's Hugging Face config), not a "
                        f"{type(config).__name__}")
    for field in _CONFIG_SIZES:
        if config.get(field) is not None and _positive_int(config[field]) is None:
            raise PlanError(f"config.json field {field} = {config[field]!r} is not a whole number of at least 1")
    if not config.get("num_parameters") and not config.get("num_attention_heads"):
        raise PlanError("config.json lacks num_attention_heads; give the model's config.json")
    return config


def count_parameters(config):
    """Parameters of a decoder-only transformer described by config.json (Llama/Qwen/Mistral layout)."""
    check_config(config)
    if config.get("num_parameters"):
        return int(config["num_parameters"])
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        vocab = int(config["vocab_size"])
        inter = int(config["intermediate_size"])
    except KeyError as exc:
        raise PlanError(f"config.json lacks {exc.args[0]}; give num_parameters instead") from exc
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    attn = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * inter  # gate, up, down
    per_layer = attn + mlp + 2 * hidden  # two norms
    embed = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return layers * per_layer + embed + hidden


def kv_bytes_per_token(config, kv_dtype_bytes):
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    return 2 * int(config["num_hidden_layers"]) * kv_heads * head_dim * kv_dtype_bytes


def footprint(config, *, dtype, tp, pp, context_len, concurrency, kv_cache_dtype="auto"):
    """GiB per GPU for one layout: weights, KV cache and their sum."""
    dtype = str(dtype).lower()
    if dtype not in BYTES_PER_PARAM:
        raise PlanError(f"unknown dtype or quantization {dtype!r}; known: {', '.join(sorted(BYTES_PER_PARAM))}")
    kv_key = str(kv_cache_dtype).lower()
    if kv_key not in KV_BYTES:
        raise PlanError(f"unknown kv_cache_dtype {kv_cache_dtype!r}; known: {', '.join(sorted(KV_BYTES))}")
    # KV follows the activations' dtype: 16-bit for 16-bit and quantized weights, unless set.
    kv_dtype_bytes = KV_BYTES[kv_key] or (4.0 if BYTES_PER_PARAM[dtype] == 4.0 else 2.0)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    layers = int(config["num_hidden_layers"])
    params = count_parameters(config)
    weights = params * BYTES_PER_PARAM[dtype] / (tp * pp)
    kv_heads_per_gpu = max(kv_heads / tp, 1)
    layers_per_gpu = math.ceil(layers / pp)
    per_token = kv_bytes_per_token(config, kv_dtype_bytes) / (layers * kv_heads) * layers_per_gpu * kv_heads_per_gpu
    kv = per_token * context_len * concurrency
    return {"parameters": params, "weights_gib": weights / GIB, "kv_cache_gib": kv / GIB,
            "total_gib": (weights + kv) / GIB}


def _layouts(config, gpus_per_host, hosts):
    heads = int(config["num_attention_heads"])
    total = gpus_per_host * hosts
    out = []
    for tp in range(1, total + 1):
        if total % tp or heads % tp:
            continue
        # TP inside a host (NVLink); across hosts only in whole hosts.
        if tp > gpus_per_host and tp % gpus_per_host:
            continue
        out.append((tp, total // tp))
    # Prefer TP = GPUs per host (the design's default), then larger TP (less pipeline bubble).
    return sorted(out, key=lambda lp: (lp[0] != gpus_per_host, -lp[0]))


def plan(config, *, dtype, gpu_memory_gib, gpus_per_host, hosts, context_len, concurrency,
         tensor_parallel_size=None, pipeline_parallel_size=None, gpu_memory_utilization=0.9,
         reserve_gib=2.0, kv_cache_dtype="auto"):
    """Validate the given TP/PP, or choose one, for a serving group; raise PlanError when nothing fits."""
    check_config(config)
    for name, value in (("gpus_per_host", gpus_per_host), ("hosts", hosts), ("context_len", context_len),
                        ("concurrency", concurrency)):
        if _positive_int(value) is None:
            raise PlanError(f"{name} must be a whole number of at least 1, got {value!r}")
    for name, value in (("tensor_parallel_size", tensor_parallel_size),
                        ("pipeline_parallel_size", pipeline_parallel_size)):
        if value is not None and _positive_int(value) is None:
            raise PlanError(f"{name} must be a whole number of at least 1, got {value!r}")
    if not _finite(gpu_memory_gib) or gpu_memory_gib <= 0:
        raise PlanError(f"gpu_memory_gib must be a positive finite number, got {gpu_memory_gib!r}")
    if not _finite(gpu_memory_utilization) or not 0 < gpu_memory_utilization <= 1:
        raise PlanError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if not _finite(reserve_gib) or reserve_gib < 0:
        raise PlanError(f"reserve_gib must be a finite number of at least 0, got {reserve_gib!r}")
    usable = gpu_memory_gib * gpu_memory_utilization - reserve_gib
    total_gpus = gpus_per_host * hosts
    common = {"dtype": dtype, "context_len": context_len, "concurrency": concurrency,
              "kv_cache_dtype": kv_cache_dtype}
    if tensor_parallel_size or pipeline_parallel_size:
        tp = int(tensor_parallel_size or total_gpus // int(pipeline_parallel_size))
        pp = int(pipeline_parallel_size or total_gpus // tp)
        if tp * pp != total_gpus:
            raise PlanError(f"tensor parallel {tp} x pipeline parallel {pp} = {tp * pp}, but the group has "
                            f"{total_gpus} GPUs ({hosts} hosts x {gpus_per_host})")
        if int(config["num_attention_heads"]) % tp:
            raise PlanError(f"tensor parallel {tp} does not divide the model's {config['num_attention_heads']} "
                            "attention heads")
        candidates = [(tp, pp)]
    else:
        candidates = _layouts(config, gpus_per_host, hosts)
    tried = []
    for tp, pp in candidates:
        f = footprint(config, tp=tp, pp=pp, **common)
        tried.append((tp, pp, f))
        if f["total_gib"] <= usable:
            return {"tensor_parallel_size": tp, "pipeline_parallel_size": pp, "usable_gib_per_gpu": round(usable, 2),
                    "fits": True, **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in f.items()}}
    tp, pp, f = tried[0] if tried else (None, None, None)
    if f is None:
        raise PlanError(f"no tensor/pipeline layout splits {config['num_attention_heads']} attention heads over "
                        f"{total_gpus} GPUs")
    raise PlanError(
        f"the model does not fit: with tensor parallel {tp} x pipeline parallel {pp} each GPU needs "
        f"{f['weights_gib']:.1f} GiB of weights + {f['kv_cache_gib']:.1f} GiB of KV cache "
        f"({context_len} tokens x {concurrency} sequences) = {f['total_gib']:.1f} GiB, but has "
        f"{usable:.1f} GiB usable ({gpu_memory_gib} GiB x {gpu_memory_utilization} - {reserve_gib} GiB reserve). "
        "Use more GPUs per serving group, a quantized model, a shorter context or fewer concurrent sequences.")


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_config(path):
    with open(path) as f:
        return json.load(f)
