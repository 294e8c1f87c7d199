"""`gpuforge bench`: what site.yml costs on the lab, at two sizes, and what each tuning lever gives.

Sizes: for each lab size (hosts in all) the bench removes the running lab, brings up a fresh one, runs
site.yml (the first run) and runs it again (the no-op re-run) `--noop-runs` times, and records for each run:
wall time, tasks, host results by outcome, time per task per host, and each host's total. The no-op figure of
a size is its median run (the same no-op on the same lab varies by 10-15% from run to run), and the ratios
between sizes come with the range the repeats allow.

Levers (`--levers`): on the lab as it stands (provisioned), the no-op re-run once with the project's
ansible.cfg and once per lever with that one setting put back to Ansible's default, through the environment
(ANSIBLE_*), so each figure is the lever's own share. Fact gathering is measured apart, with the setup module.

The aggregation (`profile`, `compare`, `table`) is pure, so unit tests feed it summaries. Targets are
printed against the figures, never asserted: a 2-core machine's timings are not a test (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

# The issue's targets: a no-op re-run costs little beside the first run, and adding hosts costs little.
NOOP_SHARE_MAX = 0.12  # no-op re-run / first run, on the smallest size
NOOP_SECONDS_MAX = 60.0  # no-op re-run on the 5-host lab
SCALING_MAX = 1.6  # no-op re-run, largest size / smallest size

# Each lever set back to Ansible's own default (or, for forks, below the host count), one at a time;
# ansible.cfg holds the project's values.
LEVERS: dict[str, dict[str, str]] = {
    "project settings (ansible.cfg)": {},
    "pipelining off": {"ANSIBLE_PIPELINING": "False"},
    "no SSH ControlPersist": {"ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ServerAliveInterval=30"},
    # Ansible's default is 5, as many as the 5-host lab's hosts; 2 shows what forks below the host count cost.
    "forks 2 (below the host count)": {"ANSIBLE_FORKS": "2"},
    "no fact cache (gathering implicit)": {"ANSIBLE_GATHERING": "implicit", "ANSIBLE_CACHE_PLUGIN": "memory"},
}
# Measured only where it is installed (pip install mitogen): not a project dependency (docs/performance.md).
# Its SSH layer ignores the inventory's host-key setting, so the lab's is passed through the environment.
MITOGEN_LEVER = "mitogen strategy (not adopted)"


# Actions that run on the controller only: a host result of one of these runs no module on the host.
CONTROLLER_ACTIONS = {"set_fact", "debug", "assert", "fail", "include_tasks", "import_tasks", "include_role",
                      "import_role", "meta", "add_host", "group_by", "include_vars", "validate_argument_spec"}


def _short_action(action: str) -> str:
    return action.rsplit(".", 1)[-1]


def profile(summary: dict) -> dict:
    """One run's figures from its summary (runner.run_playbook): wall time, tasks, time per task per host."""
    rows = summary.get("host_results", [])
    outcomes = Counter(r["outcome"] for r in rows)
    per_host: dict[str, float] = defaultdict(float)
    per_task: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        per_host[r["host"]] += r["seconds"]
        hosts = per_task.setdefault((r["play"], r["task"]), {})
        hosts[r["host"]] = round(hosts.get(r["host"], 0.0) + r["seconds"], 3)  # loops/includes: summed
    tasks = []
    for (play, task), hosts in per_task.items():
        secs = list(hosts.values())
        tasks.append({"play": play, "task": task, "hosts": len(secs), "total_s": round(sum(secs), 3),
                      "mean_s": round(sum(secs) / len(secs), 3), "max_s": round(max(secs), 3),
                      "per_host_s": hosts})
    tasks.sort(key=lambda t: t["total_s"], reverse=True)
    wall = summary.get("duration_s")
    # A task takes at least its slowest host's time; what the run spends beyond the sum of those is the
    # controller's serial part between tasks (variables, forking the workers, results, callbacks) and the
    # playbook's own start, which on a busy controller grows with the host count.
    in_tasks = round(sum(t["max_s"] for t in tasks), 1)
    return {
        "wall_s": wall,
        "in_tasks_s": in_tasks,
        "between_tasks_s": round(wall - in_tasks, 1) if wall else None,
        "rc": summary.get("rc"),
        "controller_cpu_s": summary.get("controller_cpu_s"),
        "hosts_cpu_s": summary.get("hosts_cpu_s"),
        "tasks": summary.get("tasks"),
        "host_results": len(rows),
        "outcomes": dict(sorted(outcomes.items())),
        "changed": [f"{r['host']}: {r['task']}" for r in rows if r["outcome"] == "changed"],
        "per_host_s": {h: round(s, 1) for h, s in sorted(per_host.items())},
        # Host results and module runs on the host (neither skipped nor a controller-side action), per host.
        "per_host_results": dict(sorted(Counter(r["host"] for r in rows).items())),
        "per_host_module_runs": dict(sorted(Counter(
            r["host"] for r in rows
            if r["outcome"] != "skipped" and _short_action(r.get("action", "")) not in CONTROLLER_ACTIONS).items())),
        "per_task": tasks,
    }


