"""The preflight filter's pure functions, without Ansible's playbook machinery."""

import copy

import gpuforge_preflight as pf
import pytest
import yaml
from conftest import FIXTURES, ROOT

GRAPH = """\
@all:
  |--@ungrouped:
  |--@gpu_nodes:
  |  |--g1
  |  |--g2
  |--@kube_nodes:
  |  |--@gpu_nodes:
  |  |  |--g1
  |  |  |--g2
  |--@serving:
  |  |--@serving_a:
  |  |  |--g1
  |  |  |--g2
  |--@lb:
  |  |--lb1
"""

SPEC = yaml.safe_load((ROOT / "playbooks" / "vars" / "inventory_spec.yml").read_text())["gpuforge_inventory_spec"]


SECRETS = {"vllm_api_key": "k" * 32, "ray_auth_token": "t" * 48}
FIREWALL = {"firewall_ssh_sources": ["10.0.100.0/24"]}


def base_vars():
    return {
        "g1": {"gpu_count": 8, "ansible_host": "10.0.0.1", "fabric_interface": "ib0", "fabric_ip": "10.1.0.1",
               **SECRETS, **FIREWALL},
        "g2": {"gpu_count": 8, "ansible_host": "10.0.0.2", "fabric_interface": "ib0", "fabric_ip": "10.1.0.2",
               **SECRETS, **FIREWALL},
        "lb1": {"ansible_host": "10.0.0.9", "vllm_api_key": SECRETS["vllm_api_key"], **FIREWALL},
    }


def test_graph_parses_nested_children_and_hosts():
    tree = pf.inventory_tree(GRAPH)
    assert tree["all"]["children"] == ["ungrouped", "gpu_nodes", "kube_nodes", "serving", "lb"]
    assert tree["kube_nodes"]["children"] == ["gpu_nodes"]
    assert tree["serving"]["children"] == ["serving_a"]
    assert tree["serving_a"]["hosts"] == ["g1", "g2"]
    assert pf.serving_groups(tree) == {"serving_a": ["g1", "g2"]}


def test_sound_inventory_has_no_problems():
    assert pf.inventory_problems(pf.inventory_tree(GRAPH), base_vars(), SPEC) == []


@pytest.mark.parametrize("tp,pp,ok", [(8, 2, True), (16, 1, True), (4, 4, True), (8, 1, False), (3, 2, False)])
def test_parallelism_product_must_equal_group_gpus(tp, pp, ok):
    hv = base_vars()
    for h in ("g1", "g2"):
        hv[h].update(vllm_tensor_parallel_size=tp, vllm_pipeline_parallel_size=pp)
    problems = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert (problems == []) is ok, problems
    if not ok:
        assert f"= {tp * pp}, but the group has 16 GPUs (2 hosts x 8)" in problems[0]


def test_tensor_parallel_alone_must_divide_the_group():
    hv = base_vars()
    for h in ("g1", "g2"):
        hv[h]["vllm_tensor_parallel_size"] = 6
    (problem,) = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert "does not divide the group's 16 GPUs" in problem


def test_string_numbers_are_accepted_like_ansible_does():
    hv = base_vars()
    hv["g1"]["gpu_count"] = hv["g2"]["gpu_count"] = "8"
    assert pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC) == []


def test_missing_gpu_count_is_named():
    hv = base_vars()
    del hv["g2"]["gpu_count"]
    problems = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert any(p.startswith("host g2: variable gpu_count is not set") for p in problems), problems


def test_group_must_agree_on_driver_version():
    hv = base_vars()
    hv["g1"]["nvidia_driver_version"] = "535.261.03"
    hv["g2"]["nvidia_driver_version"] = "535.309.01"
    (problem,) = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert "hosts disagree on nvidia_driver_version" in problem


def test_every_problem_names_a_fix():
    hv = copy.deepcopy(base_vars())
    hv["g1"].update(gpu_count="x", fabric_ip="nope")
    hv["g2"]["ansible_host"] = "10.0.0.1"
    problems = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert len(problems) >= 3
    assert all("Fix:" in p for p in problems)


