"""Day 2 on the lab: a rolling NVIDIA driver upgrade (playbooks/upgrade_drivers.yml) while a load generator sends
completions through HAProxy the whole time. Runs after site.yml provisioned the lab (driver 535.261.03, the
inventory's version) and after the serving tests; it leaves the lab at the target version.

One rollout pass covers the upgrade under load, a fault and the resume, so the tier pays for each group's
upgrade once:
1. 535.261.03 -> 535.309.01 (Debian bookworm-security) with a pending row remap on GPU 1 of gpu-03 (the second
   group's head; written into the lab's replayed nvidia-smi): the second group gets the new driver, and then
   the health gate refuses to put it back in rotation. The rollout stops, the first group is at the target
   and serving, the second is out of rotation and the report names the host, the check, the GPU and the value.
2. Without the fault, the same command resumes: the first group is skipped, the second goes through its
   steps again and back in rotation. Zero failed requests through both runs.
3. The same command again: every group skipped, nothing changed.
"""

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, ssh
from test_serving import complete, lb_url

from gpuforge.runner import run_playbook

START = "535.261.03-1"  # the lab inventory's nvidia_driver_version (Debian 12)
TARGET = "535.309.01-0+deb12u1"  # bookworm-security
GROUPS = {"serving_a": ["gpu-01", "gpu-02"], "serving_b": ["gpu-03", "gpu-04"]}
FAULTS = "/opt/gpuforge-lab/faults.json"  # the lab's replayed nvidia-smi (lab only)
REMAP_PENDING_ON_GPU_1 = '{"gpus": {"1": {"remapped_rows/remapped_row_pending": "Yes"}}}'


class Load(threading.Thread):
    """Completions through HAProxy from two clients until stopped; every non-200 answer is a failure."""

    def __init__(self, address, key, clients=2, pause=0.2):
        super().__init__(daemon=True)
        self.address, self.key, self.clients, self.pause = address, key, clients, pause
        self.ok, self.failures, self.stop_event = 0, [], threading.Event()
        self.lock = threading.Lock()

    def _client(self):
        while not self.stop_event.is_set():
            status, body = complete(self.address, self.key, max_tokens=4, timeout=120)
            with self.lock:
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append((time.strftime("%H:%M:%S"), status, str(body)[:200]))
            time.sleep(self.pause)

    def run(self):
        workers = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.join(timeout=180)


def installed(lab, host):
    out = ssh(lab, host, "dpkg-query -W -f '${Version}' nvidia-kernel-dkms")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def boot_marker(lab, host):
    return ssh(lab, host, "cat /run/gpuforge-boot-id").stdout.strip()


def upgrade(version, report_dir: Path, runs_dir: Path):
    started = time.monotonic()
    rc, summary = run_playbook(ROOT, "playbooks/upgrade_drivers.yml", "inventories/lab", runs_dir=runs_dir,
                               extra_vars={"nvidia_driver_version": version,
                                           "driver_upgrade_report_dir": str(report_dir)})
    (run,) = [p for p in report_dir.iterdir() if p.is_dir()]
    reports = {p.stem: json.loads(p.read_text()) for p in run.glob("*.json")}
    return rc, summary, reports, time.monotonic() - started


def lb_servers(lab):
    """{group: (operational state, admin state)} from HAProxy (op 2 = up; admin 8 = drain, 0 = ready)."""
    lb = next(h.name for h in lab.topology.hosts if h.kind == "lb")
    out = ssh(lab, lb, "echo 'show servers state serving' | socat stdio /run/haproxy/admin.sock")
    # The first line is the format version ("1"), then a "#" header, then one row per server.
    rows = [r for r in (ln.split() for ln in out.stdout.splitlines()) if len(r) > 6 and r[1] == "serving"]
    return {r[3]: (int(r[5]), int(r[6])) for r in rows}


@pytest.fixture(scope="module")
def api_key(lab, first_run):
    rc, summary = first_run
    assert rc == 0, summary["failures"]
    return lab.secrets()["vllm_api_key"]


def restaged(summary):
    """Tasks that resolved, copied or installed a wheel set: an upgrade brings back the Ray and vLLM site.yml
    installed (the same set inputs as the serving play), it never stages them anew."""
    steps = ("Resolve and download the set", "Copy the set", "Install the locked set")
    return [t for t in summary["task_times"] if t.get("changed") and t["task"].startswith(steps)]


