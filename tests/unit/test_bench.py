"""`gpuforge bench`'s aggregation: per task per host, ratios, targets. The timings come from real runs; these
tests feed it summaries shaped like runner.run_playbook's."""

from gpuforge import bench


def row(task, host, seconds, outcome="ok", play="P", action="x"):
    return {"play": play, "task": task, "host": host, "outcome": outcome, "seconds": seconds, "action": action}


def summary(wall, rows, rc=0, tasks=None):
    return {"duration_s": wall, "rc": rc, "tasks": tasks or len({r["task"] for r in rows}), "host_results": rows}


def test_profile_sums_loops_per_host_and_orders_tasks_by_total():
    p = bench.profile(summary(30.0, [
        row("apt", "a", 2.0, "changed"), row("apt", "b", 4.0),
        row("loop", "a", 1.0), row("loop", "a", 1.5),  # one task, two loop items on one host
        row("stat", "a", 0.1, "skipped"),
    ]))
    assert p["wall_s"] == 30.0 and p["host_results"] == 5
    assert (p["in_tasks_s"], p["between_tasks_s"]) == (4.0 + 2.5 + 0.1, 23.4)  # slowest host of each task
    assert p["outcomes"] == {"changed": 1, "ok": 3, "skipped": 1}
    assert p["changed"] == ["a: apt"]
    assert p["per_host_s"] == {"a": 4.6, "b": 4.0}
    apt, loop, stat = p["per_task"]
    assert (apt["task"], apt["hosts"], apt["total_s"], apt["mean_s"], apt["max_s"]) == ("apt", 2, 6.0, 3.0, 4.0)
    assert loop["per_host_s"] == {"a": 2.5}
    assert stat["task"] == "stat"


def test_profile_counts_host_results_and_module_runs_per_host():
    p = bench.profile(summary(10.0, [
        row("apt", "gpu-01", 1.0, action="ansible.builtin.apt"), row("apt", "gpu-02", 1.0, action="apt"),
        row("note", "gpu-01", 0.0, action="ansible.builtin.debug"),  # runs on the controller
        row("stat", "gpu-01", 0.1, "skipped", action="ansible.builtin.stat"),  # skipped: no module ran
        row("facts", "gpu-01", 0.5, action="gpu_facts"),
    ]))
    assert p["per_host_results"] == {"gpu-01": 4, "gpu-02": 1}
    assert p["per_host_module_runs"] == {"gpu-01": 2, "gpu-02": 1}


def size(hosts, first, noop, rc=0):
    return {"hosts": hosts, "shape": "s", "lab_up_s": 1.0,
            "first": bench.profile(summary(first, [row("t", "a", 1.0)], rc)),
            "noop": bench.profile(summary(noop, [row("t", "a", 0.5)], rc))}


def test_compare_reports_ratios_and_each_target_met_or_missed():
    c = bench.compare([size(5, 500.0, 50.0), size(13, 900.0, 90.0)])
    assert c["noop_share_of_first"] == 0.1
    assert c["scaling"] == {"from_hosts": 5, "to_hosts": 13, "first_run_ratio": 1.8, "noop_ratio": 1.8,
                            "noop_ratio_range": [1.8, 1.8]}
    met = {t["target"].split(" (")[0].split(",")[0]: t["met"] for t in c["targets"]}
    assert met == {"no-op re-run <= 0.12 x first run": True, "no-op re-run <= 60 s": True,
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
    assert "of its 90.0 s: 0.5 s in tasks (each task's slowest host), 89.5 s between them" in text
    assert "pipelining off" in text and "2.00 x" in text
    assert "gather_subset=all" in text
    assert "[MISSED] no-op re-run, 13 hosts <= 1.6 x 5 hosts: 1.8" in text


def repeated(hosts, first, noops, changed_in=None):
    """A size with several no-op re-runs; changed_in: the index of a run that reported a change."""
    runs = [bench.profile(summary(w, [row("t", "a", 0.5, "changed" if i == changed_in else "ok")]))
            for i, w in enumerate(noops)]
    return {"hosts": hosts, "shape": "s", "lab_up_s": 1.0,
            "first": bench.profile(summary(first, [row("t", "a", 1.0)])),
            "noop_runs": runs, "noop": bench.median_run(runs)}


def test_median_run_is_one_real_run_the_lower_middle_of_an_even_count():
    runs = [bench.profile(summary(w, [])) for w in (40.0, 30.0, 35.0)]
    assert bench.median_run(runs)["wall_s"] == 35.0
    assert bench.median_run(runs + [bench.profile(summary(50.0, []))])["wall_s"] == 35.0
    assert bench.median_run(runs[:1])["wall_s"] == 40.0


def test_compare_uses_the_medians_and_gives_the_ratio_range_of_the_repeats():
    c = bench.compare([repeated(5, 500.0, [30.0, 40.0, 35.0]), repeated(13, 900.0, [60.0, 70.0, 65.0])])
    sc = c["scaling"]
    assert sc["noop_ratio"] == round(65.0 / 35.0, 3)
    assert sc["noop_ratio_range"] == [round(60.0 / 40.0, 3), round(70.0 / 30.0, 3)]
    assert c["noop_share_of_first"] == 0.07  # 35 / 500: the median run, not the fastest


def test_table_lists_every_noop_run_and_shows_a_change_in_any_of_them():
    result = {"sizes": [repeated(5, 500.0, [30.0, 40.0, 35.0], changed_in=1), repeated(13, 900.0, [60.0, 70.0, 65.0])]}
    result["compare"] = bench.compare(result["sizes"])
    text = bench.table(result)
    assert "35.0s (30-40)" in text
    assert "40.0s (None/None CPU s, changed=1)" in text
    five = next(line for line in text.splitlines() if line.lstrip().startswith("5 "))
    assert five.split()[-2] == "1"  # the no-op changed column counts the run with a change, not the median's 0
    assert "(medians; x1.5-x2.333 across the repeats)" in text
