# -*- coding: utf-8 -*-
"""Action side of `config_files`: render on the controller, check every entry in one module run, then write
only the entries that differ through Ansible's own `copy` action and `file` module.

The template rendering follows ansible-core's `template` action (2.19, which pyproject pins): the same search
path, the same `ansible_managed`/`template_*` variables, the same Jinja options (trim_blocks on, "\\n" line
ends), so a file moved from a `template` task to `config_files` renders byte for byte the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile

from ansible import constants as C
from ansible._internal._templating import _template_vars
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template

_DEFAULT_KEYS = ("owner", "group", "mode", "directory_mode")
# Keys that are this plugin's, not copy's or file's.
_OWN_KEYS = ("src", "content", "state")
# Runs the module file's check() on the host with the entries, both read from stdin (docs/decisions.md).
_CHECK_SCRIPT = ("import json, sys; d = json.load(sys.stdin); g = {'__name__': 'config_files_check'}; "
                 "exec(compile(d['code'], 'config_files.py', 'exec'), g); print(json.dumps(g['check'](d['files'])))")


def host_python(task_vars: dict) -> str | None:
    """The host's Python when this run already knows it (set, or discovered by an earlier module run)."""
    python = task_vars.get("ansible_python_interpreter")
    if not python or str(python).startswith("auto"):
        python = (task_vars.get("ansible_facts") or {}).get("discovered_interpreter_python")
    return str(python) if python else None


def run_host_script(action: ActionBase, python: str, script: str, payload: dict) -> dict:
    """Run a stdlib-only Python script on the host (through the connection, with become), the payload as JSON on
    its stdin; {"result": what it printed, as JSON} or {"failed": True, "msg": ...}. Also used by the gpu_facts
    action (plugins/action/gpu_facts.py)."""
    out = action._low_level_execute_command(f"{shlex.quote(python)} -c {shlex.quote(script)}", sudoable=True,
                                            in_data=json.dumps(payload).encode())
    try:
        if out.get("rc") != 0:
            raise ValueError(f"rc={out.get('rc')}")
        return {"result": json.loads(out.get("stdout") or "")}
    except ValueError as e:
        return {"failed": True, "msg": f"{python} on the host: {e}: {(out.get('stderr') or '').strip()[-500:]}"}


