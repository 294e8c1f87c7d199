"""config_files and apt_present, the two action plugins a no-op re-run leans on, run by ansible-playbook on
localhost against files in a temporary directory (config_files) and this machine's dpkg (apt_present)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_playbook


def _load(kind, name):
    """Action plugins and modules share names; load each by path, as Ansible's loader does."""
    spec = importlib.util.spec_from_file_location(f"gpuforge_{kind}_{name}", ROOT / "plugins" / kind / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


apt_present = _load("action", "apt_present")
config_files = _load("modules", "config_files")


def play(tmp_path, tasks, check=False, extra_vars=None):
    """Run tasks on localhost; returns each task's result, by task name."""
    (tmp_path / "templates").mkdir(exist_ok=True)
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {**t, "register": f"r{i}"} for i, t in enumerate(tasks)
    ] + [{"name": "dump", "ansible.builtin.copy": {
        "content": "{{ {" + ", ".join(f"'{t['name']}': r{i}" for i, t in enumerate(tasks)) + "} | to_json }}",
        "dest": str(tmp_path / "results.json")}, "check_mode": False}]}]))
    args = ["--check"] if check else []
    if extra_vars:
        args += ["-e", json.dumps(extra_vars)]
    out = run_playbook(book, *args)
    return out, (json.loads((tmp_path / "results.json").read_text()) if out.returncode == 0 else None)


def files_task(tmp_path, **kw):
    return {"name": "files", "config_files": {
        "mode": "0640",
        "directory_mode": "0750",
        "files": [
            {"dest": str(tmp_path / "etc"), "state": "directory"},
            {"src": "app.conf.j2", "dest": str(tmp_path / "etc" / "app.conf")},
            {"content": "literal\n", "dest": str(tmp_path / "etc" / "literal"), "mode": "0600"},
            {"dest": str(tmp_path / "stale"), "state": "absent"},
        ], **kw}}


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "app.conf.j2").write_text("{{ ansible_managed | comment }}\nvalue={{ value }}\n")
    (tmp_path / "stale").write_text("old\n")
    return tmp_path


def test_first_run_writes_everything_and_the_second_changes_nothing(tree):
    out, res = play(tree, [files_task(tree)], extra_vars={"value": 1})
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["files"]["changed"] is True
    assert [r["changed"] for r in res["files"]["results"]] == [True, True, True, True]
    assert (tree / "etc" / "app.conf").read_text().endswith("value=1\n")
    assert "Ansible managed" in (tree / "etc" / "app.conf").read_text()
    assert oct((tree / "etc").stat().st_mode & 0o7777) == "0o750"
    assert oct((tree / "etc" / "app.conf").stat().st_mode & 0o7777) == "0o640"
    assert oct((tree / "etc" / "literal").stat().st_mode & 0o7777) == "0o600"
    assert not (tree / "stale").exists()

    out, res = play(tree, [files_task(tree)], extra_vars={"value": 1})
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["files"]["changed"] is False
    assert [r["changed"] for r in res["files"]["results"]] == [False] * 4


