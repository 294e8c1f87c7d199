# -*- coding: utf-8 -*-
"""Host classification shared by every role."""

from __future__ import annotations

DOCUMENTATION = r"""
name: gpuforge_in_container
short_description: Whether gathered facts describe a container (the lab, molecule)
description:
  - True when C(virtualization_role) is guest and C(virtualization_type) is a container runtime. Roles use it
    to skip, with a message, the steps that need the machine's own kernel, clock or devices.
  - Needs the C(virtual) fact subset.
"""

CONTAINER_TYPES = ("docker", "container", "containerd", "podman", "lxc", "systemd-nspawn")


def in_container(facts):
    facts = facts or {}
    return facts.get("virtualization_role") == "guest" and facts.get("virtualization_type") in CONTAINER_TYPES


class FilterModule:
    def filters(self):
        return {"gpuforge_in_container": in_container}
