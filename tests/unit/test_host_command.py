"""host_command: command's results without a module run, through ansible-playbook on localhost."""

import importlib.util

import pytest
from conftest import ROOT
from test_config_files import play

_spec = importlib.util.spec_from_file_location("gpuforge_action_host_command", ROOT / "plugins/action/host_command.py")
host_command = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(host_command)


def test_argv_is_quoted_and_stdout_comes_back_as_command_gives_it(tmp_path):
    out, res = play(tmp_path, [
        {"name": "argv", "host_command": {"argv": ["printf", "%s\\n", "a b", "$HOME", "it's"]}, "changed_when": False},
        {"name": "pipe", "host_command": {"cmd": "printf 'x\\ny\\n' | wc -l; echo err >&2"}, "changed_when": False},
        {"name": "stdin", "host_command": {"argv": ["tr", "a-z", "A-Z"], "stdin": "hello"}, "changed_when": False},
        {"name": "no stdin", "host_command": {"argv": ["cat"]}, "changed_when": False},
    ])
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["argv"]["stdout_lines"] == ["a b", "$HOME", "it's"] and res["argv"]["rc"] == 0
    assert res["pipe"]["stdout"].strip() == "2" and res["pipe"]["stderr"] == "err"
    assert res["stdin"]["stdout"] == "HELLO"
    assert res["no stdin"]["stdout"] == ""  # reads /dev/null, never waits


def test_a_failing_command_fails_unless_failed_when_says_otherwise(tmp_path):
    out, res = play(tmp_path, [{"name": "quiet", "host_command": {"cmd": "echo no; exit 3"},
                                "failed_when": False, "changed_when": False}])
    assert out.returncode == 0 and res["quiet"]["rc"] == 3 and res["quiet"]["stdout"] == "no"
    out, _ = play(tmp_path, [{"name": "loud", "host_command": {"argv": ["false"]}}])
    assert out.returncode != 0 and "non-zero return code" in out.stdout
    out, res = play(tmp_path, [{"name": "says why", "host_command": {"cmd": "echo 'Secure Boot is on' >&2; exit 1"},
                                "ignore_errors": True}])
    assert res["says why"]["failed"] and res["says why"]["msg"] == "non-zero return code: Secure Boot is on"


def test_check_mode_skips_it_unless_the_task_opts_out(tmp_path):
    marker = tmp_path / "ran"
    out, res = play(tmp_path, [
        {"name": "write", "host_command": {"argv": ["touch", str(marker)]}},
        {"name": "read", "host_command": {"argv": ["echo", "read"]}, "check_mode": False, "changed_when": False},
    ], check=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert res["write"]["skipped"] is True and not marker.exists()
    assert res["read"]["stdout"] == "read"


@pytest.mark.parametrize("args, message", [
    ({}, "exactly one of argv"), ({"argv": ["a"], "cmd": "a"}, "exactly one of argv"),
    ({"argv": "ls -l"}, "argv must be a non-empty list"), ({"cmd": " "}, "cmd must be a non-empty string"),
])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(Exception, match=message):
        host_command.command_line(args)


def test_the_task_environment_is_refused_not_ignored(tmp_path):
    out, _ = play(tmp_path, [{"name": "env", "host_command": {"argv": ["true"]}, "environment": {"A": "1"}}])
    assert out.returncode != 0 and "does not apply the task's environment" in out.stdout


_spec = importlib.util.spec_from_file_location("gpuforge_action_systemd_unit", ROOT / "plugins/action/systemd_unit.py")
systemd_unit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(systemd_unit)


def _show(load="loaded", unit_file="enabled", active="active"):
    return f"LoadState={load}\nUnitFileState={unit_file}\nActiveState={active}\n"


def test_systemd_unit_judges_enabled_and_started_from_systemctl_show():
    assert systemd_unit.in_place({"name": "chrony", "enabled": True}, _show()) is True
    assert systemd_unit.in_place({"name": "chrony", "enabled": True, "state": "started"}, _show()) is True
    assert systemd_unit.in_place({"name": "x", "enabled": False, "state": "stopped"},
                                 _show(unit_file="disabled", active="failed")) is True
    assert systemd_unit.in_place({"name": "x", "enabled": "yes"}, _show(unit_file="disabled")) is False
    assert systemd_unit.in_place({"name": "x", "state": "started"}, _show(active="activating")) is False
    assert systemd_unit.in_place({"name": "x", "state": "stopped"}, _show(active="active")) is False
    assert systemd_unit.in_place({"name": "x", "enabled": True}, _show(load="not-found")) is False
    # static/indirect units, restarts, reloads and other options are systemd_service's to judge
    assert systemd_unit.in_place({"name": "x", "enabled": True}, _show(unit_file="static")) is False
    for args in ({"name": "x", "state": "restarted"}, {"name": "x", "enabled": True, "daemon_reload": True},
                 {"name": "x", "masked": False}, {"name": "x"}, {"enabled": True}):
        assert systemd_unit.in_place(args, _show()) is None, args