def test_os_problems_unsupported_and_mixed_python():
    tree = pf.inventory_tree(GRAPH)

    def facts(dist, major, py_minor):
        python = {"version": {"major": 3, "minor": py_minor}}
        return {"ansible_facts": {"distribution": dist, "distribution_major_version": major,
                                  "distribution_version": major, "python": python}}

    hv = {"g1": facts("Debian", "12", 11), "g2": facts("Debian", "13", 13), "lb1": facts("CentOS", "7", 6)}
    problems = pf.os_problems(tree, hv)
    assert any("host lb1: runs CentOS 7" in p for p in problems)
    assert any("serving group serving_a: hosts run different Python versions (g1=3.11, g2=3.13)" in p
               for p in problems)
    assert pf.os_problems(tree, {"g1": facts("Ubuntu", "24", 12), "g2": facts("Ubuntu", "24", 12),
                                 "lb1": facts("Debian", "12", 11)}) == []


def test_fixture_valid_inventory_is_sound_by_the_pure_checks():
    data = yaml.safe_load((FIXTURES / "inventories" / "valid.yml").read_text())
    children = data["all"]["children"]
    shared = data["all"]["vars"]
    hv = {h: dict(shared, **(v or {}), gpu_count=8) for h, v in children["gpu_nodes"]["hosts"].items()}
    hv["lb-01"] = dict(shared, **children["lb"]["hosts"]["lb-01"])
    graph = "@all:\n  |--@gpu_nodes:\n" + "".join(f"  |  |--{h}\n" for h in children["gpu_nodes"]["hosts"])
    graph += "  |--@serving:\n"
    for g, body in children["serving"]["children"].items():
        graph += f"  |  |--@{g}:\n" + "".join(f"  |  |  |--{h}\n" for h in body["hosts"])
    graph += "  |--@lb:\n  |  |--lb-01\n"
    assert pf.inventory_problems(pf.inventory_tree(graph), hv, SPEC) == []


def test_model_that_cannot_fit_its_group_is_refused_with_numbers():
    hv = base_vars()
    for h in ("g1", "g2"):
        hv[h].update(vllm_model_config=str(FIXTURES / "models" / "llama-3.1-405b.json"), gpu_memory_gib=80,
                     vllm_max_model_len=131072, vllm_max_num_seqs=64)
    (problem,) = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert problem.startswith("serving group serving_a: the model does not fit")
    assert "70.0 GiB usable" in problem and "Fix:" in problem
    # The same model on the same 16 GPUs fits with 8k tokens x 8 sequences.
    for h in ("g1", "g2"):
        hv[h].update(vllm_max_model_len=8192, vllm_max_num_seqs=8)
    assert pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC) == []


def test_model_config_without_gpu_memory_is_named():
    hv = base_vars()
    for h in ("g1", "g2"):
        hv[h]["vllm_model_config"] = str(FIXTURES / "models" / "llama-3-70b.json")
    (problem,) = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert "gpu_memory_gib is not" in problem


def test_a_secret_of_the_wrong_type_is_reported_without_its_value():
    # Any value converts to str, so a str secret cannot be mistyped: give the spec a type it can fail.
    spec = copy.deepcopy(SPEC)
    assert spec["vllm_api_key"]["no_log"] is True
    spec["vllm_api_key"]["type"] = "int"
    hv = base_vars()
    hv["g1"]["vllm_api_key"] = "sk-secret-value-1234"
    problems = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, spec)
    mine = [p for p in problems if p.startswith("host g1: ")]
    assert len(mine) == 1 and mine[0].startswith("host g1: variable vllm_api_key = <hidden: no_log> is invalid")
    assert "sk-secret-value-1234" not in " ".join(problems)


def test_serving_groups_are_published_head_first():
    groups = pf.serving_groups(pf.inventory_tree(GRAPH))
    assert groups == {"serving_a": ["g1", "g2"]}


