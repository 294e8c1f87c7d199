# -*- coding: utf-8 -*-
"""`systemd_unit`: ansible.builtin.systemd_service for a unit that must be enabled/disabled and started/stopped,
with a fast path when it already is (see plugins/modules/systemd_unit.py for the contract)."""

from __future__ import annotations

import shlex

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

# Arguments the fast path judges; anything else (masked, scope, no_block, ...) goes to systemd_service.
_JUDGED = frozenset(("name", "enabled", "state", "daemon_reload"))
_PROPERTIES = ("LoadState", "UnitFileState", "ActiveState")


def judged(args: dict) -> bool:
    """Whether the fast path can judge these arguments (else only systemd_service can)."""
    if set(args) - _JUDGED or not args.get("name") or boolean(args.get("daemon_reload", False), strict=False):
        return False
    state = args.get("state")
    return state in ("started", "stopped") or (state is None and args.get("enabled") is not None)


def in_place(args: dict, show: str) -> bool | None:
    """Whether `systemctl show` output says the unit is as asked; None when only systemd_service can judge."""
    if not judged(args):
        return None
    state = args.get("state")
    props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    if props.get("LoadState") != "loaded":
        return False
    if args.get("enabled") is not None:
        # Only the plain answers: static, indirect, generated or alias units are systemd_service's to judge.
        want = "enabled" if boolean(args["enabled"], strict=False) else "disabled"
        if props.get("UnitFileState") != want:
            return False
    if state == "started" and props.get("ActiveState") != "active":
        return False
    return state != "stopped" or props.get("ActiveState") in ("inactive", "failed")


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        if judged(args):
            props = " ".join(f"-p {p}" for p in _PROPERTIES)
            probe = self._low_level_execute_command(
                f"systemctl show {props} -- {shlex.quote(str(args['name']))}", sudoable=False)
            if probe.get("rc") == 0 and in_place(args, probe.get("stdout") or ""):
                result.update(changed=False, name=args["name"], msg="already in the requested state",
                              **{k: args[k] for k in ("enabled", "state") if args.get(k) is not None})
                return result
        result.update(self._execute_module(module_name="ansible.legacy.systemd_service", module_args=args,
                                           task_vars=task_vars))
        return result