class ActionModule(ActionBase):

    # False, though entries that differ are copied: with True, ActionBase.run() makes a remote temporary directory
    # before every run (and the finally below removes it), two more commands on the host per task even when
    # nothing differs. The copy action that writes an entry makes its own when it needs one.
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("files", *_DEFAULT_KEYS))

    def _entries(self) -> list[dict]:
        files = self._task.args.get("files")
        if not isinstance(files, list) or not files:
            raise AnsibleActionFail("config_files: 'files' must be a non-empty list of entries")
        defaults = {k: self._task.args.get(k) for k in _DEFAULT_KEYS}
        entries = []
        for i, raw in enumerate(files):
            if not isinstance(raw, dict) or not raw.get("dest"):
                raise AnsibleActionFail(f"config_files: entry {i} needs a dest: {raw!r}")
            entry = dict(raw)
            if entry.get("state") not in (None, "directory", "absent"):
                raise AnsibleActionFail(f"config_files: {entry['dest']}: state may only be 'directory' or 'absent'")
            kinds = [k for k in ("src", "content") if k in entry] + ([entry["state"]] if entry.get("state") else [])
            if len(kinds) != 1:
                raise AnsibleActionFail(f"config_files: {entry['dest']} needs exactly one of src, content, "
                                        f"state=directory or state=absent (has {kinds or 'none'})")
            if "content" in entry and not isinstance(entry["content"], str):
                raise AnsibleActionFail(f"config_files: {entry['dest']}: content must be a string")
            entry["_kind"] = kinds[0]
            if kinds[0] == "absent":
                entries.append(entry)
                continue
            for key in ("owner", "group"):
                if entry.get(key) is None and defaults[key] is not None:
                    entry[key] = defaults[key]
            if entry.get("mode") is None:
                mode = defaults["directory_mode"] if kinds[0] == "directory" else defaults["mode"]
                if mode is not None:
                    entry["mode"] = mode
            if entry.get("mode") is not None:
                entry["mode"] = str(entry["mode"])
            entries.append(entry)
        return entries

    def _check(self, check: list[dict], task_vars: dict) -> dict:
        """Which entries differ on the host: the module file's check() as a plain script when the host's Python is
        known (one remote command, no AnsiballZ), else the module (which also discovers the interpreter)."""
        python = host_python(task_vars)
        if python is None:
            return {**self._execute_module(module_name="ansible.legacy.config_files", module_args={"files": check},
                                           task_vars=task_vars), "checked_by": "module"}
        path = self._shared_loader_obj.module_loader.find_plugin("ansible.legacy.config_files")
        with open(path, encoding="utf-8") as handle:
            out = run_host_script(self, python, _CHECK_SCRIPT, {"code": handle.read(), "files": check})
        return out if out.get("failed") else {"results": out["result"], "checked_by": python}

    def _render(self, src: str, dest: str, task_vars: dict) -> bytes:
        """Render one template as ansible-core's template action does."""
        try:
            source = self._find_needle("templates", src)
        except AnsibleError as e:
            raise AnsibleActionFail(to_text(e)) from e
        template_data = trust_as_template(self._loader.get_text_file_contents(source))
        searchpath = list(task_vars.get("ansible_search_path", []))
        searchpath.extend([self._loader._basedir, os.path.dirname(source)])
        searchpath = [p for base in searchpath for p in (os.path.join(base, "templates"), base)]
        temp_vars = task_vars.copy()
        temp_vars.update(_template_vars.generate_ansible_template_vars(
            path=src, fullpath=source, dest_path=dest,
            include_ansible_managed="ansible_managed" not in temp_vars,
        ))
        templar = self._templar.copy_with_new_env(searchpath=searchpath, available_variables=temp_vars)
        rendered = templar.template(template_data, escape_backslashes=False,
                                    overrides=dict(trim_blocks=True, lstrip_blocks=False, newline_sequence="\n"))
        return to_bytes(rendered if rendered is not None else "", errors="surrogate_or_strict")

    def _write(self, entry: dict, data: bytes | None, local_dir: str, task_vars: dict) -> dict:
        """Put one entry in place with copy (files) or file (directories, removals); returns their result."""
        args = {k: v for k, v in entry.items() if k not in _OWN_KEYS and not k.startswith("_")}
        if entry["_kind"] in ("directory", "absent"):
            args = {"path": args.pop("dest"), "state": entry["_kind"], **args}
            return self._execute_module(module_name="ansible.legacy.file", module_args=args, task_vars=task_vars)
        local = os.path.join(local_dir, hashlib.sha1(to_bytes(entry["dest"])).hexdigest())
        with open(local, "wb") as handle:
            handle.write(data)
        new_task = self._task.copy()
        new_task.args = {**args, "src": local}
        copy_action = self._shared_loader_obj.action_loader.get(
            "ansible.legacy.copy", task=new_task, connection=self._connection, play_context=self._play_context,
            loader=self._loader, templar=self._templar, shared_loader_obj=self._shared_loader_obj)
        return copy_action.run(task_vars=task_vars)

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        try:
            entries = self._entries()
            data = {}
            for entry in entries:
                if entry["_kind"] == "src":
                    data[entry["dest"]] = self._render(entry["src"], entry["dest"], task_vars)
                elif entry["_kind"] == "content":
                    data[entry["dest"]] = to_bytes(entry["content"], errors="surrogate_or_strict")
            check = [{"path": e["dest"], "state": e["_kind"] if e["_kind"] in ("directory", "absent") else "file",
                      "checksum": hashlib.sha1(data[e["dest"]]).hexdigest() if e["dest"] in data else None,
                      **{k: e[k] for k in ("owner", "group", "mode") if e.get(k) is not None}}
                     for e in entries]
            state = self._check(check, task_vars)
            if state.get("failed"):
                result.update(failed=True, msg=f"config_files: checking the entries failed: {state.get('msg')}")
                return result
            result["checked_by"] = state["checked_by"]
            reasons = {r["dest"]: r.get("reason") for r in state.get("results", [])}
            results, diffs, failures = [], [], []
            local_dir = tempfile.mkdtemp(dir=C.DEFAULT_LOCAL_TMP)
            try:
                for entry in entries:
                    dest = entry["dest"]
                    if reasons.get(dest) is None and dest in reasons:
                        results.append({"dest": dest, "changed": False})
                        continue
                    sub = self._write(entry, data.get(dest), local_dir, task_vars)
                    results.append({"dest": dest, "changed": bool(sub.get("changed")), "reason": reasons.get(dest),
                                    **({"msg": sub.get("msg")} if sub.get("failed") else {})})
                    if sub.get("failed"):
                        failures.append(f"{dest}: {sub.get('msg', 'failed')}")
                    diff = sub.get("diff")
                    if diff:
                        diffs.extend(diff if isinstance(diff, list) else [diff])
            finally:
                shutil.rmtree(to_bytes(local_dir, errors="surrogate_or_strict"), ignore_errors=True)
            result["results"] = results
            result["changed"] = any(r["changed"] for r in results)
            if diffs:
                result["diff"] = diffs
            if failures:
                result.update(failed=True, msg="config_files: " + "; ".join(failures))
            return result
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
