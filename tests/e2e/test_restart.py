"""A restart is never lost: a run killed after it wrote vLLM's changed unit, before its handler restarted vLLM,
leaves the old process serving; the next run finds the unit newer than the process (common's restart_pending)
and restarts vLLM, which then serves with the new setting.

Runs on the provisioned lab and changes serving_a's head only. The setting stays at the test's value until the
next run of serving.yml without it (the upgrade tests run every group's serving roles again)."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, ssh

from gpuforge.runner import run_playbook

NEW_MAX_NUM_SEQS = 7  # the lab's inventory says 8


def vllm_cmdline(lab, head):
    out = ssh(lab, head, "tr '\\0' ' ' < /proc/$(systemctl show --property=MainPID --value vllm)/cmdline")
    assert out.returncode == 0, out.stderr
    return out.stdout


def unit_newer_than_process(lab, head):
    out = ssh(lab, head, "echo $(stat -c %Y /etc/systemd/system/vllm.service) "
                         "$(systemctl show --timestamp=unix --property=ActiveEnterTimestamp --value vllm | tr -d @)")
    mtime, started = (int(v) for v in out.stdout.split())
    return mtime > started


def kill_after_the_unit_is_written(lab, head, extra_vars):
    """serving.yml on the head, killed (SIGKILL, as a lost controller) as soon as it reports the unit changed."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_VAULT_PASSWORD_FILE": str(lab.vault_password), "PYTHONUNBUFFERED": "1"}
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    proc = subprocess.Popen([playbook, "playbooks/serving.yml", "-i", "inventories/lab", "--limit", f"{head},localhost",
                             "-e", extra_vars], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    task, seen = "", []
    try:
        for line in proc.stdout:
            seen.append(line.rstrip())
            if line.startswith("TASK ["):
                task = line
            elif "vllm_serve : Write the vLLM unit" in task and line.startswith(f"changed: [{head}]"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
        else:
            raise AssertionError("the run ended without changing the vLLM unit:\n" + "\n".join(seen[-40:]))
    finally:
        proc.wait(timeout=60)
    return seen


def test_a_restart_interrupted_by_a_killed_run_happens_on_the_next_run(lab, first_run, tmp_path):
    rc, summary = first_run
    assert rc == 0, summary["failures"]
    head = lab.topology.serving_groups["serving_a"][0]
    assert f"--max-num-seqs {NEW_MAX_NUM_SEQS} " not in vllm_cmdline(lab, head)

    seen = kill_after_the_unit_is_written(lab, head, f"vllm_max_num_seqs={NEW_MAX_NUM_SEQS}")
    unit = ssh(lab, head, "cat /etc/systemd/system/vllm.service").stdout
    # The unit puts each argument, double-quoted, on a line of its own: read them back as systemd does.
    block = unit.split("ExecStart=", 1)[1].split("\nRestart=", 1)[0]
    exec_start = " ".join(shlex.split(block.replace("\\\n", " "))) + " "
    assert f"--max-num-seqs {NEW_MAX_NUM_SEQS} " in exec_start, seen[-20:]
    # The interrupted state: the unit on disk is new, the process serving is the old one.
    assert f"--max-num-seqs {NEW_MAX_NUM_SEQS} " not in vllm_cmdline(lab, head)
    assert unit_newer_than_process(lab, head)

    started = time.monotonic()
    rc, summary = run_playbook(ROOT, "playbooks/serving.yml", "inventories/lab", limit=head,
                               extra_vars={"vllm_max_num_seqs": NEW_MAX_NUM_SEQS}, runs_dir=tmp_path)
    print(f"re-run after the killed run: {time.monotonic() - started:.0f} s")
    assert rc == 0, summary["failures"]
    restarts = [r for r in summary["host_results"] if r["host"] == head and r["task"].endswith("Restart vLLM")]
    assert restarts and restarts[0]["outcome"] == "changed", [r["task"] for r in summary["host_results"]]
    assert f"--max-num-seqs {NEW_MAX_NUM_SEQS} " in vllm_cmdline(lab, head)
    assert not unit_newer_than_process(lab, head)
