# -*- coding: utf-8 -*-
"""Action side of `gpu_facts`: the same scan as the module (module_utils/gpuforge_hw.gpu_scan), run as a plain
script on the host's Python once that Python is known, so a run's GPU reading costs the host no AnsiballZ
module run (~0.2 CPU-s each: docs/decisions.md, Performance). Before that Python is known, the module runs."""

from __future__ import annotations

import importlib.util
import os

from ansible.plugins.action import ActionBase
from ansible.plugins.loader import module_utils_loader

_spec = importlib.util.spec_from_file_location("gpuforge_action_config_files",
                                               os.path.join(os.path.dirname(__file__), "config_files.py"))
_config_files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_config_files)

_DEFAULTS = {"sysfs_root": "/sys", "nvidia_smi": "nvidia-smi", "proc_driver_version": "/proc/driver/nvidia/version"}
# nvidia-smi is looked up as AnsibleModule.get_bin_path does: PATH, then the sbin directories; a path is taken
# when it is an executable file, else it counts as not installed.
_SCAN_SCRIPT = (
    "import json, os, shutil, subprocess, sys\n"
    "d = json.load(sys.stdin); a = d['args']; g = {'__name__': 'gpuforge_hw'}\n"
    "exec(compile(d['code'], 'gpuforge_hw.py', 'exec'), g)\n"
    "def run(argv):\n"
    "    p = subprocess.run(argv, capture_output=True, text=True)\n"
    "    return p.returncode, p.stdout, p.stderr\n"
    "path = os.pathsep.join([os.environ.get('PATH', os.defpath), '/sbin', '/usr/sbin', '/usr/local/sbin'])\n"
    "smi = shutil.which(a['nvidia_smi'], path=path)\n"
    "try:\n"
    "    print(json.dumps({'facts': g['gpu_scan'](a['sysfs_root'], a['proc_driver_version'], smi, run)}))\n"
    "except ValueError as e:\n"
    "    print(json.dumps({'error': str(e)}))\n")


class ActionModule(ActionBase):

    _VALID_ARGS = frozenset(_DEFAULTS)

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        python = _config_files.host_python(task_vars)
        if python is None:
            return {**result, **self._execute_module(module_name="ansible.legacy.gpu_facts",
                                                     module_args=dict(self._task.args), task_vars=task_vars),
                    "gathered_by": "module"}
        path = module_utils_loader.find_plugin("gpuforge_hw", ".py")
        with open(path, encoding="utf-8") as handle:
            out = _config_files.run_host_script(self, python, _SCAN_SCRIPT,
                                                {"code": handle.read(), "args": {**_DEFAULTS, **self._task.args}})
        if out.get("failed"):
            return {**result, "failed": True, "msg": f"gpu_facts: {out['msg']}"}
        if "error" in out["result"]:
            return {**result, "failed": True, "msg": out["result"]["error"]}
        return {**result, "changed": False, "ansible_facts": {"gpuforge_gpu": out["result"]["facts"]},
                "gathered_by": python}