def test_rolling_upgrade_stops_at_a_fault_and_a_rerun_completes_under_load(lab, api_key, tmp_path):
    hosts = [h for g in GROUPS.values() for h in g]
    assert {h: installed(lab, h) for h in hosts} == dict.fromkeys(hosts, START)
    markers = {h: boot_marker(lab, h) for h in hosts}
    # A GPU that needs a reset before its memory is safe: serving_b must not go back in rotation.
    ssh(lab, "gpu-03", f"echo '{REMAP_PENDING_ON_GPU_1}' > {FAULTS}")
    with Load(lb_url(lab), api_key) as load:
        try:
            rc, summary, reports, seconds = upgrade(TARGET, tmp_path / "first", tmp_path / "runs")
            print(f"\nrolling upgrade {START} -> {TARGET} with a pending row remap on gpu-03: {seconds:.0f} s, "
                  f"rc {rc}; requests answered so far {load.ok}, failed {len(load.failures)}")
            assert rc != 0
            assert restaged(summary) == []
            # The first group moved to the target and serves; the second has the new driver but is out of
            # rotation, refused by the gate, and each of its hosts' reports names gpu-03's GPU 1 and the check.
            assert [installed(lab, h) for h in GROUPS["serving_a"]] == [TARGET, TARGET]
            assert all(reports[h]["status"] == "upgraded" for h in GROUPS["serving_a"]), reports
            assert reports[GROUPS["serving_a"][0]]["lb"]["errors_5xx"] == 0
            for h in GROUPS["serving_b"]:
                assert reports[h]["status"] == "failed", reports[h]
                assert reports[h]["group"] == "serving_b"
                assert "health check failed" in reports[h]["failed_task"], reports[h]
                assert "gpu-03: memory_pending_remap [GPU 1]: pending (want none)" in reports[h]["error"], reports[h]
            print(f"  reported: {reports['gpu-03']['error'][:300]}")
            servers = lb_servers(lab)
            assert servers["serving_a"] == (2, 0), servers
            assert servers["serving_b"][1] & 8, servers  # still drained: out of rotation
            assert complete(lb_url(lab), api_key)[0] == 200
        finally:
            ssh(lab, "gpu-03", f"echo '{{}}' > {FAULTS}")

        rc, summary, reports, seconds = upgrade(TARGET, tmp_path / "second", tmp_path / "runs")
        time.sleep(5)  # a few more requests after the last group is back
    print(f"re-run without the fault: {seconds:.0f} s; requests answered {load.ok}, failed {len(load.failures)}")
    head = reports[GROUPS["serving_b"][0]]
    print(f"  serving_b: {head['before']} -> {head['after']} in {head['seconds']} s; through HAProxy during its "
          f"window {head['lb']['requests']} requests, {head['lb']['errors_5xx']} failed")
    assert rc == 0, summary["failures"]
    assert restaged(summary) == []
    assert {h: reports[h]["status"] for h in GROUPS["serving_a"]} == dict.fromkeys(GROUPS["serving_a"], "skipped")
    assert {h: reports[h]["status"] for h in GROUPS["serving_b"]} == dict.fromkeys(GROUPS["serving_b"], "upgraded")
    assert head["lb"]["errors_5xx"] == 0
    assert {h: installed(lab, h) for h in hosts} == dict.fromkeys(hosts, TARGET)
    assert load.failures == [], load.failures
    assert load.ok > 20
    # Each host rebooted (the lab's boot marker changed) and every group is back in rotation.
    assert all(boot_marker(lab, h) != markers[h] for h in hosts)
    assert lb_servers(lab) == {g: (2, 0) for g in GROUPS}


def test_rerun_at_the_target_changes_nothing(lab, api_key, tmp_path):
    rc, summary, reports, seconds = upgrade(TARGET, tmp_path / "reports", tmp_path / "runs")
    print(f"\nre-run at {TARGET}: {seconds:.0f} s")
    assert rc == 0, summary["failures"]
    changed = [t for t in summary["task_times"] if t.get("changed")]
    assert changed == [], changed
    assert {h: r["status"] for h, r in reports.items() if h != "summary"} == {
        h: "skipped" for g in GROUPS.values() for h in g}


def test_site_yml_with_the_old_driver_stops_before_changing_a_serving_host(lab, api_key, tmp_path):
    """The inventory still names the start driver: site.yml would put it back on every serving host at once
    (and reboot them all). It stops at the driver role, naming upgrade-drivers, and changes nothing."""
    rc, summary = run_playbook(ROOT, "site.yml", "inventories/lab", limit="gpu-01", tags="nvidia_driver",
                               runs_dir=tmp_path)
    assert rc != 0
    msgs = [f["msg"] for f in summary["failures"]]
    assert any(f"would change it to {START}" in m and f"gpuforge upgrade-drivers -i INVENTORY --version {START}" in m
               for m in msgs), msgs
    assert [f["host"] for f in summary["failures"]] == ["gpu-01"]
    assert [t for t in summary["task_times"] if t.get("changed")] == []
    assert installed(lab, "gpu-01") == TARGET
