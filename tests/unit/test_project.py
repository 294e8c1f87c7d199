"""Project-level invariants: pinned collections, layout, CLI entry point."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT

from gpuforge.cli import build_parser, main


def installed_collections():
    galaxy = str(Path(sys.executable).parent / "ansible-galaxy")
    out = subprocess.run([galaxy, "collection", "list", "--format", "json"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    found = {}
    for _path, colls in json.loads(out).items():
        for name, info in colls.items():
            found.setdefault(name, info["version"])
    return found


def test_collection_pins_match_what_is_installed():
    pins = yaml.safe_load((ROOT / "collections/requirements.yml").read_text())["collections"]
    found = installed_collections()
    assert {p["name"] for p in pins} == {"kubernetes.core", "community.general", "ansible.posix", "community.docker"}
    for p in pins:
        installed = found.get(p["name"])
        assert installed == p["version"], f"{p['name']}: pinned {p['version']}, installed {installed}"


def test_site_only_imports_playbooks():
    plays = yaml.safe_load((ROOT / "site.yml").read_text())
    assert plays and all(set(p) == {"name", "ansible.builtin.import_playbook"} for p in plays)
    for p in plays:
        assert (ROOT / p["ansible.builtin.import_playbook"]).exists()


def test_every_role_has_its_interface_documented():
    for role in (ROOT / "roles").iterdir():
        defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
        specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
        documented = set().union(*(set(s.get("options", {})) for s in specs.values()))
        assert set(defaults) == documented, f"{role.name}: defaults and argument_specs differ"
        readme = (role / "README.md").read_text()
        for var in defaults:
            assert f"`{var}`" in readme, f"{role.name}: README lacks {var}"
        # A role's own inputs carry its prefix; the inventory names several roles share (typed by preflight in
        # playbooks/vars/inventory_spec.yml) keep theirs, e.g. vllm_port.
        spec = yaml.safe_load((ROOT / "playbooks/vars/inventory_spec.yml").read_text())
        shared = set(spec["gpuforge_inventory_spec"])
        assert [v for v in defaults if not v.startswith(f"{role.name}_") and v not in shared] == [], role.name


def test_every_default_says_what_it_is():
    """defaults/main.yml is a role's manual: each default has a comment on the line above it, or one above the
    group of related defaults it opens (no blank line between)."""
    import re

    for path in sorted(ROOT.glob("roles/*/defaults/main.yml")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"^[a-z][a-z0-9_]*:", line):
                continue
            above = i - 1
            while above >= 0 and re.match(r"^([a-z][a-z0-9_]*:|\s)", lines[above]):
                above -= 1  # the previous defaults of the same group (and their continuation lines)
            assert above >= 0 and lines[above].startswith("#"), f"{path.relative_to(ROOT)}:{i + 1}: {line}"


def test_every_module_documents_itself():
    """ansible-doc and ansible-lint read DOCUMENTATION as YAML; a stray ': ' in a plain line breaks it silently
    (ansible-lint only logs it), so parse each one here."""
    import ast

    for path in sorted((ROOT / "plugins/modules").glob("*.py")):
        tree = ast.parse(path.read_text())
        docs = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name) and t.id in ("DOCUMENTATION", "RETURN")}
        assert "DOCUMENTATION" in docs, f"{path.name}: no DOCUMENTATION"
        for name, text in docs.items():
            parsed = yaml.safe_load(text)
            assert isinstance(parsed, dict), f"{path.name}: {name} is not a YAML mapping"
        assert yaml.safe_load(docs["DOCUMENTATION"])["module"] == path.stem


def test_provision_with_missing_inventory_fails_clearly(capsys):
    assert main(["provision", "-i", "/nonexistent/inventory"]) == 2
    assert "inventory /nonexistent/inventory does not exist" in capsys.readouterr().err


def test_cli_parses_provision_flags():
    args = build_parser().parse_args(["provision", "-i", "inventories/lab", "--limit", "gpu_nodes",
                                      "--tags", "common", "--check"])
    assert (args.inventory, args.limit, args.tags, args.check) == ("inventories/lab", "gpu_nodes", "common", True)


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "gpuforge.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("gpuforge ")


def test_cli_parses_upgrade_drivers_flags():
    args = build_parser().parse_args(["upgrade-drivers", "-i", "inventories/lab", "--version", "535.309.01-0+deb12u1",
                                      "--max-unavailable", "2", "--accept-downtime"])
    assert (args.inventory, args.version, args.max_unavailable, args.accept_downtime) == (
        "inventories/lab", "535.309.01-0+deb12u1", 2, True)
    defaults = build_parser().parse_args(["upgrade-drivers", "-i", "inv", "--version", "1"])
    assert (defaults.max_unavailable, defaults.accept_downtime, defaults.limit) == (1, False, None)


def test_every_fact_the_project_reads_is_one_preflight_keeps():
    """Preflight gathers only the facts listed in its `filter` (docs/architecture.md, "Facts"); a role that
    reads another one would find it undefined on a full run. The project's own facts modules (gpuforge_gpu,
    gpuforge_ib) and service_facts (gathered where it is read) set theirs themselves."""
    import fnmatch
    import re

    tasks = yaml.safe_load((ROOT / "playbooks/preflight.yml").read_text())[1]["tasks"]
    gather = next(t for t in tasks if "ansible.builtin.gather_facts" in t)["ansible.builtin.gather_facts"]
    kept = gather["filter"]
    own = {"gpuforge_gpu", "gpuforge_ib", "services"}
    pattern = re.compile(r"ansible_facts(?:\.([a-z_0-9]+)|\[['\"]([a-z_0-9]+)['\"]\])")
    read = {}
    sources = [p for d in ("roles", "playbooks") for p in (ROOT / d).rglob("*") if p.suffix in (".yml", ".j2")]
    for path in sources:
        for m in pattern.finditer(path.read_text()):
            read.setdefault(m.group(1) or m.group(2), str(path.relative_to(ROOT)))
    for path in (ROOT / "plugins/filter").glob("*.py"):
        for m in re.finditer(r"(?:facts|\"ansible_facts\"\) or \{\}\))\.get\(\"([a-z_0-9]+)\"\)", path.read_text()):
            read.setdefault(m.group(1), str(path.relative_to(ROOT)))
    assert {"distribution", "virtualization_type", "interfaces", "python"} <= set(read)  # the scan finds them
    missing = {name: where for name, where in read.items()
               if name not in own and not any(fnmatch.fnmatch(f"ansible_{name}", k) for k in kept)}
    assert not missing, f"facts read but not kept by preflight's gather filter: {missing}"
