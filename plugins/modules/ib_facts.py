#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Gather InfiniBand/RoCE port facts from sysfs and, when installed, ibstat."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ib_facts
short_description: Gather InfiniBand and RoCE port facts
description:
  - Reads every RDMA device's ports from C(/sys/class/infiniband) (state, physical state, rate, link layer,
    firmware), and C(ibstat) output when the tool is installed.
  - With I(expected_rate_gbps), lists ports that are not Active/LinkUp at that rate in C(problems).
  - Sets C(ansible_facts.gpuforge_ib). Never changes the host.
options:
  sysfs_root:
    description: Where sysfs is mounted (tests point it at a recorded tree).
    type: path
    default: /sys
  expected_rate_gbps:
    description: The rate every port should run at (e.g. 400 for NDR); 0 checks only the state.
    type: int
    default: 0
  unused_ports:
    description: Ports not cabled on purpose (C(mlx5_1/1)), left out of C(problems).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Only reads; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
  platform:
    platforms: [debian, ubuntu]
    description: Linux with C(/sys/class/infiniband); C(ibstat) from infiniband-diags when installed.
author: gpuforge
"""

EXAMPLES = r"""
- name: Gather InfiniBand facts
  ib_facts:
    expected_rate_gbps: 400
"""

RETURN = r"""
ansible_facts:
  description: Facts under C(gpuforge_ib).
  returned: always
  type: dict
  contains:
    gpuforge_ib:
      description: C(devices) from sysfs (each port with state, physical_state, rate_gbps, rate, link_layer and
        its error counters), C(ibstat) parsed (or null), C(problems) (list of str).
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.gpuforge_hw import ib_port_problems, ib_sysfs_ports, parse_ibstat


def main():
    module = AnsibleModule(
        argument_spec={
            "sysfs_root": {"type": "path", "default": "/sys"},
            "expected_rate_gbps": {"type": "int", "default": 0},
            "unused_ports": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    devices = ib_sysfs_ports(module.params["sysfs_root"])
    ibstat = None
    tool = module.get_bin_path("ibstat")
    if tool and devices:
        rc, out, _err = module.run_command([tool])
        if rc == 0:
            ibstat = parse_ibstat(out)
    facts = {
        "devices": devices,
        "ibstat": ibstat,
        "problems": ib_port_problems(devices, module.params["expected_rate_gbps"] or None,
                                     module.params["unused_ports"]),
    }
    module.exit_json(changed=False, ansible_facts={"gpuforge_ib": facts})


if __name__ == "__main__":
    main()
