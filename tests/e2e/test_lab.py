"""The lab itself: hosts that behave like servers (systemd, sshd, a kernel image, two networks)."""

import subprocess
import sys
import time

from conftest import ROOT, ssh


def container_ids():
    out = subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter", "label=gpuforge.lab=1"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def test_every_host_runs_systemd_and_answers_ssh(lab):
    rows = lab.status()
    assert [r["container"] for r in rows] == [h.container for h in sorted(lab.topology.hosts, key=lambda h: h.name)]
    for r in rows:
        assert r["state"] == "running" and r["systemd"] == "running", r
    for h in lab.topology.hosts:
        out = ssh(lab, h.name, "hostname; ps -p 1 -o comm=")
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [h.name, "systemd"]


def test_up_again_reuses_the_running_hosts(lab):
    before = container_ids()
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "gpuforge.cli", "lab", "up"], check=True, cwd=ROOT)
    print(f"second `lab up`: {time.monotonic() - started:.1f} s")
    assert container_ids() == before


def test_hosts_have_a_kernel_image_initramfs_and_the_controller_ca(lab):
    out = ssh(lab, "gpu-01", "ls /boot/vmlinuz-* /boot/initrd.img-* && lsinitramfs /boot/initrd.img-* | grep -c '\\.ko'"
                             " && test -s /usr/local/share/ca-certificates/gpuforge-controller.crt")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 0  # the initramfs really holds kernel modules


def test_fabric_network_connects_hosts(lab):
    out = ssh(lab, "gpu-01", "ip -4 -o addr show eth1")
    assert "172.28.251.11/24" in out.stdout
    out = ssh(lab, "gpu-01", "ping -c 1 -W 2 172.28.251.12")
    assert out.returncode == 0, out.stdout + out.stderr


def test_restart_changes_the_boot_marker_but_not_the_kernel_boot_id(lab):
    """Why the lab has its own boot marker: a container restart keeps the kernel's boot_id."""
    read = "cat /run/gpuforge-boot-id /proc/sys/kernel/random/boot_id"
    before = ssh(lab, "gpu-04", read).stdout.split()
    subprocess.run(["docker", "restart", "gpuforge-gpu-04"], check=True, capture_output=True)
    lab.wait_ready()
    after = ssh(lab, "gpu-04", read).stdout.split()
    assert len(before) == len(after) == 2
    assert before[0] != after[0]
    assert before[1] == after[1]
