"""GPU health checks (gpuforge.health) on the recorded real nvidia-smi outputs and kernel-log XID lines."""

import copy
import json
import sys

from conftest import FIXTURES, ROOT

from gpuforge import health

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
import gpuforge_hw as hw  # noqa: E402

SMI = FIXTURES / "nvidia-smi"
H100 = hw.parse_nvidia_smi_xml((SMI / "h100-hgx-8gpu.xml").read_text())


def failing(checks):
    return sorted((c["check"], c["gpu"]) for c in checks if c["status"] == "fail")


def test_clock_reasons_and_temperature_are_parsed_from_both_driver_generations():
    assert {tuple(g["clock_event_reasons_active"]) for g in H100["gpus"]} == {("gpu_idle",)}
    assert all(20 < g["temperature_c"] < 90 for g in H100["gpus"])
    (a100,) = hw.parse_nvidia_smi_xml((SMI / "a100-mig-enabled.xml").read_text())["gpus"]
    assert a100["clock_event_reasons_active"] == []
    (v100,) = hw.parse_nvidia_smi_xml((SMI / "v100-ecc-retired-pages.xml").read_text())["gpus"]  # driver 410
    assert v100["clock_event_reasons_active"] == ["gpu_idle"]


def test_xid_lines_are_read_from_a_kernel_log_with_both_address_forms():
    log = ("[ 5.1] nvidia: loading out-of-tree module\n"
           "[812.4] NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"
           "Dec 07 10:00:01 gpu-02 kernel: NVRM: Xid (0000:64:00): 13, Graphics SM Warp Exception\n"
           "NVRM: Xid (PCI:0000:9A:00.0): 48, An uncorrectable double bit error (DBE) has been detected\n")
    assert hw.parse_xids(log) == [
        {"pci": "0000:53:00", "xid": 79, "text": "pid='<unknown>', name=<unknown>, GPU has fallen off the bus."},
        {"pci": "0000:64:00", "xid": 13, "text": "Graphics SM Warp Exception"},
        {"pci": "0000:9a:00", "xid": 48, "text": "An uncorrectable double bit error (DBE) has been detected"},
    ]
    assert hw.parse_xids("") == [] and hw.parse_xids(None) == []


def test_a_healthy_h100_host_passes_every_check():
    checks = health.gpu_checks(H100, gpu_count=8, driver_version="580.105.08-0ubuntu1", driver_ok=True,
                               fabricmanager_active=True)
    assert failing(checks) == [] and health.worst(checks) == "pass"
    names = {c["check"] for c in checks}
    assert {"gpu_count", "driver_version", "fabricmanager", "persistence_mode", "memory_pending_remap",
            "memory_remap_failure", "remapped_rows_uncorrectable", "ecc_volatile_uncorrectable", "clock_slowdown",
            "pcie_width", "pcie_gen", "xid_fatal"} == names
    assert all(c["fix"] == "" for c in checks)


def test_each_fault_fails_exactly_its_check_on_its_gpu():
    facts = copy.deepcopy(H100)
    g1, g3 = facts["gpus"][1], facts["gpus"][3]
    g1["remapped_rows"]["pending"] = True
    g3["clock_event_reasons_active"] = ["hw_thermal_slowdown"]
    xids = hw.gpu_xids([{"pci": hw.pci_key(facts["gpus"][5]["pci_bus_id"]), "xid": 79, "text": "fallen off the bus"},
                        {"pci": hw.pci_key(facts["gpus"][6]["pci_bus_id"]), "xid": 13, "text": "not fatal"}],
                       facts["gpus"])
    checks = health.gpu_checks(facts, gpu_count=8, xids=xids)
    assert failing(checks) == [("clock_slowdown", g3["index"]), ("memory_pending_remap", g1["index"]),
                               ("xid_fatal", facts["gpus"][5]["index"])]
    xid = next(c for c in checks if c["check"] == "xid_fatal" and c["status"] == "fail")
    assert xid["observed"] == "79" and "journalctl -k" in xid["fix"]


