# -*- coding: utf-8 -*-
"""Parsers for GPU and InfiniBand hardware facts: PCI sysfs, `nvidia-smi -q -x`, `ibstat`, IB sysfs.

Plain functions that take text (or a sysfs root) and return data, so tests/unit feeds them recorded real
outputs without a host. Used by plugins/modules/gpu_facts.py and ib_facts.py.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

NVIDIA_VENDOR = "0x10de"
MELLANOX_VENDOR = "0x15b3"
# PCI class codes (first 4 hex digits of the 24-bit class): display VGA and 3D controllers are GPUs; an
# NVIDIA "bridge, other" is an NVSwitch; Mellanox network/InfiniBand controllers are ConnectX HCAs/NICs.
GPU_CLASSES = ("0x0300", "0x0302")
NVSWITCH_CLASSES = ("0x0680",)
HCA_CLASSES = ("0x0207", "0x0200")


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def pci_devices(sysfs_root="/sys"):
    """Every PCI device under sysfs_root/bus/pci/devices as {address, vendor, device, class, driver}."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    out = []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for name in names:
        dev = os.path.join(base, name)
        driver = None
        link = os.path.join(dev, "driver")
        if os.path.islink(link):
            driver = os.path.basename(os.readlink(link))
        out.append({
            "address": name,
            "vendor": (_read(os.path.join(dev, "vendor")) or "").lower(),
            "device": (_read(os.path.join(dev, "device")) or "").lower(),
            "class": (_read(os.path.join(dev, "class")) or "").lower(),
            "driver": driver,
        })
    return out


def classify_pci(devices):
    """Split PCI devices into NVIDIA GPUs, NVSwitches and Mellanox ConnectX adapters."""
    gpus, nvswitches, hcas = [], [], []
    for d in devices:
        cls = d["class"][:6]
        if d["vendor"] == NVIDIA_VENDOR and cls in GPU_CLASSES:
            gpus.append(d)
        elif d["vendor"] == NVIDIA_VENDOR and cls in NVSWITCH_CLASSES:
            nvswitches.append(d)
        elif d["vendor"] == MELLANOX_VENDOR and cls in HCA_CLASSES:
            hcas.append(dict(d, kind="infiniband" if cls == "0x0207" else "ethernet"))
    return {"gpus": gpus, "nvswitches": nvswitches, "hcas": hcas}


def gpu_scan(sysfs_root, proc_driver_version, nvidia_smi, run):
    """The gpuforge_gpu facts: the GPUs, NVSwitches and HCAs on PCI and, with the driver loaded, nvidia-smi's reading.

    nvidia_smi is the resolved executable (None when it is not installed); run(argv) returns (rc, stdout, stderr).
    Stdlib only, like the rest of this file: the gpu_facts action runs it as a plain script on the host's Python,
    the gpu_facts module through AnsibleModule. Raises ValueError with the message for the task."""
    pci = classify_pci(pci_devices(sysfs_root))
    pci.update(gpu_count=len(pci["gpus"]), nvswitch_count=len(pci["nvswitches"]), hca_count=len(pci["hcas"]))
    facts = {"pci": pci, "driver_loaded": os.path.exists(proc_driver_version), "nvidia_smi": None, "skipped": None}
    if not facts["driver_loaded"]:
        facts["skipped"] = "the NVIDIA kernel driver is not loaded (no %s)" % proc_driver_version
    elif nvidia_smi is None:
        facts["skipped"] = "nvidia-smi is not installed"
    else:
        rc, out, err = run([nvidia_smi, "-q", "-x"])
        if rc != 0:
            raise ValueError("nvidia-smi -q -x failed (rc=%d): %s" % (rc, err.strip() or out.strip()))
        try:
            facts["nvidia_smi"] = parse_nvidia_smi_xml(out)
        except Exception as exc:  # a parse error must name the tool, not crash with a traceback
            raise ValueError("could not parse nvidia-smi -q -x output: %s" % exc) from exc
    return facts


_NUM = re.compile(r"^\s*(-?\d+)")


def _int(text):
    """'81559 MiB' -> 81559; 'N/A', '[N/A]', None -> None."""
    if text is None:
        return None
    m = _NUM.match(text)
    return int(m.group(1)) if m else None


