"""What an operator would check on a host after the rdma role (pytest-testinfra).

The lab's containers have no HCA and cannot load modules, so the module loading and the port check are
skipped there (the role says why); everything else is real.
"""

import re

import pytest

MODULES = ["ib_core", "ib_uverbs", "ib_umad", "rdma_ucm", "ib_ipoib", "mlx5_ib"]


def test_rdma_packages_installed(host):
    for pkg in ("rdma-core", "ibverbs-providers", "ibverbs-utils", "infiniband-diags", "perftest"):
        assert host.package(pkg).is_installed, pkg


def test_rdma_tools_run(host):
    ibstat = host.run("ibstat -V")  # prints its version on stderr
    assert ibstat.rc == 0, ibstat.stderr
    upstream = host.package("infiniband-diags").version.split("-")[0]
    assert f"ibstat BUILD VERSION: {upstream}" in ibstat.stdout + ibstat.stderr
    perftest = host.run("ib_write_bw --help")  # perftest prints its usage and exits 1
    assert perftest.rc in (0, 1), perftest.stderr
    assert perftest.stdout.startswith("Usage:\n  ib_write_bw ")
    assert "--bidirectional" in perftest.stdout


def test_no_doca_repository_with_the_inbox_stack(host):
    # converge.yml left these behind before the role ran, as an earlier DOCA-OFED install would
    assert host.file("/root/.molecule-earlier-configuration").exists
    for left in ("/etc/apt/sources.list.d/gpuforge-doca.sources", "/etc/apt/keyrings/gpuforge-doca.asc",
                 "/etc/apt/preferences.d/gpuforge-doca.pref"):
        assert not host.file(left).exists, left
    policy = host.check_output("apt-cache policy rdma-core")
    assert "mellanox" not in policy


def test_modules_load_at_boot(host):
    conf = host.file("/etc/modules-load.d/gpuforge-rdma.conf")
    assert conf.is_file
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o644)
    lines = [ln for ln in conf.content_string.splitlines() if ln and not ln.startswith("#")]
    # Debian's kernels lack the InfiniBand peer-memory API: nvidia-peermem cannot load with the inbox stack,
    # so the role leaves it out there rather than fail systemd-modules-load at every boot.
    assert lines == MODULES
    assert "nvidia-peermem" not in lines


def test_ipoib_network_files(host):
    ib0 = host.file("/etc/systemd/network/60-gpuforge-ib0.network")
    assert (ib0.user, ib0.group, ib0.mode) == ("root", "root", 0o644)
    text = ib0.content_string
    assert re.search(r"^\[Match\]\nName=ib0$", text, re.M)
    assert re.search(r"^MTUBytes=2044$", text, re.M)
    assert re.search(r"^RequiredForOnline=no$", text, re.M)
    assert re.search(r"^\[Network\]\nAddress=10\.10\.0\.11/16$", text, re.M)
    assert "[IPoIB]" not in text  # networkd rejects that section in .network files
    ib1 = host.file("/etc/systemd/network/60-gpuforge-ib1.network")
    assert ib1.mode == 0o644
    assert ib1.contains("^MTUBytes=65520$")  # connected mode's default MTU
    assert ib1.contains("^Address=10.11.0.11/16$")
    # converge.yml left an interface's file that the inventory no longer names
    assert not host.file("/etc/systemd/network/60-gpuforge-ib9.network").exists


def test_networkd_applies_the_ipoib_file(host):
    """networkd, reloaded by the role's handler, configured the stand-in link ib0 from the rendered file."""
    status = host.check_output("networkctl status ib0 --no-pager")
    assert "/etc/systemd/network/60-gpuforge-ib0.network" in status
    link = host.check_output("ip -o link show dev ib0")
    assert " mtu 2044 " in link
    addr = host.check_output("ip -o -4 addr show dev ib0")
    assert "inet 10.10.0.11/16 " in addr


def test_networkd_accepts_the_files(host):
    """networkd logged no complaint (unknown section or key, bad value) about the role's files."""
    log = host.check_output("journalctl -b -u systemd-networkd --no-pager -o cat")
    complaints = [ln for ln in log.splitlines() if "60-gpuforge-" in ln and ".network:" in ln]
    assert complaints == []


def test_ipoib_mode_rules(host):
    rules = host.file("/etc/udev/rules.d/81-gpuforge-ipoib.rules")
    assert (rules.user, rules.group, rules.mode) == ("root", "root", 0o644)
    text = rules.content_string
    assert ('ATTR{type}=="32", NAME=="ib0", '
            "RUN+=\"/bin/sh -c 'echo datagram > /sys/class/net/ib0/mode'\"") in text
    assert ('ATTR{type}=="32", NAME=="", KERNEL=="ib1", '
            "RUN+=\"/bin/sh -c 'echo connected > /sys/class/net/ib1/mode'\"") in text


def test_udev_accepts_the_mode_rules(host):
    if host.run("udevadm verify --help").rc != 0:
        pytest.skip("udevadm verify needs systemd 254 or newer (Debian 13)")
    out = host.run("udevadm verify /etc/udev/rules.d/81-gpuforge-ipoib.rules")
    assert out.rc == 0, out.stdout + out.stderr


def test_inbox_stack_leaves_enhanced_ipoib_alone(host):
    """ipoib_enhanced is a DOCA-OFED parameter: with the inbox stack the role writes no modprobe option."""
    assert not host.file("/etc/modprobe.d/gpuforge-ipoib.conf").exists


def test_systemd_healthy(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout
