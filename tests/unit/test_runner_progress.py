"""The CLI's progress display, recap and failure collection, fed with ansible-runner events."""

import io

from gpuforge.runner import Progress


def ev(kind, **data):
    return {"event": kind, "event_data": data}


def feed(progress, events):
    for e in events:
        progress.handle(e)


def test_progress_counts_outcomes_per_task_and_collects_failures():
    out = io.StringIO()
    p = Progress(out=out)
    feed(p, [
        ev("playbook_on_play_start", play="Prepare hosts"),
        ev("playbook_on_task_start", task="Install the base packages"),
        ev("runner_on_ok", host="a", task="Install the base packages", res={"changed": True}),
        ev("runner_on_ok", host="b", task="Install the base packages", res={"changed": False}),
        ev("runner_on_failed", host="c", task="Install the base packages", res={"msg": "No package chrony"}),
        ev("playbook_on_task_start", task="Write limits"),
        ev("runner_on_unreachable", host="d", task="Write limits", res={"msg": "ssh: timeout"}),
        ev("playbook_on_stats", ok={"a": 5, "b": 5}, changed={"a": 1}, failures={"c": 1}, dark={"d": 1},
           skipped={"a": 2}, processed={"a": 1, "b": 1, "c": 1, "d": 1}),
    ])
    text = out.getvalue()
    assert "PLAY Prepare hosts" in text
    assert "[1] Install the base packages ... ok=1 changed=1 failed=1" in text
    assert "[2] Write limits ... unreachable=1" in text
    assert "FAILED: c: No package chrony" in text
    assert p.failures == [
        {"host": "c", "task": "Install the base packages", "outcome": "failed", "msg": "No package chrony"},
        {"host": "d", "task": "Write limits", "outcome": "unreachable", "msg": "ssh: timeout"},
    ]
    assert p.failed_hosts == ["c", "d"]
    assert p.stats["a"] == {"ok": 5, "changed": 1, "skipped": 2}
    assert [t["task"] for t in p.task_times] == ["Install the base packages", "Write limits"]


def test_ignored_failures_do_not_count_as_failures():
    p = Progress(out=io.StringIO())
    feed(p, [
        ev("playbook_on_task_start", task="Probe"),
        ev("runner_on_failed", host="a", task="Probe", ignore_errors=True, res={"msg": "meh"}),
        ev("playbook_on_stats", ok={"a": 1}, ignored={"a": 1}, processed={"a": 1}),
    ])
    assert p.failures == []
    assert p.failed_hosts == []
    assert p.task_times[0]["ignored"] == 1


def test_recap_table_lists_every_host_with_all_columns():
    p = Progress(out=io.StringIO())
    p.handle(ev("playbook_on_stats", ok={"gpu-01": 20, "lb-01": 18}, changed={"gpu-01": 3},
                processed={"gpu-01": 1, "lb-01": 1}))
    lines = p.recap_table().splitlines()
    assert lines[0].split() == ["host", "ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored"]
    assert lines[1].split() == ["gpu-01", "20", "3", "0", "0", "0", "0", "0"]
    assert lines[2].split() == ["lb-01", "18", "0", "0", "0", "0", "0", "0"]


def test_live_mode_rewrites_one_status_line():
    out = io.StringIO()
    p = Progress(out=out, live=True)
    feed(p, [ev("playbook_on_task_start", task="T"), ev("runner_on_ok", host="a", task="T", res={})])
    assert "\r\033[K  [1] T ... ok=1" in out.getvalue()


def test_each_host_result_keeps_its_own_duration_and_outcome():
    p = Progress(out=io.StringIO())
    feed(p, [
        ev("playbook_on_play_start", play="Prepare hosts"),
        ev("playbook_on_task_start", task="Install"),
        ev("runner_on_ok", host="a", task="Install", duration=1.25, resolved_action="ansible.builtin.apt",
           res={"changed": True}),
        ev("runner_on_skipped", host="b", task="Install", duration=0.01, res={}),
    ])
    assert p.host_results == [
        {"play": "Prepare hosts", "task": "Install", "host": "a", "outcome": "changed", "seconds": 1.25,
         "action": "ansible.builtin.apt"},
        {"play": "Prepare hosts", "task": "Install", "host": "b", "outcome": "skipped", "seconds": 0.01,
         "action": ""},
    ]
