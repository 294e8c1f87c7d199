"""The serving planner (src/gpuforge/planner.py) on hand-computed cases."""

import json

import pytest
from conftest import FIXTURES

from gpuforge import planner
from gpuforge.cli import main

MODELS = FIXTURES / "models"
GIB = 1024 ** 3


def model(name):
    return json.loads((MODELS / name).read_text())


def test_llama3_70b_parameter_count():
    # per layer: attention 8192*8192*2 (q, o) + 2*8192*8*128 (k, v) = 150,994,944
    #            mlp 3*8192*28672 = 704,643,072; norms 2*8192 = 16,384 -> 855,654,400
    # 80 layers = 68,452,352,000; embeddings + lm_head 2*128256*8192 = 2,101,346,304; final norm 8192
    assert planner.count_parameters(model("llama-3-70b.json")) == 70_553_706_496


def test_70b_fp16_on_one_8x80gb_host():
    """Weights 70,553,706,496 x 2 B / 8 GPUs = 16.43 GiB; KV per token 2*80*8*128*2 B = 327,680 B, one KV
    head per GPU at TP 8 -> 40,960 B per GPU; 8192 tokens x 32 sequences = 262,144 tokens -> 10.00 GiB."""
    p = planner.plan(model("llama-3-70b.json"), dtype="fp16", gpu_memory_gib=80, gpus_per_host=8, hosts=1,
                     context_len=8192, concurrency=32)
    assert (p["tensor_parallel_size"], p["pipeline_parallel_size"]) == (8, 1)
    assert p["weights_gib"] == pytest.approx(70_553_706_496 * 2 / 8 / GIB, abs=0.01) == pytest.approx(16.43, abs=0.01)
    assert p["kv_cache_gib"] == pytest.approx(10.0, abs=0.01)
    assert p["usable_gib_per_gpu"] == pytest.approx(80 * 0.9 - 2)
    assert p["fits"] is True


def test_72b_awq_on_one_96gb_gpu():
    """Qwen2-72B: 72,705,384,448 params x 0.515625 B (4-bit + 16-bit scale per 128) = 34.91 GiB; KV
    327,680 B x 32768 tokens x 4 sequences = 40.00 GiB; total 74.91 GiB <= 96 x 0.9 - 2 = 84.4 GiB."""
    cfg = model("qwen2-72b.json")
    assert planner.count_parameters(cfg) == 72_705_384_448
    p = planner.plan(cfg, dtype="awq", gpu_memory_gib=96, gpus_per_host=1, hosts=1, context_len=32768,
                     concurrency=4)
    assert p["weights_gib"] == pytest.approx(72_705_384_448 * 0.515625 / GIB, abs=0.01)
    assert p["kv_cache_gib"] == pytest.approx(40.0, abs=0.01)
    assert p["total_gib"] == pytest.approx(74.91, abs=0.01)


def test_72b_in_bf16_does_not_fit_one_96gb_gpu():
    with pytest.raises(planner.PlanError, match=r"135\.4 GiB of weights .* 84\.4 GiB usable"):
        planner.plan(model("qwen2-72b.json"), dtype="bf16", gpu_memory_gib=96, gpus_per_host=1, hosts=1,
                     context_len=4096, concurrency=1)


def test_405b_fp16_is_too_large_for_one_8x80gb_host_but_fits_two():
    cfg = model("llama-3.1-405b.json")
    with pytest.raises(planner.PlanError, match="does not fit") as err:
        planner.plan(cfg, dtype="bf16", gpu_memory_gib=80, gpus_per_host=8, hosts=1, context_len=8192, concurrency=8)
    assert "70.0 GiB usable" in str(err.value)
    p = planner.plan(cfg, dtype="bf16", gpu_memory_gib=80, gpus_per_host=8, hosts=2, context_len=8192, concurrency=8)
    assert (p["tensor_parallel_size"], p["pipeline_parallel_size"]) == (8, 2)  # TP inside a host, PP across


def test_given_layout_is_validated():
    cfg = model("llama-3-70b.json")
    with pytest.raises(planner.PlanError, match="= 8, but the group has 16 GPUs"):
        planner.plan(cfg, dtype="fp16", gpu_memory_gib=80, gpus_per_host=8, hosts=2, context_len=4096,
                     concurrency=1, tensor_parallel_size=8, pipeline_parallel_size=1)
    with pytest.raises(planner.PlanError, match="does not divide the model's 64 attention heads"):
        planner.plan(cfg, dtype="fp16", gpu_memory_gib=80, gpus_per_host=6, hosts=1, context_len=4096,
                     concurrency=1, tensor_parallel_size=6, pipeline_parallel_size=1)


