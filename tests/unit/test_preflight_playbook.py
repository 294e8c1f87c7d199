"""playbooks/preflight.yml against malformed inventories: each fails with its own message, no host contacted.

These run the real playbook through ansible-runner and read its events: a task that ran on any inventory
host (not the controller's localhost) would show up as a host event.
"""

import tempfile
from pathlib import Path

import ansible_runner
import pytest
from conftest import FIXTURES, ROOT

INVENTORIES = FIXTURES / "inventories"

CASES = {
    "no_gpu_nodes": "group gpu_nodes is missing or empty",
    "gpu_count_not_int": "host gpu-02: variable gpu_count = 'eight' is invalid",
    "gpu_count_zero": "host gpu-01: variable gpu_count = 0 must be at least 1",
    "mixed_gpu_count": "serving group serving_b: hosts disagree on gpu_count (gpu-03=8, gpu-04=4)",
    "parallelism_mismatch": "serving group serving_a: vllm_tensor_parallel_size (8) x vllm_pipeline_parallel_size "
                            "(1) = 8, but the group has 16 GPUs",
    "host_in_two_serving_groups": "host gpu-01: is in 2 serving groups (serving_a, serving_b)",
    "duplicate_management_address": "hosts gpu-02, gpu-03: share the management address 127.0.10.2",
    "duplicate_fabric_address": "hosts gpu-03, gpu-04: share the fabric address 10.10.0.3",
    "missing_fabric_interface": "host gpu-01: fabric_ip is set (10.10.0.1) but fabric_interface is not",
    "bad_fabric_ip": "host gpu-02: fabric_ip = '10.10.0.300' is not an IP address",
    "serving_host_without_gpus": "host cpu-01: is in serving group serving_b but not in gpu_nodes",
    "no_load_balancer": "group lb is missing or empty while serving groups exist",
    "kubernetes_without_control_plane": "kubernetes_enabled is true but group kube_control_plane is missing",
    "kubernetes_enabled_not_bool": "variable kubernetes_enabled = 'maybe' is invalid",
    "kubernetes_ha_without_endpoint": "2 kube_control_plane hosts but no kubernetes_control_plane_endpoint",
    "kubernetes_node_name_not_dns": "host GPU_02: Kubernetes registers each node under its inventory name",
    "host_directly_in_serving": "host gpu-04: listed directly under group serving",
    "model_does_not_fit": "serving group serving_b: the model does not fit: with tensor parallel 8 x pipeline "
                          "parallel 2 each GPU needs",
    "missing_secrets": "hosts gpu-01, gpu-02, gpu-03, gpu-04, lb-01: variable vllm_api_key is not set. Fix: put "
                       "vllm_api_key, at least 32 characters",
    "short_api_key": "host gpu-01: variable vllm_api_key = <hidden: no_log> is invalid (shorter than 32 "
                     "characters)",
    "negative_parallel_sizes": "host gpu-03: variable vllm_tensor_parallel_size = -8 is invalid (below the minimum 1)",
    "port_out_of_range": "host gpu-03: variable vllm_port = 70000 is invalid (above the maximum 65535)",
    "memory_utilization_above_one": "host gpu-03: variable vllm_gpu_memory_utilization = 2.5 is invalid (above the "
                                    "maximum 1)",
    "served_name_with_space": "host gpu-03: variable vllm_served_model_name = 'llama 70b' is invalid (does not match",
    "model_config_not_an_object": "serving group serving_b: vllm_model_config ",
    "lb_is_serving_head": "host gpu-01: is a load balancer (lb) and the head of serving group serving_a, and both "
                          "HAProxy (serving_lb_port) and vLLM (vllm_port) want port 8000",
    "firewall_without_ssh_sources": "host gpu-01: firewall_ssh_sources must be a list of addresses or networks and "
                                    "must not be empty (it is []). Fix: list the networks the controller connects from",
    "firewall_source_not_a_network": "host lb-01: firewall_client_sources has entries that are not an IP address or "
                                     "network: 'clients.example.net'",
}
# The example leaves its secrets to the operator's vault (README: Secrets); its preflight gets made-up ones.
EXAMPLE_SECRETS = {"vllm_api_key": "example-api-key-0123456789abcdef-0123",
                   "ray_auth_token": "example-ray-token-0123456789abcdef-01"}


