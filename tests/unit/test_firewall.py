"""The firewall role's address filters and its rules template, rendered for the hosts of a cluster shaped like
inventories/prod. Loading the rules into nftables (nft -c, then for real) is molecule's firewall scenario."""

import re

import gpuforge_firewall as fw
import jinja2
import pytest
from conftest import ROOT
from gpuforge_host import FilterModule as HostFilters

ROLE = ROOT / "roles" / "firewall"

HOSTVARS = {
    "cp-01": {"ansible_host": "10.0.0.10"},
    "hgx-01": {"ansible_host": "10.0.0.11", "fabric_ip": "10.10.0.11"},
    "hgx-02": {"ansible_host": "10.0.0.12", "fabric_ip": "10.10.0.12"},
    "hgx-03": {"ansible_host": "10.0.0.13", "fabric_ip": "10.10.0.13"},
    "lb-01": {"ansible_host": "10.0.0.20"},
    "mon-01": {"ansible_host": "10.0.0.30", "firewall_address": "10.0.0.31"},
}


def test_sources_are_split_by_family_sorted_and_without_contained_entries():
    got = fw.nft_sources(["10.0.0.12", "10.0.0.0/25", "10.0.1.7/32", "fd00::1", "fd00::/64", "192.0.2.1", ""])
    assert got == {"ip": ["10.0.0.0/25", "10.0.1.7", "192.0.2.1"], "ip6": ["fd00::/64"]}
    assert fw.nft_sources([]) == {"ip": [], "ip6": []}
    assert fw.nft_sources(["localhost"])["ip"] == ["127.0.0.1"]  # names resolve on the controller


def test_a_name_that_does_not_resolve_is_named_in_the_error():
    with pytest.raises(ValueError, match="'no-such-host.invalid' is neither an address"):
        fw.nft_sources(["no-such-host.invalid"])


def test_host_addresses_prefer_firewall_address_then_ansible_host_and_fabric_ip_on_the_fabric():
    hv = {**HOSTVARS, "bare": {}}
    assert fw.host_addresses(["hgx-01", "mon-01", "bare"], hv) == ["10.0.0.11", "10.0.0.31", "bare"]
    assert fw.host_addresses(["hgx-01", "lb-01"], hv, "fabric") == ["10.10.0.11", "10.0.0.20"]
    with pytest.raises(ValueError, match="management or fabric"):
        fw.host_addresses(["hgx-01"], hv, "storage")


def test_address_in_networks():
    assert fw.address_in("10.0.100.7", ["10.0.100.0/24"])
    assert not fw.address_in("10.0.101.7", ["10.0.100.0/24", "fd00::/8"])
    assert fw.address_in("fd00::5", ["fd00::/8"])
    with pytest.raises(ValueError, match="not an IP address"):
        fw.address_in("controller", ["10.0.0.0/8"])


def _comment(text):
    return "#\n" + "\n".join(f"# {line}" for line in str(text).splitlines()) + "\n#"


ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLE / "templates")), undefined=jinja2.StrictUndefined,
                         trim_blocks=True, keep_trailing_newline=True)
ENV.filters.update(comment=_comment, **fw.FilterModule().filters(), **HostFilters().filters())
ENV.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")


def render(host, group=(), kubernetes=False, **overrides):
    values = {
        "ansible_managed": "Ansible managed", "inventory_hostname": host, "hostvars": HOSTVARS,
        "groups": {"kube_control_plane": ["cp-01"]},
        "firewall_ssh_sources": ["10.0.100.0/24"], "firewall_ssh_port": 22,
        "firewall_client_sources": ["0.0.0.0/0", "::/0"], "firewall_monitoring_hosts": ["mon-01"],
        "firewall_monitoring_sources": [], "firewall_monitoring_ports": [], "firewall_extra_rules": [],
        "firewall_serving_group_hosts": list(group), "firewall_lb_hosts": ["lb-01"],
        "firewall_kubernetes_hosts": ["cp-01", "hgx-01", "hgx-02", "hgx-03"],
        "firewall_vllm_port": 8000, "firewall_lb_port": 8000, "firewall_ray_metrics_port": 6384,
        "firewall_monitoring_enabled": True, "firewall_node_exporter_port": 9100, "firewall_lb_metrics_port": 8405,
        "firewall_kubernetes_enabled": kubernetes, "firewall_kubernetes_api_port": 6443,
        "firewall_kubernetes_pod_subnet": "10.244.0.0/16",
    }
    values.update(overrides)
    return ENV.get_template("rules.nft.j2").render(values)