def test_the_check_runs_as_a_script_where_the_python_is_known_and_as_the_module_where_not(tree):
    out, res = play(tree, [files_task(tree)], extra_vars={"value": 1})
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["files"]["checked_by"] == sys.executable  # the plain script, no AnsiballZ
    # With discovery asked for and no earlier module run, the module runs (and discovers the interpreter).
    out, res = play(tree, [files_task(tree)], extra_vars={"value": 1, "ansible_python_interpreter": "auto_silent"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["files"]["checked_by"] == "module" and res["files"]["changed"] is False


def test_a_python_the_host_lacks_fails_with_its_path(tree):
    out, _ = play(tree, [files_task(tree)], extra_vars={"value": 1, "ansible_python_interpreter": "/nonexistent/py"})
    assert out.returncode != 0
    assert "config_files: checking the entries failed: /nonexistent/py on the host: rc=127" in out.stdout


def test_drift_in_content_or_mode_is_repaired_and_only_that_entry_changes(tree):
    play(tree, [files_task(tree)], extra_vars={"value": 1})
    (tree / "etc" / "literal").chmod(0o644)
    out, res = play(tree, [files_task(tree)], extra_vars={"value": 2})
    assert out.returncode == 0, out.stdout + out.stderr
    changed = {Path(r["dest"]).name: r.get("reason") for r in res["files"]["results"] if r["changed"]}
    assert changed == {"app.conf": "content differs", "literal": "mode is 0644, not 0600"}
    assert (tree / "etc" / "app.conf").read_text().endswith("value=2\n")
    assert oct((tree / "etc" / "literal").stat().st_mode & 0o7777) == "0o600"


def test_check_mode_reports_the_change_and_writes_nothing(tree):
    out, res = play(tree, [files_task(tree)], check=True, extra_vars={"value": 1})
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["files"]["changed"] is True
    assert not (tree / "etc").exists() and (tree / "stale").exists()


def test_a_failing_validate_fails_the_task_and_leaves_the_file(tree):
    task = {"name": "files", "config_files": {"files": [
        {"content": "new\n", "dest": str(tree / "stale"), "validate": "false %s"}]}}
    out, _ = play(tree, [task])
    assert out.returncode != 0
    assert "config_files: " + str(tree / "stale") in out.stdout
    assert (tree / "stale").read_text() == "old\n"


@pytest.mark.parametrize("entry, message", [
    ({"src": "a.j2", "content": "x", "dest": "/tmp/x"}, "exactly one of src, content"),
    ({"src": "a.j2"}, "needs a dest"),
    ({"dest": "/tmp/x", "state": "link"}, "state may only be"),
])
def test_bad_entries_are_refused_before_anything_runs(tmp_path, entry, message):
    out, _ = play(tmp_path, [{"name": "files", "config_files": {"files": [entry]}}])
    assert out.returncode != 0 and message in out.stdout


def test_the_module_judges_owner_group_mode_type_and_content(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    f.chmod(0o600)
    me = {"owner": str(os.getuid()), "group": str(os.getgid())}
    sha = "11f6ad8ec52a2984abaafd7c3b516503785c2072"  # sha1 of "x"
    assert config_files.differs({"path": str(f), "checksum": sha, "mode": "0600", **me}) is None
    assert config_files.differs({"path": str(f), "checksum": sha, "mode": "0644"}) == "mode is 0600, not 0644"
    assert config_files.differs({"path": str(f), "checksum": "0" * 40}) == "content differs"
    assert config_files.differs({"path": str(f), "owner": str(os.getuid() + 1)}).startswith("owner is uid")
    assert config_files.differs({"path": str(f), "state": "directory"}) == "not a directory"
    assert config_files.differs({"path": str(tmp_path), "state": "absent"}) == "present"
    assert config_files.differs({"path": str(tmp_path / "none"), "state": "absent"}) is None
    assert config_files.differs({"path": str(tmp_path / "none")}) == "absent"


def test_apt_present_judges_names_versions_and_wildcards():
    dpkg = ["cuda-toolkit-12-4\t12.4.1-1\thi ", "nccl\t2.21.5-1\tii ", "half\t1.0\tiU ", "gone\t1.0\trc ",
            "broken\t1.0\tiiR"]
    assert apt_present.satisfied(["cuda-toolkit-12-4=12.4.*", "nccl=2.21.5-1"], dpkg) == (True, [])
    assert apt_present.satisfied(["nccl=2.22.3-1"], dpkg) == (False, ["nccl=2.22.3-1"])
    assert apt_present.satisfied(["half", "gone", "absent", "broken"], dpkg) == (
        False, ["half", "gone", "absent", "broken"])
    assert apt_present.names_of({"name": "a, b=1.0"}) == ["a", "b=1.0"]
    # What only apt can judge goes to apt.
    assert apt_present.names_of({"name": ["a", "b"], "state": "latest", "cache_valid_time": 3600}) == ["a", "b"]
    for args in ({"name": "a=1.0", "state": "latest"}, {"name": "a", "state": "latest", "update_cache": True},
                 {"name": "a", "state": "absent"}, {"name": "a", "upgrade": "dist"}, {"deb": "/x.deb"},
                 {"name": "a>=1.0"}, {"name": "a:i386"}, {"name": "a", "autoremove": True}, {"update_cache": True}):
        assert apt_present.names_of(args) is None, args


POLICY = """nvidia-driver:
  Installed: 535.261.03-1
  Candidate: 535.261.03-1
  Version table:
 *** 535.261.03-1 1001
        500 http://deb.debian.org/debian bookworm/non-free amd64 Packages
firmware-nvidia-gsp:
  Installed: 535.216.01-1
  Candidate: 535.261.03-1
nvidia-smi:
  Installed: (none)
  Candidate: 535.261.03-1
"""


def test_apt_present_latest_needs_every_package_at_its_candidate():
    assert apt_present.at_candidate(["nvidia-driver"], POLICY) == (True, [])
    assert apt_present.at_candidate(["nvidia-driver", "firmware-nvidia-gsp", "nvidia-smi", "unknown"], POLICY) == (
        False, ["firmware-nvidia-gsp", "nvidia-smi", "unknown"])
    assert apt_present.lists_fresh("120", 3600) and apt_present.lists_fresh("", 0)
    assert not apt_present.lists_fresh("7200", 3600) and not apt_present.lists_fresh("", 3600)


def _at_candidate_here(names):
    """Packages this machine has at their candidate version (apt's module must not run here: it is absent from the
    venv's Python and would try to install python3-apt)."""
    out = subprocess.run(["apt-cache", "policy", "--", *names], capture_output=True, text=True,
                         env={"LANG": "C", "PATH": "/usr/bin:/bin"})
    return [n for n in names if apt_present.at_candidate([n], out.stdout)[0]] if out.returncode == 0 else []


def test_apt_present_latest_leaves_apt_alone_when_installed_at_the_candidate_and_the_lists_are_fresh(tmp_path):
    if subprocess.run(["dpkg-query", "-W", "dpkg"], capture_output=True).returncode != 0:
        pytest.skip("this machine has no dpkg")
    names = _at_candidate_here(["coreutils", "bash", "grep", "tar", "sed", "gzip"])[:2]
    if not names:
        pytest.skip("no package of this machine is at its candidate version")
    task = {"name": "pkgs", "apt_present": {"name": names, "state": "latest", "cache_valid_time": 10**9}}
    out, res = play(tmp_path, [task])
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["pkgs"]["changed"] is False
    assert res["pkgs"]["msg"] == "installed at the candidate version: " + ", ".join(names)


def test_apt_present_leaves_apt_alone_for_installed_packages(tmp_path):
    """On this machine (Debian): dpkg is installed, so apt's module (absent from the venv's Python) never runs."""
    if subprocess.run(["dpkg-query", "-W", "dpkg"], capture_output=True).returncode != 0:
        pytest.skip("this machine has no dpkg")
    out, res = play(tmp_path, [{"name": "pkgs", "apt_present": {"name": ["dpkg", "coreutils"], "update_cache": True}}])
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["pkgs"]["changed"] is False and res["pkgs"]["packages"] == ["dpkg", "coreutils"]


def test_apt_present_refreshes_where_apt_would():
    need = apt_present.update_needed
    assert not need({"name": "a"}, "0", "")  # no update_cache: never
    assert need({"update_cache": True, "cache_valid_time": 3600}, "0", "60")  # no lists at all: a fresh image
    assert need({"update_cache": True}, "12", "60")  # no cache_valid_time: every time, as apt does
    assert need({"update_cache": True, "cache_valid_time": 3600}, "12", "7200")
    assert not need({"update_cache": "yes", "cache_valid_time": 3600}, "12", "60")


def _update(tmp_path, mode, **kw):
    """apt_present's bounded `apt-get update` with a stand-in apt-get first on PATH: it hangs on the first call
    (as apt did behind the lab's cache) or always fails."""
    fake = tmp_path / "apt-get"
    fake.write_text('#!/bin/sh\nn=$(cat "$0.n" 2>/dev/null || echo 0); echo $((n + 1)) > "$0.n"\n'
                    'case "$MODE" in hang) [ "$n" -gt 0 ] || sleep 600; echo Done;;\n'
                    ' fail) echo "E: Failed to fetch http://mirror/InRelease" >&2; exit 100;; esac\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "MODE": mode}
    return subprocess.run(["/bin/sh", "-c", apt_present.update_command(**kw)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_apt_present_update_that_hangs_is_cut_off_and_retried(tmp_path):
    out = _update(tmp_path, "hang", timeout_s=2, attempts=3, pause_s=0)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "apt-get update, attempt 1 of 3: no answer in 2 s"
    assert (tmp_path / "apt-get.n").read_text().strip() == "2"


def test_apt_present_update_that_keeps_failing_says_why(tmp_path):
    out = _update(tmp_path, "fail", timeout_s=5, attempts=2, pause_s=0)
    assert out.returncode == 1
    assert out.stderr.splitlines() == ["apt-get update, attempt 1 of 2: exit 100",
                                       "apt-get update, attempt 2 of 2: exit 100",
                                       "E: Failed to fetch http://mirror/InRelease"]
