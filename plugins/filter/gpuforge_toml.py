"""TOML in and out, for containerd's configuration (the controller's Python 3.11+ has tomllib)."""

from __future__ import annotations

import datetime
import json
import math
import re
import tomllib
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: gpuforge_toml
short_description: Parse a TOML document (containerd's config.toml) into a dictionary
description:
  - C(gpuforge_from_toml) parses TOML text with Python's tomllib.
  - C(gpuforge_to_toml) writes a dictionary as TOML, one table header per table, nested
    tables indented like C(containerd config dump). Keys that are not bare keys (C(io.containerd.grpc.v1.cri))
    are quoted. Lists of tables are written as arrays of inline tables.
"""

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def from_toml(text):
    try:
        return tomllib.loads(str(text))
    except tomllib.TOMLDecodeError as exc:
        raise AnsibleFilterError(f"not valid TOML: {exc}") from exc


def _key(key):
    key = str(key)
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes (\" \\ \n \t \uXXXX ...) are all valid in a TOML basic string; json.dumps never writes \/.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise AnsibleFilterError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _table(lines, path, table):
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    indent = "  " * max(len(path) - 1, 0)
    # A table with keys, or an empty one, needs its header; one holding only tables is defined by them.
    if path and (scalars or not tables):
        lines.append("")
        lines.append(indent + "[" + ".".join(_key(p) for p in path) + "]")
    for key, value in scalars:
        lines.append(f"{indent}{'  ' if path else ''}{_key(key)} = {_value(value)}")
    for key, value in tables:
        _table(lines, [*path, key], value)


def to_toml(data):
    if not isinstance(data, Mapping):
        raise AnsibleFilterError(f"to_toml needs a dictionary, got {type(data).__name__}")
    lines = []
    _table(lines, [], data)
    return "\n".join(lines).strip("\n") + "\n"


class FilterModule:
    def filters(self):
        return {
            "gpuforge_from_toml": from_toml,
            "gpuforge_to_toml": to_toml,
        }