def median_run(runs: list[dict]) -> dict:
    """The no-op re-run that stands for a size: the median by wall time (the lower one of an even count, so
    the figure is always one real run's)."""
    walls = sorted(runs, key=lambda p: p["wall_s"])
    return walls[(len(walls) - 1) // 2]


def _walls(size: dict) -> list[float]:
    return [r["wall_s"] for r in size.get("noop_runs") or [size["noop"]]]


def compare(sizes: list[dict]) -> dict:
    """Ratios between the smallest and largest size, and each target against its figure. A size's no-op is its
    median run; with repeats, the scaling ratio also gets its range (fastest large / slowest small to slowest
    large / fastest small)."""
    ok = [s for s in sizes if s["first"]["rc"] == 0 and s["noop"]["rc"] == 0]
    out: dict = {"targets": []}
    if not ok:
        return out
    small = min(ok, key=lambda s: s["hosts"])
    big = max(ok, key=lambda s: s["hosts"])
    share = small["noop"]["wall_s"] / small["first"]["wall_s"]
    out["noop_share_of_first"] = round(share, 3)
    out["targets"].append({"target": f"no-op re-run <= {NOOP_SHARE_MAX} x first run ({small['hosts']} hosts)",
                           "value": round(share, 3), "met": share <= NOOP_SHARE_MAX})
    out["targets"].append({"target": f"no-op re-run <= {NOOP_SECONDS_MAX:.0f} s ({small['hosts']} hosts)",
                           "value": small["noop"]["wall_s"], "met": small["noop"]["wall_s"] <= NOOP_SECONDS_MAX})
    if big is not small:
        noop_ratio = big["noop"]["wall_s"] / small["noop"]["wall_s"]
        out["scaling"] = {"from_hosts": small["hosts"], "to_hosts": big["hosts"],
                          "first_run_ratio": round(big["first"]["wall_s"] / small["first"]["wall_s"], 3),
                          "noop_ratio": round(noop_ratio, 3),
                          "noop_ratio_range": [round(min(_walls(big)) / max(_walls(small)), 3),
                                               round(max(_walls(big)) / min(_walls(small)), 3)]}
        target = f"no-op re-run, {big['hosts']} hosts <= {SCALING_MAX} x {small['hosts']} hosts"
        out["targets"].append({"target": target,
                               "value": round(noop_ratio, 3), "met": noop_ratio <= SCALING_MAX})
    return out


def table(result: dict, top: int = 8) -> str:
    """The human-readable report of a bench result (the JSON holds everything)."""
    lines = []
    if result.get("sizes"):
        lines.append(f"{'hosts':>5} {'shape':<28} {'lab up':>7} {'first run':>10} {'no-op (median)':>15} "
                     f"{'tasks':>6} {'host results':>12} {'no-op changed':>13}  no-op CPU s (controller/hosts)")
        for s in result["sizes"]:
            first, noop = s["first"], s["noop"]
            walls = _walls(s)
            spread = f"{noop['wall_s']:.1f}s" + (f" ({min(walls):.0f}-{max(walls):.0f})" if len(walls) > 1 else "")
            changed = max(len(r["changed"]) for r in s.get("noop_runs") or [noop])
            lines.append(f"{s['hosts']:>5} {s['shape']:<28} {s['lab_up_s']:>6.0f}s {first['wall_s']:>9.0f}s "
                         f"{spread:>15} {first['tasks']:>6} {first['host_results']:>12} "
                         f"{changed:>13}  {noop.get('controller_cpu_s')}/{noop.get('hosts_cpu_s')}")
            if len(walls) > 1:
                lines.append(f"{'':>5} no-op runs: " + ", ".join(
                    f"{r['wall_s']:.1f}s ({r.get('controller_cpu_s')}/{r.get('hosts_cpu_s')} CPU s, "
                    f"changed={len(r['changed'])})" for r in s["noop_runs"]))
        for s in result["sizes"]:
            noop = s["noop"]
            gpu = [h for h in noop.get("per_host_results", {}) if h.startswith("gpu-")]
            if gpu:
                results = sorted(noop["per_host_results"][h] for h in gpu)
                runs = sorted(noop.get("per_host_module_runs", {}).get(h, 0) for h in gpu)
                hosts = len(noop["per_host_results"]) - ("localhost" in noop["per_host_results"])
                cpu = noop.get("controller_cpu_s")
                lines.append(f"{s['hosts']:>5} hosts, no-op (median run), per GPU host: host results "
                             f"{results[0]}-{results[-1]}, module runs {runs[0]}-{runs[-1]}; controller CPU s per "
                             f"host {round(cpu / hosts, 2) if cpu is not None and hosts else None}")
        for s in result["sizes"]:
            for run in ("first", "noop"):
                p = s[run]
                what = "first run" if run == "first" else "no-op re-run (the median run)"
                lines.append(f"\nslowest tasks, {s['hosts']} hosts, {what} "
                             "(seconds: all hosts together, mean and max per host)")
                if p.get("between_tasks_s") is not None:
                    lines.append(f"  of its {p['wall_s']:.1f} s: {p['in_tasks_s']:.1f} s in tasks (each task's slowest "
                                 f"host), {p['between_tasks_s']:.1f} s between them (the controller's main loop)")
                for t in p["per_task"][:top]:
                    lines.append(f"  {t['total_s']:>7.1f} {t['mean_s']:>6.1f} {t['max_s']:>6.1f}  "
                                 f"{t['task'][:70]}  [{t['hosts']} hosts]")
    if result.get("levers"):
        lines.append("\nlever (set back to Ansible's default)      no-op re-run   vs project   "
                     "CPU s (controller/hosts)")
        base = result["levers"][0]["wall_s"]
        for lev in result["levers"]:
            lines.append(f"  {lev['lever']:<40} {lev['wall_s']:>8.1f} s   {lev['wall_s'] / base:>6.2f} x   "
                         f"{lev.get('controller_cpu_s')}/{lev.get('hosts_cpu_s')}")
    if result.get("facts"):
        lines.append("\nfact gathering, every lab host (setup module)")
        for subset, secs in result["facts"].items():
            lines.append(f"  gather_subset={subset:<24} {secs:>6.1f} s")
    comp = result.get("compare") or {}
    if comp.get("scaling"):
        sc = comp["scaling"]
        rng = sc.get("noop_ratio_range")
        lines.append(f"\nscaling {sc['from_hosts']} -> {sc['to_hosts']} hosts: first run x{sc['first_run_ratio']}, "
                     f"no-op re-run x{sc['noop_ratio']} (medians"
                     + (f"; x{rng[0]}-x{rng[1]} across the repeats)" if rng and rng[0] != rng[1] else ")"))
    for t in comp.get("targets", []):
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']}")
    return "\n".join(lines)


def machine() -> dict:
    mem_kib = 0
    cpu = ""
    with contextlib.suppress(OSError):
        mem_kib = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                        if ln.startswith("MemTotal:")), 0)
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version()}


