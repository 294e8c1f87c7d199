"""The NCCL filters of the cuda_nccl role, fed a recorded nccl-tests run (fixtures/nccl-tests/PROVENANCE.md)."""

import gpuforge_nccl as nccl
import pytest
from ansible.errors import AnsibleFilterError
from conftest import FIXTURES

RECORDED = (FIXTURES / "nccl-tests" / "a100-8gpu-all-reduce.log").read_text()


def test_recorded_run_gives_its_average_bus_bandwidth():
    assert nccl.nccl_busbw(RECORDED) == pytest.approx(68.4048)


def test_stdout_lines_work_like_stdout():
    assert nccl.nccl_busbw(RECORDED.splitlines()) == pytest.approx(68.4048)


def test_ranks_tagged_by_mpirun_still_parse():
    """mpirun --tag-output prefixes every line; the values are still found."""
    tagged = "\n".join("[1,0]<stdout>:" + line for line in RECORDED.splitlines())
    assert nccl.nccl_busbw(tagged) == pytest.approx(68.4048)


def test_newer_footer_with_trailing_space_parses():
    # Hand-written, not recorded: the footer of nccl-tests 2.13 and later, which pads the value with a
    # space and adds a "Collective test concluded" line.
    footer = ("# Out of bounds values : 0 OK\n# Avg bus bandwidth    : 220.921 \n#\n"
              "# Collective test concluded: all_reduce_perf\n#\n")
    assert nccl.nccl_busbw(footer) == pytest.approx(220.921)


def test_failed_data_check_is_refused_with_the_count():
    corrupt = RECORDED.replace("# Out of bounds values : 0 OK", "# Out of bounds values : 108 FAILED")
    with pytest.raises(AnsibleFilterError, match=r"Out of bounds values : 108 FAILED' \(expected '0 OK'\)"):
        nccl.nccl_busbw(corrupt)


def test_run_that_did_not_finish_is_refused_and_shows_its_last_lines():
    # The recorded run cut off mid-sweep, as when NCCL aborts.
    crashed = RECORDED.split("   134217728")[0] + "hostname:3442:3442 [0] NCCL WARN Cuda failure 'out of memory'\n"
    with pytest.raises(AnsibleFilterError, match="did not finish") as err:
        nccl.nccl_busbw(crashed)
    assert "Cuda failure 'out of memory'" in str(err.value)


def test_missing_data_check_line_is_refused():
    unchecked = RECORDED.replace("# Out of bounds values : 0 OK\n", "")
    with pytest.raises(AnsibleFilterError, match="no '# Out of bounds values' line"):
        nccl.nccl_busbw(unchecked)


def test_two_runs_in_one_output_are_refused():
    with pytest.raises(AnsibleFilterError, match="holds 2 runs"):
        nccl.nccl_busbw(RECORDED + RECORDED)


@pytest.mark.parametrize("value", ["-nan", "inf", "", "n/a"])
def test_unreadable_bandwidth_is_refused(value):
    broken = RECORDED.replace("# Avg bus bandwidth    : 68.4048", "# Avg bus bandwidth    : " + value)
    with pytest.raises(AnsibleFilterError, match="bus bandwidth"):
        nccl.nccl_busbw(broken)


@pytest.mark.parametrize("output", [None, "", []])
def test_empty_output_is_refused(output):
    with pytest.raises(AnsibleFilterError, match=r"did not finish.*\n\(no output\)"):
        nccl.nccl_busbw(output)


@pytest.mark.parametrize(
    ("spec", "unmatched"),
    [
        ("ib0", []),
        ("ib", []),  # a prefix: NCCL takes ib0 and ib1
        ("ib0,eth", []),
        ("bond0", ["bond0"]),
        ("ib0,bond0", ["bond0"]),
        ("=ib", ["ib"]),  # exact names only
        ("=ib1,eth0", []),
        ("^docker,lo", []),  # an exclusion list cannot miss
        ("", []),
        (None, []),
    ],
)
def test_socket_ifname_entries_that_select_nothing(spec, unmatched):
    assert nccl.nccl_ifname_unmatched(spec, ["lo", "eth0", "ib0", "ib1"]) == unmatched


def test_filters_are_registered_under_their_documented_names():
    assert set(nccl.FilterModule().filters()) == {"gpuforge_nccl_busbw", "gpuforge_nccl_ifname_unmatched"}
