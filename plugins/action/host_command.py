# -*- coding: utf-8 -*-
"""`host_command`: ansible.builtin.command's result for a command run through the connection, without a Python
module run on the host (see plugins/modules/host_command.py for the contract)."""

from __future__ import annotations

import shlex

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


def command_line(args: dict) -> str:
    """The shell command line for the task's arguments; stdin from /dev/null unless the task gives some."""
    argv, cmd = args.get("argv"), args.get("cmd")
    if (argv is None) == (cmd is None):
        raise AnsibleActionFail("host_command: give exactly one of argv (a list) or cmd (a shell command line)")
    if argv is not None:
        if not isinstance(argv, list) or not argv or not all(isinstance(a, (str, int, float)) for a in argv):
            raise AnsibleActionFail(f"host_command: argv must be a non-empty list of strings, not {argv!r}")
        cmd = shlex.join(str(a) for a in argv)
    elif not isinstance(cmd, str) or not cmd.strip():
        raise AnsibleActionFail(f"host_command: cmd must be a non-empty string, not {cmd!r}")
    # A subshell, so that the command's own redirections and `exit` stay its own.
    return f"( {cmd}\n)" + ("" if args.get("stdin") is not None else " </dev/null")


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("argv", "cmd", "stdin"))
    _supports_check_mode = False  # as ansible.builtin.command: skipped in check mode unless check_mode: false

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        del tmp
        if self._task.environment and any(self._task.environment):
            raise AnsibleActionFail("host_command does not apply the task's environment; set variables in the command")
        cmd = command_line(self._task.args)
        stdin = self._task.args.get("stdin")
        # Data on stdin also keeps the ssh connection from asking for a terminal (which would mix stderr into
        # stdout and end lines with \r\n).
        out = self._low_level_execute_command(cmd, sudoable=True, in_data=(stdin if stdin is not None else "\n").encode())
        stdout = to_text(out.get("stdout", "")).rstrip("\n")
        stderr = to_text(out.get("stderr", "")).rstrip("\n")
        result.update(rc=out.get("rc"), stdout=stdout, stderr=stderr, stdout_lines=stdout.splitlines(),
                      stderr_lines=stderr.splitlines(), cmd=cmd, changed=True)
        if out.get("rc") != 0:
            # The command's own words, where it gave any: a check that refuses something says why on stderr.
            result.update(failed=True, msg="non-zero return code" + (f": {stderr}" if stderr else ""))
        return result