def test_bad_input_names_the_field():
    with pytest.raises(planner.PlanError, match="unknown dtype or quantization 'int3'"):
        planner.plan(model("llama-3-70b.json"), dtype="int3", gpu_memory_gib=80, gpus_per_host=8, hosts=1,
                     context_len=4096, concurrency=1)
    with pytest.raises(planner.PlanError, match="gpu_memory_gib must be a positive finite number"):
        planner.plan(model("llama-3-70b.json"), dtype="fp16", gpu_memory_gib=0, gpus_per_host=8, hosts=1,
                     context_len=4096, concurrency=1)


def test_plan_command(capsys):
    rc = main(["plan", "--config", str(MODELS / "llama-3-70b.json"), "--dtype", "fp16", "--gpu-memory-gib", "80",
               "--gpus-per-host", "8", "--context-len", "8192", "--concurrency", "32", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tensor_parallel_size"] == 8 and out["kv_cache_gib"] == pytest.approx(10.0, abs=0.01)
    rc = main(["plan", "--config", str(MODELS / "llama-3.1-405b.json"), "--gpu-memory-gib", "80",
               "--gpus-per-host", "8", "--context-len", "8192"])
    assert rc == 1
    assert "does not fit" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,message", [
    ({"gpu_memory_gib": float("inf")}, "gpu_memory_gib must be a positive finite number, got inf"),
    ({"gpu_memory_gib": float("nan")}, "gpu_memory_gib must be a positive finite number"),
    ({"tensor_parallel_size": -8, "pipeline_parallel_size": -1}, "tensor_parallel_size must be a whole number"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size must be a whole number of at least 1, got 0"),
    ({"pipeline_parallel_size": -2}, "pipeline_parallel_size must be a whole number of at least 1, got -2"),
    ({"gpu_memory_utilization": 2.5}, r"gpu_memory_utilization must be in \(0, 1\], got 2.5"),
    ({"hosts": 0}, "hosts must be a whole number of at least 1, got 0"),
    ({"reserve_gib": float("inf")}, "reserve_gib must be a finite number"),
])
def test_non_positive_or_non_finite_numbers_are_refused(kwargs, message):
    args = {"dtype": "fp16", "gpu_memory_gib": 80, "gpus_per_host": 8, "hosts": 1, "context_len": 4096,
            "concurrency": 1, **kwargs}
    with pytest.raises(planner.PlanError, match=message):
        planner.plan(model("llama-3-70b.json"), **args)


@pytest.mark.parametrize("config,message", [
    ([], "config.json must be a JSON object .*, not a list"),
    ({**json.loads((MODELS / "llama-3-70b.json").read_text()), "num_attention_heads": 0},
     "field num_attention_heads = 0 is not a whole number of at least 1"),
    ({**json.loads((MODELS / "llama-3-70b.json").read_text()), "hidden_size": "big"},
     "field hidden_size = 'big' is not a whole number of at least 1"),
    ({"model_type": "llama"}, "lacks num_attention_heads"),
])
def test_unusable_configs_are_refused_naming_the_field(config, message):
    with pytest.raises(planner.PlanError, match=message):
        planner.plan(config, dtype="fp16", gpu_memory_gib=80, gpus_per_host=8, hosts=1, context_len=4096,
                     concurrency=1)


@pytest.mark.parametrize("content", ["[]", '{"num_attention_heads": 0, "hidden_size": 8}',
                                     '{"num_attention_heads": 8, "max_position_embeddings": "long"}', "{not json"])
def test_plan_command_refuses_a_bad_config_without_a_traceback(tmp_path, capsys, content):
    path = tmp_path / "config.json"
    path.write_text(content)
    rc = main(["plan", "--config", str(path), "--gpu-memory-gib", "80", "--gpus-per-host", "8"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"gpuforge: error: cannot use the model's config.json ({path}): "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("flags,message", [
    (["--tp", "-8", "--pp", "-1"], "--tp: expected 1 or more, got -8"),
    (["--tp", "0"], "--tp: expected 1 or more, got 0"),
    (["--gpu-memory-gib", "inf"], "--gpu-memory-gib: expected a finite number, got 'inf'"),
    (["--gpu-memory-gib", "-80"], "--gpu-memory-gib: expected a number above 0"),
    (["--utilization", "2.5"], "--utilization: expected a number above 0 and at most 1"),
])
def test_plan_command_refuses_bad_numbers(capsys, flags, message):
    argv = ["plan", "--config", str(MODELS / "llama-3-70b.json"), "--gpu-memory-gib", "80", "--gpus-per-host", "8"]
    with pytest.raises(SystemExit) as exc:
        main(argv + flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
