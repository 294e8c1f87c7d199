"""gpuforge_linear, the project's strategy (ansible.cfg): Ansible's linear strategy with its forked workers at a
lower CPU priority than the main loop. Run by ansible-playbook on localhost: a task's command inherits its
worker's niceness, which `nice` (no arguments) prints."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT


def run(tmp_path, nice, prefix=()):
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "niceness", "ansible.builtin.command": "nice", "register": "n"},
        {"name": "show", "ansible.builtin.debug": {"msg": "NICENESS={{ n.stdout }}"}},
        {"name": "linear order holds: a second task after the first", "ansible.builtin.debug": {"msg": "second"}},
    ]}]))
    ansible = str(Path(sys.executable).parent / "ansible-playbook")
    env = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_CACHE_PLUGIN": "memory"}
    if nice is not None:
        env["GPUFORGE_WORKER_NICE"] = nice
    return subprocess.run([*prefix, ansible, "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(book)],
                          capture_output=True, text=True, cwd=tmp_path, env=env)


def niceness(out):
    line = next(ln for ln in out.stdout.splitlines() if "NICENESS=" in ln)
    return int(line.split("NICENESS=")[1].strip().strip("'\""))


def test_the_project_runs_its_strategy():
    cfg = (ROOT / "ansible.cfg").read_text()
    assert "\nstrategy = gpuforge_linear\n" in cfg and "\nstrategy_plugins = plugins/strategy\n" in cfg


def test_workers_run_10_above_the_main_loops_niceness_by_default(tmp_path):
    out = run(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert niceness(out) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    assert "second" in out.stdout


def test_the_increment_stops_at_19_without_privilege(tmp_path):
    out = run(tmp_path, "15", prefix=["nice", "-n", "9"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert niceness(out) == 19


def test_niceness_0_leaves_the_workers_at_the_main_loops(tmp_path):
    out = run(tmp_path, "0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert niceness(out) == os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.parametrize("bad", ["ten", "-5", "20"])
def test_a_bad_niceness_stops_the_run_with_what_is_allowed(tmp_path, bad):
    out = run(tmp_path, bad)
    assert out.returncode != 0
    assert "GPUFORGE_WORKER_NICE must be a whole number from 0 to 19" in out.stdout + out.stderr
