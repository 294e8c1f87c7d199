"""The cluster lock's controller side (gpuforge.lock): reading the holder, staleness, and the take/release
sequence. playbooks/lock.yml itself runs against the lab (tests/e2e/test_lock.py); here `act` is replaced by
a recording stand-in that plays the lock host."""

import json
import os
import socket
import subprocess
import sys

import pytest

from gpuforge import lock


def failure(holder: dict) -> str:
    return ("lb-01: The cluster lock on lb-01 (/var/lib/gpuforge/cluster.lock) is held by another run; nothing was "
            f"changed. holder: {json.dumps(holder)} Fix: wait until that run ends.")


def test_holder_is_read_from_the_failure_message():
    holder = {"run_id": "r1", "user": "ops", "controller": "ctl-2", "pid": 42, "command": "gpuforge provision"}
    assert lock.holder_from([failure(holder)]) == holder
    assert lock.holder_from(["lb-01: Failed to connect to the host via ssh"]) is None


def test_a_lock_from_another_controller_is_never_stale():
    assert not lock.is_stale({"controller": "elsewhere", "pid": 999999999})


def test_a_lock_of_this_controller_is_stale_only_when_its_process_is_gone():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = socket.gethostname()
    assert lock.is_stale({"controller": here, "pid": gone.pid})
    assert not lock.is_stale({"controller": here, "pid": os.getpid()})


class FakeHost:
    """Plays playbooks/lock.yml's host: one lock file's content, or None."""

    def __init__(self, held_by=None):
        self.held_by, self.calls = held_by, []

    def act(self, root, inventory, action, owner, runs_dir=None):
        self.calls.append(action)
        if action == "break":
            self.held_by = None
        elif action == "take":
            if self.held_by is not None:
                return 3, [failure(self.held_by)]
            self.held_by = owner
        elif action == "release" and self.held_by and self.held_by["run_id"] == owner["run_id"]:
            self.held_by = None
        return 0, []


@pytest.fixture
def host(monkeypatch):
    fake = FakeHost()
    monkeypatch.setattr(lock, "act", fake.act)
    return fake


def test_take_then_release(host):
    me = lock.new_owner("gpuforge provision site.yml")
    lock.take(None, "inv", me, say=lambda _: None)
    assert host.held_by == me
    lock.release(None, "inv", me, say=lambda _: None)
    assert host.held_by is None and host.calls == ["take", "release"]


def test_a_second_run_is_refused_naming_the_holder(host):
    other = {"run_id": "20261207T000000Z-abc", "user": "alice", "controller": "ctl-2", "pid": 7,
             "command": "gpuforge upgrade-drivers --version 535", "started": "2026-12-07T00:00:00+00:00"}
    host.held_by = other
    with pytest.raises(lock.LockError, match=r"locked by run 20261207T000000Z-abc by alice@ctl-2 \(pid 7\), "
                                             r"`gpuforge upgrade-drivers --version 535`") as err:
        lock.take(None, "inv", lock.new_owner("gpuforge provision site.yml"), say=lambda _: None)
    assert err.value.holder == other and host.held_by == other and host.calls == ["take"]


def test_break_lock_removes_the_holder_first(host):
    host.held_by = {"run_id": "old", "controller": "ctl-2", "pid": 7}
    me = lock.new_owner("gpuforge provision site.yml")
    lock.take(None, "inv", me, break_lock=True, say=lambda _: None)
    assert host.held_by == me and host.calls == ["break", "take"]


def test_a_stale_lock_of_this_controller_is_broken_with_a_message(host):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host.held_by = {"run_id": "old", "user": "ops", "controller": socket.gethostname(), "pid": gone.pid}
    said = []
    me = lock.new_owner("gpuforge provision site.yml")
    lock.take(None, "inv", me, say=said.append)
    assert host.held_by == me and host.calls == ["take", "break", "take"]
    assert "whose process is gone from this controller: breaking it" in said[0]


def test_the_cli_exits_3_and_runs_nothing_when_the_lock_is_held(host, monkeypatch, capsys):
    from gpuforge import cli, runner

    host.held_by = {"run_id": "r9", "user": "bob", "controller": "ctl-3", "pid": 1, "command": "gpuforge provision"}
    ran = []
    monkeypatch.setattr(runner, "run_playbook", lambda *a, **k: ran.append(a) or (0, {}))
    assert cli.main(["provision", "-i", "inventories/prod"]) == 3
    assert ran == [] and "the cluster is locked by run r9 by bob@ctl-3" in capsys.readouterr().err


def test_the_cli_exits_1_when_the_lock_host_cannot_be_reached(monkeypatch, capsys):
    from gpuforge import cli, runner

    monkeypatch.setattr(lock, "act", lambda *a, **k: (4, ["lb-01: Failed to connect to the host via ssh"]))
    monkeypatch.setattr(runner, "run_playbook", lambda *a, **k: pytest.fail("the playbook ran without the lock"))
    assert cli.main(["provision", "-i", "inventories/prod"]) == 1
    assert "could not take the cluster lock: lb-01: Failed to connect" in capsys.readouterr().err
