"""module_utils/gpuforge_hw.py on recorded real outputs (tests/unit/fixtures/PROVENANCE.md)."""

import sys

import pytest
from conftest import FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
import gpuforge_hw as hw  # noqa: E402

SMI = FIXTURES / "nvidia-smi"
IBSTAT = FIXTURES / "ibstat"


def smi(name):
    return hw.parse_nvidia_smi_xml((SMI / name).read_text())


def test_h100_hgx_host_has_eight_healthy_gpus():
    facts = smi("h100-hgx-8gpu.xml")
    assert (facts["driver_version"], facts["cuda_version"], facts["attached_gpus"]) == ("580.105.08", "13.0", 8)
    gpus = facts["gpus"]
    assert len(gpus) == 8
    assert {g["name"] for g in gpus} == {"NVIDIA H100 80GB HBM3"}
    assert len({g["pci_bus_id"] for g in gpus}) == 8
    assert all(g["pci_bus_id"].startswith("00000000:") for g in gpus)
    for g in gpus:
        assert 80000 < g["memory_total_mib"] < 82000
        assert g["mig_mode"] == {"current": False, "pending": False, "devices": 0}
        assert g["ecc"]["mode_current"] is True
        assert g["ecc"]["volatile_uncorrected"] == 0 and g["ecc"]["aggregate_uncorrected"] == 0
        assert g["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False}
        assert g["pcie"]["gen_max"] == 5 and g["pcie"]["width_max"] == 16


def test_a100_with_mig_enabled():
    (gpu,) = smi("a100-mig-enabled.xml")["gpus"]
    assert "A100" in gpu["name"]
    assert gpu["mig_mode"]["current"] is True
    assert gpu["mig_mode"]["devices"] == 4


def test_v100_reports_ecc_errors_and_retired_pages():
    (gpu,) = smi("v100-ecc-retired-pages.xml")["gpus"]
    assert gpu["ecc"]["aggregate_corrected"] == 291
    assert gpu["ecc"]["aggregate_uncorrected"] == 7627
    assert gpu["retired_pages"]["single_bit"] + gpu["retired_pages"]["double_bit"] == 2
    assert gpu["retired_pages"]["pending"] is True
    assert gpu["remapped_rows"]["correctable"] is None  # Volta has no row remapping


def test_a10g_remapped_rows_are_read():
    (gpu,) = smi("a10g-remapped-rows.xml")["gpus"]
    assert gpu["remapped_rows"]["correctable"] == 0
    assert gpu["remapped_rows"]["pending"] is False
    assert gpu["ecc"]["mode_current"] is True


def test_power_draw_is_read_from_every_driver_generation():
    h100 = smi("h100-hgx-8gpu.xml")["gpus"]  # 580: gpu_power_readings/instant_ and average_power_draw
    assert h100[0]["power_draw_w"] == 68.92 and all(60 < g["power_draw_w"] < 80 for g in h100)
    assert smi("a100-mig-enabled.xml")["gpus"][0]["power_draw_w"] == 67.03  # 535: gpu_power_readings/power_draw
    assert smi("a10g-remapped-rows.xml")["gpus"][0]["power_draw_w"] == 25.58  # 515: power_readings/power_draw
    assert smi("v100-ecc-retired-pages.xml")["gpus"][0]["power_draw_w"] == 50.60  # 410: power_readings/power_draw
    assert hw._float("N/A") is None and hw._float(None) is None and hw._float("[N/A]") is None


def test_xid_pci_and_driver_helpers():
    log = ("NVRM: Xid (PCI:0000:53:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"
           "kernel: NVRM: Xid (0000:9A:00.0): 48, An uncorrectable double bit error\nnot an xid line\n")
    assert [(x["pci"], x["xid"]) for x in hw.parse_xids(log)] == [("0000:53:00", 79), ("0000:9a:00", 48)]
    assert hw.pci_key("00000000:3B:00.0") == "0000:3b:00"
    assert {79, 48, 119}.issubset(hw.FATAL_XIDS) and 13 not in hw.FATAL_XIDS
    for installed, pinned, ok in (("580.105.08", "580", True), ("535.261.03", "1:535.261.03-1", True),
                                  ("535.247.01", "535.261.03", False), (None, "580", False), (None, "", True),
                                  ("580.105.08", "", True)):
        assert hw.driver_matches(installed, pinned) is ok, (installed, pinned)


def test_garbage_is_an_error_not_empty_facts():
    with pytest.raises(Exception):  # noqa: B017 - any parse error; the module turns it into fail_json
        hw.parse_nvidia_smi_xml("nvidia-smi: command not found")


def test_ibstat_all_active_ndr():
    cas = hw.parse_ibstat((IBSTAT / "h100-ndr400-all-active.txt").read_text())
    ib = {ca: info for ca, info in cas.items() if info["ports"][1]["link_layer"] == "InfiniBand"}
    assert len(ib) == 8
    assert all(info["ports"][1]["rate_gbps"] == 400 for info in ib.values())
    assert hw.ib_port_problems(ib, 400) == []


def test_ibstat_down_ports_are_reported():
    cas = hw.parse_ibstat((IBSTAT / "h100-ndr400-active-eth-down.txt").read_text())
    assert cas["mlx5_0"]["ca_type"] == "MT4129" and cas["mlx5_0"]["firmware_version"] == "28.39.1002"
    problems = hw.ib_port_problems(cas)
    down = [ca for ca, info in cas.items() if info["ports"][1]["state"] == "Down"]
    assert down and len(problems) == len(down)
    assert all("want Active/LinkUp" in p for p in problems)
    # Ports not cabled on purpose are not problems.
    assert hw.ib_port_problems(cas, unused_ports=[f"{ca}/1" for ca in down]) == []


def test_ibstat_polling_port():
    cas = hw.parse_ibstat((IBSTAT / "roce-port-polling.txt").read_text())
    states = {(p["state"], p["physical_state"]) for info in cas.values() for p in info["ports"].values()}
    assert ("Down", "Polling") in states
    assert any("physical state Polling" in p for p in hw.ib_port_problems(cas))


def test_ibstat_with_error_line_keeps_parsed_cas():
    cas = hw.parse_ibstat((IBSTAT / "a100-hdr200-active-ibpanic.txt").read_text())
    assert len(cas) >= 8
    assert {p["rate_gbps"] for info in cas.values() for p in info["ports"].values()} == {200}


def test_rate_mismatch_is_a_problem():
    cas = hw.parse_ibstat((IBSTAT / "a100-hdr200-active-ibpanic.txt").read_text())
    assert all("rate 200 Gb/s (want 400)" in p for p in hw.ib_port_problems(cas, 400))


def test_host_without_gpu_from_recorded_sysfs():
    devices = hw.pci_devices(str(FIXTURES / "sysfs" / "no-gpu-vm"))
    assert len(devices) == 6 and {d["vendor"] for d in devices} == {"0x8086", "0x1af4"}
    assert hw.classify_pci(devices) == {"gpus": [], "nvswitches": [], "hcas": []}
    assert hw.ib_sysfs_ports(str(FIXTURES / "sysfs" / "no-gpu-vm")) == {}


def test_classify_hgx_devices(tmp_path):
    """PCI ids as an HGX H100 host reports them: H100 SXM (0x2330, 3D controller), NVSwitch (0x22a3,
    bridge) and ConnectX-7 (0x1021, InfiniBand controller)."""
    layout = {"0000:18:00.0": ("0x10de", "0x2330", "0x030200", "nvidia"),
              "0000:05:00.0": ("0x10de", "0x22a3", "0x068000", None),
              "0000:1a:00.0": ("0x15b3", "0x1021", "0x020700", "mlx5_core"),
              "0000:00:00.0": ("0x8086", "0x09a2", "0x060000", None)}
    for addr, (vendor, device, cls, driver) in layout.items():
        d = tmp_path / "bus" / "pci" / "devices" / addr
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
        (d / "class").write_text(cls + "\n")
        if driver:
            (d / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
    out = hw.classify_pci(hw.pci_devices(str(tmp_path)))
    assert [g["address"] for g in out["gpus"]] == ["0000:18:00.0"] and out["gpus"][0]["driver"] == "nvidia"
    assert [s["device"] for s in out["nvswitches"]] == ["0x22a3"]
    assert out["hcas"][0]["kind"] == "infiniband"


def test_ib_sysfs_ports(tmp_path):
    port = tmp_path / "class" / "infiniband" / "mlx5_0" / "ports" / "1"
    port.mkdir(parents=True)
    (port / "state").write_text("4: ACTIVE\n")
    (port / "phys_state").write_text("5: LinkUp\n")
    (port / "rate").write_text("400 Gb/sec (4X NDR)\n")
    (port / "link_layer").write_text("InfiniBand\n")
    (tmp_path / "class" / "infiniband" / "mlx5_0" / "fw_ver").write_text("28.39.1002\n")
    devs = hw.ib_sysfs_ports(str(tmp_path))
    assert devs["mlx5_0"]["ports"][1] == {"state": "ACTIVE", "physical_state": "LinkUp", "rate_gbps": 400,
                                          "rate": "400 Gb/sec (4X NDR)", "link_layer": "InfiniBand",
                                          "counters": {}}  # no counters directory in this tree
    assert hw.ib_port_problems(devs, 400) == []
