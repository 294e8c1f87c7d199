"""The monitoring role's textfile collector: gpuforge_hw.textfile_metrics on the recorded nvidia-smi outputs, read
back by a strict parser of the Prometheus text format, and roles/monitoring/files/gpuforge-collector run as a
script in the layout it is installed in."""

import copy
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import FIXTURES, ROOT
from test_health import port_tree

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
import gpuforge_hw as hw  # noqa: E402

SMI = FIXTURES / "nvidia-smi"
SCRIPT = ROOT / "roles" / "monitoring" / "files" / "gpuforge-collector"
H100 = hw.parse_nvidia_smi_xml((SMI / "h100-hgx-8gpu.xml").read_text())
CONFIG = {"gpu_count": 8, "driver_version": "580.105.08-0ubuntu1", "expected_rate_gbps": 400, "unused_ports": [],
          "fatal_xids": list(hw.FATAL_XIDS), "model_dir": ""}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


def _labels(text):
    labels, pos = {}, 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r}"
        assert m.group(1) not in labels, f"label {m.group(1)} twice"
        labels[m.group(1)] = re.sub(r"\\(.)", lambda e: _UNESCAPE[e.group(1)], m.group(2))
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"no comma at {text[pos:]!r}"
            pos += 1
    return labels


def parse(text):
    """{(name, ((label, value), ...)): value}; fails on anything the exposition format does not allow: a sample
    before its family's TYPE or apart from its family, a family declared twice, a series twice, NaN."""
    assert text.endswith("\n") and "\n\n" not in text
    samples, declared, helped, current = {}, set(), set(), None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped, f"HELP {name} twice"
            helped.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind == "gauge" and name not in declared, line
            declared.add(name)
            current = name
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name = m.group(1)
            assert name == current, f"{name} sample without its TYPE just before: {line!r}"
            value = float(m.group(3))
            assert not math.isnan(value), line
            key = (name, tuple(sorted(_labels(m.group(2) or "").items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = value
    assert declared == helped
    return samples


def get(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def family(samples, name):
    return {labels: value for (n, labels), value in samples.items() if n == name}


def scan(smi, nvswitches=4):
    """What gpu_scan returns on a host with the driver loaded."""
    return {"pci": {"gpus": [], "nvswitches": [], "hcas": [], "gpu_count": 8, "nvswitch_count": nvswitches,
                    "hca_count": 0},
            "driver_loaded": smi is not None, "nvidia_smi": smi, "skipped": None}


def test_a_healthy_h100_host():
    samples = parse(hw.textfile_metrics(scan(H100), {}, [], CONFIG))
    for name, value in {"gpuforge_gpu_expected_count": 8, "gpuforge_gpu_nvidia_smi_up": 1, "gpuforge_gpu_count": 8,
                        "gpuforge_gpu_driver_matches": 1, "gpuforge_nvswitch_count": 4,
                        "gpuforge_ib_port_expected_rate_gbps": 400}.items():
        assert get(samples, name) == value, name
    info = family(samples, "gpuforge_gpu_info")
    assert len(info) == 8 and set(info.values()) == {1}
    first = dict(next(labels for labels in info if dict(labels)["gpu"] == "0"))
    assert first == {"gpu": "0", "pci_bus_id": "00000000:53:00.0", "name": "NVIDIA H100 80GB HBM3",
                     "uuid": H100["gpus"][0]["uuid"], "driver_version": "580.105.08"}
    assert get(samples, "gpuforge_gpu_power_draw_watts", gpu="0") == 68.92
    for i in map(str, range(8)):
        assert get(samples, "gpuforge_gpu_persistence_mode", gpu=i) == 1
        assert get(samples, "gpuforge_gpu_remapped_rows_pending", gpu=i) == 0
        assert get(samples, "gpuforge_gpu_remapped_rows", gpu=i, kind="uncorrectable") == 0
        assert get(samples, "gpuforge_gpu_ecc_errors", gpu=i, scope="volatile", type="uncorrected") == 0
        assert get(samples, "gpuforge_gpu_pcie_link_width", gpu=i, kind="current") == 16
        assert get(samples, "gpuforge_gpu_pcie_link_gen", gpu=i, kind="max") == 5
        assert 20 < get(samples, "gpuforge_gpu_temperature_celsius", gpu=i) < 90
    assert family(samples, "gpuforge_gpu_clock_event_active") == {
        (("gpu", str(i)), ("reason", "gpu_idle")): 1 for i in range(8)}
    # Hopper has no page retirement (nvidia-smi says N/A): no sample rather than NaN or a made-up 0.
    assert family(samples, "gpuforge_gpu_retired_pages_pending") == {}
    assert family(samples, "gpuforge_gpu_xid_errors") == {}


def test_driver_pins_and_a_host_where_nvidia_smi_did_not_run():
    assert get(parse(hw.textfile_metrics(scan(H100), {}, [], dict(CONFIG, driver_version="580"))),
               "gpuforge_gpu_driver_matches") == 1
    assert get(parse(hw.textfile_metrics(scan(H100), {}, [], dict(CONFIG, driver_version="535.261.03-1"))),
               "gpuforge_gpu_driver_matches") == 0
    assert get(parse(hw.textfile_metrics(scan(H100), {}, [], dict(CONFIG, driver_version=""))),
               "gpuforge_gpu_driver_matches") == 1
    for gpu in (scan(None), None):  # no driver; gpu_scan raised
        samples = parse(hw.textfile_metrics(gpu, {}, [], CONFIG))
        assert get(samples, "gpuforge_gpu_nvidia_smi_up") == 0 and get(samples, "gpuforge_gpu_count") == 0
        assert get(samples, "gpuforge_gpu_driver_matches") == 0 and get(samples, "gpuforge_gpu_expected_count") == 8
        assert family(samples, "gpuforge_gpu_info") == {}
    assert get(parse(hw.textfile_metrics(None, {}, [], CONFIG)), "gpuforge_nvswitch_count") is None


def test_v100_with_a_page_retirement_pending():
    v100 = hw.parse_nvidia_smi_xml((SMI / "v100-ecc-retired-pages.xml").read_text())
    samples = parse(hw.textfile_metrics(scan(v100, 0), {}, [], dict(CONFIG, gpu_count=1, driver_version="")))
    assert get(samples, "gpuforge_gpu_retired_pages_pending", gpu="0") == 1
    assert get(samples, "gpuforge_gpu_ecc_errors", gpu="0", scope="aggregate", type="uncorrected") == 7627
    assert get(samples, "gpuforge_gpu_ecc_errors", gpu="0", scope="volatile", type="uncorrected") == 1
    assert get(samples, "gpuforge_gpu_power_draw_watts", gpu="0") == 50.6
    assert family(samples, "gpuforge_gpu_remapped_rows") == {}  # Volta has no row remapping
    assert get(samples, "gpuforge_nvswitch_count") == 0


def test_xids_count_per_gpu_by_pci_address_and_keep_the_address_of_an_unlisted_gpu():
    gpu5 = hw.pci_key(H100["gpus"][5]["pci_bus_id"])
    log = (f"[812.4] NVRM: Xid (PCI:{gpu5}): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n"
           f"[900.1] NVRM: Xid (PCI:{gpu5}): 13, Graphics SM Warp Exception\n"
           f"[901.1] NVRM: Xid (PCI:{gpu5}): 13, Graphics SM Warp Exception\n"
           "[950.0] NVRM: Xid (PCI:0000:e1:00): 48, An uncorrectable double bit error\n")
    samples = parse(hw.textfile_metrics(scan(H100), {}, hw.parse_xids(log), CONFIG))
    assert family(samples, "gpuforge_gpu_xid_errors") == {
        (("fatal", "true"), ("gpu", "5"), ("xid", "79")): 1,
        (("fatal", "false"), ("gpu", "5"), ("xid", "13")): 2,
        (("fatal", "true"), ("gpu", "0000:e1:00"), ("xid", "48")): 1,
    }
    only_13 = parse(hw.textfile_metrics(scan(H100), {}, hw.parse_xids(log), dict(CONFIG, fatal_xids=[13])))
    assert get(only_13, "gpuforge_gpu_xid_errors", gpu="5", xid="79", fatal="false") == 1


def test_rdma_ports_leave_out_the_unused_ones(tmp_path):
    port_tree(tmp_path, "mlx5_0", 1, symbol_error=12)
    port_tree(tmp_path, "mlx5_1", 1, state="1: DOWN", phys="3: Disabled", rate="10 Gb/sec (4X SDR)")
    port_tree(tmp_path, "mlx5_2", 1, state="1: DOWN", phys="2: Polling")  # not cabled on purpose
    ib = hw.ib_sysfs_ports(str(tmp_path))
    samples = parse(hw.textfile_metrics(scan(H100), ib, [], dict(CONFIG, unused_ports=["mlx5_2/1"])))
    assert family(samples, "gpuforge_ib_port_up") == {(("device", "mlx5_0"), ("port", "1")): 1,
                                                      (("device", "mlx5_1"), ("port", "1")): 0}
    assert get(samples, "gpuforge_ib_port_rate_gbps", device="mlx5_0", port="1") == 400
    assert get(samples, "gpuforge_ib_port_errors_total", device="mlx5_0", port="1", counter="symbol_error") == 12
    assert len(family(samples, "gpuforge_ib_port_errors_total")) == 2 * len(hw.IB_ERROR_COUNTERS)
    assert not any(dict(labels).get("device") == "mlx5_2" for (_, labels) in samples)


def test_label_values_are_escaped_and_missing_values_are_left_out():
    smi = copy.deepcopy(H100)
    odd = 'H100 "SXM" \\ rev\nB'
    smi["gpus"][2]["name"] = odd
    smi["gpus"][2]["temperature_c"] = None
    smi["gpus"][3]["power_draw_w"] = None
    smi["gpus"][3]["ecc"]["aggregate_corrected"] = None
    smi["gpus"][4]["clock_event_reasons_active"] = None
    text = hw.textfile_metrics(scan(smi), {}, [], CONFIG)
    assert 'name="H100 \\"SXM\\" \\\\ rev\\nB"' in text and "NaN" not in text
    samples = parse(text)
    info = {dict(labels)["gpu"]: dict(labels) for labels in family(samples, "gpuforge_gpu_info")}
    assert info["2"]["name"] == odd
    temps = family(samples, "gpuforge_gpu_temperature_celsius")
    assert len(temps) == 7 and (("gpu", "2"),) not in temps
    assert get(samples, "gpuforge_gpu_power_draw_watts", gpu="3") is None
    assert get(samples, "gpuforge_gpu_ecc_errors", gpu="3", scope="aggregate", type="corrected") is None
    assert get(samples, "gpuforge_gpu_ecc_errors", gpu="3", scope="aggregate", type="uncorrected") == 0
    assert len(family(samples, "gpuforge_gpu_clock_event_active")) == 7


def test_model_disk_of_a_directory_that_does_not_exist_yet(tmp_path):
    model_dir = str(tmp_path / "models" / "llama")
    samples = parse(hw.textfile_metrics(scan(H100), {}, [], dict(CONFIG, model_dir=model_dir)))
    st = os.statvfs(tmp_path)
    assert get(samples, "gpuforge_model_disk_size_bytes", path=model_dir) == st.f_blocks * st.f_frsize
    assert 0 < get(samples, "gpuforge_model_disk_avail_bytes", path=model_dir) <= st.f_blocks * st.f_frsize
    assert family(parse(hw.textfile_metrics(scan(H100), {}, [], CONFIG)), "gpuforge_model_disk_size_bytes") == {}


def test_write_atomically_leaves_only_the_finished_world_readable_file(tmp_path):
    out = tmp_path / "gpuforge.prom"
    out.write_text("old\n")
    hw.write_atomically(str(out), "gpuforge_collector_success 1\n")
    assert out.read_text() == "gpuforge_collector_success 1\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["gpuforge.prom"]


def installed_collector(tmp_path):
    """The script and gpuforge_hw.py side by side, as the monitoring role installs them."""
    lib = tmp_path / "lib" / "gpuforge"
    lib.mkdir(parents=True)
    shutil.copy2(SCRIPT, lib / "gpuforge-collector")
    shutil.copy2(ROOT / "plugins" / "module_utils" / "gpuforge_hw.py", lib / "gpuforge_hw.py")
    return lib / "gpuforge-collector"


def collector_config(tmp_path, smi_exit=0):
    fake_smi = tmp_path / "nvidia-smi"
    fake_smi.write_text(f"#!/bin/sh\ncat '{SMI / 'h100-hgx-8gpu.xml'}'\nexit {smi_exit}\n")
    fake_smi.chmod(0o755)
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.105.08\n")
    kernel_log = tmp_path / "kernel.log"
    first = hw.pci_key(H100["gpus"][0]["pci_bus_id"])
    kernel_log.write_text(f"Dec 07 10:00:01 gpu-01 kernel: NVRM: Xid (PCI:{first}): 79, pid='<unknown>', "
                          "name=<unknown>, GPU has fallen off the bus.\n")
    (tmp_path / "sys").mkdir()
    config = tmp_path / "collector.json"
    config.write_text(json.dumps(dict(CONFIG, nvidia_smi=str(fake_smi), proc_driver_version=str(version),
                                      sysfs_root=str(tmp_path / "sys"),
                                      kernel_log_command=["cat", str(kernel_log)])))
    return config


def run_collector(tmp_path, smi_exit=0):
    script = installed_collector(tmp_path)
    out = tmp_path / "textfile" / "gpuforge.prom"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, str(script), "--config", str(collector_config(tmp_path, smi_exit)),
                           "--output", str(out)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return proc, out


def test_the_installed_collector_writes_the_textfile(tmp_path):
    assert SCRIPT.read_text().startswith("#!/usr/bin/python3\n") and os.access(SCRIPT, os.X_OK)
    proc, out = run_collector(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    samples = parse(out.read_text())
    assert get(samples, "gpuforge_gpu_count") == 8 and len(family(samples, "gpuforge_gpu_info")) == 8
    assert get(samples, "gpuforge_collector_success") == 1
    assert get(samples, "gpuforge_gpu_xid_errors", gpu="0", xid="79", fatal="true") == 1
    assert get(samples, "gpuforge_nvswitch_count") == 0
    assert 0 <= get(samples, "gpuforge_collector_duration_seconds") < 60
    assert get(samples, "gpuforge_collector_last_run_timestamp_seconds") > 1.7e9
    assert os.listdir(out.parent) == ["gpuforge.prom"]


def test_a_failing_part_still_writes_the_rest_and_reports_failure(tmp_path):
    proc, out = run_collector(tmp_path, smi_exit=1)
    assert proc.returncode == 1
    assert "nvidia-smi" in proc.stderr and "rc=1" in proc.stderr
    samples = parse(out.read_text())
    assert get(samples, "gpuforge_collector_success") == 0
    assert get(samples, "gpuforge_gpu_nvidia_smi_up") == 0
    first = hw.pci_key(H100["gpus"][0]["pci_bus_id"])  # no GPU listed: the XID keeps its address
    assert get(samples, "gpuforge_gpu_xid_errors", gpu=first, xid="79", fatal="true") == 1


@pytest.mark.parametrize("rc, success", [(1, 1), (2, 0)])
def test_journalctl_exit_1_means_no_match(tmp_path, rc, success):
    config = collector_config(tmp_path)
    data = json.loads(config.read_text())
    data["kernel_log_command"] = ["sh", "-c", f"exit {rc}"]
    config.write_text(json.dumps(data))
    script = installed_collector(tmp_path)
    out = tmp_path / "gpuforge.prom"
    proc = subprocess.run([sys.executable, str(script), "--config", str(config), "--output", str(out)],
                          capture_output=True, text=True, timeout=60)
    samples = parse(out.read_text())
    assert get(samples, "gpuforge_collector_success") == success and proc.returncode == 1 - success
    assert family(samples, "gpuforge_gpu_xid_errors") == {}
    assert get(samples, "gpuforge_gpu_count") == 8
