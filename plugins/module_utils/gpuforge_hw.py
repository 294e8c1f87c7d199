# -*- coding: utf-8 -*-
"""Parsers for GPU and InfiniBand hardware facts: PCI sysfs, `nvidia-smi -q -x`, `ibstat`, IB sysfs, kernel-log
XID lines; and the Prometheus textfile those facts make (textfile_metrics).

Plain functions that take text (or a sysfs root) and return data, so tests/unit feeds them recorded real
outputs without a host. Used by plugins/modules/gpu_facts.py and ib_facts.py, and by the monitoring role's
gpuforge-collector, which runs it on the host's own Python 3 (3.9 and later): stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
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


_FLOAT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")


def _float(text):
    """'68.92 W' -> 68.92; 'N/A', '[N/A]', None -> None."""
    if text is None:
        return None
    m = _FLOAT.match(text)
    return float(m.group(1)) if m else None


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
            "power_draw_w": _power_draw(g),
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


# Newer drivers name the block gpu_power_readings (535 in the recorded A100 output) and later split power_draw into
# instant_ and average_power_draw (580, H100); older ones call it power_readings (515 A10G, 410 V100).
_POWER_DRAW = ("gpu_power_readings/power_draw", "gpu_power_readings/instant_power_draw",
               "gpu_power_readings/average_power_draw", "power_readings/power_draw")


def _power_draw(gpu):
    for path in _POWER_DRAW:
        value = _float(_text(gpu, path))
        if value is not None:
            return value
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


def ib_port_problems(cas, expected_rate_gbps=None, unused_ports=()):
    """Ports that are not Active/LinkUp (or not at the expected rate), one message each. Ports named in
    unused_ports ("mlx5_1/1": not cabled on purpose, e.g. a dual-port card's second port) are not checked."""
    problems = []
    unused = {str(u) for u in unused_ports or ()}
    for ca, info in sorted(cas.items()):
        for n, port in sorted(info.get("ports", {}).items()):
            if f"{ca}/{n}" in unused:
                continue
            state = (port.get("state") or "").lower()
            phys = (port.get("physical_state") or "").lower()
            if state != "active" or phys != "linkup":
                problems.append(f"{ca} port {n}: state {port.get('state')}, physical state "
                                f"{port.get('physical_state')} (want Active/LinkUp)")
            elif expected_rate_gbps and port.get("rate_gbps") != expected_rate_gbps:
                problems.append(f"{ca} port {n}: rate {port.get('rate_gbps')} Gb/s (want {expected_rate_gbps})")
    return problems


# The XIDs NVIDIA's "XID Errors" catalogue (docs.nvidia.com/deploy/xid-errors) marks as needing a GPU reset, a node
# reboot or hardware service (48 double-bit ECC, 79 fallen off the bus, 92 high single-bit ECC rate, 119/120 GSP
# errors, ...).
FATAL_XIDS = (48, 56, 57, 58, 62, 63, 64, 65, 68, 69, 73, 74, 79, 80, 81, 92, 119, 120)

# The kernel's line for an XID error: "NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus."
# (drivers before 410 print the address without "PCI:").
_XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+)(?:\.[0-7])?\): (\d+),?\s*(.*)$")


def parse_xids(kernel_log):
    """Every XID line of a kernel log (dmesg or journalctl -k): [{"pci": "0000:3b:00", "xid": 79, "text": ...}]."""
    out = []
    for line in (kernel_log or "").splitlines():
        m = _XID.search(line)
        if m:
            out.append({"pci": pci_key(m.group(1)), "xid": int(m.group(2)), "text": m.group(3).strip()})
    return out


def pci_key(address):
    """'00000000:3B:00.0' -> '0000:3b:00' (the form the kernel's XID lines use)."""
    parts = (address or "").lower().split(".")[0].split(":")
    if len(parts) != 3:
        return (address or "").lower()
    return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}"


