# -*- coding: utf-8 -*-
"""Preflight checks of a gpuforge inventory (docs/architecture.md, "Preflight").

Pure functions: they take the inventory's group tree (from `ansible-inventory --graph`) and each host's
variables, and return a list of problems, each naming the host or group, the variable and the fix.
playbooks/preflight.yml calls them on the controller before any host is contacted.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping

from gpuforge import planner

DOCUMENTATION = r"""
name: gpuforge_preflight
short_description: Validate a gpuforge inventory before any host is contacted
description:
  - C(gpuforge_inventory_tree) parses the output of C(ansible-inventory --graph) into a group tree.
  - C(gpuforge_inventory_problems) returns a list of problems with the inventory, each naming the host or
    group, the variable and the fix. An empty list means the inventory is sound.
  - C(gpuforge_os_problems) checks gathered facts (supported OS, one Python version per serving group).
"""

SERVING_PARENT = "serving"
# Variables that every host of a serving group must agree on (one vLLM replica, one Ray cluster).
# (Never a secret: a disagreement is printed with each host's value.)
GROUP_CONSISTENT = ("gpu_count", "nvidia_driver_branch", "nvidia_driver_version", "ray_cluster_version",
                    "vllm_serve_requirements", "vllm_model", "vllm_model_source", "vllm_served_model_name",
                    "vllm_port", "vllm_tensor_parallel_size", "vllm_pipeline_parallel_size",
                    "gpu_memory_gib", "vllm_model_config")
SUPPORTED_OS = {"Debian": ("12", "13"), "Ubuntu": ("22", "24")}


def inventory_tree(graph_text):
    """Parse `ansible-inventory --graph` into {group: {"children": [...], "hosts": [...]}}."""
    tree = {}
    stack = []  # (depth, group)
    for raw in str(graph_text).splitlines():
        if not raw.strip():
            continue
        if raw.startswith("@"):
            depth, name = 0, raw.strip()
        else:
            idx = raw.find("|--")
            if idx < 0:
                continue
            depth, name = idx // 3 + 1, raw[idx + 3:].strip()
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        if name.startswith("@"):
            group = name[1:].rstrip(":")
            tree.setdefault(group, {"children": [], "hosts": []})
            if parent is not None and group not in tree[parent]["children"]:
                tree[parent]["children"].append(group)
            stack.append((depth, group))
        elif parent is not None and name not in tree[parent]["hosts"]:
            tree[parent]["hosts"].append(name)
    return tree


# A Kubernetes node name (RFC 1123 subdomain).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

def _members(tree, group, seen=None):
    seen = set() if seen is None else seen
    if group in seen or group not in tree:
        return []
    seen.add(group)
    out = list(tree[group]["hosts"])
    for child in tree[group]["children"]:
        out.extend(h for h in _members(tree, child, seen) if h not in out)
    return out


def serving_groups(tree):
    """{serving group: [hosts]} for every child group of `serving`."""
    if SERVING_PARENT not in tree:
        return {}
    return {g: _members(tree, g) for g in tree[SERVING_PARENT]["children"]}


def _type_problems(host, hvars, spec):
    """Check one host's variables against an argument spec; return problems with the spec's fix text."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    problems = []
    for name, opts in spec.items():
        if name not in hvars or hvars[name] is None:
            continue
        one = {name: {k: v for k, v in opts.items() if k in ("type", "choices", "elements")}}
        result = ArgumentSpecValidator(one).validate({name: hvars[name]})
        secret = opts.get("no_log")
        if result.error_messages:
            why = f"not a valid {opts.get('type')}" if secret else result.error_messages[0]  # it quotes the value
        else:
            why = _bound_problem(result.validated_parameters[name], opts)
        if why:
            shown = "<hidden: no_log>" if secret else repr(hvars[name])
            problems.append(f"host {host}: variable {name} = {shown} is invalid ({why}). Fix: {_fix(opts)}".rstrip())
    return problems


def _fix(opts):
    fix = opts.get("fix") or opts.get("description", "")
    return " ".join(fix) if isinstance(fix, list) else fix


