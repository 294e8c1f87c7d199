"""The lab end to end. `make e2e` brings the images and the apt cache up first; the `lab` fixture starts
the default topology (4 GPU hosts in 2 serving groups, 1 load balancer) once per session."""

import subprocess
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
