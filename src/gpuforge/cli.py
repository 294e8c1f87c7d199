"""The `gpuforge` command: provisioning on ansible-runner and the local lab."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__, project_root


def _root(args: argparse.Namespace) -> Path:
    return Path(args.project).resolve() if args.project else project_root()


def cmd_provision(args: argparse.Namespace) -> int:
    from .runner import run_playbook

    rc, _ = run_playbook(_root(args), args.playbook, args.inventory, limit=args.limit, tags=args.tags,
                         check=args.check)
    return rc


def _topology(args: argparse.Namespace):
    from .lab import Topology

    return Topology(gpu_hosts=args.gpu_hosts, groups=args.groups, lb_hosts=args.lb_hosts,
                    gpus_per_host=args.gpus_per_host, distro=args.distro)


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
    prov.set_defaults(func=cmd_provision)

    lab = sub.add_parser("lab", help="the local lab cluster of systemd containers")
    lab_sub = lab.add_subparsers(dest="lab_cmd", required=True)
    up = lab_sub.add_parser("up", help="build images if needed, start the lab hosts, write inventories/lab")
    up.add_argument("--gpu-hosts", type=int, default=4, help="GPU hosts (default 4)")
    up.add_argument("--groups", type=int, default=2, help="serving groups the GPU hosts split into (default 2)")
    up.add_argument("--lb-hosts", type=int, default=1, help="load-balancer hosts (default 1)")
    up.add_argument("--gpus-per-host", type=int, default=2, help="logical GPUs each lab host declares (default 2)")
    up.add_argument("--distro", default="12", choices=["12", "13"], help="Debian release of the hosts (default 12)")
    up.add_argument("--all-images", action="store_true", help="also build the other Debian release's image")
    infra = lab_sub.add_parser("infra", help="Docker engine, networks, apt cache and images, without hosts")
    infra.add_argument("distros", nargs="*", metavar="{12,13}", help="images to build (default: all)")
    down = lab_sub.add_parser("down", help="remove the lab's containers, networks, inventory and key")
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
