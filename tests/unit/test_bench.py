"""`gpuforge bench`'s aggregation: per task per host, ratios, targets. The timings come from real runs; these
tests feed it summaries shaped like runner.run_playbook's."""

from gpuforge import bench


def row(task, host, seconds, outcome="ok", play="P"):
    return {"play": play, "task": task, "host": host, "outcome": outcome, "seconds": seconds, "action": "x"}


def summary(wall, rows, rc=0, tasks=None):
    return {"duration_s": wall, "rc": rc, "tasks": tasks or len({r["task"] for r in rows}), "host_results": rows}


def test_profile_sums_loops_per_host_and_orders_tasks_by_total():
    p = bench.profile(summary(30.0, [
        row("apt", "a", 2.0, "changed"), row("apt", "b", 4.0),
        row("loop", "a", 1.0), row("loop", "a", 1.5),  # one task, two loop items on one host
        row("stat", "a", 0.1, "skipped"),
    ]))
    assert p["wall_s"] == 30.0 and p["host_results"] == 5
    assert p["outcomes"] == {"changed": 1, "ok": 3, "skipped": 1}
    assert p["changed"] == ["a: apt"]
    assert p["per_host_s"] == {"a": 4.6, "b": 4.0}
    apt, loop, stat = p["per_task"]
    assert (apt["task"], apt["hosts"], apt["total_s"], apt["mean_s"], apt["max_s"]) == ("apt", 2, 6.0, 3.0, 4.0)
    assert loop["per_host_s"] == {"a": 2.5}
    assert stat["task"] == "stat"


def size(hosts, first, noop, rc=0):
    return {"hosts": hosts, "shape": "s", "lab_up_s": 1.0,
            "first": bench.profile(summary(first, [row("t", "a", 1.0)], rc)),
            "noop": bench.profile(summary(noop, [row("t", "a", 0.5)], rc))}


def test_compare_reports_ratios_and_each_target_met_or_missed():
    c = bench.compare([size(5, 500.0, 50.0), size(13, 900.0, 90.0)])
    assert c["noop_share_of_first"] == 0.1
    assert c["scaling"] == {"from_hosts": 5, "to_hosts": 13, "first_run_ratio": 1.8, "noop_ratio": 1.8}
    met = {t["target"].split(" (")[0].split(",")[0]: t["met"] for t in c["targets"]}
    assert met == {"no-op re-run <= 0.2 x first run": True, "no-op re-run <= 60 s": True,
                   "no-op re-run": False}


def test_compare_leaves_out_failed_sizes_and_misses_slow_noops():
    c = bench.compare([size(5, 300.0, 120.0), size(13, 900.0, 90.0, rc=2)])
    assert "scaling" not in c
    assert [t["met"] for t in c["targets"]] == [False, False]


def test_table_shows_sizes_slowest_tasks_levers_and_targets():
    result = {"sizes": [size(5, 500.0, 50.0), size(13, 900.0, 90.0)],
              "levers": [{"lever": "project", "wall_s": 40.0}, {"lever": "pipelining off", "wall_s": 80.0}],
              "facts": {"min": 1.0, "all": 3.0}}
    result["compare"] = bench.compare(result["sizes"])
    text = bench.table(result)
    assert "slowest tasks, 13 hosts, no-op re-run" in text
    assert "pipelining off" in text and "2.00 x" in text
    assert "gather_subset=all" in text
    assert "[MISSED] no-op re-run, 13 hosts <= 1.6 x 5 hosts: 1.8" in text
