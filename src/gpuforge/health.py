"""GPU health checks: what a host's parsed `nvidia-smi -q -x` (module gpu_facts) and its kernel log say about
each GPU, as checks with a status (pass / warn / fail), the observed value, the threshold and a one-line fix.

Pure logic, no I/O: the health playbook gathers the facts, this module judges them. Thresholds and their
sources:

- Fatal XIDs: the XIDs NVIDIA's "XID Errors" catalogue (docs.nvidia.com/deploy/xid-errors) marks as needing a
  GPU reset, a node reboot or hardware service (48 double-bit ECC, 79 fallen off the bus, 92 high single-bit
  ECC rate, 119/120 GSP errors, ...). Any of them since boot fails the GPU.
- Row remapping (A100 and later) and page retirement (earlier GPUs), from NVIDIA's "GPU Memory Error
  Management" guide: a pending remap or retirement needs a GPU reset before the memory is safe; a remapping
  failure means the GPU should be serviced (the guide's RMA policy). The guide gives row remapping up to 512
  remappings for the frame buffer, so uncorrectable remapped rows above `remapped_rows_uncorrectable_max`
  (512) fail too.
- Volatile uncorrectable ECC errors since the driver loaded: any is a failure (the memory returned bad data).
- Clock event reasons: a hardware slowdown or thermal slowdown active now fails (power brake, thermal);
  idle, application clocks and power cap are normal.
- PCIe: a link narrower than the GPU's maximum fails (a badly seated card or riser); a lower generation is only
  a warning while the GPU is idle, because GPUs train their link down to save power when idle.
- Fabric: every port in use Active/LinkUp at the expected rate (`rdma_expected_rate_gbps`; 0 checks the state
  only), and its error counters (link downed, symbol errors, link error recovery, receive errors) not rising
  between two reads a few seconds apart: counts left from an old incident are history, a rise is a live fault.
  Ports the operator lists as unused (`mlx5_1/1`) are not checked.
- Serving: every host of a serving group alive in its Ray cluster with its GPUs; the head answers a real
  one-token completion with the key (its latency reported); each load balancer has every group up and in
  rotation, and answers its health path.
"""

from __future__ import annotations

FATAL_XIDS = (48, 56, 57, 58, 62, 63, 64, 65, 68, 69, 73, 74, 79, 80, 81, 92, 119, 120)
SLOWDOWN_REASONS = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown", "sw_thermal_slowdown")
DEFAULT_THRESHOLDS = {
    "remapped_rows_uncorrectable_max": 512,
    "volatile_uncorrected_ecc_max": 0,
    "fatal_xids": FATAL_XIDS,
}


def check(name, status, observed, threshold, fix, gpu=None):
    return {"check": name, "gpu": gpu, "status": status, "observed": observed, "threshold": threshold,
            "fix": fix if status != "pass" else ""}


