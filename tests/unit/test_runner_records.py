"""A run record (runs/<run>/) keeps the operator's environment out and is readable by its owner only: a real
ansible-runner run of a one-task playbook on the controller."""

import io
import json
import stat
from pathlib import Path

from gpuforge.runner import run_playbook

TOKEN = "operator-token-value-8c1f2e"


def test_a_run_record_holds_no_environment_value_and_is_owner_only(tmp_path: Path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    (root / "ansible.cfg").write_text("[defaults]\nretry_files_enabled = False\n")
    (root / "play.yml").write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                                   "    - ansible.builtin.debug: {msg: hello}\n")
    (root / "hosts.yml").write_text("all:\n  hosts:\n    localhost: {ansible_connection: local}\n")
    monkeypatch.setenv("GPUFORGE_TEST_OPERATOR_TOKEN", TOKEN)
    runs = tmp_path / "runs"
    rc, summary = run_playbook(root, "play.yml", str(root / "hosts.yml"), runs_dir=runs, out=io.StringIO())
    assert rc == 0, summary["failures"]
    record = runs / summary["run_id"]
    files = [p for p in record.rglob("*") if p.is_file()]
    assert (record / "summary.json") in files and len(files) > 3, files
    commands = list(record.glob("artifacts/*/command"))
    assert len(commands) == 1
    # ansible-runner wrote the whole environment there; only the names are left.
    assert "GPUFORGE_TEST_OPERATOR_TOKEN" in json.loads(commands[0].read_text())["env"]
    for path in files:
        assert TOKEN not in path.read_text(errors="replace"), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [runs, record, *(p for p in record.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
