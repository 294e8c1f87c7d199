"""site.yml on the lab: a clean first run, a second run that changes nothing, check mode, preflight."""

import json
from pathlib import Path

import yaml
from conftest import ROOT, ssh

from gpuforge.runner import run_playbook


def lab_hosts(lab):
    return sorted(h.name for h in lab.topology.hosts)


def test_site_provisions_every_lab_host(lab, first_run):
    rc, summary = first_run
    assert rc == 0, summary["failures"]
    assert sorted(h for h in summary["hosts"] if h != "localhost") == lab_hosts(lab)
    for host, stats in summary["hosts"].items():
        assert stats.get("failed", 0) == 0 and stats.get("unreachable", 0) == 0, (host, stats)
    saved = json.loads((Path(summary["artifacts"]).parent / "summary.json").read_text())
    assert saved["rc"] == 0 and saved["hosts"] == summary["hosts"]


def test_site_prints_no_deprecation_warning(first_run):
    """Ansible's own strategy and modules only: the whole site.yml output has no DEPRECATION WARNING."""
    _, summary = first_run
    outputs = list(Path(summary["artifacts"]).glob("*/stdout"))
    assert outputs, summary["artifacts"]
    text = "\n".join(p.read_text() for p in outputs)
    assert "PLAY RECAP" in text
    assert "DEPRECATION WARNING" not in text, [line for line in text.splitlines() if "DEPRECATION" in line]


def test_second_run_changes_nothing(lab, first_run, tmp_path):
    rc, summary = run_playbook(ROOT, "site.yml", "inventories/lab", runs_dir=tmp_path)
    print(f"no-op site.yml run: {summary['duration_s']} s")
    assert rc == 0, summary["failures"]
    changed = {h: s.get("changed", 0) for h, s in summary["hosts"].items() if s.get("changed")}
    # Each host and task that reported a change, so a failure names what is not idempotent.
    changed_tasks = [f"{r['host']}: {r['play']} / {r['task']}" for r in summary["host_results"]
                     if r["outcome"] == "changed"]
    assert changed == {}, changed_tasks
    assert changed_tasks == []


def test_check_mode_changes_nothing(lab, first_run, tmp_path):
    rc, summary = run_playbook(ROOT, "site.yml", "inventories/lab", check=True, runs_dir=tmp_path)
    assert rc == 0, summary["failures"]
    assert all(not s.get("changed") for s in summary["hosts"].values()), summary["hosts"]


def test_common_state_on_the_hosts(lab, first_run):
    for host in lab_hosts(lab):
        out = ssh(lab, host, "cat /etc/apt/apt.conf.d/01gpuforge; systemctl is-enabled chrony; "
                             "systemctl show -p DefaultLimitMEMLOCK; dpkg -s jq | grep '^Status'; "
                             "systemctl is-system-running")
        assert out.returncode == 0, (host, out.stderr)
        assert f'"{lab.apt_proxy}"' in out.stdout
        assert "enabled" in out.stdout
        assert "DefaultLimitMEMLOCK=" in out.stdout
        assert "Status: install ok installed" in out.stdout
        assert out.stdout.strip().endswith("running")


def test_bad_lab_inventory_is_refused_before_any_host(lab, tmp_path):
    """Preflight on the real lab inventory with one mistake: nothing reaches a host."""
    inv = yaml.safe_load((ROOT / "inventories/lab/hosts.yml").read_text())
    inv["all"]["children"]["gpu_nodes"]["hosts"]["gpu-03"]["gpu_count"] = 3
    (tmp_path / "inv").mkdir()
    (tmp_path / "inv" / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "inv" / "group_vars").symlink_to(ROOT / "inventories/lab/group_vars")
    rc, summary = run_playbook(ROOT, "site.yml", str(tmp_path / "inv"), runs_dir=tmp_path / "runs",
                               vault_password_file=lab.vault_password)
    assert rc != 0
    assert set(summary["hosts"]) == {"localhost"}
    assert any("serving group serving_b: hosts disagree on gpu_count (gpu-03=3, gpu-04=2)" in f["msg"]
               for f in summary["failures"]), summary["failures"]


def test_driver_pinned_and_nouveau_blacklisted_inside_the_initramfs(lab, first_run):
    """Issue acceptance: every lab GPU host has driver 535.261.03 and the blacklist inside its initramfs."""
    from gpuforge.lab import LAB_DRIVER_VERSIONS

    want = LAB_DRIVER_VERSIONS[lab.topology.distro]
    for h in (h for h in lab.topology.hosts if h.kind == "gpu"):
        out = ssh(lab, h.name, "dpkg-query -W -f '${Version}\\n' nvidia-kernel-dkms nvidia-smi libcuda1; "
                               "for i in /boot/initrd.img-*; do "
                               "lsinitramfs $i | grep -x etc/modprobe.d/blacklist-nouveau.conf; done")
        assert out.returncode == 0, (h.name, out.stderr)
        lines = out.stdout.split()
        assert lines[:3] == [want] * 3, (h.name, lines)
        assert "etc/modprobe.d/blacklist-nouveau.conf" in lines[3:], (h.name, lines)


def test_host_stack_on_every_gpu_host(lab, first_run):
    """NCCL talks over the fabric interface; the RDMA tools and the CUDA runtime are installed."""
    for h in (h for h in lab.topology.hosts if h.kind == "gpu"):
        out = ssh(lab, h.name, "cat /etc/nccl.conf; ibstat -V >/dev/null && echo ibstat-ok; "
                               "dpkg-query -W -f '${Status}\\n' perftest rdma-core; "
                               "ls /usr/lib/x86_64-linux-gnu/libcudart.so.*")
        assert out.returncode == 0, (h.name, out.stderr)
        assert "NCCL_SOCKET_IFNAME=eth1" in out.stdout.splitlines()
        assert "ibstat-ok" in out.stdout
        assert out.stdout.count("install ok installed") == 2
        assert "libcudart.so." in out.stdout
