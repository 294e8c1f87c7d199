# -*- coding: utf-8 -*-
"""`apt_present`: ansible.builtin.apt for packages that must be installed, with a fast path for the case where
they already are.

apt's module opens the whole package cache (python3-apt parses every package list) even when nothing is to be
done: 1-2 s of a host's CPU per task on every re-run. This action asks dpkg first, in one shell command over the
connection (no Python on the host): when every package is installed ("ii", or "hi" when held) at the version asked (exact, or an
apt-style `*` wildcard), the task is ok without running apt. `state: latest` (plain names only) is judged by
`apt-cache policy` as well: every package installed at its candidate version, and the lists younger than
`cache_valid_time` (measured as apt's module measures it), since a refresh could bring a newer candidate.
Otherwise, or for anything the fast path cannot judge (other states, deb files, upgrades, virtual or
arch-qualified names, version operators, `update_cache` without `cache_valid_time` under `latest`), it runs
ansible.builtin.apt with the same arguments.

It also owns the lists' freshness: apt judges `cache_valid_time` by the lists directory's age, and a fresh image
has no lists at all, so when no `*_Packages` list exists the refresh is forced (cache_valid_time 0). A refresh
the module would do is done here first, bounded: `apt-get update` under `timeout` (UPDATE_TIMEOUT_S), up to
UPDATE_ATTEMPTS times (update_command), so an update that hangs (an apt http method left waiting on a connection its proxy
closed, docs/lab.md) fails or retries instead of holding the run without end; the module then runs without
`update_cache`.
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
_AGE_MARK = "gpuforge-apt-age="
# apt's module judges the lists' age by this stamp when it exists, else by the lists directory.
_LISTS_AGE = ("echo " + _AGE_MARK + "$(( $(date +%s) - $(stat -c %Y /var/lib/apt/periodic/update-success-stamp "
              "2>/dev/null || stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0) ))")


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


def at_candidate(wanted: list[str], policy: str) -> tuple[bool, list[str]]:
    """Whether `apt-cache policy` shows every wanted package installed at its candidate; the names that are not."""
    versions: dict[str, dict[str, str]] = {}
    current = None
    for line in policy.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = versions.setdefault(line[:-1], {})
        elif current is not None and line.strip().startswith(("Installed:", "Candidate:")):
            key, _, value = line.strip().partition(":")
            current[key] = value.strip()
    behind = [n for n in wanted
              if versions.get(n, {}).get("Installed", "(none)") in ("(none)", "")
              or versions[n]["Installed"] != versions[n].get("Candidate")]
    return not behind, behind


UPDATE_TIMEOUT_S = 180
UPDATE_ATTEMPTS = 3


def update_command(timeout_s: int = UPDATE_TIMEOUT_S, attempts: int = UPDATE_ATTEMPTS, pause_s: int = 5) -> str:
    """apt-get update, each attempt bounded by `timeout`; what each failed attempt did goes to stderr, with the
    last attempt's own output when all fail."""
    return (f"for attempt in $(seq {attempts}); do "
            f"out=$(timeout -k 10 {timeout_s} apt-get update -q -o DPkg::Lock::Timeout=60 2>&1) && exit 0; "
            f"rc=$?; echo \"apt-get update, attempt $attempt of {attempts}: "
            f"$([ $rc = 124 ] && echo 'no answer in {timeout_s} s' || echo exit $rc)\" >&2; "
            f"sleep {pause_s}; done; printf '%s\\n' \"$out\" | tail -n 5 >&2; exit 1")


def update_needed(args: dict, lists: str | None, age: str) -> bool:
    """Whether apt's module would refresh the lists for these arguments: update_cache, and no lists at all, no
    cache_valid_time, or lists older than it."""
    if not boolean(args.get("update_cache", False), strict=False):
        return False
    valid = int(args.get("cache_valid_time") or 0)
    return lists == "0" or not valid or not lists_fresh(age, valid)


def lists_fresh(age: str, valid: int) -> bool:
    """Whether apt's module would leave the lists alone: no cache_valid_time, or lists younger than it."""
    return not valid or (age.lstrip("-").isdigit() and int(age) <= valid)


def names_of(args: dict) -> list[str] | None:
    """The package specs when the fast path can judge the task, else None."""
    state = args.get("state", "present")
    if state not in (None, "present", "latest"):
        return None
    if state == "latest" and boolean(args.get("update_cache", False), strict=False) \
            and not args.get("cache_valid_time"):
        return None  # apt refreshes the lists every time, which may bring a newer candidate
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
    if state == "latest" and any(_NAME.match(n).group("version") for n in names):
        return None
    return names


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        names = names_of(args)
        latest = args.get("state") == "latest"
        query = ""
        if names:
            specs = " ".join(shlex.quote(_NAME.match(n).group("name")) for n in names)
            query = f"dpkg-query -W -f='${{Package}}\\t${{Version}}\\t${{db:Status-Abbrev}}\\n' -- {specs} 2>/dev/null; "
            if latest:
                query += f"LANG=C apt-cache policy -- {specs} 2>/dev/null; "
        probe = self._low_level_execute_command(
            f"{query}{_LISTS_AGE}; echo {_LISTS_MARK}$(ls /var/lib/apt/lists 2>/dev/null | grep -c '_Packages$')",
            sudoable=False)
        stdout = probe.get("stdout") or ""
        lines = stdout.splitlines()
        lists = next((ln[len(_LISTS_MARK):] for ln in lines if ln.startswith(_LISTS_MARK)), None)
        age = next((ln[len(_AGE_MARK):] for ln in lines if ln.startswith(_AGE_MARK)), "")
        if names and lists is not None:
            ok, missing = satisfied(names, lines)
            if ok and latest:
                ok, missing = at_candidate(names, stdout)
                if ok and not lists_fresh(age, int(args.get("cache_valid_time") or 0)):
                    ok = False  # apt would refresh the lists first, and a newer candidate may come with them
            if ok:
                state = "installed at the candidate version" if latest else "installed"
                result.update(changed=False, msg=f"{state}: {', '.join(names)}", packages=names)
                return result
            result["missing"] = missing
        if update_needed(args, lists, age) and not self._task.check_mode:
            update = self._low_level_execute_command(update_command(), sudoable=True)
            if update.get("rc") != 0:
                result.update(failed=True, msg="apt_present: the package lists could not be refreshed: "
                              + (update.get("stderr") or update.get("stdout") or "").strip()[-1500:])
                return result
            result["lists_refreshed"] = True
            args["update_cache"] = False  # just refreshed; the module installs from these lists
        elif boolean(args.get("update_cache", False), strict=False) and lists == "0":
            args["cache_valid_time"] = 0  # no lists at all: a fresh image; the directory's age means nothing
        result.update(self._execute_module(module_name="ansible.legacy.apt", module_args=args, task_vars=task_vars))
        return result