def _text(el, path):
    found = el.find(path) if el is not None else None
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return None if value in ("N/A", "[N/A]", "Not Supported", "[Not Supported]", "") else value


def _enabled(value):
    if value is None:
        return None
    return value.lower() in ("enabled", "enable", "yes", "active")


def parse_nvidia_smi_xml(text):
    """Parse `nvidia-smi -q -x` into driver/CUDA versions and per-GPU health-relevant fields."""
    root = ET.fromstring(text)
    gpus = []
    for index, g in enumerate(root.findall("gpu")):
        ecc = g.find("ecc_errors")
        retired = g.find("retired_pages")
        remapped = g.find("remapped_rows")
        pcie = g.find("pci/pci_gpu_link_info")
        mig_devices = g.find("mig_devices")
        gpus.append({
            "index": _int(_text(g, "minor_number")) if _text(g, "minor_number") is not None else index,
            "name": _text(g, "product_name"),
            "uuid": _text(g, "uuid"),
            "serial": _text(g, "serial"),
            "pci_bus_id": (g.get("id") or _text(g, "pci/pci_bus_id") or "").lower() or None,
            "memory_total_mib": _int(_text(g, "fb_memory_usage/total")),
            "memory_used_mib": _int(_text(g, "fb_memory_usage/used")),
            "persistence_mode": _enabled(_text(g, "persistence_mode")),
            "mig_mode": {
                "current": _enabled(_text(g, "mig_mode/current_mig")),
                "pending": _enabled(_text(g, "mig_mode/pending_mig")),
                "devices": len(mig_devices.findall("mig_device")) if mig_devices is not None else 0,
            },
            "ecc": {
                "mode_current": _enabled(_text(g, "ecc_mode/current_ecc")),
                "volatile_corrected": _ecc_sum(ecc, "volatile", "single_bit", "sram_correctable"),
                "volatile_uncorrected": _ecc_sum(ecc, "volatile", "double_bit", "sram_uncorrectable"),
                "aggregate_corrected": _ecc_sum(ecc, "aggregate", "single_bit", "sram_correctable"),
                "aggregate_uncorrected": _ecc_sum(ecc, "aggregate", "double_bit", "sram_uncorrectable"),
            },
            "retired_pages": {
                "single_bit": _int(_text(retired, "multiple_single_bit_retirement/retired_count")),
                "double_bit": _int(_text(retired, "double_bit_retirement/retired_count")),
                "pending": _enabled(_text(retired, "pending_blacklist") or _text(retired, "pending_retirement")),
            },
            "remapped_rows": {
                "correctable": _int(_text(remapped, "remapped_row_corr")),
                "uncorrectable": _int(_text(remapped, "remapped_row_unc")),
                "pending": _enabled(_text(remapped, "remapped_row_pending")),
                "failure": _enabled(_text(remapped, "remapped_row_failure")),
            },
            # Reasons the clocks are held down now ("hw_slowdown", "sw_thermal_slowdown", "gpu_idle", ...):
            # clocks_event_reasons since driver 535, clocks_throttle_reasons before.
            "clock_event_reasons_active": _active_reasons(g),
            "temperature_c": _int(_text(g, "temperature/gpu_temp")),
            "pcie": {
                "gen_current": _int(_text(pcie, "pcie_gen/current_link_gen")),
                "gen_max": _int(_text(pcie, "pcie_gen/max_link_gen")),
                "width_current": _int(_text(pcie, "link_widths/current_link_width")),
                "width_max": _int(_text(pcie, "link_widths/max_link_width")),
            },
        })
    return {
        "driver_version": _text(root, "driver_version"),
        "cuda_version": _text(root, "cuda_version"),
        "attached_gpus": _int(_text(root, "attached_gpus")),
        "gpus": gpus,
    }


def _active_reasons(gpu):
    for block, prefix in (("clocks_event_reasons", "clocks_event_reason_"),
                          ("clocks_throttle_reasons", "clocks_throttle_reason_")):
        node = gpu.find(block)
        if node is not None:
            return sorted(child.tag[len(prefix):] for child in node
                          if child.tag.startswith(prefix) and (child.text or "").strip() == "Active")
    return None


def _ecc_sum(ecc, scope, legacy, sram):
    """ECC counts: newer drivers report sram_*/dram_* pairs, older ones single_bit/double_bit totals."""
    if ecc is None:
        return None
    node = ecc.find(scope)
    if node is None:
        return None
    total = _int(_text(node, f"{legacy}/total"))
    if total is not None:
        return total
    values = [_int(_text(node, name)) for name in (sram, sram.replace("sram", "dram"))]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


