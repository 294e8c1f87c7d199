"""Run playbooks through ansible-runner with a live progress display, a recap table and a JSON summary.

The progress logic (`Progress`) consumes ansible-runner events and is pure, so unit tests feed it events.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

HOST_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_changed": "changed",  # not emitted by ansible; ok events carry changed=True
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


@dataclass
class TaskProgress:
    name: str
    play: str
    started: float
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Progress:
    """Turns ansible-runner events into progress lines, failures and a per-host recap."""

    out: TextIO = sys.stdout
    live: bool = False  # rewrite one status line in place (a terminal); else print a line per task
    play: str = ""
    play_hosts: int = 0
    tasks_seen: int = 0
    task: TaskProgress | None = None
    failures: list[dict] = field(default_factory=list)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    task_times: list[dict] = field(default_factory=list)
    # One row per host result: what `gpuforge bench` and the no-op test read (time per task per host).
    host_results: list[dict] = field(default_factory=list)

    def handle(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        if kind == "playbook_on_play_start":
            self._finish_task()
            self.play = data.get("play", "") or data.get("name", "")
            self.play_hosts = len(data.get("play_pattern", "").split(",")) if data.get("play_pattern") else 0
            self._print(f"PLAY {self.play}")
        elif kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            self._finish_task()
            self.tasks_seen += 1
            self.task = TaskProgress(data.get("task", "") or "(unnamed)", self.play, time.monotonic())
            if self.live:
                self._status()
        elif kind in HOST_EVENTS:
            outcome = HOST_EVENTS[kind]
            res = data.get("res", {}) or {}
            if outcome == "ok" and res.get("changed"):
                outcome = "changed"
            if data.get("ignore_errors") and outcome == "failed":
                outcome = "ignored"
            self.host_results.append({
                "play": self.play, "task": data.get("task", "") or "(unnamed)", "host": data.get("host", "?"),
                "outcome": outcome, "seconds": round(float(data.get("duration") or 0.0), 3),
                "action": data.get("resolved_action") or data.get("task_action") or ""})
            if self.task:
                self.task.counts[outcome] = self.task.counts.get(outcome, 0) + 1
                if self.live:
                    self._status()
            if outcome in ("failed", "unreachable"):
                msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
                failure = {"host": data.get("host", "?"), "task": data.get("task", ""),
                           "outcome": outcome, "msg": str(msg).strip()[:2000]}
                self.failures.append(failure)
                self._print(f"  {outcome.upper()}: {failure['host']}: {failure['msg']}")
        elif kind == "playbook_on_stats":
            self._finish_task()
            for key, stat in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"),
                              ("dark", "unreachable"), ("skipped", "skipped"), ("rescued", "rescued"),
                              ("ignored", "ignored")):
                for hostname, n in (data.get(key) or {}).items():
                    self.stats.setdefault(hostname, {}).setdefault(stat, 0)
                    self.stats[hostname][stat] += n
            for hostname in data.get("processed", {}) or {}:
                self.stats.setdefault(hostname, {})
        return True

    # ------------------------------------------------------------------ output
    def _summary(self, t: TaskProgress) -> str:
        order = ("ok", "changed", "skipped", "failed", "unreachable", "ignored")
        return " ".join(f"{k}={t.counts[k]}" for k in order if t.counts.get(k))

    def _status(self) -> None:
        t = self.task
        if t is None:
            return
        line = f"\r\033[K  [{self.tasks_seen}] {t.name} ... {self._summary(t)}"
        self.out.write(line)
        self.out.flush()

    def _finish_task(self) -> None:
        t = self.task
        if t is None:
            return
        elapsed = time.monotonic() - t.started
        self.task_times.append({"play": t.play, "task": t.name, "seconds": round(elapsed, 3),
                                **t.counts})
        if self.live:
            self.out.write("\r\033[K")
        self._print(f"  [{self.tasks_seen}] {t.name} ... {self._summary(t) or 'no hosts'} ({elapsed:.1f}s)")
        self.task = None

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    # ------------------------------------------------------------------ recap
    def recap_table(self) -> str:
        cols = ("ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored")
        width = max([len("host"), *(len(h) for h in self.stats)])
        lines = [f"{'host':<{width}}  " + "  ".join(f"{c:>11}" for c in cols)]
        for hostname in sorted(self.stats):
            s = self.stats[hostname]
            lines.append(f"{hostname:<{width}}  " + "  ".join(f"{s.get(c, 0):>11}" for c in cols))
        return "\n".join(lines)

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, s in self.stats.items() if s.get("failed") or s.get("unreachable"))


def lab_vault_password(root: Path, inventory: Path) -> Path | None:
    """The lab's vault password file, when `inventory` is the lab's and `gpuforge lab up` wrote one."""
    password = root / ".lab" / "vault-password"
    lab = (root / "inventories" / "lab").resolve()
    inv = inventory.resolve()
    if (inv == lab or inv.parent == lab) and password.exists():  # the directory or a file in it (hosts.yml)
        return password
    return None


def seal_record(private: Path) -> None:
    """Keep the operator's environment out of a run record and the record to its owner.

    ansible-runner writes the whole environment of ansible-playbook (the operator's shell's, tokens
    included) into artifacts/<run>/command; only the variables' names are kept. Files become 0600 and
    directories 0700."""
    for command in private.glob("artifacts/*/command"):
        try:
            record = json.loads(command.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("env"), dict):
            record["env"] = sorted(record["env"])  # names only
            command.write_text(json.dumps(record))
    for path in [private, *private.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def with_localhost(limit: str | None) -> str | None:
    """A --limit that keeps localhost in: preflight validates the inventory in a play on localhost, which a
    limit to some hosts would otherwise skip."""
    if not limit or "localhost" in [p.strip() for p in limit.replace(":", ",").split(",")]:
        return limit
    return f"{limit},localhost"


def run_playbook(root: Path, playbook: str, inventory: str, *, limit: str | None = None,
                 tags: str | None = None, check: bool = False, extra_vars: dict | None = None,
                 runs_dir: Path | None = None, out: TextIO = sys.stdout,
                 vault_password_file: Path | None = None,
                 env_overrides: dict[str, str] | None = None) -> tuple[int, dict]:
    """Run one playbook; return (exit status, summary). The summary is also written as JSON.

    `env_overrides`: environment for ansible-playbook on top of the project's (e.g. ANSIBLE_FORKS), which
    `gpuforge bench --levers` uses to measure one setting against the project's ansible.cfg.

    Vault: `vault_password_file`, else $ANSIBLE_VAULT_PASSWORD_FILE, else the lab's own password when the
    inventory is inventories/lab."""
    import ansible_runner  # imported here so `gpuforge lab` works before the runner is installed

    runs_dir = runs_dir or root / "runs"
    started = dt.datetime.now(dt.UTC)
    run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    progress = Progress(out=out, live=out.isatty())
    cmdline = ["--diff"] if check else []
    if check:
        cmdline.insert(0, "--check")
    inv_path = Path(inventory)
    if not inv_path.is_absolute():
        inv_path = (Path.cwd() / inv_path).resolve()
    if not inv_path.exists():
        raise FileNotFoundError(f"inventory {inventory} does not exist")
    # Run records are the operator's alone: the directories 0700 from the start, every file 0600 at the end.
    runs_dir.mkdir(parents=True, exist_ok=True)
    runs_dir.chmod(0o700)
    private = runs_dir / run_id
    private.mkdir(mode=0o700)
    # ansible-playbook lives beside this interpreter (the project's virtualenv), activated or not.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    env = {"ANSIBLE_CONFIG": str(root / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0"}
    vault = vault_password_file or os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE") or lab_vault_password(root, inv_path)
    if vault:
        env["ANSIBLE_VAULT_PASSWORD_FILE"] = str(vault)
    env.update(env_overrides or {})
    t0 = time.monotonic()
    try:
        r = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(root),
            playbook=playbook,
            inventory=str(inv_path),
            limit=with_localhost(limit),
            tags=tags,
            cmdline=" ".join(cmdline) or None,
            extravars=extra_vars or None,
            envvars=env,
            event_handler=progress.handle,
            quiet=True,
            suppress_env_files=True,  # no env/ files: the environment and passwords stay out of the record
        )
    finally:
        seal_record(private)
    duration = time.monotonic() - t0
    rc = r.rc if r.rc is not None else 1
    if r.status != "successful" and rc == 0:
        rc = 1
    summary = {
        "run_id": run_id,
        "playbook": playbook,
        "inventory": str(inv_path),
        "limit": limit,
        "tags": tags,
        "check": check,
        "started": started.isoformat(),
        "duration_s": round(duration, 2),
        "status": r.status,
        "rc": rc,
        "tasks": progress.tasks_seen,
        "hosts": progress.stats,
        "failed_hosts": progress.failed_hosts,
        "failures": progress.failures,
        "task_times": progress.task_times,
        "host_results": progress.host_results,
        "artifacts": str(private / "artifacts"),
    }
    fd = os.open(private / "summary.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(summary, indent=2))
    out.write("\nRECAP\n" + progress.recap_table() + "\n")
    verdict = "succeeded" if rc == 0 else f"FAILED (rc={rc}; failed hosts: {', '.join(progress.failed_hosts) or '-'})"
    out.write(f"\n{playbook} {verdict} in {duration:.0f} s; summary: "
              f"{os.path.relpath(private / 'summary.json')}\n")
    out.flush()
    return rc, summary