def test_a_missing_gpu_the_wrong_driver_and_a_stopped_fabricmanager_fail():
    facts = copy.deepcopy(H100)
    lost = facts["gpus"].pop()
    xids = hw.gpu_xids([{"pci": hw.pci_key(lost["pci_bus_id"]), "xid": 79, "text": ""}], facts["gpus"])
    checks = health.gpu_checks(facts, gpu_count=8, driver_version="550", fabricmanager_active=False, xids=xids,
                               driver_ok=hw.driver_matches(facts["driver_version"], "550"))
    assert failing(checks) == [("driver_version", None), ("fabricmanager", None), ("gpu_count", None),
                               ("xid_fatal", hw.pci_key(lost["pci_bus_id"]))]
    count = next(c for c in checks if c["check"] == "gpu_count")
    assert (count["observed"], count["threshold"]) == (7, 8)


def test_retired_pages_and_ecc_on_the_v100_record_fail():
    facts = hw.parse_nvidia_smi_xml((SMI / "v100-ecc-retired-pages.xml").read_text())
    assert failing(health.gpu_checks(facts, gpu_count=1)) == [("ecc_volatile_uncorrectable", 0),
                                                               ("memory_pending_remap", 0)]


def test_a_narrow_pcie_link_fails_and_an_idle_gpus_lower_generation_only_warns():
    facts = hw.parse_nvidia_smi_xml((SMI / "a10g-remapped-rows.xml").read_text())  # x8 of x16, gen1 of 4, idle
    checks = {c["check"]: c for c in health.gpu_checks(facts, gpu_count=1)}
    assert (checks["pcie_width"]["status"], checks["pcie_width"]["observed"]) == ("fail", "x8")
    assert (checks["pcie_gen"]["status"], checks["pcie_gen"]["observed"]) == ("warn", "gen1")
    facts["gpus"][0]["clock_event_reasons_active"] = []
    busy = {c["check"]: c for c in health.gpu_checks(facts, gpu_count=1)}
    assert busy["pcie_gen"]["status"] == "fail"


def test_thresholds_and_driver_pins():
    facts = copy.deepcopy(H100)
    facts["gpus"][0]["remapped_rows"]["uncorrectable"] = 513
    assert failing(health.gpu_checks(facts, gpu_count=8)) == [("remapped_rows_uncorrectable", 0)]
    assert failing(health.gpu_checks(facts, gpu_count=8, thresholds={"remapped_rows_uncorrectable_max": 600})) == []
    assert hw.driver_matches("580.105.08", "580") and hw.driver_matches("535.261.03", "535.261.03-1")
    assert not hw.driver_matches("535.247.01", "535.261.03-1") and not hw.driver_matches(None, "580")
    assert health.gpu_checks(None, gpu_count=8)[0]["status"] == "fail"


def port_tree(root, dev, n, state="4: ACTIVE", phys="5: LinkUp", rate="400 Gb/sec (4X NDR)", **counters):
    d = root / "class" / "infiniband" / dev / "ports" / str(n)
    (d / "counters").mkdir(parents=True, exist_ok=True)
    for name, value in {"state": state, "phys_state": phys, "rate": rate, "link_layer": "InfiniBand"}.items():
        (d / name).write_text(value + "\n")
    for name in hw.IB_ERROR_COUNTERS:
        (d / "counters" / name).write_text(f"{counters.get(name, 0)}\n")


