# -*- coding: utf-8 -*-
"""Ansible filters for playbooks/health.yml: the checks of the gpuforge package (gpuforge/health.py)."""

from __future__ import annotations

from gpuforge import health

DOCUMENTATION = r"""
name: gpuforge_gpu_health
short_description: Health checks of a host's GPUs, fabric, serving group and load balancer
description:
  - C(gpuforge_gpu_health) takes gpu_facts' C(gpuforge_gpu) fact (read with its kernel_log_command and
    driver_version options: the XID lines and the driver match), C(gpu_count), the pinned driver
    (C(nvidia_driver_version) or branch) and whether fabricmanager is active (None where the host has no
    NVSwitch), and returns the checks (check, gpu, status pass/warn/fail, observed, threshold, fix).
  - C(gpuforge_fabric_health) takes two reads of ib_facts' C(gpuforge_ib.devices), the expected rate and the
    unused ports.
  - C(gpuforge_dcgm_health) judges C(dcgmi diag -r 1) from its exit status and output.
  - C(gpuforge_serving_health) and C(gpuforge_lb_health) judge a serving group (its Ray nodes, a completion)
    and a load balancer (its groups, its health path).
  - C(gpuforge_health_report) renders {host: checks} as the terminal report; C(gpuforge_health_failed) is
    true when any check failed.
  - C(gpuforge_health_failures) takes hosts' variables (each with health_checks) and returns one line
    per failed check naming the host, the check, the GPU and the observed value.
  - Thresholds and their sources are in the gpuforge package's C(gpuforge.health).
"""


def gpu_health(gpu, gpu_count, driver_version=None, fabricmanager_active=None, thresholds=None):
    gpu = gpu or {}
    return health.gpu_checks(gpu.get("nvidia_smi"), gpu_count, driver_version=driver_version,
                             driver_ok=gpu.get("driver_matches"), xids=gpu.get("xids") or [],
                             fabricmanager_active=fabricmanager_active, thresholds=thresholds)


def dcgm_health(rc, output):
    return health.dcgm_checks(int(rc), output)


def fabric_health(first, second=None, expected_rate_gbps=0, unused_ports=()):
    return health.fabric_checks(first, second, expected_rate_gbps=int(expected_rate_gbps or 0),
                                unused_ports=unused_ports)


def serving_health(nodes, group, expected, gpu_count, completion_status, latency_s=None):
    return health.serving_checks(group, nodes, expected, gpu_count, int(completion_status or 0), latency_s)


def lb_health(servers, groups, endpoint_status):
    return health.lb_checks(servers, groups, int(endpoint_status or 0))


def health_failures(hosts):
    """A list of hostvars (hosts that ran the health role) -> the failed checks, one line each."""
    return health.failures({h["inventory_hostname"]: h.get("health_checks") or [] for h in hosts})


class FilterModule:
    def filters(self):
        return {"gpuforge_gpu_health": gpu_health, "gpuforge_fabric_health": fabric_health,
                "gpuforge_dcgm_health": dcgm_health,
                "gpuforge_serving_health": serving_health, "gpuforge_lb_health": lb_health,
                "gpuforge_health_report": health.report, "gpuforge_health_failed": lambda r: health.exit_code(r) == 1,
                "gpuforge_health_failures": health_failures}
