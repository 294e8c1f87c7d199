"""The host firewall on the provisioned lab: which of a head's ports answer from the load balancer, from a host
of another serving group and from the controller, and what a run does when its change would lock it out.

A port "answers" when a TCP connection is accepted (open) or actively refused (nothing listens: the packet got
through); the firewall drops what it does not allow, so the connection attempt stays silent."""

import json
import shlex
import socket
import time

from conftest import ROOT, ssh

from gpuforge.runner import run_playbook

VLLM, GCS, AGENT_GRPC, AGENT_HTTP, RAY_METRICS, CLIENT = 8000, 6379, 6382, 6383, 6384, 10001

PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, int(port))); return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"
    finally:
        s.close()
with ThreadPoolExecutor(16) as pool:
    print(json.dumps(dict(zip(sys.argv[1:], pool.map(probe, sys.argv[1:])))))
"""


def host(lab, name):
    return next(h for h in lab.topology.hosts if h.name == name)


def probe_from(lab, name, targets):
    out = ssh(lab, name, f"python3 -c {shlex.quote(PROBE)} {' '.join(targets)}")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def provisioned(first_run):
    rc, summary = first_run
    assert rc == 0, summary["failures"]


def test_a_heads_ray_ports_answer_only_inside_its_serving_group(lab, first_run):
    provisioned(first_run)
    a, b = list(lab.topology.serving_groups.values())[:2]
    head, peer, outsider = host(lab, a[0]), a[1], b[0]
    lb = next(h.name for h in lab.topology.hosts if h.kind == "lb")
    ray = (GCS, AGENT_GRPC, AGENT_HTTP, CLIENT)
    # From its own group's fabric, the head's Ray ports answer (Ray's token then guards them: test_serving).
    inside = probe_from(lab, peer, [f"{head.fabric_ip}:{p}" for p in ray])
    assert set(inside.values()) == {"open"}, inside
    # From the load balancer (the management network) and from another group (both networks), nothing of Ray.
    from_lb = probe_from(lab, lb, [f"{head.mgmt_ip}:{p}" for p in ray])
    assert set(from_lb.values()) == {"silent"}, from_lb
    from_other = probe_from(lab, outsider, [f"{addr}:{p}" for addr in (head.fabric_ip, head.mgmt_ip) for p in ray])
    assert set(from_other.values()) == {"silent"}, from_other


def test_vllm_and_its_metrics_answer_only_the_load_balancer_which_is_the_monitoring_host(lab, first_run):
    """The lab has no monitoring group, so the first lb host is the monitoring host (firewall_monitoring_hosts)."""
    provisioned(first_run)
    a, b = list(lab.topology.serving_groups.values())[:2]
    head, outsider = host(lab, a[0]), b[0]
    lb = next(h.name for h in lab.topology.hosts if h.kind == "lb")
    assert probe_from(lab, lb, [f"{head.mgmt_ip}:{VLLM}", f"{head.mgmt_ip}:{RAY_METRICS}",
                                f"{head.fabric_ip}:{RAY_METRICS}"]) == {
        f"{head.mgmt_ip}:{VLLM}": "open", f"{head.mgmt_ip}:{RAY_METRICS}": "open",
        f"{head.fabric_ip}:{RAY_METRICS}": "silent"}  # the lb host is not on the fabric
    metrics = ssh(lab, lb, f"python3 -c \"import urllib.request; r = urllib.request.urlopen("
                           f"'http://{head.mgmt_ip}:{VLLM}/metrics', timeout=30); print(r.status)\"")
    assert metrics.stdout.strip() == "200", metrics.stderr[-1000:]
    other = probe_from(lab, outsider, [f"{head.mgmt_ip}:{VLLM}", f"{head.mgmt_ip}:{RAY_METRICS}"])
    assert set(other.values()) == {"silent"}, other


def test_the_controller_reaches_the_endpoint_and_ssh_but_no_head_directly(lab, first_run):
    provisioned(first_run)
    head = host(lab, next(iter(lab.topology.serving_groups.values()))[0])
    lb = next(h for h in lab.topology.hosts if h.kind == "lb")

    def answers(address, port):
        try:
            socket.create_connection((address, port), timeout=3).close()
            return True
        except ConnectionRefusedError:
            return True
        except OSError:
            return False

    assert answers(lb.mgmt_ip, VLLM) and answers(head.mgmt_ip, 22)
    assert not answers(head.mgmt_ip, VLLM), "a client reaches a head's vLLM without the load balancer"
    assert not answers(head.mgmt_ip, GCS)


def firewall_run(lab, name, tmp_path, **extra_vars):
    return run_playbook(ROOT, "playbooks/host_stack.yml", "inventories/lab", limit=name, tags="firewall",
                        extra_vars=extra_vars, runs_dir=tmp_path)


def test_a_change_that_would_lock_the_controller_out_is_refused_or_rolled_back(lab, first_run, tmp_path):
    """Destructive for one worker (the last GPU host) for about a minute; its serving group keeps running."""
    provisioned(first_run)
    name = [h.name for h in lab.topology.hosts if h.kind == "gpu"][-1]
    before = ssh(lab, name, "cat /etc/gpuforge/firewall/rules.nft").stdout
    assert "policy drop" in before

    # SSH sources that leave out the controller: refused before anything is loaded.
    rc, summary = firewall_run(lab, name, tmp_path / "refused", firewall_ssh_sources=["192.0.2.0/24"])
    msgs = " ".join(f["msg"] for f in summary["failures"])
    assert rc != 0 and f"this run's SSH session comes from {lab.gateway}" in msgs and "nothing was changed" in msgs, \
        msgs
    assert "192.0.2.0/24" not in ssh(lab, name, "nft list table inet gpuforge").stdout

    # A rule of the operator's that drops the controller's new SSH connections: the check before cannot see it;
    # the reconnect fails and the host restores the rules in force by itself.
    started = time.monotonic()
    rc, summary = firewall_run(lab, name, tmp_path / "rollback", firewall_rollback_s=30,
                               firewall_extra_rules=[f"ip saddr {lab.gateway} tcp dport 22 drop"])
    msgs = " ".join(f["msg"] for f in summary["failures"])
    assert rc != 0 and "loads its previous firewall rules again by itself" in msgs, msgs
    back = None
    while time.monotonic() - started < 120:
        out = ssh(lab, name, "nft list table inet gpuforge; gpuforge-firewall status")
        if out.returncode == 0:
            back = time.monotonic() - started
            break
        time.sleep(3)
    print(f"\n{name}: locked out by the new rules, reachable again after {back} s")
    assert back is not None, f"{name} did not restore its previous rules"
    assert "tcp dport 22 drop" not in out.stdout and "no rollback pending" in out.stdout, out.stdout
    assert ssh(lab, name, "cat /etc/gpuforge/firewall/rules.nft").stdout == before

    # The next run with the inventory's own settings finds those rules in force and loads nothing.
    rc, summary = firewall_run(lab, name, tmp_path / "again")
    assert rc == 0, summary["failures"]
    out = ssh(lab, name, "cd /etc/gpuforge/firewall && cmp candidate.nft rules.nft && gpuforge-firewall status")
    assert out.stdout.strip() == "no rollback pending", out.stdout + out.stderr
