"""gpuforge uses only the public API of ansible-core and Jinja: no import of `ansible._internal` or of any
underscore name under `ansible` or `jinja2`, and no loading of the project's own files by path
(`importlib.util.spec_from_file_location`): shared code lives in plugins/module_utils or the gpuforge package."""

import ast

import pytest
from conftest import ROOT

CHECKED = ["plugins", "src", "tests", "molecule"]
PRIVATE_ROOTS = ("ansible", "jinja2")


def _private(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] in PRIVATE_ROOTS and any(p.startswith("_") and p != "__future__" for p in parts[1:])


def private_uses(source: str, filename: str) -> list[str]:
    """Each private import or by-path load in `source`, as 'file:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno}: import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module == "importlib.util":
            found += [f"{filename}:{node.lineno}: from importlib.util import {a.name}"
                      for a in node.names if a.name == "spec_from_file_location"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _private(node.module):
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            elif node.module.split(".")[0] in PRIVATE_ROOTS:
                found += [f"{filename}:{node.lineno}: from {node.module} import {a.name}"
                          for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr == "spec_from_file_location":
            found.append(f"{filename}:{node.lineno}: importlib.util.spec_from_file_location")
    return found


def python_files():
    for top in CHECKED:
        yield from sorted(p for p in (ROOT / top).rglob("*.py") if ".venv" not in p.parts)


def test_no_private_api_anywhere():
    found = [use for path in python_files()
             for use in private_uses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == [], "private API or by-path imports:\n" + "\n".join(found)


def test_the_walk_covers_the_project():
    names = {p.relative_to(ROOT).as_posix() for p in python_files()}
    assert {"plugins/modules/gpu_facts.py", "src/gpuforge/cli.py", "tests/unit/conftest.py"} <= names


@pytest.mark.parametrize("line", [
    "from ansible._internal._templating import _template_vars",
    "import ansible._internal._templating",
    "from ansible.template import _jinja_bits",
    "from jinja2._compat import text_type",
    "from jinja2.compiler import _some_helper",
    "spec = importlib.util.spec_from_file_location('x', 'plugins/filter/x.py')",
    "from importlib.util import spec_from_file_location",
])
def test_a_private_import_is_named_with_its_file_and_line(line):
    source = "import os\n" + line + "\n"
    found = private_uses(source, "plugins/filter/example.py")
    assert found and found[0].startswith("plugins/filter/example.py:2: ")


@pytest.mark.parametrize("line", [
    "from __future__ import annotations",
    "from ansible.module_utils.basic import AnsibleModule",
    "from ansible.errors import AnsibleFilterError",
    "import jinja2",
    "from gpuforge import planner",
])
def test_public_imports_pass(line):
    assert private_uses(line + "\n", "x.py") == []