def _bound_problem(value, opts):
    """The spec's bounds (min, max, above, min_length, pattern) against a value of the right type; None if met.
    Never quotes the value: a secret's bounds are checked here too."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return "not a finite number"
        if "min" in opts and value < opts["min"]:
            return f"below the minimum {opts['min']}"
        if "above" in opts and value <= opts["above"]:
            return f"must be above {opts['above']}"
        if "max" in opts and value > opts["max"]:
            return f"above the maximum {opts['max']}"
    if isinstance(value, str):
        if "min_length" in opts and len(value) < opts["min_length"]:
            return f"shorter than {opts['min_length']} characters"
        if "pattern" in opts and not re.fullmatch(opts["pattern"], value):
            return f"does not match {opts['pattern']}"
    return None


def model_fit_problem(group, hosts, first):
    """A serving group that declares its model's config.json must fit its GPUs (the planner decides)."""
    config_path = first.get("vllm_model_config")
    if not config_path:
        return None
    try:
        with open(str(config_path)) as f:
            config = planner.check_config(json.load(f))
    except (OSError, ValueError) as exc:  # a PlanError is a ValueError: not an object, or a size that is no number
        return (f"serving group {group}: vllm_model_config {config_path} cannot be used ({exc}). Fix: point it at "
                "the model's config.json (a Hugging Face config, a JSON object) on the controller.")
    if not first.get("gpu_memory_gib"):
        return (f"serving group {group}: vllm_model_config is set but gpu_memory_gib is not. Fix: set gpu_memory_gib "
                "to one GPU's memory in GiB (e.g. 80 for H100 80GB) for the group's hosts.")
    try:
        planner.plan(
            config,
            dtype=first.get("vllm_dtype") or config.get("torch_dtype") or "bfloat16",
            gpu_memory_gib=float(first["gpu_memory_gib"]),
            gpus_per_host=int(first["gpu_count"]), hosts=len(hosts),
            context_len=int(first.get("vllm_max_model_len") or config.get("max_position_embeddings") or 4096),
            concurrency=int(first.get("vllm_max_num_seqs") or 16),
            tensor_parallel_size=_as_int(first.get("vllm_tensor_parallel_size")),
            pipeline_parallel_size=_as_int(first.get("vllm_pipeline_parallel_size")),
            gpu_memory_utilization=float(first.get("vllm_gpu_memory_utilization") or 0.9),
        )
    except planner.PlanError as exc:
        return f"serving group {group}: {exc} Fix: see `gpuforge plan` for the numbers of other layouts."
    return None


def _as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


FIREWALL_SOURCES = {
    "firewall_ssh_sources": "list the networks the controller connects from, e.g. [10.0.100.0/24], in "
                            "group_vars/all (or set firewall_enabled: false to leave the hosts' firewall alone).",
    "firewall_client_sources": "list the networks clients reach the endpoint from, e.g. [0.0.0.0/0, ::/0].",
    "firewall_monitoring_sources": "list the addresses of the Prometheus servers outside the inventory, e.g. "
                                   "[10.0.100.5].",
}


def _is_network(value):
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return False
    return True