_IB_CA = re.compile(r"^CA '([^']+)'")
_IB_PORT = re.compile(r"^\s*Port (\d+):")
_IB_KV = re.compile(r"^\s*([A-Za-z][A-Za-z ]*[A-Za-z]):\s*(.*)$")


def parse_ibstat(text):
    """Parse `ibstat` into {ca: {ca_type, firmware_version, ports: {n: {state, physical_state, rate, ...}}}}."""
    cas = {}
    ca = port = None
    for line in text.splitlines():
        m = _IB_CA.match(line)
        if m:
            ca = cas.setdefault(m.group(1), {"ports": {}})
            port = None
            continue
        if ca is None:
            continue
        m = _IB_PORT.match(line)
        if m:
            port = ca["ports"].setdefault(int(m.group(1)), {})
            continue
        m = _IB_KV.match(line)
        if not m:
            continue
        key = m.group(1).strip().lower().replace(" ", "_")
        value = m.group(2).strip()
        target = port if port is not None else ca
        if key == "rate":
            target["rate_gbps"] = _int(value)
        elif key in ("base_lid", "sm_lid", "lmc", "number_of_ports"):
            target[key] = _int(value)
        else:
            target[key] = value
    return cas


IB_ERROR_COUNTERS = ("link_downed", "symbol_error", "link_error_recovery", "port_rcv_errors",
                     "local_link_integrity_errors", "excessive_buffer_overrun_errors")


def ib_sysfs_ports(sysfs_root="/sys"):
    """InfiniBand/RoCE ports from sysfs_root/class/infiniband/<dev>/ports/<n>/{state,phys_state,rate,link_layer}."""
    base = os.path.join(sysfs_root, "class", "infiniband")
    out = {}
    try:
        devices = sorted(os.listdir(base))
    except OSError:
        return out
    for dev in devices:
        ports_dir = os.path.join(base, dev, "ports")
        ports = {}
        try:
            port_names = sorted(os.listdir(ports_dir), key=lambda p: int(p) if p.isdigit() else 0)
        except OSError:
            port_names = []
        for p in port_names:
            d = os.path.join(ports_dir, p)
            state = _read(os.path.join(d, "state")) or ""  # "4: ACTIVE"
            phys = _read(os.path.join(d, "phys_state")) or ""  # "5: LinkUp"
            rate = _read(os.path.join(d, "rate")) or ""  # "400 Gb/sec (4X NDR)"
            ports[int(p) if p.isdigit() else p] = {
                "state": state.split(":", 1)[-1].strip() or None,
                "physical_state": phys.split(":", 1)[-1].strip() or None,
                "rate_gbps": _int(rate),
                "rate": rate or None,
                "link_layer": _read(os.path.join(d, "link_layer")),
                # Error counters that only rise on a bad link (cable, transceiver, switch port); read twice, a
                # rise between the reads is a live fault (gpuforge.health.fabric_checks).
                "counters": {name: _int(_read(os.path.join(d, "counters", name)))
                             for name in IB_ERROR_COUNTERS
                             if os.path.exists(os.path.join(d, "counters", name))},
            }
        out[dev] = {
            "firmware_version": _read(os.path.join(base, dev, "fw_ver")),
            "node_type": _read(os.path.join(base, dev, "node_type")),
            "ports": ports,
        }
    return out


def ib_port_problems(cas, expected_rate_gbps=None):
    """Ports that are not Active/LinkUp (or not at the expected rate), one message each."""
    problems = []
    for ca, info in sorted(cas.items()):
        for n, port in sorted(info.get("ports", {}).items()):
            state = (port.get("state") or "").lower()
            phys = (port.get("physical_state") or "").lower()
            if state != "active" or phys != "linkup":
                problems.append(f"{ca} port {n}: state {port.get('state')}, physical state "
                                f"{port.get('physical_state')} (want Active/LinkUp)")
            elif expected_rate_gbps and port.get("rate_gbps") != expected_rate_gbps:
                problems.append(f"{ca} port {n}: rate {port.get('rate_gbps')} Gb/s (want {expected_rate_gbps})")
    return problems