def gpu_xids(xids, gpus):
    """parse_xids' lines, each with the GPU it belongs to ("gpu"): the nvidia-smi index of the GPU at its PCI
    address, or the address itself when nvidia-smi does not list that GPU (it has fallen off the bus)."""
    by_pci = {pci_key(g.get("pci_bus_id")): g.get("index") for g in gpus or ()}
    return [dict(x, gpu=by_pci.get(x.get("pci"), x.get("pci"))) for x in xids or ()]


def driver_matches(installed, pinned):
    """Whether nvidia-smi's driver version satisfies the inventory's pin: an exact package version
    ("535.261.03-1" -> 535.261.03) or a branch ("580" -> any 580.x)."""
    if not pinned:
        return True
    if not installed:
        return False
    pin = str(pinned).split("-")[0].split(":")[-1]
    return installed == pin if "." in pin else installed.split(".")[0] == pin


def _escape_label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render_metrics(families):
    """{name: (help, [(labels, value), ...])} as Prometheus text exposition format, every family a gauge.

    A family without samples is left out; the caller leaves out samples it has no value for."""
    lines = []
    for name, (help_text, samples) in families.items():
        if not samples:
            continue
        lines.append("# HELP %s %s" % (name, help_text.replace("\\", "\\\\").replace("\n", "\\n")))
        lines.append("# TYPE %s gauge" % name)
        for labels, value in samples:
            pairs = ",".join('%s="%s"' % (k, _escape_label(v)) for k, v in labels.items())
            lines.append("%s%s %s" % (name, "{%s}" % pairs if pairs else "", _number(value)))
    return "\n".join(lines) + "\n" if lines else ""


