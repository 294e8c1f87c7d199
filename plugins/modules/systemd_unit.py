#!/usr/bin/python
# -*- coding: utf-8 -*-
# The work is done by the action plugin (plugins/action/systemd_unit.py), on the controller; this file documents
# it, as ansible-core's own modules/template.py does for its action.
"""Documentation of the systemd_unit action."""

from __future__ import annotations

DOCUMENTATION = r"""
module: systemd_unit
short_description: ansible.builtin.systemd_service, without a module run on the host when the unit is as asked
description:
  - Takes ansible.builtin.systemd_service's arguments. When they are only I(name), I(enabled), I(state)
    (C(started) or C(stopped)) and a false I(daemon_reload), it first asks C(systemctl show) over the connection
    (no Python on the host) for the unit's LoadState, UnitFileState and ActiveState. A loaded unit that is
    C(enabled) or C(disabled) as asked, and C(active) (started) or C(inactive)/C(failed) (stopped) as asked,
    is ok without running systemd_service's module (~0.3 CPU-s of a host per run).
  - Otherwise (restarted or reloaded, a daemon reload, masked, static or generated units, other options) it runs
    ansible.builtin.systemd_service with the same arguments.
options:
  name:
    description: The unit, as for ansible.builtin.systemd_service.
    type: str
    required: true
notes:
  - Every other option is ansible.builtin.systemd_service's and is passed to it unchanged.
author: gpuforge
"""

EXAMPLES = r"""
- name: Enable chrony at boot
  systemd_unit:
    name: chrony
    enabled: true
"""

RETURN = r"""
msg:
  description: C(already in the requested state) when the module did not need to run.
  returned: when the unit was as asked
  type: str
"""
