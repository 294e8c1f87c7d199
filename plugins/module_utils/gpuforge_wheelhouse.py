# -*- coding: utf-8 -*-
"""Pure logic of the controller-side wheelhouse: target environment, pip flags, requirement filtering, lock.

Kept apart from the module so unit tests can run it without pip or a network.
"""

from __future__ import annotations

import hashlib
import json
import re


def platform_tags(machine, glibc):
    """Wheel platform tags a glibc Linux host can run, newest first (PEP 600 plus the legacy aliases)."""
    m = re.fullmatch(r"2\.(\d+)", glibc or "")
    if not m:
        raise ValueError(f"glibc must look like 2.36, got {glibc!r}")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(int(m.group(1)), 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{machine}" for minor, name in legacy.items() if minor <= int(m.group(1))]
    return tags + [f"linux_{machine}"]


def target_flags(python_version, machine, glibc):
    """pip flags that download binary wheels for another interpreter/platform than the controller's."""
    if not re.fullmatch(r"3\.\d+", python_version or ""):
        raise ValueError(f"python_version must look like 3.11, got {python_version!r}")
    flags = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version]
    for tag in platform_tags(machine, glibc):
        flags += ["--platform", tag]
    return flags


def wheel_name_version(filename):
    """(canonical name, version) of a wheel file name (PEP 427)."""
    parts = filename[:-len(".whl")].split("-")
    return canonical(parts[0]), parts[1]


def files_for_pins(pins, filenames):
    """The wheel files that carry exactly the pinned name==version; raises when a pin has none."""
    wanted = {(canonical(p.split("==")[0]), p.split("==")[1]) for p in pins}
    chosen, found = [], set()
    for f in sorted(filenames):
        if f.endswith(".whl") and wheel_name_version(f) in wanted:
            chosen.append(f)
            found.add(wheel_name_version(f))
    missing = sorted(f"{n}=={v}" for n, v in wanted - found)
    if missing:
        raise ValueError("no wheel downloaded for " + ", ".join(missing))
    return chosen


def marker_environment(python_version, machine):
    """The PEP 508 marker environment of the target hosts (Linux, CPython)."""
    return {
        "implementation_name": "cpython",
        "implementation_version": python_version + ".0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": python_version + ".0",
        "python_version": python_version,
        "sys_platform": "linux",
        "extra": "",
    }


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requires_from_metadata(metadata_text, env, exclude):
    """The Requires-Dist lines of a wheel's METADATA that apply to `env`, minus the `exclude`d names.

    Returns (kept, dropped): requirement strings without markers, and the names left out."""
    from packaging.requirements import Requirement

    excluded = {canonical(n) for n in exclude}
    kept, dropped = [], []
    for line in metadata_text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if canonical(req.name) in excluded:
            dropped.append(req.name)
            continue
        req.marker = None
        kept.append(str(req))
    return kept, sorted(set(dropped))


def pins_from_report(report):
    """name==version for every distribution in a `pip install --dry-run --report` document."""
    pins = []
    for item in report.get("install", []):
        meta = item["metadata"]
        pins.append(f"{canonical(meta['name'])}=={meta['version']}")
    return sorted(set(pins))


def hashes_from_report(report):
    """{canonical name: sha256} of the archives a `pip install --dry-run --report` chose (the index's hashes,
    or those pip computed for a find-links file)."""
    hashes = {}
    for item in report.get("install", []):
        archive = (item.get("download_info") or {}).get("archive_info") or {}
        sha = (archive.get("hashes") or {}).get("sha256")
        if sha:
            hashes[canonical(item["metadata"]["name"])] = sha
    return hashes


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheels_not_matching(directory, wheels, hashes):
    """[(wheel, found sha256, expected sha256)] for each wheel whose file differs from its expected hash."""
    bad = []
    for wheel in wheels:
        expected = hashes.get(wheel_name_version(wheel)[0])
        if expected:
            found = sha256_file(f"{directory}/{wheel}")
            if found != expected:
                bad.append((wheel, found, expected))
    return bad


def render_lock(pins, header, hashes=None):
    """The lock: the header as comments, then one pinned requirement a line, with its sha256 where known (pip
    then installs it only with --require-hashes)."""
    hashes = hashes or {}
    lines = []
    for pin in sorted(set(pins)):
        sha = hashes.get(canonical(pin.split("==")[0]))
        lines.append(pin + (f" --hash=sha256:{sha}" if sha else ""))
    return "".join(f"# {line}\n" for line in header) + "".join(line + "\n" for line in lines)


# The lock's format: part of the stamp, so a set staged in an older format (without hashes, which hosts
# installing with --require-hashes would refuse) is resolved again once.
LOCK_FORMAT = 2


def stamp(params):
    """A digest of everything that decides a set's content: same stamp, same lock."""
    keys = ("requirements", "no_deps", "exclude", "python_version", "machine", "glibc", "extra_args")
    doc = {k: params.get(k) for k in keys}
    doc["lock_format"] = LOCK_FORMAT
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
