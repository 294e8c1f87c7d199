"""`gpuforge health` and the monitoring stack on the provisioned lab: everything passes and every Prometheus target
is up on a fresh lab; then one fault at a time, written into the lab's replayed GPU readings (lab only:
/opt/gpuforge-lab on each GPU host, see src/gpuforge/lab_replay/nvidia-smi), fails exactly its host, GPU and
check, and fires its alert. The upgrade gate's refusal is in test_upgrade.py, a stopped vLLM in test_serving.py."""

import json
import sys
import time

import pytest
from conftest import ROOT, failed_checks, firing, gpuforge_health, health_gate, monitoring_host, prometheus, ssh

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from test_dashboards import DASHBOARDS, panel_queries  # noqa: E402

REPLAY = "/opt/gpuforge-lab"
# GPU 0 of the recording the lab replays (tests/unit/fixtures/nvidia-smi/h100-hgx-8gpu.xml), as the kernel
# writes its address in an XID line.
GPU0_XID_79 = "NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."


@pytest.fixture(scope="module")
def provisioned(lab, first_run):
    rc, summary = first_run
    assert rc == 0, summary["failures"]
    return lab


def active_targets(lab):
    """{(job, host): health} of every target Prometheus scrapes now (its targets API)."""
    out = ssh(lab, monitoring_host(lab), "curl -sS 'http://127.0.0.1:9090/api/v1/targets?state=active'")
    assert out.returncode == 0, out.stderr
    targets = json.loads(out.stdout)["data"]["activeTargets"]
    return {(t["labels"]["job"], t["labels"]["host"]): t["health"] for t in targets}


def collect_now(lab, host):
    """Run the host's metrics collector now rather than at its next tick."""
    out = ssh(lab, host, "systemctl start gpuforge-collector.service")
    assert out.returncode == 0, out.stderr


def test_health_passes_and_every_prometheus_target_is_up_on_the_fresh_lab(provisioned):
    lab = provisioned
    rc, results, seconds = gpuforge_health()
    print(f"\ngpuforge health on the {len(lab.topology.hosts)}-host lab: {seconds:.1f} s, exit {rc}")
    assert failed_checks(results) == []
    assert rc == 0
    gpu_hosts = [h.name for h in lab.topology.hosts if h.kind == "gpu"]
    assert set(results) == {h.name for h in lab.topology.hosts}
    for host in gpu_hosts:  # the replayed GPUs were read and judged, one check per GPU for each GPU check
        remap = [c for c in results[host] if c["check"] == "memory_pending_remap"]
        assert len(remap) == lab.topology.gpus_per_host, results[host]
    # Every target of every job answers: node_exporter on each host, vLLM on each head, Ray on each serving
    # host, HAProxy on the load balancer.
    groups = lab.topology.serving_groups
    expected = ({("node", h.name) for h in lab.topology.hosts}
                | {("haproxy", h.name) for h in lab.topology.hosts if h.kind == "lb"}
                | {("vllm", hosts[0]) for hosts in groups.values()}
                | {("ray", h) for hosts in groups.values() for h in hosts})
    # Prometheus's own list of its targets, not the `up` series: right after the package is installed it runs
    # for a few seconds with Debian's default configuration (itself and localhost), whose `up` series linger
    # for Prometheus's 5-minute lookback.
    deadline = time.monotonic() + 60
    while True:
        up = active_targets(lab)
        if set(up) == expected and set(up.values()) == {"up"} or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert set(up) == expected
    assert {k: v for k, v in up.items() if v != "up"} == {}
    # The collector's metrics reached Prometheus from every GPU host.
    counts = {r["metric"]["host"]: r["value"][1] for r in prometheus(lab, "gpuforge_gpu_count")}
    assert counts == dict.fromkeys(gpu_hosts, str(lab.topology.gpus_per_host))
    assert prometheus(lab, 'ALERTS{alertstate="firing"}') == []


def test_the_upgrades_health_gate_lets_a_healthy_group_back(provisioned, tmp_path):
    assert health_gate(next(iter(provisioned.topology.serving_groups)), tmp_path) == []


def test_every_dashboard_panel_queries_the_labs_prometheus_without_error(provisioned):
    queries = [(path.name, title, expr) for path in sorted(DASHBOARDS.glob("*.json"))
               for title, expr in panel_queries(path)]
    assert len(queries) > 20
    errors = []
    for name, title, expr in queries:
        try:
            prometheus(provisioned, expr)
        except AssertionError as exc:
            errors.append(f"{name} / {title}: {expr}: {exc}")
    assert errors == []


def inject(lab, host, faults=None, kernel_line=None):
    if faults is not None:
        ssh(lab, host, f"cat > {REPLAY}/faults.json <<'EOF'\n{json.dumps(faults)}\nEOF")
    if kernel_line is not None:
        ssh(lab, host, f"cat >> {REPLAY}/kern.log <<'EOF'\n{kernel_line}\nEOF")
    collect_now(lab, host)


def clear(lab, host):
    ssh(lab, host, f"echo '{{}}' > {REPLAY}/faults.json && : > {REPLAY}/kern.log")
    collect_now(lab, host)


@pytest.mark.parametrize(("host", "faults", "kernel_line", "check", "gpu", "alert"), [
    ("gpu-03", {"gpus": {"1": {"remapped_rows/remapped_row_pending": "Yes"}}}, None,
     "memory_pending_remap", 1, "GpuRowRemapPending"),
    ("gpu-02", None, GPU0_XID_79, "xid_fatal", 0, "GpuFatalXid"),
], ids=["row-remap-pending", "xid-79"])
def test_a_gpu_fault_fails_exactly_its_host_gpu_and_check_fires_its_alert_and_closes_the_gate(
        provisioned, tmp_path, host, faults, kernel_line, check, gpu, alert):
    lab = provisioned
    group = next(g for g, hosts in lab.topology.serving_groups.items() if host in hosts)
    inject(lab, host, faults, kernel_line)
    try:
        rc, results, seconds = gpuforge_health()
        print(f"\n{check} on {host} GPU {gpu}: gpuforge health exit {rc} in {seconds:.1f} s")
        assert rc == 1
        assert failed_checks(results) == [(host, check, gpu)]
        labels = firing(lab, alert, host=host, gpu=str(gpu))
        print(f"  {alert} fired: {labels}")
        # The rolling upgrade would keep the group drained: its gate refuses every host of the group, naming
        # the faulty host, check and GPU.
        refused = health_gate(group, tmp_path)
        assert sorted(m.split(":")[0] for m in refused) == sorted(lab.topology.serving_groups[group])
        assert all(f"{host}: {check} [GPU {gpu}]" in m for m in refused), refused
        print(f"  the upgrade's gate: {refused[0]}")
    finally:
        clear(lab, host)
