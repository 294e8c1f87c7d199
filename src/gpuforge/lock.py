"""The cluster lock: one change at a time (playbooks/lock.yml does the work on the cluster host).

`gpuforge provision` and `gpuforge upgrade-drivers` take the lock before their playbook runs and release it
when it ends, failed or not. A second run stops with the holder's record. A lock left by a run of this
controller whose process is gone (killed, or the controller rebooted) is broken with a message; one from
another controller is broken only on request (`--break-lock`, `gpuforge lock --break`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import io
import json
import os
import socket
import uuid
from pathlib import Path

PLAYBOOK = "playbooks/lock.yml"
HOLDER_MARK = "holder: "


class LockError(RuntimeError):
    """The lock could not be taken: held by another run (`holder` set), or the lock host failed."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder


def new_owner(command: str) -> dict:
    """This run's record in the lock."""
    return {"run_id": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8],
            "user": getpass.getuser(), "controller": socket.gethostname(), "pid": os.getpid(),
            "command": command, "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def holder_from(messages: list[str]) -> dict | None:
    """The holder's record from the failure message of playbooks/lock.yml, if it names one."""
    for msg in messages:
        if HOLDER_MARK in msg:
            text = msg.split(HOLDER_MARK, 1)[1]
            try:
                record, _ = json.JSONDecoder().raw_decode(text.strip())
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None


def is_stale(holder: dict, controller: str | None = None) -> bool:
    """True when the holder ran on this controller and its process is gone."""
    if holder.get("controller") != (controller or socket.gethostname()):
        return False
    try:
        pid = int(holder.get("pid"))
    except (TypeError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def describe(holder: dict) -> str:
    return (f"run {holder.get('run_id', '?')} by {holder.get('user', '?')}@{holder.get('controller', '?')} "
            f"(pid {holder.get('pid', '?')}), `{holder.get('command', '?')}`, since {holder.get('started', '?')}")


def act(root: Path, inventory: str, action: str, owner: dict, runs_dir: Path | None = None) -> tuple[int, list[str]]:
    """Run playbooks/lock.yml once; (exit status, failure messages). Its output is kept out of the terminal."""
    from .runner import run_playbook

    rc, summary = run_playbook(root, PLAYBOOK, inventory, runs_dir=runs_dir, out=io.StringIO(),
                               extra_vars={"gpuforge_lock_action": action, "gpuforge_lock_owner": json.dumps(owner)})
    return rc, [f"{f['host']}: {f['msg']}" for f in summary["failures"]]


def take(root: Path, inventory: str, owner: dict, *, break_lock: bool = False, say=print,
         runs_dir: Path | None = None) -> None:
    """Take the lock for `owner`, or raise LockError naming the holder."""
    if break_lock:
        rc, msgs = act(root, inventory, "break", owner, runs_dir)
        if rc:
            raise LockError("could not break the cluster lock: " + "; ".join(msgs))
        say("[gpuforge] cluster lock broken on request (--break-lock)")
    for attempt in (1, 2):
        rc, msgs = act(root, inventory, "take", owner, runs_dir)
        if rc == 0:
            say(f"[gpuforge] cluster lock taken (run {owner['run_id']})")
            return
        holder = holder_from(msgs)
        if holder is None:
            raise LockError("could not take the cluster lock: " + "; ".join(msgs))
        if attempt == 1 and is_stale(holder):
            say(f"[gpuforge] the cluster lock was left by {describe(holder)}, whose process is gone from this "
                "controller: breaking it")
            act(root, inventory, "break", owner, runs_dir)
            continue
        raise LockError(f"the cluster is locked by {describe(holder)}; nothing was changed. Wait until that run "
                        "ends; if it is gone, break the lock with --break-lock (or gpuforge lock -i INVENTORY "
                        "--break).", holder)


def release(root: Path, inventory: str, owner: dict, *, say=print, runs_dir: Path | None = None) -> None:
    rc, msgs = act(root, inventory, "release", owner, runs_dir)
    if rc:
        say("[gpuforge] WARNING: could not release the cluster lock: " + "; ".join(msgs)
            + " (gpuforge lock -i INVENTORY --break removes it)")
    else:
        say("[gpuforge] cluster lock released")
