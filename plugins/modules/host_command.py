#!/usr/bin/python
# -*- coding: utf-8 -*-
# The work is done by the action plugin (plugins/action/host_command.py), on the controller; this file documents
# it, as ansible-core's own modules/raw.py does for its action.
"""Documentation of the host_command action."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_command
short_description: ansible.builtin.command for the reads of every run, without a Python module run on the host
description:
  - Runs one command through the connection (with become when the task has it) and returns what
    ansible.builtin.command returns (C(rc), C(stdout), C(stderr), their C(_lines), C(cmd)). No AnsiballZ module
    is sent, so the host pays the command alone, not the ~0.2 CPU-s that compiling C(ansible.module_utils) costs
    every Python module run.
  - For the reads and checks that run on every pass of a playbook (the no-op re-run is mostly those). Like
    ansible.builtin.command it reports C(changed) unless the task says C(changed_when), fails on a non-zero
    return code unless the task says C(failed_when), and is skipped in check mode unless the task sets
    C(check_mode) to false.
  - The task's C(environment) keyword is refused (the connection's raw command does not apply it); put
    variables in the command (C(env NAME=value ...)).
options:
  argv:
    description: The command and its arguments, each quoted for the shell by the plugin.
    type: list
    elements: str
  cmd:
    description: A shell command line (C(/bin/sh)); pipes and redirections allowed. Exactly one of I(argv), I(cmd).
    type: str
  stdin:
    description: Data fed to the command's standard input (otherwise it reads nothing).
    type: str
author: gpuforge
"""

EXAMPLES = r"""
- name: Read whether nvidia-persistenced failed
  host_command:
    argv: [systemctl, is-failed, nvidia-persistenced]
  register: __failed
  changed_when: false
  failed_when: false
  check_mode: false
"""

RETURN = r"""
rc:
  description: The command's return code.
  returned: always
  type: int
stdout:
  description: Its standard output, without the trailing newline.
  returned: always
  type: str
stderr:
  description: Its standard error, without the trailing newline.
  returned: always
  type: str
cmd:
  description: The command line that ran.
  returned: always
  type: str
"""
