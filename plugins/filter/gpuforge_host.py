# -*- coding: utf-8 -*-
"""Host classification and package checks shared by every role."""

from __future__ import annotations

from fnmatch import fnmatchcase

DOCUMENTATION = r"""
name: gpuforge_in_container
short_description: Whether gathered facts describe a container (the lab, molecule)
description:
  - C(gpuforge_in_container) is true when C(virtualization_role) is guest and C(virtualization_type) is a
    container runtime. Roles use it to skip, with a message, the steps that need the machine's own kernel,
    clock or devices. Needs the C(virtual) fact subset.
  - C(gpuforge_packages_missing) takes a list of apt package requests (C(name), C(name=version) or
    C(name=version*), as C(ansible.builtin.apt) takes them, optionally C(name:arch)) and the installed packages,
    and returns the requests they do not satisfy (the package is not installed, or no installed version
    matches the requested one). An empty list means an C(apt) run with C(state=present) would change nothing,
    so roles skip it.
  - The installed packages are the registered result of C(dpkg-query --show
    --showformat='${Package} ${Version} ${db:Status-Abbrev}\n') (role common's C(common_installed_packages)),
    or the C(packages) fact of C(ansible.builtin.package_facts). When they are missing (not read in this run,
    or the read was skipped) every request is returned, so apt decides.
  - C(gpuforge_installed_version) takes the same installed packages and a package name, and returns its
    installed version, or an empty string when it is not installed (or nothing was read).
  - C(gpuforge_systemd_quote) quotes a value for a systemd unit (C(exec), an ExecStart argument;
    C(environment), an Environment= assignment) or an environment file (C(envfile)), so that systemd reads it
    back unchanged whatever it holds (spaces, quotes, backslashes, % and $); it refuses newlines.
"""

CONTAINER_TYPES = ("docker", "container", "containerd", "podman", "lxc", "systemd-nspawn")


def in_container(facts):
    facts = facts or {}
    return facts.get("virtualization_role") == "guest" and facts.get("virtualization_type") in CONTAINER_TYPES


def installed_versions(installed) -> dict[str, list[str]]:
    """Package name -> installed versions, from a dpkg-query result or package_facts' packages fact."""
    if not isinstance(installed, dict):
        return {}
    if "stdout" in installed or "stdout_lines" in installed:
        versions: dict[str, list[str]] = {}
        lines = installed.get("stdout_lines") or str(installed.get("stdout", "")).splitlines()
        for line in lines:
            fields = line.split()
            # ${db:Status-Abbrev}: the second letter is the package's state, "i" when installed.
            if len(fields) >= 3 and len(fields[2]) >= 2 and fields[2][1] == "i":
                versions.setdefault(fields[0].split(":", 1)[0], []).append(fields[1])
        return versions
    if "skipped" in installed or "failed" in installed or "rc" in installed:
        return {}
    return {name: [entry.get("version", "") for entry in entries or []] for name, entries in installed.items()}


def packages_missing(requests, installed):
    """The apt requests that the installed packages do not satisfy."""
    if isinstance(requests, str):
        requests = [requests]
    versions = installed_versions(installed)
    if not versions:
        return list(requests)
    missing = []
    for request in requests:
        name, _, version = str(request).partition("=")
        found = versions.get(name.split(":", 1)[0], [])
        if not found or (version and not any(fnmatchcase(v, version) for v in found)):
            missing.append(request)
    return missing


def installed_version(installed, name):
    """The installed version of package `name` ("" when it is not installed or nothing was read)."""
    found = installed_versions(installed).get(str(name).split(":", 1)[0], [])
    return found[0] if found else ""


# What systemd expands in each kind of value: % specifiers in unit files, $ variables in Exec lines only.
# An environment file expands neither, and takes backslash and double quote escaped inside double quotes.
_SYSTEMD_ESCAPES = {
    "exec": (("\\", "\\\\"), ('"', '\\"'), ("%", "%%"), ("$", "$$")),
    "environment": (("\\", "\\\\"), ('"', '\\"'), ("%", "%%")),
    "envfile": (("\\", "\\\\"), ('"', '\\"')),
}


def systemd_quote(value, context="exec"):
    """`value` as one double-quoted word that systemd reads back unchanged: an ExecStart argument ("exec"), an
    Environment= assignment ("environment", give it KEY=VALUE) or a value in an EnvironmentFile ("envfile")."""
    if context not in _SYSTEMD_ESCAPES:
        raise ValueError(f"gpuforge_systemd_quote: context must be one of {', '.join(_SYSTEMD_ESCAPES)}, "
                         f"not {context!r}")
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("gpuforge_systemd_quote: a value for systemd cannot hold a newline or NUL")
    for old, new in _SYSTEMD_ESCAPES[context]:
        text = text.replace(old, new)
    return f'"{text}"'


def url_host(address):
    """A listen address as the host part of a URL that reaches it from the same host: a wildcard (`0.0.0.0`,
    empty) is reached on loopback (`::` on `[::1]`); an IPv6 address goes in brackets; a name or IPv4 address
    as it is."""
    text = str(address or "").strip()
    if text in ("", "0.0.0.0"):
        return "127.0.0.1"
    if text == "::":
        return "[::1]"
    if ":" in text and not text.startswith("["):
        return f"[{text}]"
    return text


class FilterModule:
    def filters(self):
        return {"gpuforge_in_container": in_container, "gpuforge_packages_missing": packages_missing,
                "gpuforge_installed_version": installed_version, "gpuforge_systemd_quote": systemd_quote,
                "gpuforge_url_host": url_host}