def inventory_problems(tree, hostvars, spec=None):
    """Every problem found in the inventory; an empty list means it is sound."""
    spec = spec or {}
    if not isinstance(hostvars, Mapping):
        hostvars = dict(hostvars)
    problems = []
    all_hosts = _members(tree, "all")

    def hv(host):
        return hostvars.get(host, {})

    gpu_nodes = _members(tree, "gpu_nodes")
    if not gpu_nodes:
        problems.append("inventory: group gpu_nodes is missing or empty. Fix: list every host that has "
                        "NVIDIA GPUs under gpu_nodes in the inventory's hosts.yml.")

    # Types first: later checks assume them.
    typed_ok = {}
    for host in all_hosts:
        tp = _type_problems(host, hv(host), spec)
        problems.extend(tp)
        typed_ok[host] = not tp

    for host in gpu_nodes:
        count = hv(host).get("gpu_count")
        if count is None:
            problems.append(f"host {host}: variable gpu_count is not set. Fix: set gpu_count to the number "
                            "of GPUs the host has (group_vars/gpu_nodes.yml or host_vars).")
        elif typed_ok[host] and (_as_int(count) or 0) < 1:
            problems.append(f"host {host}: variable gpu_count = {count!r} must be at least 1 for a host in "
                            "gpu_nodes. Fix: set it to the host's GPU count, or move the host out of gpu_nodes.")

    # Serving groups: one vLLM replica each.
    groups = serving_groups(tree)
    if SERVING_PARENT in tree and tree[SERVING_PARENT]["hosts"]:
        for host in tree[SERVING_PARENT]["hosts"]:
            problems.append(f"host {host}: listed directly under group serving. Fix: put it in a serving "
                            "group, a child group of serving (e.g. serving_a), whose first host is the Ray head.")
    membership = {}
    for group, hosts in groups.items():
        if not hosts:
            problems.append(f"serving group {group}: has no hosts. Fix: add its GPU hosts or remove the group.")
            continue
        for host in hosts:
            membership.setdefault(host, []).append(group)
            if host not in gpu_nodes:
                problems.append(f"host {host}: is in serving group {group} but not in gpu_nodes. Fix: add it "
                                "to gpu_nodes (serving hosts need GPUs) or remove it from the serving group.")
        for var in GROUP_CONSISTENT:
            values = {h: hv(h).get(var) for h in hosts}
            distinct = {repr(v) for v in values.values()}
            if len(distinct) > 1:
                detail = ", ".join(f"{h}={v!r}" for h, v in values.items())
                problems.append(f"serving group {group}: hosts disagree on {var} ({detail}). Fix: set {var} "
                                f"once for the group in group_vars/{group}.yml; a serving group is one "
                                "replica and its hosts must match.")
        if not all(typed_ok.get(h, True) for h in hosts):
            continue
        first = hv(hosts[0])
        per_host = _as_int(first.get("gpu_count"))
        if per_host is None or per_host < 1:
            continue
        total = per_host * len(hosts)
        fit = model_fit_problem(group, hosts, first)
        if fit:
            problems.append(fit)
        tp = _as_int(first.get("vllm_tensor_parallel_size"))
        pp = _as_int(first.get("vllm_pipeline_parallel_size"))
        if tp is not None and pp is not None and tp * pp != total:
            problems.append(
                f"serving group {group}: vllm_tensor_parallel_size ({tp}) x vllm_pipeline_parallel_size "
                f"({pp}) = {tp * pp}, but the group has {total} GPUs ({len(hosts)} hosts x {per_host}). "
                f"Fix: make the product {total}, e.g. tensor parallel {per_host} (GPUs per host) and "
                f"pipeline parallel {len(hosts)} (hosts), or leave both unset for those defaults.")
        elif tp is not None and pp is None and total % tp:
            problems.append(f"serving group {group}: vllm_tensor_parallel_size ({tp}) does not divide the "
                            f"group's {total} GPUs. Fix: choose a divisor of {total}, usually {per_host}.")
        elif pp is not None and tp is None and pp != len(hosts):
            problems.append(f"serving group {group}: vllm_pipeline_parallel_size ({pp}) differs from its "
                            f"{len(hosts)} hosts while tensor parallel defaults to GPUs per host ({per_host}). "
                            "Fix: set vllm_tensor_parallel_size too, so that their product is "
                            f"{total}.")
    for host, in_groups in sorted(membership.items()):
        if len(in_groups) > 1:
            problems.append(f"host {host}: is in {len(in_groups)} serving groups ({', '.join(in_groups)}). "
                            "Fix: a host serves one replica; keep it in one serving group.")
    lb_hosts = _members(tree, "lb")
    if groups and not lb_hosts:
        problems.append("inventory: group lb is missing or empty while serving groups exist. Fix: add the "
                        "host(s) that run the load balancer in front of the serving groups under lb.")
    heads = {hosts[0]: group for group, hosts in groups.items() if hosts}
    for host in lb_hosts:
        if host in heads:
            lb_port = _as_int(hv(host).get("serving_lb_port", 8000))
            vllm_port = _as_int(hv(host).get("vllm_port", 8000))
            if lb_port == vllm_port:
                problems.append(f"host {host}: is a load balancer (lb) and the head of serving group "
                                f"{heads[host]}, and both HAProxy (serving_lb_port) and vLLM (vllm_port) want port "
                                f"{lb_port}. Fix: run the load balancer on a host that does not serve, or give "
                                "the two different ports.")
    # Secrets every serving host (and the load balancer's readiness check) needs: present, never printed.
    needs = {"vllm_api_key": sorted(set(membership) | (set(lb_hosts) if groups else set())),
             "ray_auth_token": sorted(membership)}
    for var, hosts in needs.items():
        missing = [h for h in hosts if hv(h).get(var) in (None, "")]
        if missing:
            fix = _fix(spec.get(var, {})) or f"set {var} in vault."
            problems.append(f"hosts {', '.join(missing)}: variable {var} is not set. Fix: {fix}")

    # Kubernetes
    control_plane = _members(tree, "kube_control_plane")
    if any(str(hv(h).get("kubernetes_enabled", False)).lower() in ("true", "yes", "1") for h in all_hosts):
        if not control_plane:
            problems.append("inventory: kubernetes_enabled is true but group kube_control_plane is missing or "
                            "empty. Fix: add the control-plane host(s), or set kubernetes_enabled: false.")
        elif len(control_plane) > 1 and not hv(control_plane[0]).get("kubernetes_control_plane_endpoint"):
            problems.append(f"inventory: {len(control_plane)} kube_control_plane hosts but no "
                            "kubernetes_control_plane_endpoint. Fix: set it to a load-balanced name or VIP and port "
                            "(e.g. k8s-api.example.net:6443) in group_vars; control-plane hosts cannot join "
                            "without one, and it cannot be changed after kubeadm init.")
        for host in sorted(set(control_plane) | set(_members(tree, "kube_nodes"))):
            if not _DNS_SUBDOMAIN.match(host):
                problems.append(f"host {host}: Kubernetes registers each node under its inventory name, and "
                                f"{host!r} is not a lowercase DNS name. Fix: rename the host in the inventory "
                                "(lowercase letters, digits, '-' and '.').")

    # Host firewall (role firewall): its source lists are addresses or networks, and SSH has one at least.
    for host in all_hosts:
        v = hv(host)
        if str(v.get("firewall_enabled", True)).lower() in ("false", "no", "0"):
            continue
        for var in FIREWALL_SOURCES:
            value = v.get(var)
            if value is None and var != "firewall_ssh_sources":
                continue
            if not isinstance(value, (list, tuple)) or (var == "firewall_ssh_sources" and not value):
                problems.append(f"host {host}: {var} must be a list of addresses or networks"
                                f"{' and must not be empty' if var == 'firewall_ssh_sources' else ''} (it is "
                                f"{value!r}). Fix: {FIREWALL_SOURCES[var]}")
                continue
            bad = [x for x in value if not _is_network(x)]
            if bad:
                problems.append(f"host {host}: {var} has entries that are not an IP address or network: "
                                f"{', '.join(repr(x) for x in bad)}. Fix: {FIREWALL_SOURCES[var]}")

    # Addresses and fabric
    mgmt, fabric = {}, {}
    for host in all_hosts:
        v = hv(host)
        addr = str(v.get("ansible_host") or host)
        mgmt.setdefault(addr, []).append(host)
        f_ip, f_if = v.get("fabric_ip"), v.get("fabric_interface")
        if f_ip and not f_if:
            problems.append(f"host {host}: fabric_ip is set ({f_ip}) but fabric_interface is not. Fix: set "
                            "fabric_interface to the IPoIB/RoCE interface that carries fabric_ip (e.g. ibp12s0).")
        if f_if and not f_ip:
            problems.append(f"host {host}: fabric_interface is set ({f_if}) but fabric_ip is not. Fix: set "
                            "fabric_ip to the address of that interface.")
        if f_ip:
            try:
                ipaddress.ip_address(str(f_ip))
            except ValueError:
                problems.append(f"host {host}: fabric_ip = {f_ip!r} is not an IP address. Fix: set the "
                                "fabric interface's address, e.g. 10.10.0.11.")
            else:
                fabric.setdefault(str(f_ip), []).append(host)
    for addr, hosts in sorted(mgmt.items()):
        if len(hosts) > 1:
            problems.append(f"hosts {', '.join(hosts)}: share the management address {addr} (ansible_host). "
                            "Fix: give each host its own ansible_host.")
    for addr, hosts in sorted(fabric.items()):
        if len(hosts) > 1:
            problems.append(f"hosts {', '.join(hosts)}: share the fabric address {addr} (fabric_ip). "
                            "Fix: give each host its own fabric_ip.")
    return problems