def gpu_checks(facts, gpu_count, driver_version=None, driver_ok=None, xids=(), fabricmanager_active=None,
               thresholds=None):
    """Checks for one host. `facts` is gpu_facts' `nvidia_smi` (parsed nvidia-smi -q -x) or None when
    nvidia-smi could not run; `driver_version` the pin and `driver_ok` whether the loaded driver satisfies it
    (gpu_facts' driver_matches); `xids` the kernel log's XID lines with their GPU (gpu_facts' xids);
    `fabricmanager_active` True/False on NVSwitch systems, None where there is no NVSwitch."""
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    if not facts:
        return [check("nvidia_smi", "fail", "nvidia-smi did not run", "answers",
                      "load the driver (reboot after an install) and check `nvidia-smi` on the host")]
    gpus = facts.get("gpus") or []
    out = [check("gpu_count", "pass" if len(gpus) == int(gpu_count) else "fail", len(gpus), int(gpu_count),
                 "a GPU is missing from the bus or from the driver: see `nvidia-smi -L` and the kernel log; "
                 "reseat or service it, or correct gpu_count")]
    if driver_version:
        ok = bool(driver_ok)
        out.append(check("driver_version", "pass" if ok else "fail", facts.get("driver_version"), str(driver_version),
                         "the loaded driver is not the pinned one: run `gpuforge upgrade-drivers` (or reboot "
                         "into the installed driver)"))
    if fabricmanager_active is not None:
        out.append(check("fabricmanager", "pass" if fabricmanager_active else "fail",
                         "active" if fabricmanager_active else "inactive", "active",
                         "start nvidia-fabricmanager (`systemctl start nvidia-fabricmanager`): without it an "
                         "NVSwitch system's GPUs cannot run CUDA"))
    fatal = set(t["fatal_xids"])
    for g in gpus:
        i = g.get("index")
        out.append(check("persistence_mode", "pass" if g.get("persistence_mode") else "fail",
                         "on" if g.get("persistence_mode") else "off", "on",
                         "enable nvidia-persistenced (role nvidia_driver) so the driver stays initialised", i))
        rows = g.get("remapped_rows") or {}
        pages = g.get("retired_pages") or {}
        pending = bool(rows.get("pending")) or bool(pages.get("pending"))
        out.append(check("memory_pending_remap", "fail" if pending else "pass",
                         "pending" if pending else "none", "none",
                         "drain the GPU and reset it (`nvidia-smi -r -i N`, or reboot) to apply the pending "
                         "row remap / page retirement", i))
        out.append(check("memory_remap_failure", "fail" if rows.get("failure") else "pass",
                         "failed" if rows.get("failure") else "none", "none",
                         "row remapping failed: the GPU has run out of spare rows; take it out of service and "
                         "open an RMA", i))
        unc = rows.get("uncorrectable")
        if unc is not None:
            limit = t["remapped_rows_uncorrectable_max"]
            out.append(check("remapped_rows_uncorrectable", "fail" if unc > limit else "pass", unc, f"<= {limit}",
                             "too many rows remapped for uncorrectable errors: open an RMA for the GPU", i))
        ecc = (g.get("ecc") or {}).get("volatile_uncorrected")
        if ecc is not None:
            limit = t["volatile_uncorrected_ecc_max"]
            out.append(check("ecc_volatile_uncorrectable", "fail" if ecc > limit else "pass", ecc, f"<= {limit}",
                             "uncorrectable memory errors since the driver loaded: drain the GPU, reset it, and "
                             "watch whether they return (then RMA)", i))
        reasons = g.get("clock_event_reasons_active")
        if reasons is not None:
            slow = [r for r in reasons if r in SLOWDOWN_REASONS]
            out.append(check("clock_slowdown", "fail" if slow else "pass", ", ".join(slow) or "none", "none",
                             "the GPU is throttled by hardware: check cooling, fans, inlet temperature and the "
                             "power supply", i))
        pcie = g.get("pcie") or {}
        if pcie.get("width_current") is not None and pcie.get("width_max") is not None:
            ok = pcie["width_current"] >= pcie["width_max"]
            out.append(check("pcie_width", "pass" if ok else "fail", f"x{pcie['width_current']}",
                             f"x{pcie['width_max']}", "the PCIe link is narrower than the GPU's: reseat the GPU "
                             "or its riser, check the slot", i))
        if pcie.get("gen_current") is not None and pcie.get("gen_max") is not None:
            low = pcie["gen_current"] < pcie["gen_max"]
            idle = "gpu_idle" in (reasons or [])
            out.append(check("pcie_gen", "pass" if not low else ("warn" if idle else "fail"),
                             f"gen{pcie['gen_current']}", f"gen{pcie['gen_max']}",
                             "the PCIe link runs below the GPU's generation under load: check the slot, riser "
                             "and BIOS link settings" if not idle else
                             "idle GPUs train their link down to save power; check again under load", i))
    seen = {}
    for x in xids or ():
        if x.get("xid") in fatal:
            seen.setdefault(x.get("gpu"), []).append(x["xid"])
    for g in gpus:
        found = seen.pop(g.get("index"), [])
        out.append(check("xid_fatal", "fail" if found else "pass",
                         ", ".join(str(v) for v in sorted(set(found))) or "none", "none since boot",
                         "a fatal XID since boot: drain the GPU, read `journalctl -k | grep Xid`, reset or reboot, "
                         "and service the GPU if it returns", g.get("index")))
    for pci, found in seen.items():  # an XID for a device nvidia-smi no longer lists (fallen off the bus)
        out.append(check("xid_fatal", "fail", ", ".join(str(v) for v in sorted(set(found))), "none since boot",
                         f"a fatal XID from {pci}, which nvidia-smi does not list: the GPU has left the bus; "
                         "reboot the host and service the GPU", pci))
    return out


