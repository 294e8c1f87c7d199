# -*- coding: utf-8 -*-
"""`apt_present`: ansible.builtin.apt for packages that must be installed, with a fast path for the case where
they already are.

apt's module opens the whole package cache (python3-apt parses every package list) even when nothing is to be
done: 1-2 s of a host's CPU per task on every re-run. This action asks dpkg first, in one shell command over the
connection (no Python on the host): when every package is installed ("ii", or "hi" when held) at the version asked (exact, or an
apt-style `*` wildcard), the task is ok without running apt. Otherwise, or for anything the fast path cannot
judge (state other than present, deb files, upgrades, virtual or arch-qualified names, version operators), it
runs ansible.builtin.apt with the same arguments.

It also owns the lists' freshness: apt judges `cache_valid_time` by the lists directory's age, and a fresh image
has no lists at all, so when no `*_Packages` list exists the refresh is forced (cache_valid_time 0).
"""

from __future__ import annotations

import fnmatch
import re
import shlex

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

# Arguments that make the task more than "these packages are installed": apt decides those.
_APT_ONLY = ("deb", "upgrade", "autoremove", "autoclean", "clean", "purge", "only_upgrade")
_NAME = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]*)(?:=(?P<version>[A-Za-z0-9.+~:*-]+))?$")
_LISTS_MARK = "gpuforge-apt-lists="


def satisfied(wanted: list[str], dpkg_lines: list[str]) -> tuple[bool, list[str]]:
    """Whether dpkg reports every wanted `name[=version]` installed; the names that are not."""
    installed = {}
    for line in dpkg_lines:
        parts = line.split("\t")
        # db:Status-Abbrev: wanted (i install, h hold), status (i installed), error flag (blank when none).
        if len(parts) == 3 and parts[2][:2] in ("ii", "hi") and not parts[2][2:].strip():
            installed[parts[0]] = parts[1]
    missing = []
    for spec in wanted:
        m = _NAME.match(spec)
        version = installed.get(m.group("name")) if m else None
        want = m.group("version") if m else None
        if version is None or (want is not None and not fnmatch.fnmatchcase(version, want)):
            missing.append(spec)
    return not missing, missing


def names_of(args: dict) -> list[str] | None:
    """The package specs when the fast path can judge the task, else None."""
    if args.get("state", "present") not in (None, "present"):
        return None
    if any(args.get(k) not in (None, False, "no") for k in _APT_ONLY):
        return None
    names = args.get("name", args.get("pkg", args.get("package")))
    if names is None:
        return None
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names or not all(_NAME.match(n) for n in names):
        return None
    return names


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        names = names_of(args)
        query = ""
        if names:
            specs = " ".join(shlex.quote(_NAME.match(n).group("name")) for n in names)
            query = f"dpkg-query -W -f='${{Package}}\\t${{Version}}\\t${{db:Status-Abbrev}}\\n' -- {specs} 2>/dev/null; "
        probe = self._low_level_execute_command(
            f"{query}echo {_LISTS_MARK}$(ls /var/lib/apt/lists 2>/dev/null | grep -c '_Packages$')", sudoable=False)
        lines = (probe.get("stdout") or "").splitlines()
        lists = next((ln[len(_LISTS_MARK):] for ln in lines if ln.startswith(_LISTS_MARK)), None)
        if names and lists is not None:
            ok, missing = satisfied(names, lines)
            if ok:
                result.update(changed=False, msg=f"installed: {', '.join(names)}", packages=names)
                return result
            result["missing"] = missing
        if boolean(args.get("update_cache", False), strict=False) and lists == "0":
            args["cache_valid_time"] = 0  # no lists at all: a fresh image; the directory's age means nothing
        result.update(self._execute_module(module_name="ansible.legacy.apt", module_args=args, task_vars=task_vars))
        return result