def run_preflight(inventory: Path, **kwargs):
    events = []
    with tempfile.TemporaryDirectory() as private:
        r = ansible_runner.run(
            private_data_dir=private, project_dir=str(ROOT), playbook="playbooks/preflight.yml",
            inventory=str(inventory), quiet=True, event_handler=lambda e: events.append(e) or True,
            envvars={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}, **kwargs,
        )
        return r, events


def hosts_touched(events):
    return {e["event_data"]["host"] for e in events
            if e.get("event", "").startswith("runner_on_") and e.get("event_data", {}).get("host")}


def failure_messages(events):
    msgs = []
    for e in events:
        if e.get("event") == "runner_on_failed":
            msg = e["event_data"]["res"].get("msg")
            msgs.extend(msg if isinstance(msg, list) else [str(msg)])
    return msgs


def test_every_fixture_has_a_case():
    fixtures = {p.stem for p in INVENTORIES.glob("*.yml")} - {"valid"}
    assert fixtures == set(CASES)
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_inventory_is_refused_before_any_host(case):
    r, events = run_preflight(INVENTORIES / f"{case}.yml")
    assert r.status == "failed" and r.rc != 0
    msgs = failure_messages(events)
    assert any(CASES[case] in m for m in msgs), msgs
    # Each problem names the fix, too.
    assert all("Fix:" in m for m in msgs[1:]), msgs
    assert hosts_touched(events) == {"localhost"}


def test_valid_inventory_passes_without_contacting_hosts():
    # The OS play would SSH to the hosts; skipping it leaves exactly the controller-side checks.
    r, events = run_preflight(INVENTORIES / "valid.yml", skip_tags="preflight_os")
    assert r.status == "successful", failure_messages(events)
    assert hosts_touched(events) == {"localhost"}


def test_prod_example_inventory_passes():
    r, events = run_preflight(ROOT / "inventories" / "prod", skip_tags="preflight_os", extravars=EXAMPLE_SECRETS)
    assert r.status == "successful", failure_messages(events)


def test_prod_example_without_its_vault_is_refused_naming_both_secrets():
    r, events = run_preflight(ROOT / "inventories" / "prod", skip_tags="preflight_os")
    assert r.status == "failed"
    msgs = failure_messages(events)
    assert any("variable vllm_api_key is not set" in m for m in msgs), msgs
    assert any("variable ray_auth_token is not set" in m for m in msgs), msgs
    assert hosts_touched(events) == {"localhost"}


def test_the_projects_configuration_prints_no_deprecation_warning():
    """A real run with the project's ansible.cfg (its strategy, plugins and settings) prints no DEPRECATION
    WARNING: ansible-core deprecates third-party strategies and other settings before it removes them."""
    r, events = run_preflight(ROOT / "inventories" / "prod", skip_tags="preflight_os", extravars=EXAMPLE_SECRETS)
    assert r.status == "successful", failure_messages(events)
    output = "\n".join(e.get("stdout", "") for e in events)
    assert "PLAY RECAP" in output  # the run's whole output is here
    assert "DEPRECATION WARNING" not in output, output


def test_preflight_says_which_kubernetes_gpu_nodes_keep_their_gpus_for_vllm():
    """The prod example enables Kubernetes and serves on all four HGX hosts: pods get none of their GPUs."""
    r, events = run_preflight(ROOT / "inventories" / "prod", skip_tags="preflight_os", extravars=EXAMPLE_SECRETS)
    assert r.status == "successful", failure_messages(events)
    said = [e["event_data"]["res"].get("msg", "") for e in events if e.get("event") == "runner_on_ok"
            and e["event_data"].get("task") == "Say which Kubernetes GPU nodes keep their GPUs for vLLM"]
    assert said == ["Kubernetes is enabled, and hgx-01, hgx-02, hgx-03, hgx-04 serve vLLM under systemd, which "
                    "holds their GPUs: the device plugin does not offer those GPUs to pods "
                    "(gpu_device_plugin_skip_serving_hosts, label gpuforge.io/gpu-owner=vllm). Pods get the GPUs of "
                    "no host."], said
