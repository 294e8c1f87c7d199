"""gpu_facts and ib_facts run as Ansible modules on the controller, pointed at recorded sysfs trees."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, ROOT


def run_module(name, args):
    ansible = str(Path(sys.executable).parent / "ansible")
    out = subprocess.run([ansible, "localhost", "-c", "local", "-m", name, "-a", args, "-o"],
                         capture_output=True, text=True, cwd=ROOT,
                         env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                              "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"})
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.split("=>", 1)[1])


def test_gpu_facts_on_a_host_without_gpu_skips_nvidia_smi_with_a_reason():
    res = run_module("gpu_facts", f"sysfs_root={FIXTURES / 'sysfs' / 'no-gpu-vm'} "
                                  "proc_driver_version=/nonexistent/nvidia/version")
    facts = res["ansible_facts"]["gpuforge_gpu"]
    assert res["changed"] is False
    assert facts["pci"]["gpu_count"] == 0 and facts["pci"]["hca_count"] == 0
    assert facts["driver_loaded"] is False and facts["nvidia_smi"] is None
    assert "driver is not loaded" in facts["skipped"]


def test_ib_facts_without_rdma_devices():
    res = run_module("ib_facts", f"sysfs_root={FIXTURES / 'sysfs' / 'no-gpu-vm'} expected_rate_gbps=400")
    assert res["ansible_facts"]["gpuforge_ib"] == {"devices": {}, "ibstat": None, "problems": []}