# Docker's containers' CPU time (cgroup v1 cpuacct, as on this project's machines); None where absent.
DOCKER_CPUACCT = Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage")


def _hosts_cpu_s() -> float | None:
    try:
        return int(DOCKER_CPUACCT.read_text()) / 1e9
    except (OSError, ValueError):
        return None


def _run(root: Path, out_dir: Path, label: str, log, env: dict | None = None) -> tuple[int, dict]:
    """site.yml on the lab, with the CPU it cost: the controller's (ansible-playbook and its ssh clients, a
    child of this process) and the lab hosts' (every container, serving's idle load included)."""
    from .runner import run_playbook

    log.write(f"\n=== {label}\n")
    log.flush()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    hosts_before = _hosts_cpu_s()
    rc, summary = run_playbook(root, "site.yml", str(root / "inventories" / "lab"), runs_dir=out_dir / "runs",
                               out=log, env_overrides=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    hosts_after = _hosts_cpu_s()
    summary["controller_cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    summary["hosts_cpu_s"] = (round(hosts_after - hosts_before, 1)
                              if hosts_before is not None and hosts_after is not None else None)
    return rc, summary


def bench_size(root: Path, hosts: int, args, out_dir: Path, log) -> dict:
    from . import host
    from .lab import Lab, Topology

    gpu = hosts - args.lb_hosts
    topo = Topology(gpu_hosts=gpu, groups=args.groups, lb_hosts=args.lb_hosts, distro=args.distro,
                    serving_hosts=min(args.serving_hosts, gpu))
    lab = Lab(root, topo)
    print(f"[bench] {hosts} hosts: removing the running lab, bringing up a fresh one", flush=True)
    host.ensure_docker()  # removing the old lab needs the engine, which a fresh machine has not started
    lab.down()
    t0 = time.monotonic()
    lab.up()
    lab_up = time.monotonic() - t0
    results: dict = {}
    runs = ["first"] + [f"noop {i}" for i in range(1, args.noop_runs + 1)]
    for run in runs:
        what = "first run" if run == "first" else f"no-op re-run {run.split()[1]} of {args.noop_runs}"
        print(f"[bench] {hosts} hosts: site.yml, {what} (progress in {log.name})", flush=True)
        rc, summary = _run(root, out_dir, f"{hosts} hosts, {run}", log)
        p = profile(summary)
        if run == "first":
            results["first"] = p
        else:
            results.setdefault("noop_runs", []).append(p)
        print(f"[bench] {hosts} hosts: {what}: {summary['duration_s']:.1f} s, rc={rc}", flush=True)
        if rc != 0:
            break
    noops = results.get("noop_runs", [])
    # A failed run stands for the size, so compare() leaves the size out and main() reports it.
    failed = [r for r in noops if r["rc"] != 0]
    results["noop"] = failed[0] if failed else median_run(noops) if noops else profile({"duration_s": 0, "rc": None})
    serving = sum(len(v) for v in topo.serving_groups.values())
    shape = f"{gpu} gpu ({serving} serving), {args.lb_hosts} lb"
    return {"hosts": hosts, "shape": shape, "lab_up_s": round(lab_up, 1), **results}


def bench_facts(root: Path) -> dict[str, float]:
    """Wall time of the setup module on every lab host, per gather_subset (no cache: setup always runs)."""
    from .runner import lab_vault_password

    out = {}
    bindir = Path(sys.executable).parent
    env = {**os.environ, "ANSIBLE_CONFIG": str(root / "ansible.cfg")}
    vault = lab_vault_password(root, root / "inventories" / "lab")
    if vault:
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(vault)
    for subset in ("min", "min,virtual,network", "all"):
        t0 = time.monotonic()
        proc = subprocess.run([str(bindir / "ansible"), "all:!localhost", "-i", "inventories/lab", "-m", "setup",
                               "-a", f"gather_subset={subset}"], cwd=root, capture_output=True, text=True,
                              env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"setup gather_subset={subset} failed: {proc.stderr[-500:] or proc.stdout[-500:]}")
        out[subset] = round(time.monotonic() - t0, 2)
    return out


def main(args, root: Path) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = (args.out or root / "runs" / f"bench-{stamp}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"started": stamp, "machine": machine(), "sizes": []}
    log_path = out_dir / "progress.log"
    with log_path.open("w") as log:
        if args.levers:
            if not (root / "inventories" / "lab" / "hosts.yml").exists():
                print("gpuforge: error: --levers measures the running lab; bring it up and provision it first "
                      "(make lab)", file=sys.stderr)
                return 2
            result["levers"] = []
            levers = dict(LEVERS)
            try:
                import ansible_mitogen

                levers[MITOGEN_LEVER] = {
                    "ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
                    "ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_HOST_KEY_CHECKING": "False"}
            except ImportError:
                print(f"[bench] {MITOGEN_LEVER}: skipped, mitogen is not installed", flush=True)
            levers["project settings again (the run-to-run noise)"] = {}
            for name, env in levers.items():
                print(f"[bench] no-op re-run with {name}", flush=True)
                rc, summary = _run(root, out_dir, f"lever: {name}", log, env)
                p = profile(summary)
                result["levers"].append({"lever": name, "env": env, "wall_s": p["wall_s"], "rc": rc,
                                         "changed": len(p["changed"]), "controller_cpu_s": p["controller_cpu_s"],
                                         "hosts_cpu_s": p["hosts_cpu_s"]})
                print(f"[bench]   {p['wall_s']:.1f} s, rc={rc}", flush=True)
            print("[bench] fact gathering per subset", flush=True)
            result["facts"] = bench_facts(root)
        else:
            # Largest first, so the bench leaves the smallest (the default) lab up, provisioned, for --levers.
            for hosts in sorted(args.sizes, reverse=True):
                result["sizes"].insert(0, bench_size(root, hosts, args, out_dir, log))
                (out_dir / "bench.json").write_text(json.dumps(result, indent=2))  # partial results survive
            result["compare"] = compare(result["sizes"])
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    print("\n" + table(result))
    print(f"\n[bench] JSON: {os.path.relpath(out_dir / 'bench.json')}; ansible progress: "
          f"{os.path.relpath(log_path)}")
    failed = [s["hosts"] for s in result["sizes"] if s["first"]["rc"] != 0 or s["noop"]["rc"] != 0]
    failed += [f"{s['hosts']} hosts, a no-op re-run with changes" for s in result["sizes"]
               if any(r["changed"] for r in s.get("noop_runs", []))]
    failed += [lev["lever"] for lev in result.get("levers", []) if lev["rc"] != 0]
    if failed:
        print(f"[bench] runs failed: {failed}", file=sys.stderr)
        return 1
    return 0