def _existing_parent(path):
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def textfile_metrics(gpu, ib, xids, config):
    """The host's GPU, fabric and model-disk state for node_exporter's textfile collector.

    gpu is gpu_scan()'s dict (None when it failed), ib ib_sysfs_ports()'s, xids parse_xids()'s; config holds
    gpu_count, driver_version (the pin, may be ""), expected_rate_gbps (0: not checked), unused_ports
    (["mlx5_1/1"]), fatal_xids and model_dir (may be ""). A value a GPU does not report is left out, never NaN."""
    config = config or {}
    families = {}

    def add(metric, help_text, value, /, **labels):  # positional-only: "name" is also a label
        family = families.setdefault(metric, (help_text, []))
        if value is not None:
            family[1].append((labels, value))

    smi = (gpu or {}).get("nvidia_smi")
    gpus = (smi or {}).get("gpus") or []
    expected = config.get("gpu_count")
    add("gpuforge_gpu_expected_count", "GPUs the inventory says this host has (gpu_count).",
        int(expected) if expected is not None else None)
    add("gpuforge_gpu_nvidia_smi_up", "1 when nvidia-smi -q -x ran and its output was parsed.", smi is not None)
    add("gpuforge_gpu_count", "GPUs nvidia-smi lists (0 when it did not run).", len(gpus))
    add("gpuforge_gpu_driver_matches", "1 when the loaded driver satisfies the pinned driver_version.",
        smi is not None and driver_matches(smi.get("driver_version"), config.get("driver_version")))

    for g in gpus:
        i = str(g.get("index"))
        rows = g.get("remapped_rows") or {}
        pages = g.get("retired_pages") or {}
        ecc = g.get("ecc") or {}
        pcie = g.get("pcie") or {}
        add("gpuforge_gpu_info", "One per GPU nvidia-smi lists, with its identity.", 1, gpu=i,
            pci_bus_id=g.get("pci_bus_id") or "", name=g.get("name") or "", uuid=g.get("uuid") or "",
            driver_version=smi.get("driver_version") or "")
        add("gpuforge_gpu_persistence_mode", "1 when persistence mode is on.", g.get("persistence_mode"), gpu=i)
        add("gpuforge_gpu_remapped_rows_pending", "1 when a row remap waits for a GPU reset.",
            rows.get("pending"), gpu=i)
        add("gpuforge_gpu_remapped_rows_failure", "1 when row remapping failed (no spare rows left).",
            rows.get("failure"), gpu=i)
        for kind in ("correctable", "uncorrectable"):
            add("gpuforge_gpu_remapped_rows", "Rows remapped, by the kind of error that caused it.",
                rows.get(kind), gpu=i, kind=kind)
        add("gpuforge_gpu_retired_pages_pending", "1 when a page retirement waits for a GPU reset.",
            pages.get("pending"), gpu=i)
        for scope in ("volatile", "aggregate"):
            for kind in ("corrected", "uncorrected"):
                add("gpuforge_gpu_ecc_errors", "ECC errors since the driver loaded (volatile) or ever (aggregate).",
                    ecc.get(scope + "_" + kind), gpu=i, scope=scope, type=kind)
        add("gpuforge_gpu_temperature_celsius", "GPU core temperature.", g.get("temperature_c"), gpu=i)
        add("gpuforge_gpu_power_draw_watts", "GPU power draw.", g.get("power_draw_w"), gpu=i)
        for kind in ("current", "max"):
            add("gpuforge_gpu_pcie_link_gen", "PCIe link generation, current and the GPU's maximum.",
                pcie.get("gen_" + kind), gpu=i, kind=kind)
            add("gpuforge_gpu_pcie_link_width", "PCIe link width in lanes, current and the GPU's maximum.",
                pcie.get("width_" + kind), gpu=i, kind=kind)
        for reason in g.get("clock_event_reasons_active") or ():
            add("gpuforge_gpu_clock_event_active", "1 for each reason holding the GPU's clocks down now.",
                1, gpu=i, reason=reason)

    # An XID from an address nvidia-smi does not list keeps the address: that GPU has fallen off the bus.
    fatal = set(config.get("fatal_xids", FATAL_XIDS))
    counts = {}
    for x in gpu_xids(xids, gpus):
        key = (str(x["gpu"]), x.get("xid"))
        counts[key] = counts.get(key, 0) + 1
    for (where, xid), n in counts.items():
        add("gpuforge_gpu_xid_errors", "Kernel XID lines since boot, by GPU and XID.", n,
            gpu=where, xid=str(xid), fatal="true" if xid in fatal else "false")

    add("gpuforge_ib_port_expected_rate_gbps", "The rate RDMA ports should run at (0: not checked).",
        config.get("expected_rate_gbps"))
    unused = {str(u) for u in config.get("unused_ports") or ()}
    for dev, info in sorted((ib or {}).items()):
        for n, port in (info.get("ports") or {}).items():
            if "%s/%s" % (dev, n) in unused:
                continue
            up = ((port.get("state") or "").lower() == "active"
                  and (port.get("physical_state") or "").lower() == "linkup")
            add("gpuforge_ib_port_up", "1 when the RDMA port is Active/LinkUp.", up, device=dev, port=str(n))
            add("gpuforge_ib_port_rate_gbps", "The rate the RDMA port trained at.", port.get("rate_gbps"),
                device=dev, port=str(n))
            for counter, value in sorted((port.get("counters") or {}).items()):
                add("gpuforge_ib_port_errors_total", "RDMA port error counters (they only rise on a bad link).",
                    value, device=dev, port=str(n), counter=counter)

    add("gpuforge_nvswitch_count", "NVSwitches on the PCI bus.", ((gpu or {}).get("pci") or {}).get("nvswitch_count"))

    model_dir = config.get("model_dir") or ""
    if model_dir:
        # Before the first download the directory does not exist yet: its filesystem is its nearest parent's.
        st = os.statvfs(_existing_parent(model_dir))
        add("gpuforge_model_disk_avail_bytes", "Bytes free to unprivileged users on the model directory's disk.",
            st.f_bavail * st.f_frsize, path=model_dir)
        add("gpuforge_model_disk_size_bytes", "Size of the model directory's filesystem.",
            st.f_blocks * st.f_frsize, path=model_dir)
    return render_metrics(families)


def write_atomically(path, text):
    """Replace path with text so that a reader (node_exporter's textfile collector) sees the old file or the new
    one, never half of one: a temporary file in the same directory (not named *.prom, which node_exporter would
    read), fsynced, made world-readable, then renamed over path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
