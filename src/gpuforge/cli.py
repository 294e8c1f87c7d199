"""The `gpuforge` command: provisioning on ansible-runner and the local lab."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import __version__, project_root


def _root(args: argparse.Namespace) -> Path:
    return Path(args.project).resolve() if args.project else project_root()


def _locked(args: argparse.Namespace, command: str, run) -> int:
    """Run `run()` holding the cluster lock (gpuforge.lock); exit 3 when another run holds it, 1 when the lock
    host could not be reached."""
    from . import lock

    root = _root(args)
    owner = lock.new_owner(command)
    try:
        lock.take(root, args.inventory, owner, break_lock=args.break_lock)
    except lock.LockError as exc:
        print(f"gpuforge: {exc}", file=sys.stderr)
        return 3 if exc.holder else 1
    try:
        return run()
    finally:
        lock.release(root, args.inventory, owner)


def cmd_provision(args: argparse.Namespace) -> int:
    from .runner import run_playbook

    def run() -> int:
        rc, _ = run_playbook(_root(args), args.playbook, args.inventory, limit=args.limit, tags=args.tags,
                             check=args.check)
        return rc

    if args.check:  # a dry run changes nothing: it neither needs nor takes the lock
        return run()
    return _locked(args, f"gpuforge provision {args.playbook}", run)


def cmd_upgrade_drivers(args: argparse.Namespace) -> int:
    from .runner import run_playbook

    extra = {"nvidia_driver_version": args.version, "driver_upgrade_max_unavailable": args.max_unavailable,
             "driver_upgrade_accept_downtime": args.accept_downtime}

    def run() -> int:
        rc, _ = run_playbook(_root(args), "playbooks/upgrade_drivers.yml", args.inventory, limit=args.limit,
                             extra_vars=extra)
        return rc

    return _locked(args, f"gpuforge upgrade-drivers --version {args.version}", run)


def cmd_health(args: argparse.Namespace) -> int:
    """playbooks/health.yml, read-only; the report on stdout (a table, or JSON with --json), progress on stderr.
    Exit 0 when every check passed, 1 when one failed, 2 when the checks could not run (bad inventory)."""
    import tempfile

    from . import health
    from .runner import run_playbook

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "health.json"
        rc, summary = run_playbook(_root(args), "playbooks/health.yml", args.inventory, limit=args.limit,
                                   extra_vars={"health_report_path": str(path)}, out=sys.stderr)
        if not path.exists():
            for failure in summary["failures"]:
                print(f"gpuforge health: {failure.get('host')}: {failure.get('msg')}", file=sys.stderr)
            print("gpuforge health: the checks did not run (see above)", file=sys.stderr)
            return 2
        results = json.loads(path.read_text())
    for host, stats in summary["hosts"].items():
        if stats.get("unreachable") and host not in results:
            results[host] = [health.unreachable(host)]
    print(json.dumps(results, indent=2) if args.json else health.report(results))
    return health.exit_code(results)


def cmd_lock(args: argparse.Namespace) -> int:
    from . import lock

    owner = lock.new_owner("gpuforge lock")
    rc, msgs = lock.act(_root(args), args.inventory, "break" if args.break_lock else "check", owner)
    holder = lock.holder_from(msgs)
    if args.break_lock:
        print("gpuforge: the cluster lock is removed" if rc == 0 else "gpuforge: " + "; ".join(msgs))
        return 0 if rc == 0 else 1
    if rc == 0:
        print("gpuforge: the cluster lock is free")
        return 0
    if holder is not None:
        print(f"gpuforge: the cluster lock is held by {lock.describe(holder)}")
        return 3
    print("gpuforge: could not read the cluster lock: " + "; ".join(msgs), file=sys.stderr)
    return 1


def cmd_model(args: argparse.Namespace) -> int:
    from . import tinymodel

    for name, digest in tinymodel.write(args.out).items():
        print(f"{digest}  {args.out / name}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from . import planner

    config_path = Path(args.model_dir) / "config.json" if args.model_dir else Path(args.config)
    try:
        config = planner.check_config(planner.load_config(config_path))
    except (OSError, ValueError) as exc:  # PlanError is a ValueError
        print(f"gpuforge: error: cannot use the model's config.json ({config_path}): {exc}", file=sys.stderr)
        return 2
    try:
        result = planner.plan(
            config, dtype=args.dtype or config.get("torch_dtype") or "bfloat16",
            gpu_memory_gib=args.gpu_memory_gib, gpus_per_host=args.gpus_per_host, hosts=args.hosts,
            context_len=args.context_len or int(config.get("max_position_embeddings") or 4096),
            concurrency=args.concurrency, tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp,
            gpu_memory_utilization=args.utilization, reserve_gib=args.reserve_gib,
            kv_cache_dtype=args.kv_cache_dtype)
    except planner.PlanError as exc:
        print(f"gpuforge plan: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"parameters            {result['parameters'] / 1e9:.2f} B")
        print(f"tensor x pipeline     {result['tensor_parallel_size']} x {result['pipeline_parallel_size']}")
        print(f"weights per GPU       {result['weights_gib']:.2f} GiB")
        print(f"KV cache per GPU      {result['kv_cache_gib']:.2f} GiB")
        print(f"total per GPU         {result['total_gib']:.2f} GiB of {result['usable_gib_per_gpu']:.2f} usable")
    return 0


def _topology(args: argparse.Namespace):
    from .lab import Topology

    return Topology(gpu_hosts=args.gpu_hosts, groups=args.groups, lb_hosts=args.lb_hosts,
                    gpus_per_host=args.gpus_per_host, distro=args.distro, serving_hosts=args.serving_hosts)


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.main(args, _root(args))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number above 0 and at most 1, got {text!r}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes host counts separated by commas, got {text!r}") from None
    if not sizes or sizes[0] < 2:
        raise argparse.ArgumentTypeError("--sizes: each lab needs at least 2 hosts (a GPU host and the lb)")
    return sizes


def cmd_lab(args: argparse.Namespace) -> int:
    from .lab import Lab

    root = _root(args)
    if args.lab_cmd == "up":
        Lab(root, _topology(args)).up(build_all=args.all_images)
    elif args.lab_cmd == "infra":
        Lab(root).infra(args.distros or None)
    elif args.lab_cmd == "down":
        Lab(root).down(purge=args.purge)
    elif args.lab_cmd == "status":
        rows = Lab(root).status()
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no lab hosts (run `gpuforge lab up`)")
        else:
            print(f"{'container':<20} {'state':<9} {'systemd':<10} addresses")
            for r in rows:
                print(f"{r['container']:<20} {r['state']:<9} {r['systemd']:<10} {' '.join(r['addresses'])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuforge", description=__doc__)
    p.add_argument("--version", action="version", version=f"gpuforge {__version__}")
    p.add_argument("--project", help="project checkout to run from (default: this package's checkout)")
    sub = p.add_subparsers(dest="cmd", required=True)

    prov = sub.add_parser("provision", help="run site.yml (or --playbook) against an inventory")
    prov.add_argument("-i", "--inventory", required=True, help="inventory path, e.g. inventories/prod")
    prov.add_argument("--limit", help="limit to hosts or groups (Ansible pattern)")
    prov.add_argument("--tags", help="only run these tags (comma-separated)")
    prov.add_argument("--check", action="store_true", help="dry run: --check --diff, changes nothing")
    prov.add_argument("--playbook", default="site.yml", help="playbook relative to the project (default site.yml)")
    prov.add_argument("--break-lock", action="store_true",
                      help="remove a cluster lock left by a run that is gone, then take it")
    prov.set_defaults(func=cmd_provision)

    upg = sub.add_parser("upgrade-drivers", help="rolling NVIDIA driver upgrade, one serving group at a time")
    upg.add_argument("-i", "--inventory", required=True, help="inventory path, e.g. inventories/prod")
    upg.add_argument("--version", required=True, metavar="VERSION",
                     help="exact driver package version, e.g. 535.309.01-0+deb12u1 (apt-cache madison)")
    upg.add_argument("--max-unavailable", type=int, default=1, metavar="N",
                     help="serving groups out of rotation at once (default 1)")
    upg.add_argument("--accept-downtime", action="store_true",
                     help="allow the endpoint to go down (required with a single serving group)")
    upg.add_argument("--limit", help="limit to whole serving groups (Ansible pattern)")
    upg.add_argument("--break-lock", action="store_true",
                     help="remove a cluster lock left by a run that is gone, then take it")
    upg.set_defaults(func=cmd_upgrade_drivers)

    hlt = sub.add_parser("health", help="read-only checks of GPUs, fabric, serving groups and load balancers")
    hlt.add_argument("-i", "--inventory", required=True)
    hlt.add_argument("--limit", help="only these hosts (Ansible's --limit pattern)")
    hlt.add_argument("--json", action="store_true", help="every check as JSON {host: [checks]}")
    hlt.set_defaults(func=cmd_health)

    lck = sub.add_parser("lock", help="who holds the cluster lock (exit 3 when held); --break removes it")
    lck.add_argument("-i", "--inventory", required=True, help="inventory path, e.g. inventories/prod")
    lck.add_argument("--break", dest="break_lock", action="store_true",
                     help="remove the lock (only when the run that holds it is gone)")
    lck.set_defaults(func=cmd_lock)

    plan = sub.add_parser("plan", help="weights + KV cache per GPU for a serving group; choose or check TP/PP")
    src = plan.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a model directory with config.json")
    src.add_argument("--config", help="a config.json file")
    plan.add_argument("--dtype", help="weights: bfloat16, float16, fp8, int8, int4, awq, gptq (default: config's)")
    plan.add_argument("--kv-cache-dtype", default="auto", help="auto (16-bit), fp8")
    plan.add_argument("--gpu-memory-gib", type=_positive_float, required=True, help="memory of one GPU, GiB")
    plan.add_argument("--gpus-per-host", type=_positive, required=True)
    plan.add_argument("--hosts", type=_positive, default=1, help="hosts in the serving group (default 1)")
    plan.add_argument("--context-len", type=_positive,
                      help="tokens per sequence (default: max_position_embeddings)")
    plan.add_argument("--concurrency", type=_positive, default=16, help="sequences served at once (default 16)")
    plan.add_argument("--tp", type=_positive, help="tensor parallel size to check (default: choose)")
    plan.add_argument("--pp", type=_positive, help="pipeline parallel size to check (default: choose)")
    plan.add_argument("--utilization", type=_fraction, default=0.9,
                      help="vLLM gpu_memory_utilization, above 0 and at most 1 (default 0.9)")
    plan.add_argument("--reserve-gib", type=_non_negative_float, default=2.0,
                      help="activations/CUDA graphs per GPU (default 2)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_plan)

    model = sub.add_parser("model", help="models gpuforge makes itself")
    model_sub = model.add_subparsers(dest="model_cmd", required=True)
    tiny = model_sub.add_parser("tiny", help="write the lab's tiny Llama model (random weights, own tokenizer)")
    tiny.add_argument("--out", type=Path, required=True, help="directory to write the model into")
    model.set_defaults(func=cmd_model)

    bench = sub.add_parser("bench", help="time site.yml on fresh labs of two sizes, or each tuning lever (--levers)",
                           description="Replaces the running lab (except with --levers). Prints a table; writes "
                                       "bench.json and the ansible progress log under --out.")
    bench.add_argument("--sizes", type=_sizes, default=[5, 13], help="lab sizes in hosts, lb included (default 5,13)")
    bench.add_argument("--serving-hosts", type=int, default=4,
                       help="GPU hosts in serving groups at every size (default 4); the rest get the host stack")
    bench.add_argument("--groups", type=int, default=2, help="serving groups (default 2)")
    bench.add_argument("--lb-hosts", type=int, default=1, help="load-balancer hosts (default 1)")
    bench.add_argument("--distro", default="12", choices=["12", "13"], help="Debian release of the hosts (default 12)")
    bench.add_argument("--noop-runs", type=_positive, default=3,
                       help="no-op re-runs per size; the size's figure is the median run (default 3)")
    bench.add_argument("--levers", action="store_true",
                       help="on the running, provisioned lab: the no-op re-run with each lever set back to default")
    bench.add_argument("--out", type=Path, default=None, help="directory for bench.json (default runs/bench-<UTC>)")
    bench.set_defaults(func=cmd_bench)

    lab = sub.add_parser("lab", help="the local lab cluster of systemd containers")
    lab_sub = lab.add_subparsers(dest="lab_cmd", required=True)
    up = lab_sub.add_parser("up", help="build images if needed, start the lab hosts, write inventories/lab")
    up.add_argument("--gpu-hosts", type=int, default=4, help="GPU hosts (default 4)")
    up.add_argument("--groups", type=int, default=2, help="serving groups the GPU hosts split into (default 2)")
    up.add_argument("--serving-hosts", type=int, default=None,
                    help="GPU hosts in serving groups, the first ones (default: all); the rest get the host stack only")
    up.add_argument("--lb-hosts", type=int, default=1, help="load-balancer hosts (default 1)")
    up.add_argument("--gpus-per-host", type=int, default=2, help="logical GPUs each lab host declares (default 2)")
    up.add_argument("--distro", default="12", choices=["12", "13"], help="Debian release of the hosts (default 12)")
    up.add_argument("--all-images", action="store_true", help="also build the other Debian release's image")
    infra = lab_sub.add_parser("infra", help="Docker engine, networks, apt cache and images, without hosts")
    infra.add_argument("distros", nargs="*", metavar="{12,13}", help="images to build (default: all)")
    down = lab_sub.add_parser("down", help="remove the lab's containers, networks, inventory, key and vault")
    down.add_argument("--purge", action="store_true", help="also remove lab images and stop the apt cache")
    status = lab_sub.add_parser("status", help="show the lab hosts")
    status.add_argument("--json", action="store_true")
    lab.set_defaults(func=cmd_lab)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not dump tracebacks on users
        from .host import HostError
        from .lab import LabError

        if isinstance(exc, HostError | LabError | FileNotFoundError):
            print(f"gpuforge: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
