# -*- coding: utf-8 -*-
"""Ansible filter `gpuforge_serving_plan`: the serving planner of the gpuforge package (gpuforge/planner.py)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from gpuforge.planner import PlanError, plan

DOCUMENTATION = r"""
name: gpuforge_serving_plan
short_description: Weights and KV-cache footprint per GPU, and a tensor/pipeline-parallel layout that fits
description:
  - Input is a model description (config.json fields, or C(num_parameters) with the attention shape), the
    dtype or quantization, context length, concurrency and the serving group's GPUs.
  - Returns the footprint per GPU in GiB and whether it fits; raises an error naming the numbers when the
    model cannot fit in any layout.
"""


def serving_plan(config, **kwargs):
    """Raise the planner's error as an AnsibleFilterError (clear message, no traceback)."""
    try:
        return plan(config, **kwargs)
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    def filters(self):
        return {"gpuforge_serving_plan": serving_plan}