def accepts(text):
    """{comment: rule} for every IPv4 accept rule by source address."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^\t\t(ip .*) accept comment \"([^\"]+)\"$", text, re.M)}


def test_every_host_denies_by_default_and_allows_ssh_only_from_the_controller():
    for host, group in (("cp-01", ()), ("hgx-02", ("hgx-01", "hgx-02")), ("lb-01", ())):
        text = render(host, group)
        assert "type filter hook input priority filter; policy drop;" in text
        assert text.index("table inet gpuforge\ndelete table inet gpuforge\n") < text.index("table inet gpuforge {")
        assert accepts(text)["SSH from the controller"] == "ip saddr { 10.0.100.0/24 } tcp dport 22"


def test_a_head_takes_vllm_from_the_load_balancers_and_monitoring_and_everything_from_its_group_fabric():
    rules = accepts(render("hgx-01", ("hgx-01", "hgx-02")))
    assert rules["Ray, NCCL and Gloo: the serving group"] == "ip saddr { 10.10.0.12 }"
    assert rules["vLLM from the load balancers"] == "ip saddr { 10.0.0.20 } tcp dport 8000"
    assert rules["vLLM /metrics to the monitoring hosts"] == "ip saddr { 10.0.0.31 } tcp dport 8000"
    assert rules["Ray metrics to the monitoring hosts"] == "ip saddr { 10.0.0.31 } tcp dport 6384"
    assert "the endpoint, for clients" not in rules


def test_a_worker_has_no_vllm_rule_and_a_one_host_group_no_peer_rule():
    worker = accepts(render("hgx-02", ("hgx-01", "hgx-02")))
    assert worker["Ray, NCCL and Gloo: the serving group"] == "ip saddr { 10.10.0.11 }"
    assert not any(k.startswith("vLLM") for k in worker)
    alone = accepts(render("hgx-03", ("hgx-03",)))
    assert "Ray, NCCL and Gloo: the serving group" not in alone and "vLLM from the load balancers" in alone


def test_the_load_balancer_opens_the_client_port_to_its_client_sources_only():
    rules = accepts(render("lb-01", firewall_monitoring_enabled=False))
    assert set(rules) == {"SSH from the controller", "the endpoint, for clients"}
    assert rules["the endpoint, for clients"] == "ip saddr { 0.0.0.0/0 } tcp dport 8000"
    assert "ip6 saddr { ::/0 } tcp dport 8000 accept" in render("lb-01")
    narrow = accepts(render("lb-01", firewall_client_sources=["198.51.100.0/24"]))
    assert narrow["the endpoint, for clients"] == "ip saddr { 198.51.100.0/24 } tcp dport 8000"


def test_kubernetes_hosts_trust_each_other_and_the_pod_network_where_enabled():
    off = accepts(render("cp-01"))
    assert not any(k.startswith("Kubernetes") for k in off)
    on = accepts(render("cp-01", kubernetes=True))
    assert on["Kubernetes nodes"] == "ip saddr { 10.0.0.10, 10.0.0.11, 10.0.0.12, 10.0.0.13, 10.10.0.11, " \
                                     "10.10.0.12, 10.10.0.13 }"
    assert on["Kubernetes pods"] == "ip saddr { 10.244.0.0/16 }"
    assert on["Kubernetes API from the controller"] == "ip saddr { 10.0.100.0/24 } tcp dport 6443"
    assert "Kubernetes API from the controller" not in accepts(render("hgx-01", ("hgx-01",), kubernetes=True))


def test_extra_rules_come_before_gpuforges_accepts_and_exporter_ports_go_to_monitoring():
    text = render("hgx-01", ("hgx-01",), firewall_extra_rules=["ip saddr 10.9.9.9 drop"],
                  firewall_monitoring_ports=[9100, 9400], firewall_monitoring_sources=["10.0.100.5"])
    assert text.index("ip saddr 10.9.9.9 drop") < text.index("SSH from the controller")
    assert accepts(text)["exporters to the monitoring hosts"] == "ip saddr { 10.0.0.31, 10.0.100.5 } tcp dport " \
                                                                 "{ 9100, 9400 }"


def test_node_exporter_everywhere_and_haproxy_metrics_on_load_balancers_go_to_the_monitoring_hosts_only():
    for host, group in (("cp-01", ()), ("hgx-02", ("hgx-01", "hgx-02")), ("lb-01", ())):
        rules = accepts(render(host, group))
        assert rules["node_exporter to the monitoring hosts"] == "ip saddr { 10.0.0.31 } tcp dport 9100"
        assert ("HAProxy metrics to the monitoring hosts" in rules) == (host == "lb-01")
    lb = accepts(render("lb-01"))
    assert lb["HAProxy metrics to the monitoring hosts"] == "ip saddr { 10.0.0.31 } tcp dport 8405"
    off = accepts(render("lb-01", firewall_monitoring_enabled=False))
    assert not any("monitoring hosts" in k for k in off)
