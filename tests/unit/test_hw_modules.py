"""gpu_facts and ib_facts run as Ansible modules on the controller, pointed at recorded sysfs trees and a
stand-in nvidia-smi that replays a recorded `nvidia-smi -q -x`."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, ROOT


def run_module(name, args, check=True):
    ansible = str(Path(sys.executable).parent / "ansible")
    out = subprocess.run([ansible, "localhost", "-c", "local", "-m", name, "-a", json.dumps(args), "-o",
                          "-e", f"ansible_python_interpreter={sys.executable}"],
                         capture_output=True, text=True, cwd=ROOT,
                         env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin",
                              "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"})
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out, json.loads(out.stdout.split("=>", 1)[1])


def test_gpu_facts_on_a_host_without_gpu_skips_nvidia_smi_with_a_reason():
    _, res = run_module("gpu_facts", {"sysfs_root": str(FIXTURES / "sysfs" / "no-gpu-vm"),
                                      "proc_driver_version": "/nonexistent/nvidia/version"})
    facts = res["ansible_facts"]["gpuforge_gpu"]
    assert res["changed"] is False
    assert facts["pci"]["gpu_count"] == 0 and facts["pci"]["hca_count"] == 0
    assert facts["driver_loaded"] is False and facts["nvidia_smi"] is None
    assert "driver is not loaded" in facts["skipped"]


def test_ib_facts_without_rdma_devices():
    _, res = run_module("ib_facts", {"sysfs_root": str(FIXTURES / "sysfs" / "no-gpu-vm"), "expected_rate_gbps": 400})
    assert res["ansible_facts"]["gpuforge_ib"] == {"devices": {}, "ibstat": None, "problems": []}


def test_gpu_facts_reads_a_loaded_drivers_nvidia_smi(tmp_path):
    """A loaded driver (the /proc file exists) and an nvidia-smi that replays a recorded H100 HGX output."""
    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM version: 550.54.15\n")
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {FIXTURES / 'nvidia-smi' / 'h100-hgx-8gpu.xml'}\n")
    smi.chmod(0o755)
    _, res = run_module("gpu_facts", {"sysfs_root": str(FIXTURES / "sysfs" / "no-gpu-vm"),
                                      "proc_driver_version": str(proc_version), "nvidia_smi": str(smi)})
    facts = res["ansible_facts"]["gpuforge_gpu"]
    assert res["changed"] is False
    assert facts["driver_loaded"] is True and facts["skipped"] is None
    assert len(facts["nvidia_smi"]["gpus"]) == 8


def test_gpu_facts_fails_with_nvidia_smis_own_words(tmp_path):
    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM\n")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    smi.chmod(0o755)
    out, res = run_module("gpu_facts", {"proc_driver_version": str(proc_version), "nvidia_smi": str(smi)},
                          check=False)
    assert out.returncode != 0
    assert "nvidia-smi -q -x failed (rc=9): NVIDIA-SMI has failed" in res["msg"]


def test_gpu_facts_says_when_nvidia_smi_is_missing(tmp_path):
    """A path that is not an executable counts as 'not installed', not a traceback."""
    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM\n")
    _, res = run_module("gpu_facts", {"sysfs_root": str(FIXTURES / "sysfs" / "no-gpu-vm"),
                                      "proc_driver_version": str(proc_version),
                                      "nvidia_smi": str(tmp_path / "no-such-nvidia-smi")})
    assert res["ansible_facts"]["gpuforge_gpu"]["skipped"] == "nvidia-smi is not installed"


def test_gpu_facts_reads_the_kernels_xid_lines_and_judges_the_driver_pin(tmp_path):
    """With kernel_log_command and driver_version, the host resolves each XID line to its GPU and says whether the
    loaded driver (580.105.08 in the recording) satisfies the pin; a failing log command fails the task."""
    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM\n")
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {FIXTURES / 'nvidia-smi' / 'h100-hgx-8gpu.xml'}\n")
    smi.chmod(0o755)
    log = tmp_path / "kern.log"
    log.write_text("kernel: NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>', GPU has fallen off the bus.\n"
                   "kernel: NVRM: Xid (PCI:0000:ff:00): 48, An uncorrectable double bit error\n")
    args = {"proc_driver_version": str(proc_version), "nvidia_smi": str(smi), "kernel_log_command": ["cat", str(log)]}
    _, res = run_module("gpu_facts", dict(args, driver_version="580"))
    facts = res["ansible_facts"]["gpuforge_gpu"]
    assert [(x["gpu"], x["xid"]) for x in facts["xids"]] == [(0, 79), ("0000:ff:00", 48)]
    assert facts["driver_matches"] is True
    _, res = run_module("gpu_facts", dict(args, driver_version="535.261.03-1"))
    assert res["ansible_facts"]["gpuforge_gpu"]["driver_matches"] is False
    # grep's "no line matched" (exit 1) is no XID, not an error; anything else fails with the command's words.
    _, res = run_module("gpu_facts", dict(args, kernel_log_command=["grep", "NVRM: Xid", str(tmp_path / "version")]))
    assert res["ansible_facts"]["gpuforge_gpu"]["xids"] == []
    out, res = run_module("gpu_facts", dict(args, kernel_log_command=["grep", "Xid", str(tmp_path / "missing")]),
                          check=False)
    assert out.returncode != 0 and "grep Xid" in res["msg"] and "(rc=2)" in res["msg"], res
