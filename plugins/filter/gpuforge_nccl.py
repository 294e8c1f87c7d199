# -*- coding: utf-8 -*-
"""NCCL helpers for the cuda_nccl role: read nccl-tests results, check NCCL_SOCKET_IFNAME against a host."""

from __future__ import annotations

DOCUMENTATION = r"""
name: gpuforge_nccl
short_description: Read nccl-tests results and check NCCL interface selections
description:
  - C(gpuforge_nccl_busbw) takes the output of an nccl-tests benchmark (C(all_reduce_perf) stdout, as a string
    or a list of lines) and returns the C(# Avg bus bandwidth) value as a float in GB/s. It raises an error
    naming the problem when the run did not finish (no bandwidth line), when the data check failed
    (C(# Out of bounds values) is not C(0 OK)), when the output holds more than one run, or when the
    value is not a finite number. The last lines of the output are quoted, since they hold NCCL's own error.
  - C(gpuforge_nccl_ifname_unmatched) takes an C(NCCL_SOCKET_IFNAME) value and the host's interface names
    (C(ansible_facts.interfaces)) and returns the entries that select no interface. NCCL reads the value as
    a comma-separated list of name prefixes; C(=) makes the entries exact names and C(^) makes the list an
    exclusion list, which cannot miss, so it returns an empty list for it.
"""

import math
import re

from ansible.errors import AnsibleFilterError

_OUT_OF_BOUNDS = re.compile(r"#\s*Out of bounds values\s*:\s*(\S+)\s*(\S*)")
_BUSBW = re.compile(r"#\s*Avg bus bandwidth\s*:\s*(\S*)")
_TAIL_LINES = 8


def _lines(output):
    if output is None:
        return []
    if isinstance(output, (list, tuple)):
        return [str(line) for line in output]
    return str(output).splitlines()


def _tail(lines):
    shown = [line for line in lines if line.strip()][-_TAIL_LINES:]
    return "\n".join(shown) if shown else "(no output)"


def nccl_busbw(output):
    """Average bus bandwidth (GB/s) of one clean nccl-tests run; raise AnsibleFilterError otherwise."""
    lines = _lines(output)
    bounds = [m for m in (_OUT_OF_BOUNDS.search(line) for line in lines) if m]
    busbw = [m for m in (_BUSBW.search(line) for line in lines) if m]
    if not busbw:
        raise AnsibleFilterError(
            "nccl-tests output has no '# Avg bus bandwidth' line: the benchmark did not finish. "
            "Last lines of its output:\n" + _tail(lines))
    if len(busbw) > 1 or len(bounds) > 1:
        raise AnsibleFilterError(
            "nccl-tests output holds %d runs ('# Avg bus bandwidth' lines); give it the output of one run"
            % max(len(busbw), len(bounds)))
    if not bounds:
        raise AnsibleFilterError(
            "nccl-tests output has no '# Out of bounds values' line, so its data check cannot be confirmed. "
            "Last lines of its output:\n" + _tail(lines))
    count, verdict = bounds[0].group(1), bounds[0].group(2)
    if (count, verdict) != ("0", "OK"):
        raise AnsibleFilterError(
            "nccl-tests found wrong results: '# Out of bounds values : %s %s' (expected '0 OK'). "
            "The collective returned corrupt data, so its bandwidth means nothing; suspect the GPUs, NVLink "
            "or the fabric before tuning." % (count, verdict))
    raw = busbw[0].group(1)
    try:
        value = float(raw)
    except ValueError:
        raise AnsibleFilterError("nccl-tests reported an unreadable bus bandwidth: %r" % raw) from None
    if not math.isfinite(value):
        raise AnsibleFilterError("nccl-tests reported a bus bandwidth that is not a number: %r" % raw)
    return value


def nccl_ifname_unmatched(spec, interfaces):
    """Entries of an NCCL_SOCKET_IFNAME value that select none of the given interface names."""
    spec = "" if spec is None else str(spec).strip()
    names = [str(name) for name in (interfaces or [])]
    if not spec or spec.startswith("^"):
        return []
    exact = spec.startswith("=")
    wanted = [entry.strip() for entry in spec.lstrip("=").split(",") if entry.strip()]
    if exact:
        return [entry for entry in wanted if entry not in names]
    return [entry for entry in wanted if not any(name.startswith(entry) for name in names)]


class FilterModule:
    def filters(self):
        return {
            "gpuforge_nccl_busbw": nccl_busbw,
            "gpuforge_nccl_ifname_unmatched": nccl_ifname_unmatched,
        }
