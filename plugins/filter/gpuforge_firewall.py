# -*- coding: utf-8 -*-
"""Addresses for the host firewall's rules (role firewall)."""

from __future__ import annotations

import ipaddress
import socket

DOCUMENTATION = r"""
name: gpuforge_host_addresses
short_description: The addresses other hosts see a list of inventory hosts at, for firewall rules
description:
  - C(gpuforge_host_addresses) takes inventory host names, C(hostvars) and a network (C(management) or
    C(fabric)) and returns each host's address on it: C(firewall_address), else C(ansible_host), else the
    name (management); C(fabric_ip), else the management address (fabric).
  - C(gpuforge_nft_sources) takes addresses, networks (CIDR) and host names and returns
    C({"ip": [...], "ip6": [...]}), the IPv4 and IPv6 networks to write in an nftables set, sorted, without
    duplicates and without entries another one contains (nftables refuses overlapping elements). A name is resolved on the controller (every address it
    has); a name that does not resolve is an error that names it.
  - C(gpuforge_address_in) is true when an address falls in one of the given networks (C(0.0.0.0/0) matches
    every IPv4 address).
"""


def _networks(values):
    out = []
    for value in values or []:
        text = str(value).strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValueError(f"gpuforge_nft_sources: {text!r} is neither an address, a network (CIDR) nor a name "
                             f"this controller resolves ({exc}); set firewall_address for that host, or "
                             "use addresses in the firewall's source lists") from None
        out.extend(ipaddress.ip_network(info[4][0]) for info in infos)
    return out


def nft_sources(values):
    """{"ip": [...], "ip6": [...]}: the networks of `values`, merged, as nftables set elements."""
    nets = _networks(values)
    result = {}
    for family, version in (("ip", 4), ("ip6", 6)):
        mine = sorted({n for n in nets if n.version == version})
        # Drop what another entry contains (nftables refuses overlapping elements); keep neighbours apart, so
        # that the rules show hosts as hosts.
        kept = [n for n in mine if not any(n != o and n.subnet_of(o) for o in mine)]
        result[family] = [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in kept]
    return result


def host_addresses(names, hostvars, network="management"):
    """Each host's address on `network` ("management" or "fabric"), in the order given."""
    if network not in ("management", "fabric"):
        raise ValueError(f"gpuforge_host_addresses: network must be management or fabric, not {network!r}")
    out = []
    for name in names or []:
        hv = hostvars[name]
        management = hv.get("firewall_address") or hv.get("ansible_host") or name
        out.append(str(hv.get("fabric_ip") or management) if network == "fabric" else str(management))
    return out


def address_in(address, networks):
    """Whether `address` lies in one of `networks` (addresses, CIDRs or names)."""
    try:
        addr = ipaddress.ip_address(str(address).strip())
    except ValueError:
        raise ValueError(f"gpuforge_address_in: {address!r} is not an IP address") from None
    return any(addr in net for net in _networks(networks) if net.version == addr.version)


class FilterModule:
    def filters(self):
        return {"gpuforge_nft_sources": nft_sources, "gpuforge_host_addresses": host_addresses,
                "gpuforge_address_in": address_in}