def os_problems(tree, hostvars):
    """Problems visible once facts exist: unsupported OS, mixed Python versions in a serving group."""
    problems = []
    for host in _members(tree, "all"):
        facts = (hostvars.get(host) or {}).get("ansible_facts") or {}
        if not facts:
            continue
        dist, major = facts.get("distribution"), str(facts.get("distribution_major_version"))
        if dist not in SUPPORTED_OS or major not in SUPPORTED_OS[dist]:
            supported = "; ".join(f"{d} {', '.join(v)}" for d, v in SUPPORTED_OS.items())
            problems.append(f"host {host}: runs {dist} {facts.get('distribution_version')}, which gpuforge "
                            f"does not support. Fix: install a supported OS ({supported}).")
    for group, hosts in serving_groups(tree).items():
        versions = {}
        for host in hosts:
            py = ((hostvars.get(host) or {}).get("ansible_facts") or {}).get("python") or {}
            vi = py.get("version") or {}
            if vi:
                versions[host] = f"{vi.get('major')}.{vi.get('minor')}"
        if len(set(versions.values())) > 1:
            detail = ", ".join(f"{h}={v}" for h, v in versions.items())
            problems.append(f"serving group {group}: hosts run different Python versions ({detail}). Fix: "
                            "install the same OS release on every host of a serving group; Ray needs one "
                            "Python version across a cluster.")
    return problems


class FilterModule:
    def filters(self):
        return {
            "gpuforge_inventory_tree": inventory_tree,
            "gpuforge_inventory_problems": inventory_problems,
            "gpuforge_os_problems": os_problems,
            "gpuforge_serving_groups": serving_groups,
        }