def dcgm_checks(rc, output):
    """`dcgmi diag -r 1` (DCGM's quick diagnostic, where DCGM is installed): a failure when it exits non-zero or
    any row of its result table ("| Persistence Mode | Fail |") reads Fail; the failed rows are the observed
    value."""
    failed = []
    for line in (output or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] and cells[1].startswith("Fail"):
            failed.append(cells[0])
    ok = rc == 0 and not failed
    observed = ", ".join(failed) if failed else ("pass" if rc == 0 else f"exit status {rc}")
    return [check("dcgm_diag", "pass" if ok else "fail", observed, "pass",
                  "read `dcgmi diag -r 1` on the host and fix what it names (install DCGM and start "
                  "nvidia-dcgm first, or set health_dcgm_diag: false where DCGM is not installed)")]


def fabric_checks(first, second=None, expected_rate_gbps=0, unused_ports=()):
    """Checks for one host's RDMA ports: `first` and `second` are two reads of ib_facts' sysfs ports
    ({device: {ports: {n: {state, physical_state, rate_gbps, counters}}}}), `unused_ports` names like
    "mlx5_1/1" that are not cabled on purpose."""
    out = []
    unused = {str(u) for u in unused_ports or ()}
    for dev, info in sorted((first or {}).items()):
        for n, port in sorted((info.get("ports") or {}).items(), key=lambda kv: str(kv[0])):
            name = f"{dev}/{n}"
            if name in unused:
                continue
            state, phys = port.get("state") or "?", port.get("physical_state") or "?"
            up = state.lower() == "active" and phys.lower() == "linkup"
            out.append(check("port_state", "pass" if up else "fail", f"{state}/{phys}", "Active/LinkUp",
                             f"{name} is not up: check its cable and switch port, or list it in "
                             "health_unused_ports if it is not cabled on purpose", name))
            if up and expected_rate_gbps:
                rate = port.get("rate_gbps")
                out.append(check("port_rate", "pass" if rate == expected_rate_gbps else "fail", rate,
                                 expected_rate_gbps, f"{name} trained at {rate} Gb/s: reseat or replace the cable "
                                 "or transceiver, check the switch port", name))
            later = (((second or {}).get(dev) or {}).get("ports") or {}).get(n) or {}
            before, after = port.get("counters") or {}, later.get("counters") or {}
            rising = {k: after[k] - before[k] for k in sorted(before)
                      if before[k] is not None and after.get(k) is not None and after[k] > before[k]}
            if second is not None and before:
                out.append(check("port_errors_rising", "fail" if rising else "pass",
                                 ", ".join(f"{k} +{v}" for k, v in rising.items()) or "steady", "steady",
                                 f"{name} is taking link errors now: check the cable, transceiver and switch "
                                 "port", name))
    return out


