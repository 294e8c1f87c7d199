#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Gather NVIDIA GPU, NVSwitch and ConnectX facts from PCI sysfs and, when the driver is loaded, nvidia-smi."""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: Gather NVIDIA GPU, NVSwitch and ConnectX facts
description:
  - Finds NVIDIA GPUs (vendor 0x10de, VGA or 3D controller class), NVSwitches and Mellanox ConnectX adapters in
    PCI sysfs, which needs no driver.
  - When the NVIDIA driver is loaded (C(/proc/driver/nvidia/version) exists) and C(nvidia-smi) is installed,
    parses C(nvidia-smi -q -x) into the driver and CUDA versions and, per GPU, name, memory, PCI bus id, ECC
    error counts, retired pages, remapped rows, persistence mode, MIG mode and PCIe link generation/width.
  - Sets C(ansible_facts.gpuforge_gpu). Never changes the host.
  - The parsing lives in module_utils C(gpuforge_hw) as plain functions, unit-tested on recorded outputs.
options:
  sysfs_root:
    description: Where sysfs is mounted (tests point it at a recorded tree).
    type: path
    default: /sys
  nvidia_smi:
    description: The nvidia-smi executable.
    type: str
    default: nvidia-smi
  proc_driver_version:
    description: The file whose presence means the NVIDIA kernel driver is loaded.
    type: path
    default: /proc/driver/nvidia/version
  kernel_log_command:
    description:
      - "Argv that prints the kernel's XID lines since boot (exit status 1 means none matched), e.g. journalctl
        --dmesg --boot --no-pager --quiet --grep 'NVRM: Xid'. When set, C(xids) lists them."
    type: list
    elements: str
  driver_version:
    description:
      - The pinned driver (an exact package version, or a branch such as C(580)). When set, C(driver_matches)
        says whether the loaded driver satisfies it.
    type: str
attributes:
  check_mode:
    support: full
    description: Only reads; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
  platform:
    platforms: [debian, ubuntu]
    description: Linux with PCI sysfs; nvidia-smi from the NVIDIA driver when it is loaded.
author: gpuforge
"""

EXAMPLES = r"""
- name: Gather GPU facts
  gpu_facts:

- name: Check the GPU count
  ansible.builtin.assert:
    that: ansible_facts.gpuforge_gpu.pci.gpu_count == gpu_count
"""

RETURN = r"""
ansible_facts:
  description: Facts under C(gpuforge_gpu).
  returned: always
  type: dict
  contains:
    gpuforge_gpu:
      description: GPU facts.
      type: dict
      contains:
        pci:
          description: C(gpus), C(nvswitches), C(hcas) (lists of {address, vendor, device, class, driver}) and
            C(gpu_count), C(nvswitch_count), C(hca_count).
          type: dict
        driver_loaded:
          description: Whether the NVIDIA kernel driver is loaded.
          type: bool
        nvidia_smi:
          description: Parsed C(nvidia-smi -q -x) (driver_version, cuda_version, attached_gpus, gpus), or null.
            Each GPU has index, name, uuid, pci_bus_id, memory, persistence_mode, mig_mode, ecc counters,
            retired_pages, remapped_rows, clock_event_reasons_active (the reasons its clocks are held down now),
            temperature_c, power_draw_w and its PCIe link (gen and width, current and maximum).
          type: dict
        skipped:
          description: Why nvidia-smi was not read, when it was not.
          type: str
        xids:
          description: With I(kernel_log_command), the kernel's XID lines since boot, each with pci, xid, text and
            gpu (the nvidia-smi index of the GPU at that address, or the address when nvidia-smi does not list it).
          type: list
        driver_matches:
          description: With I(driver_version), whether nvidia-smi's driver satisfies the pin (false without it).
          type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.gpuforge_hw import driver_matches, gpu_scan, gpu_xids, parse_xids


def main():
    module = AnsibleModule(
        argument_spec={
            "sysfs_root": {"type": "path", "default": "/sys"},
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
            "proc_driver_version": {"type": "path", "default": "/proc/driver/nvidia/version"},
            "kernel_log_command": {"type": "list", "elements": "str"},
            "driver_version": {"type": "str"},
        },
        supports_check_mode=True,
    )
    try:
        facts = gpu_scan(module.params["sysfs_root"], module.params["proc_driver_version"],
                         module.get_bin_path(module.params["nvidia_smi"]), module.run_command)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    gpus = (facts["nvidia_smi"] or {}).get("gpus") or []
    if module.params["kernel_log_command"]:
        rc, out, err = module.run_command(module.params["kernel_log_command"])
        if rc not in (0, 1):  # 1: no line matched, no XID since boot
            module.fail_json(msg="%s failed (rc=%d): %s" % (" ".join(module.params["kernel_log_command"]), rc,
                                                            err.strip() or out.strip()))
        facts["xids"] = gpu_xids(parse_xids(out), gpus)
    if module.params["driver_version"] is not None:
        smi = facts["nvidia_smi"]
        facts["driver_matches"] = smi is not None and driver_matches(smi.get("driver_version"),
                                                                     module.params["driver_version"])
    module.exit_json(changed=False, ansible_facts={"gpuforge_gpu": facts})


if __name__ == "__main__":
    main()
