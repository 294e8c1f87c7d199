#!/usr/bin/python
# -*- coding: utf-8 -*-
# The work is done by the action plugin (plugins/action/apt_present.py), on the controller; this file documents
# it, as ansible-core's own modules/template.py does for its action.
"""Documentation of the apt_present action."""

from __future__ import annotations

DOCUMENTATION = r"""
module: apt_present
short_description: ansible.builtin.apt for packages that must be installed, without opening apt's cache when they are
description:
  - Takes ansible.builtin.apt's arguments. First asks dpkg, in one shell command over the connection, whether
    every package in I(name) is installed at the version asked (C(name=version), exact or with apt's C(*)
    wildcard). When it is, the task is ok and apt's module does not run (it would open the whole package cache,
    1-2 s of a host's CPU, to find nothing to do).
  - With I(state=latest) (plain names), the same command also asks C(apt-cache policy); every package installed
    at its candidate version, with package lists younger than I(cache_valid_time) (measured as apt's module does, by
    the update-success stamp, else the lists directory), is what apt would find too, and apt does not run.
  - Otherwise, and for anything the fast path cannot judge (I(state) other than C(present) or C(latest), I(deb),
    I(upgrade), I(autoremove), I(purge), virtual or arch-qualified names, version operators, I(update_cache)
    without I(cache_valid_time) under C(latest)), it runs ansible.builtin.apt with the same arguments.
  - With I(update_cache), a host without any downloaded package list (a fresh image) refreshes regardless of
    I(cache_valid_time) (apt judges freshness by the lists directory's age, which a fresh image also has).
  - A refresh that apt's module would do runs first as C(apt-get update) under C(timeout) (180 s, up to 3
    attempts), then the module without I(update_cache). An update that hangs is cut off and retried, and one
    that keeps failing fails the task with what apt said.
options:
  name:
    description: Packages, as for ansible.builtin.apt (C(name) or C(name=version)).
    type: list
    elements: str
    aliases: [package, pkg]
notes:
  - Every other option is ansible.builtin.apt's and is passed to it unchanged.
author: gpuforge
"""

EXAMPLES = r"""
- name: Install the base packages
  apt_present:
    name: [chrony, pciutils]
    update_cache: true
    cache_valid_time: 3600
    install_recommends: false
"""

RETURN = r"""
packages:
  description: The packages found installed, when apt's module did not need to run.
  returned: when every package was installed
  type: list
  elements: str
missing:
  description: The packages dpkg did not report installed at the version asked (apt's module then ran).
  returned: when some were not
  type: list
  elements: str
lists_refreshed:
  description: The package lists were refreshed by the bounded C(apt-get update) before apt's module ran.
  returned: when they were
  type: bool
"""
