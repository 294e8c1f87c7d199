"""The cluster lock on the lab (playbooks/lock.yml, gpuforge.lock): a second run while one holds the lock is
refused naming the holder, a lock of another controller stays until broken, and a run releases its lock."""

import subprocess
import sys
import time

from conftest import ROOT, ssh

from gpuforge import lock

LOCK = "/var/lib/gpuforge/cluster.lock"
LOCK_HOST = "lb-01"  # the first lb host keeps the lock


def gpuforge(*args, wait=True):
    cmd = [sys.executable, "-m", "gpuforge.cli", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def lock_content(lab):
    out = ssh(lab, LOCK_HOST, f"cat {LOCK} 2>/dev/null || true")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_second_run_is_refused_while_the_first_holds_the_lock(lab):
    assert lock_content(lab) == ""
    first = gpuforge("provision", "-i", "inventories/lab", "--playbook", "playbooks/preflight.yml", wait=False)
    try:
        deadline = time.monotonic() + 120
        while not lock_content(lab) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        held = lock_content(lab)
        assert f'"pid": {first.pid}' in held, (held, first.poll())
        second = gpuforge("provision", "-i", "inventories/lab", "--playbook", "playbooks/preflight.yml")
        assert second.returncode == 3, second.stdout + second.stderr
        assert "the cluster is locked by run " in second.stderr and f"(pid {first.pid})" in second.stderr, \
            second.stderr
        assert "gpuforge provision playbooks/preflight.yml" in second.stderr
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:] + err[-3000:]
    assert "cluster lock taken" in out and "cluster lock released" in out, out[-3000:]
    assert lock_content(lab) == ""


def test_a_lock_from_another_controller_stays_until_it_is_broken(lab):
    other = lock.new_owner("gpuforge upgrade-drivers --version 535.261.03-1")
    other.update(controller="controller-2.example", user="alice", pid=4242)
    rc, msgs = lock.act(ROOT, "inventories/lab", "take", other)
    assert rc == 0, msgs
    try:
        status = gpuforge("lock", "-i", "inventories/lab")
        assert status.returncode == 3, status.stdout + status.stderr
        assert f"held by run {other['run_id']} by alice@controller-2.example (pid 4242)" in status.stdout
        refused = gpuforge("upgrade-drivers", "-i", "inventories/lab", "--version", "535.261.03-1")
        assert refused.returncode == 3 and "alice@controller-2.example" in refused.stderr, refused.stderr
        # Another run's release leaves it alone.
        rc, _ = lock.act(ROOT, "inventories/lab", "release", lock.new_owner("gpuforge provision"))
        assert rc == 0 and other["run_id"] in lock_content(lab)
    finally:
        broken = gpuforge("lock", "-i", "inventories/lab", "--break")
    assert broken.returncode == 0, broken.stdout + broken.stderr
    assert lock_content(lab) == ""
    assert gpuforge("lock", "-i", "inventories/lab").returncode == 0
