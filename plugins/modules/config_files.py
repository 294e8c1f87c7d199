#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Write a role's configuration files and directories with one remote check for all of them."""

from __future__ import annotations

DOCUMENTATION = r"""
module: config_files
short_description: Templates, literal files and directories, checked on the host in one module run
description:
  - Writes a list of configuration files (from templates or literal content) and directories with their owner,
    group and mode. The action plugin renders every template on the controller, then runs this module once on
    the host to learn which entries are already in place (same SHA-1 of the content, regular file or
    directory, same owner, group and mode). Only the entries that differ go through Ansible's own C(copy)
    (rendered templates and content) or C(file) (directories, removals) steps, with their check mode, diff, C(validate)
    and C(backup).
  - Why - a C(template) task that changes nothing is still two module runs on the host (C(stat), then C(file)
    for the attributes), so a role's ten files cost twenty. A no-op re-run of site.yml spends much of its time
    on exactly those runs (docs/decisions.md, Performance).
  - The task reports changed when any entry changed, so its C(notify) fires for any of them; group entries by
    the handler they need.
  - Run directly (without the action plugin), the module only reports; it never writes.
options:
  files:
    description:
      - The entries. Each has C(dest) and one of C(src) (a template, searched like C(template)'s),
        C(content) (literal text), C(state=directory) or C(state=absent) (removed when present).
      - Optional C(owner), C(group), C(mode) (default to the task's), and any other option of C(template)
        (for C(src)), C(copy) (for C(content)) or C(file) (for directories and removals), such as
        C(validate) or C(backup).
    type: list
    elements: dict
    required: true
  owner:
    description: Owner of every entry that does not name its own.
    type: str
  group:
    description: Group of every entry that does not name its own.
    type: str
  mode:
    description: Mode of every file entry that does not name its own.
    type: str
  directory_mode:
    description: Mode of every directory entry that does not name its own.
    type: str
author: gpuforge
"""

EXAMPLES = r"""
- name: Write the kernel parameters and the systemd limits
  config_files:
    owner: root
    group: root
    mode: "0644"
    files:
      - {src: sysctl.conf.j2, dest: /etc/sysctl.d/90-gpuforge.conf}
      - {dest: /etc/systemd/system.conf.d, state: directory, mode: "0755"}
      - {content: "options nouveau modeset=0\n", dest: /etc/modprobe.d/gpuforge-nouveau.conf}
      - {dest: /etc/modprobe.d/old-gpuforge.conf, state: absent}
  notify: Re-execute systemd
"""

RETURN = r"""
results:
  description: One entry per file, in the order given, with C(dest), C(changed) and, when it differed, C(reason).
  returned: always
  type: list
  elements: dict
"""

import grp
import hashlib
import os
import pwd
import stat

# Everything but main() uses the standard library only: the action plugin sends this file to the host's Python
# as a plain script and calls check() (no AnsiballZ, whose module_utils cost a host ~0.2 CPU-s to compile on
# every run). main() is the module, which the action runs where the host's interpreter is not known yet.


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _ids_match(st: os.stat_result, owner: str | None, group: str | None) -> str | None:
    checks = (("owner", owner, "uid", st.st_uid, lambda n: pwd.getpwnam(n).pw_uid),
              ("group", group, "gid", st.st_gid, lambda n: grp.getgrnam(n).gr_gid))
    for what, name, kind, have, lookup in checks:
        if name is None:
            continue
        try:
            want = int(name) if str(name).isdigit() else lookup(name)
        except KeyError:
            return f"{what} {name} does not exist"
        if have != want:
            return f"{what} is {kind} {have}, not {name}"
    return None


def differs(entry: dict) -> str | None:
    """Why the entry is not in place on this host, or None when it is."""
    path = entry["path"]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None if entry.get("state") == "absent" else "absent"
    if entry.get("state") == "absent":
        return "present"
    want_dir = entry.get("state") == "directory"
    if want_dir and not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if not want_dir and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    mode = entry.get("mode")
    if mode is not None:
        try:
            want = int(str(mode), 8)
        except ValueError:
            return f"mode {mode} is not octal"  # symbolic modes: the file step decides
        if stat.S_IMODE(st.st_mode) != want:
            return f"mode is {stat.S_IMODE(st.st_mode):04o}, not {want:04o}"
    reason = _ids_match(st, entry.get("owner"), entry.get("group"))
    if reason:
        return reason
    if not want_dir and _sha1(path) != entry.get("checksum"):
        return "content differs"
    return None


def check(entries: list[dict]) -> list[dict]:
    """One result per entry, in order: dest, changed (always false here) and, when it differs, reason."""
    results = []
    for entry in entries:
        reason = differs(entry)
        results.append({"dest": entry["path"], "changed": False, **({"reason": reason} if reason else {})})
    return results


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="dict", required=True),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="str"),
            directory_mode=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    for entry in module.params["files"]:
        if "path" not in entry:
            module.fail_json(msg=f"config_files: an entry has no path: {entry!r} (run it through the action plugin)")
    module.exit_json(changed=False, results=check(module.params["files"]))


if __name__ == "__main__":
    main()