@pytest.mark.parametrize("var,value,message", [
    ("vllm_tensor_parallel_size", -8, "variable vllm_tensor_parallel_size = -8 is invalid (below the minimum 1)"),
    ("vllm_pipeline_parallel_size", "-1",
     "variable vllm_pipeline_parallel_size = '-1' is invalid (below the minimum 1)"),
    ("vllm_port", 70000, "variable vllm_port = 70000 is invalid (above the maximum 65535)"),
    ("vllm_port", 0, "variable vllm_port = 0 is invalid (below the minimum 1)"),
    ("vllm_gpu_memory_utilization", 2.5,
     "variable vllm_gpu_memory_utilization = 2.5 is invalid (above the maximum 1)"),
    ("vllm_gpu_memory_utilization", 0, "variable vllm_gpu_memory_utilization = 0 is invalid (must be above 0)"),
    ("gpu_memory_gib", "inf", "variable gpu_memory_gib = 'inf' is invalid (not a finite number)"),
    ("vllm_served_model_name", "my model", "variable vllm_served_model_name = 'my model' is invalid (does not match"),
    ("vllm_max_num_seqs", 0, "variable vllm_max_num_seqs = 0 is invalid (below the minimum 1)"),
])
def test_out_of_range_values_are_refused_naming_host_variable_and_fix(var, value, message):
    hv = base_vars()
    hv["g2"][var] = value
    problems = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    mine = [p for p in problems if p.startswith("host g2: ")]
    assert len(mine) == 1 and message in mine[0] and "Fix: " in mine[0], problems


def test_negative_tensor_and_pipeline_sizes_are_refused_though_their_product_matches():
    hv = base_vars()
    for h in ("g1", "g2"):
        hv[h].update(vllm_tensor_parallel_size=-8, vllm_pipeline_parallel_size=-2)  # -8 x -2 = 16 GPUs
    problems = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert sum("below the minimum 1" in p for p in problems) == 4, problems


@pytest.mark.parametrize("var", ["vllm_api_key", "ray_auth_token"])
def test_secrets_must_be_present_and_long(var):
    hv = base_vars()
    del hv["g2"][var]
    problems = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert problems == [f"hosts g2: variable {var} is not set. Fix: put {var}, at least 32 characters (e.g. the "
                        "output of `openssl rand -hex 24`), in a vault file (ansible-vault create "
                        "group_vars/all/vault.yml)."]
    hv["g2"][var] = "short-secret-31-characters-long"
    (problem,) = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert problem.startswith(f"host g2: variable {var} = <hidden: no_log> is invalid (shorter than 32 characters)")
    assert "short-secret" not in problem


def test_the_load_balancer_needs_the_api_key_too():
    hv = base_vars()
    del hv["lb1"]["vllm_api_key"]
    (problem,) = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert problem.startswith("hosts lb1: variable vllm_api_key is not set.")


def test_a_load_balancer_that_is_a_serving_head_on_the_same_port_is_refused():
    graph = GRAPH.replace("  |--@lb:\n  |  |--lb1\n", "  |--@lb:\n  |  |--g1\n")
    hv = base_vars()
    (problem,) = pf.inventory_problems(pf.inventory_tree(graph), hv, SPEC)
    assert problem.startswith("host g1: is a load balancer (lb) and the head of serving group serving_a, and both "
                              "HAProxy (serving_lb_port) and vLLM (vllm_port) want port 8000.")
    hv["g1"]["serving_lb_port"] = 443
    assert pf.inventory_problems(pf.inventory_tree(graph), hv, SPEC) == []


def test_a_model_config_that_is_a_json_list_names_the_variable(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("[]")
    hv = base_vars()
    for h in ("g1", "g2"):
        hv[h].update(vllm_model_config=str(config), gpu_memory_gib=80)
    (problem,) = pf.inventory_problems(pf.inventory_tree(GRAPH), hv, SPEC)
    assert problem.startswith(f"serving group serving_a: vllm_model_config {config} cannot be used (config.json "
                              "must be a JSON object")
    assert "Fix: " in problem
