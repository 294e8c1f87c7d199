# -*- coding: utf-8 -*-
"""Host classification and package checks shared by every role."""

from __future__ import annotations

from fnmatch import fnmatchcase

DOCUMENTATION = r"""
name: gpuforge_in_container
short_description: Whether gathered facts describe a container (the lab, molecule)
description:
  - C(gpuforge_in_container) is true when C(virtualization_role) is guest and C(virtualization_type) is a
    container runtime. Roles use it to skip, with a message, the steps that need the machine's own kernel,
    clock or devices. Needs the C(virtual) fact subset.
  - C(gpuforge_packages_missing) takes a list of apt package requests (C(name), C(name=version) or
    C(name=version*), as C(ansible.builtin.apt) takes them, optionally C(name:arch)) and the registered
    result of C(ansible.builtin.package_facts) (or its C(packages) fact), and returns the requests that fact does not satisfy: the package is
    not installed, or no installed version matches the requested one. An empty list means an C(apt) run with
    C(state=present) would change nothing, so roles skip it. When the fact is missing (not read in this run)
    every request is returned, so apt decides.
"""

CONTAINER_TYPES = ("docker", "container", "containerd", "podman", "lxc", "systemd-nspawn")


def in_container(facts):
    facts = facts or {}
    return facts.get("virtualization_role") == "guest" and facts.get("virtualization_type") in CONTAINER_TYPES


def packages_missing(requests, installed):
    """The apt requests that package_facts' result (or its packages dict) `installed` does not satisfy."""
    if isinstance(requests, str):
        requests = [requests]
    if isinstance(installed, dict) and "ansible_facts" in installed:
        installed = installed["ansible_facts"].get("packages")
    elif isinstance(installed, dict) and "skipped" in installed:
        installed = None
    if not installed:
        return list(requests)
    missing = []
    for request in requests:
        name, _, version = str(request).partition("=")
        name = name.split(":", 1)[0]
        versions = [entry.get("version", "") for entry in installed.get(name) or []]
        if not versions or (version and not any(fnmatchcase(v, version) for v in versions)):
            missing.append(request)
    return missing


class FilterModule:
    def filters(self):
        return {"gpuforge_in_container": in_container, "gpuforge_packages_missing": packages_missing}