def test_fabric_ports_up_at_rate_with_steady_counters_pass_and_each_fault_fails(tmp_path):
    port_tree(tmp_path, "mlx5_0", 1, symbol_error=12)  # old errors, not rising: history
    port_tree(tmp_path, "mlx5_1", 1, rate="200 Gb/sec (4X HDR)")
    port_tree(tmp_path, "mlx5_2", 1, state="1: DOWN", phys="3: Disabled")  # not cabled on purpose
    port_tree(tmp_path, "mlx5_3", 1, link_downed=1)
    first = hw.ib_sysfs_ports(str(tmp_path))
    assert first["mlx5_0"]["ports"][1]["counters"]["symbol_error"] == 12
    port_tree(tmp_path, "mlx5_3", 1, link_downed=3, symbol_error=40)
    second = hw.ib_sysfs_ports(str(tmp_path))
    checks = health.fabric_checks(first, second, expected_rate_gbps=400, unused_ports=["mlx5_2/1"])
    assert failing(checks) == [("port_errors_rising", "mlx5_3/1"), ("port_rate", "mlx5_1/1")]
    rising = next(c for c in checks if c["check"] == "port_errors_rising" and c["status"] == "fail")
    assert rising["observed"] == "link_downed +2, symbol_error +40"
    assert not any(c["gpu"] == "mlx5_2/1" for c in checks)
    down = health.fabric_checks(first, second, expected_rate_gbps=400)
    assert ("port_state", "mlx5_2/1") in failing(down)
    assert failing(health.fabric_checks(first, expected_rate_gbps=0)) == [("port_state", "mlx5_2/1")]


def test_the_report_puts_failing_hosts_first_and_the_exit_code_follows_failures_not_warnings():
    faulty = copy.deepcopy(H100)
    faulty["gpus"][2]["remapped_rows"]["failure"] = True
    a10g = hw.parse_nvidia_smi_xml((SMI / "a10g-remapped-rows.xml").read_text())
    a10g["gpus"][0]["pcie"]["width_current"] = 16  # with persistence on, only the idle generation warning is left
    a10g["gpus"][0]["persistence_mode"] = True
    results = {"gpu-01": health.gpu_checks(H100, 8), "gpu-02": health.gpu_checks(faulty, 8),
               "gpu-03": health.gpu_checks(a10g, 1)}
    text = health.report(results).splitlines()
    assert [ln.split(":")[0] for ln in text if not ln.startswith(" ")][:3] == ["gpu-02", "gpu-03", "gpu-01"]
    assert text[0] == f"gpu-02: FAIL ({len(results['gpu-02']) - 1} of {len(results['gpu-02'])} checks passed)"
    assert text[1] == "  FAIL  memory_remap_failure [2]: failed (want none)"
    assert text[2].startswith("        fix: row remapping failed")
    assert any(ln.startswith("  WARN  pcie_gen [0]: gen1 (want gen4)") for ln in text)
    assert text[-1] == "3 hosts, 1 failing"
    assert health.exit_code(results) == 1
    del results["gpu-02"]
    assert health.exit_code(results) == 0


def fake_run(results, stats=None, failures=()):
    """A stand-in for runner.run_playbook that writes the report playbooks/health.yml would write."""
    def run(root, playbook, inventory, *, extra_vars=None, **kwargs):
        assert playbook == "playbooks/health.yml"
        if results is not None:
            with open(extra_vars["health_report_path"], "w") as f:
                json.dump(results, f)
        return (0 if results is not None else 2), {"hosts": stats or {}, "failures": list(failures)}
    return run


