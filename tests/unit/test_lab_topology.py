"""The lab's topology and generated inventory (no Docker needed)."""

from pathlib import Path

import gpuforge_preflight as pf
import pytest
import yaml
from conftest import ROOT

from gpuforge.lab import Lab, LabError, Topology


def test_default_topology_is_four_gpu_hosts_in_two_groups_and_one_lb():
    t = Topology()
    assert [h.name for h in t.hosts] == ["gpu-01", "gpu-02", "gpu-03", "gpu-04", "lb-01"]
    assert t.serving_groups == {"serving_a": ["gpu-01", "gpu-02"], "serving_b": ["gpu-03", "gpu-04"]}
    assert t.distro == "12"


def test_addresses_are_unique_and_fixed():
    t = Topology(gpu_hosts=12, groups=3, lb_hosts=2)
    mgmt = [h.mgmt_ip for h in t.hosts]
    fabric = [h.fabric_ip for h in t.hosts]
    assert len(set(mgmt)) == len(mgmt) == 14
    assert len(set(fabric)) == len(fabric)
    assert mgmt[0] == "172.28.250.11" and mgmt[-1] == "172.28.250.202"


def test_gpu_hosts_beyond_serving_hosts_get_no_serving_group(tmp_path):
    t = Topology(gpu_hosts=12, groups=2, serving_hosts=4)
    assert t.serving_groups == {"serving_a": ["gpu-01", "gpu-02"], "serving_b": ["gpu-03", "gpu-04"]}
    inv = Lab(tmp_path, t).inventory_data()["all"]["children"]
    assert len(inv["gpu_nodes"]["hosts"]) == 12
    assert set(inv["serving"]["children"]) == {"serving_a", "serving_b"}


@pytest.mark.parametrize("kwargs,msg", [
    ({"gpu_hosts": 5, "groups": 2}, "must split evenly"),
    ({"gpu_hosts": 0}, "--gpu-hosts must be between 1 and 80"),
    ({"distro": "11"}, "--distro must be one of"),
    ({"gpus_per_host": 0}, "--gpus-per-host must be at least 1"),
    ({"lb_hosts": 12}, "--lb-hosts must be between 0 and 9"),
    ({"gpu_hosts": 4, "serving_hosts": 5}, "--serving-hosts must be between 1 and --gpu-hosts"),
    ({"gpu_hosts": 6, "serving_hosts": 3, "groups": 2}, "serving GPU hosts .3. must split evenly"),
])
def test_bad_topology_flags_are_refused(kwargs, msg):
    with pytest.raises(LabError, match=msg):
        Topology(**kwargs)


def test_generated_inventory_passes_preflight(tmp_path: Path):
    lab = Lab(tmp_path, Topology(gpu_hosts=6, groups=3, gpus_per_host=4))
    lab.write_inventory()
    data = yaml.safe_load(lab.inventory.read_text())
    children = data["all"]["children"]
    assert children["gpu_nodes"]["vars"] == {"gpu_count": 4, "nvidia_driver_version": "535.261.03-1"}
    assert set(children["serving"]["children"]) == {"serving_a", "serving_b", "serving_c"}
    assert list(children["kube_control_plane"]["hosts"]) == [next(iter(children["gpu_nodes"]["hosts"]))]
    assert children["kube_nodes"] == {"children": {"gpu_nodes": None}}
    assert data["all"]["vars"]["ansible_ssh_private_key_file"] == str(tmp_path / ".lab" / "ssh" / "id_ed25519")
    # Flatten the way Ansible would and run the same checks preflight runs.
    lab.ensure_secrets()  # the vault `lab up` writes: its secrets must pass preflight's checks too
    shared = lab.secrets()
    assert set(shared) == {"vllm_api_key", "ray_auth_token"}
    # The lab's shared settings (group_vars/all), as Ansible templates them: the firewall's SSH source.
    lab_all = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/main.yml").read_text())
    gateway = data["all"]["vars"]["gpuforge_lab_gateway"]
    shared["firewall_ssh_sources"] = [s.replace("{{ gpuforge_lab_gateway }}", gateway)
                                      for s in lab_all["firewall_ssh_sources"]]
    assert shared["firewall_ssh_sources"] == [gateway]
    hv = {h: dict(v, gpu_count=4, **shared) for h, v in children["gpu_nodes"]["hosts"].items()}
    hv.update({h: dict(v, **shared) for h, v in children["lb"]["hosts"].items()})
    graph = "@all:\n  |--@gpu_nodes:\n" + "".join(f"  |  |--{h}\n" for h in children["gpu_nodes"]["hosts"])
    graph += "  |--@serving:\n"
    for g, body in children["serving"]["children"].items():
        graph += f"  |  |--@{g}:\n" + "".join(f"  |  |  |--{h}\n" for h in body["hosts"])
    graph += "  |--@lb:\n" + "".join(f"  |  |--{h}\n" for h in children["lb"]["hosts"])
    spec = yaml.safe_load((ROOT / "playbooks/vars/inventory_spec.yml").read_text())["gpuforge_inventory_spec"]
    assert pf.inventory_problems(pf.inventory_tree(graph), hv, spec) == []


