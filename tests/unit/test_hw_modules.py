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


def test_gpu_facts_action_reads_the_same_as_the_module_without_ansiballz(tmp_path):
    """The action runs module_utils' gpu_scan as a plain script once the host's Python is known, else the module;
    both read a loaded driver's nvidia-smi (a recorded H100 output here) and agree."""
    from test_config_files import play

    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM version: 550.54.15\n")
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {FIXTURES / 'nvidia-smi' / 'h100-hgx-8gpu.xml'}\n")
    smi.chmod(0o755)
    task = {"name": "scan", "gpu_facts": {"sysfs_root": str(FIXTURES / "sysfs" / "no-gpu-vm"),
                                          "proc_driver_version": str(proc_version), "nvidia_smi": str(smi)}}
    out, script = play(tmp_path, [task])
    assert out.returncode == 0, out.stdout + out.stderr
    assert script["scan"]["gathered_by"] == sys.executable and script["scan"]["changed"] is False
    out, module = play(tmp_path, [task], extra_vars={"ansible_python_interpreter": "auto_silent"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert module["scan"]["gathered_by"] == "module"
    facts = script["scan"]["ansible_facts"]["gpuforge_gpu"]
    assert facts == module["scan"]["ansible_facts"]["gpuforge_gpu"]
    assert facts["driver_loaded"] is True and facts["skipped"] is None
    assert len(facts["nvidia_smi"]["gpus"]) == 8


def test_gpu_facts_action_fails_with_nvidia_smis_own_words(tmp_path):
    from test_config_files import play

    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM\n")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    smi.chmod(0o755)
    out, _ = play(tmp_path, [{"name": "scan", "gpu_facts": {"proc_driver_version": str(proc_version),
                                                            "nvidia_smi": str(smi)}}])
    assert out.returncode != 0
    assert "nvidia-smi -q -x failed (rc=9): NVIDIA-SMI has failed" in out.stdout


def test_gpu_facts_action_and_module_agree_when_nvidia_smi_is_missing(tmp_path):
    from test_config_files import play

    proc_version = tmp_path / "version"
    proc_version.write_text("NVRM\n")
    task = {"name": "scan", "gpu_facts": {"sysfs_root": str(FIXTURES / "sysfs" / "no-gpu-vm"),
                                          "proc_driver_version": str(proc_version),
                                          "nvidia_smi": str(tmp_path / "no-such-nvidia-smi")}}
    out, script = play(tmp_path, [task])
    assert out.returncode == 0, out.stdout + out.stderr
    out, module = play(tmp_path, [task], extra_vars={"ansible_python_interpreter": "auto_silent"})
    assert out.returncode == 0, out.stdout + out.stderr
    facts = script["scan"]["ansible_facts"]["gpuforge_gpu"]
    assert facts == module["scan"]["ansible_facts"]["gpuforge_gpu"]
    assert facts["skipped"] == "nvidia-smi is not installed"