def test_the_health_command_prints_the_report_and_exits_by_the_checks(monkeypatch, capsys):
    from gpuforge import cli, runner

    ok = {"gpu-01": health.gpu_checks(H100, 8)}
    monkeypatch.setattr(runner, "run_playbook", fake_run(ok, {"gpu-01": {"ok": 9}, "gpu-02": {"unreachable": 1}}))
    assert cli.main(["health", "-i", "inventories/prod"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "gpu-02: FAIL (0 of 1 checks passed)" and out[1] == \
        "  FAIL  reachable: unreachable (want reachable over SSH)"
    assert out[-1] == "2 hosts, 1 failing"

    monkeypatch.setattr(runner, "run_playbook", fake_run(ok))
    assert cli.main(["health", "-i", "inventories/prod", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ok


def test_the_health_command_exits_2_when_the_checks_did_not_run(monkeypatch, capsys):
    from gpuforge import cli, runner

    failure = {"host": "localhost", "msg": "host gpu-01: variable gpu_count is not set"}
    monkeypatch.setattr(runner, "run_playbook", fake_run(None, failures=[failure]))
    assert cli.main(["health", "-i", "inventories/prod"]) == 2
    err = capsys.readouterr().err
    assert "localhost: host gpu-01: variable gpu_count is not set" in err and "the checks did not run" in err


def test_serving_and_load_balancer_checks_name_the_missing_host_and_the_group_out_of_rotation():
    nodes = [{"node_ip": "10.10.0.11", "resources_total": {"GPU": 8.0}},
             {"node_ip": "10.10.0.12", "resources_total": {"GPU": 4.0}}]
    expected = {"hgx-01": "10.10.0.11", "hgx-02": "10.10.0.12", "hgx-03": "10.10.0.13"}
    checks = health.serving_checks("serving_a", nodes, expected, 8, 200, 0.042)
    assert failing(checks) == [("ray_node", "hgx-02"), ("ray_node", "hgx-03")]
    assert [c["observed"] for c in checks] == ["alive, 8 GPUs", "alive, 4 GPUs", "not alive", "HTTP 200 in 0.04 s"]
    assert failing(health.serving_checks("serving_a", [], {}, 8, 0)) == [("vllm_completion", "serving_a")]
    servers = {"serving_a": {"up": True, "admin": "ready"}, "serving_b": {"up": True, "admin": "drain"}}
    lb = health.lb_checks(servers, ["serving_a", "serving_b", "serving_c"], 200)
    assert failing(lb) == [("lb_group", "serving_b"), ("lb_group", "serving_c")]
    assert failing(health.lb_checks(servers, ["serving_a"], 503)) == [("endpoint", None)]


def test_the_upgrade_gates_message_names_each_failed_checks_host_gpu_and_value():
    facts = copy.deepcopy(H100)
    facts["gpus"][1]["remapped_rows"]["pending"] = True
    results = {"gpu-04": health.gpu_checks(H100, gpu_count=8),
               "gpu-03": health.gpu_checks(facts, gpu_count=8)
               + health.serving_checks("serving_b", [], {"gpu-03": "10.0.0.3"}, 8, 200)}
    assert health.failures(results) == [
        "gpu-03: memory_pending_remap [GPU 1]: pending (want none)",
        "gpu-03: ray_node [gpu-03]: not alive (want alive, 8 GPUs)",
    ]
    assert health.failures({"gpu-04": results["gpu-04"]}) == []


# `dcgmi diag -r 1`'s result table, cut from a real run on an 8-GPU H200 host with persistence mode off (a public
# README's recording; its long "Error" text wraps over continuation rows, which must not count as tests).
DCGM_DIAG = """Successfully ran diagnostic for group.
+---------------------------+------------------------------------------------+
| Diagnostic                | Result                                         |
+===========================+================================================+
|-----  Metadata  ----------+------------------------------------------------|
| DCGM Version              | 3.1.8                                          |
| Driver Version Detected   | 550.127.08                                     |
|-----  Deployment  --------+------------------------------------------------|
| Denylist                  | Pass                                           |
| NVML Library              | Pass                                           |
| Persistence Mode          | Fail                                           |
| Error                     | Persistence mode for GPU 0 is currently disab  |
|                           | led. The DCGM diagnostic requires peristence   |
| Environment Variables     | Pass                                           |
| Page Retirement/Row Remap | Pass                                           |
+---------------------------+------------------------------------------------+
"""


def test_dcgm_diag_fails_on_a_failed_row_or_a_failed_run_and_passes_a_clean_table():
    (failed,) = health.dcgm_checks(0, DCGM_DIAG)
    assert (failed["status"], failed["observed"]) == ("fail", "Persistence Mode")
    clean = DCGM_DIAG.replace("| Fail  ", "| Pass  ")
    assert health.dcgm_checks(0, clean)[0]["status"] == "pass"
    missing = health.dcgm_checks(2, "[Errno 2] No such file or directory: b'dcgmi'")[0]
    assert (missing["status"], missing["observed"]) == ("fail", "exit status 2")