def serving_checks(group, nodes, expected, gpu_count, completion_status, latency_s=None):
    """Checks for a serving group's head: `nodes` is `ray list nodes --format json` (alive ones), `expected`
    {host: fabric address} of the group, `completion_status` the HTTP status of a one-token completion (0 when
    nothing answered)."""
    alive = {n.get("node_ip"): n for n in nodes or []}
    out = []
    for host, address in expected.items():
        node = alive.get(address)
        gpus = ((node or {}).get("resources_total") or {}).get("GPU")
        ok = node is not None and gpus is not None and int(gpus) == int(gpu_count)
        observed = "not alive" if node is None else f"alive, {int(gpus or 0)} GPUs"
        out.append(check("ray_node", "pass" if ok else "fail", observed, f"alive, {int(gpu_count)} GPUs",
                         f"{host} is not in {group}'s Ray cluster with its GPUs: `systemctl status "
                         f"ray-worker` (or ray-head) and `journalctl -u ray-worker` on {host}", host))
    ok = completion_status == 200
    out.append(check("vllm_completion", "pass" if ok else "fail",
                     f"HTTP {completion_status}" + (f" in {latency_s:.2f} s" if ok and latency_s is not None else ""),
                     "HTTP 200", f"{group}'s vLLM does not answer a completion: `journalctl -u vllm` on its head",
                     group))
    return out


def lb_checks(servers, groups, endpoint_status):
    """Checks for a load balancer: `servers` is serving_lb's stats ({group: {up, admin}}), `groups` the serving
    groups it should carry, `endpoint_status` the HTTP status of its health path (0 when nothing answered)."""
    out = []
    for group in groups:
        server = (servers or {}).get(group)
        if server is None:
            observed = "missing"
        else:
            observed = ("up" if server.get("up") else "down") + f", {server.get('admin', '?')}"
        ok = server is not None and server.get("up") and server.get("admin") == "ready"
        out.append(check("lb_group", "pass" if ok else "fail", observed, "up, ready",
                         f"{group} is out of rotation: a drained group goes back with serving_lb's set_state; a "
                         f"down one is not answering its readiness check (see {group}'s vllm_completion)", group))
    out.append(check("endpoint", "pass" if endpoint_status == 200 else "fail", f"HTTP {endpoint_status}", "HTTP 200",
                     "the endpoint's health path does not answer: `systemctl status haproxy` on the load balancer"))
    return out


_RANK = {"fail": 0, "warn": 1, "pass": 2}


def worst(checks):
    """The worst status of some checks: fail > warn > pass."""
    statuses = {c["status"] for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


def exit_code(results):
    """0 when every check of every host passed (warnings included), 1 when any failed."""
    return 1 if any(worst(checks) == "fail" for checks in results.values()) else 0


def failures(results):
    """{host: [checks]} -> one line per failed check: "gpu-03: memory_pending_remap [GPU 1]: pending (want none)"."""
    lines = []
    for host in sorted(results):
        for c in results[host] or ():
            if c["status"] == "fail":
                where = "" if c["gpu"] is None else (f" [GPU {c['gpu']}]" if isinstance(c["gpu"], int)
                                                       else f" [{c['gpu']}]")
                lines.append(f"{host}: {c['check']}{where}: {c['observed']} (want {c['threshold']})")
    return lines


def unreachable(host):
    return check("reachable", "fail", "unreachable", "reachable over SSH",
                 f"the controller cannot reach {host}: check that it is up and that SSH answers")


def report(results):
    """{host: [checks]} as the terminal table: hosts with failures first, then warnings; on each host its
    failed and warned checks (fail first) with observed value, threshold and fix, and a count of the passes."""
    lines = []
    hosts = sorted(results, key=lambda h: (_RANK[worst(results[h])], h))
    for host in hosts:
        checks = results[host]
        bad = sorted((c for c in checks if c["status"] != "pass"),
                     key=lambda c: (_RANK[c["status"]], c["check"], str(c["gpu"])))
        passed = len(checks) - len(bad)
        lines.append(f"{host}: {worst(checks).upper()} ({passed} of {len(checks)} checks passed)")
        for c in bad:
            where = "" if c["gpu"] is None else f" [{c['gpu']}]"
            lines.append(f"  {c['status'].upper():<4}  {c['check']}{where}: {c['observed']} (want {c['threshold']})")
            lines.append(f"        fix: {c['fix']}")
    failed = sum(worst(results[h]) == "fail" for h in results)
    lines.append(f"{len(results)} hosts, {failed} failing")
    return "\n".join(lines)