def test_inventory_points_the_lab_at_its_generated_model(tmp_path: Path):
    data = Lab(tmp_path, Topology()).inventory_data()
    model_dir = data["all"]["vars"]["gpuforge_lab_model_dir"]
    assert model_dir == str(tmp_path / ".lab" / "models" / "gpuforge-tiny-llama")
    # inventories/lab/group_vars/serving.yml serves whatever this variable names.
    serving_vars = yaml.safe_load((ROOT / "inventories/lab/group_vars/serving.yml").read_text())
    assert serving_vars["vllm_model_source"] == "{{ gpuforge_lab_model_dir }}"


def test_each_serving_group_lists_its_head_first(tmp_path: Path):
    # 12 hosts in 3 groups of 4: the heads (a group's first host runs Ray's head and vLLM) are gpu-01,
    # gpu-05 and gpu-09, and gpu-10.. stay after gpu-09 in the written YAML, which Ansible reads in order.
    lab = Lab(tmp_path, Topology(gpu_hosts=12, groups=3))
    lab.write_inventory()
    groups = yaml.safe_load(lab.inventory.read_text())["all"]["children"]["serving"]["children"]
    assert list(groups) == ["serving_a", "serving_b", "serving_c"]
    assert {g: list(body["hosts"]) for g, body in groups.items()} == {
        "serving_a": ["gpu-01", "gpu-02", "gpu-03", "gpu-04"],
        "serving_b": ["gpu-05", "gpu-06", "gpu-07", "gpu-08"],
        "serving_c": ["gpu-09", "gpu-10", "gpu-11", "gpu-12"],
    }
    assert [next(iter(body["hosts"])) for body in groups.values()] == ["gpu-01", "gpu-05", "gpu-09"]


def test_lab_tls_certificate_is_signed_by_the_lab_ca_for_every_load_balancer(tmp_path: Path):
    import stat

    from cryptography import x509

    lab = Lab(tmp_path, Topology(lb_hosts=2))
    lab.ensure_tls()
    crt = x509.load_pem_x509_certificate((lab.tls_dir / "lb.crt").read_bytes())
    ca = x509.load_pem_x509_certificate(lab.ca_cert.read_bytes())
    crt.verify_directly_issued_by(ca)
    sans = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    lbs = [h for h in lab.topology.hosts if h.kind == "lb"]
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["lb-01", "lb-02"]
    assert sorted(str(a) for a in sans.get_values_for_type(x509.IPAddress)) == sorted(h.mgmt_ip for h in lbs)
    for key in ("lb.key", "ca.key"):
        assert stat.S_IMODE((lab.tls_dir / key).stat().st_mode) == 0o600
    assert stat.S_IMODE(lab.tls_dir.stat().st_mode) == 0o700
    # Kept while the load balancers stay the same; remade (by the same CA) when they change.
    before = (lab.tls_dir / "lb.crt").read_bytes()
    lab.ensure_tls()
    assert (lab.tls_dir / "lb.crt").read_bytes() == before
    Lab(tmp_path, Topology(lb_hosts=1)).ensure_tls()
    after = x509.load_pem_x509_certificate((lab.tls_dir / "lb.crt").read_bytes())
    after.verify_directly_issued_by(ca)
    assert after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["lb-01"]
    # The inventory hands both files to serving_lb.
    lb_vars = lab.inventory_data()["all"]["children"]["lb"]["vars"]
    assert str(lab.tls_dir / "lb.key") in lb_vars["serving_lb_tls_private_key"]
