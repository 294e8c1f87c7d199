"""site.yml on the lab: a clean first run, a second run that changes nothing, check mode, preflight."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, ssh

from gpuforge.runner import run_playbook


@pytest.fixture(scope="module")
def first_run(lab, tmp_path_factory):
    rc, summary = run_playbook(ROOT, "site.yml", "inventories/lab", runs_dir=tmp_path_factory.mktemp("runs"))
    print(f"first site.yml run: {summary['duration_s']} s, {summary['tasks']} tasks")
    return rc, summary


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


def test_second_run_changes_nothing(lab, first_run, tmp_path):
    rc, summary = run_playbook(ROOT, "site.yml", "inventories/lab", runs_dir=tmp_path)
    print(f"no-op site.yml run: {summary['duration_s']} s")
    assert rc == 0, summary["failures"]
    changed = {h: s.get("changed", 0) for h, s in summary["hosts"].items() if s.get("changed")}
    changed_tasks = [t for t in summary["task_times"] if t.get("changed")]
    assert changed == {}, changed_tasks


def test_check_mode_changes_nothing(lab, first_run, tmp_path):
    rc, summary = run_playbook(ROOT, "site.yml", "inventories/lab", check=True, runs_dir=tmp_path)
    assert rc == 0, summary["failures"]
    assert all(not s.get("changed") for s in summary["hosts"].values()), summary["hosts"]


def test_common_state_on_the_hosts(lab, first_run):
    for host in lab_hosts(lab):
        out = ssh(lab, host, "cat /etc/apt/apt.conf.d/01gpuforge-proxy; systemctl is-enabled chrony; "
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
    rc, summary = run_playbook(ROOT, "site.yml", str(tmp_path / "inv"), runs_dir=tmp_path / "runs")
    assert rc != 0
    assert set(summary["hosts"]) == {"localhost"}
    assert any("serving group serving_b: hosts disagree on gpu_count (gpu-03=3, gpu-04=2)" in f["msg"]
               for f in summary["failures"]), summary["failures"]
