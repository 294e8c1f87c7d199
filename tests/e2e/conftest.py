"""The lab end to end. `make e2e` brings the images and the apt cache up first; the `lab` fixture starts
the default topology (4 GPU hosts in 2 serving groups, 1 load balancer) once per session."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuforge.lab import Lab, Topology

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def lab() -> Lab:
    lab = Lab(ROOT, Topology())
    started = time.monotonic()
    lab.up()
    print(f"\nlab up in {time.monotonic() - started:.0f} s")
    return lab


@pytest.fixture(scope="session")
def first_run(lab, tmp_path_factory):
    """site.yml on the fresh lab, once: every test module that needs a provisioned lab shares it."""
    from gpuforge.runner import run_playbook

    rc, summary = run_playbook(ROOT, "site.yml", "inventories/lab", runs_dir=tmp_path_factory.mktemp("runs"))
    print(f"first site.yml run: {summary['duration_s']} s, {summary['tasks']} tasks")
    return rc, summary


def ssh(lab: Lab, name: str, command: str) -> subprocess.CompletedProcess:
    host = next(h for h in lab.topology.hosts if h.name == name)
    return subprocess.run(lab.ssh_command(host, command), capture_output=True, text=True, timeout=120)


def gpuforge_health(limit: str | None = None) -> tuple[int, dict, float]:
    """`gpuforge health -i inventories/lab --json`: (exit status, {host: checks}, seconds)."""
    cmd = [str(Path(sys.executable).parent / "gpuforge"), "health", "-i", "inventories/lab", "--json"]
    if limit:
        cmd += ["--limit", limit]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert proc.returncode in (0, 1), f"gpuforge health exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(proc.stdout), seconds


def failed_checks(results: dict) -> list[tuple]:
    """[(host, check, gpu)] of every failed check, sorted."""
    return sorted((host, c["check"], c["gpu"]) for host, checks in results.items() for c in checks
                  if c["status"] == "fail")


def monitoring_host(lab: Lab) -> str:
    return next(h.name for h in lab.topology.hosts if h.kind == "lb")


def prometheus(lab: Lab, query: str) -> list[dict]:
    """An instant query against the lab's Prometheus (on lb-01's loopback, through SSH): the result vector."""
    out = ssh(lab, monitoring_host(lab), "curl -sS --get --data-urlencode query@- http://127.0.0.1:9090/api/v1/query"
              f" <<'QUERY'\n{query}\nQUERY")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["status"] == "success", body
    return body["data"]["result"]


def firing(lab: Lab, alert: str, timeout: float = 90, **labels: str) -> dict:
    """Wait until `alert` fires with these labels; returns its labels."""
    selector = ",".join([f'alertname="{alert}"', 'alertstate="firing"'] + [f'{k}="{v}"' for k, v in labels.items()])
    deadline = time.monotonic() + timeout
    while True:
        found = prometheus(lab, f"ALERTS{{{selector}}}")
        if found:
            return found[0]["metric"]
        assert time.monotonic() < deadline, f"{alert} {labels} did not fire within {timeout:.0f} s"
        time.sleep(3)


def health_gate(group: str, runs_dir: Path) -> list[str]:
    """driver_upgrade's health gate on one serving group, alone (tests/e2e/playbooks/health_gate.yml): the
    messages of the hosts it refused, empty when it would put the group back in rotation."""
    from gpuforge.runner import run_playbook

    rc, summary = run_playbook(ROOT, "tests/e2e/playbooks/health_gate.yml", "inventories/lab",
                               extra_vars={"gate_group": group}, runs_dir=runs_dir)
    messages = [f"{f['host']}: {f['msg']}" for f in summary["failures"]]
    assert (rc == 0) == (messages == []), (rc, messages)
    return messages
