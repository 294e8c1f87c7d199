"""What an operator would check on a host after the common role (pytest-testinfra)."""

import re


def _limit(host, name):
    """The hard limit PID 1 runs with: the most a container can grant."""
    for line in host.file("/proc/1/limits").content_string.splitlines():
        if line.startswith(name):
            return line.split()[len(name.split()) + 1]
    raise AssertionError(f"{name} not in /proc/1/limits")


def test_base_packages_installed(host):
    for pkg in ("chrony", "curl", "jq", "pciutils", "numactl", "unattended-upgrades", "python3-venv"):
        assert host.package(pkg).is_installed, pkg


def test_apt_goes_through_the_proxy_and_stamps_its_refreshes(host):
    conf = host.file("/etc/apt/apt.conf.d/01gpuforge")
    assert conf.mode == 0o644
    assert re.search(r'^Acquire::http::Proxy "http://[0-9.]+:3149";$', conf.content_string, re.M)
    # apt itself parses the file: the proxy and the update-success hook are in its configuration
    dump = host.check_output("apt-config dump")
    assert "update-success-stamp" in dump


def test_chrony_enabled_with_site_servers(host):
    assert host.service("chrony").is_enabled
    sources = host.file("/etc/chrony/sources.d/gpuforge.sources")
    assert sources.contains("^server ntp1.example.internal iburst$")


def test_kernel_modules_load_at_boot(host):
    conf = host.file("/etc/modules-load.d/gpuforge.conf")
    assert conf.mode == 0o644
    assert conf.contains("^overlay$")
    assert conf.contains("^br_netfilter$")


def test_sysctls_written(host):
    conf = host.file("/etc/sysctl.d/90-gpuforge.conf")
    assert conf.contains(r"^net.ipv4.ip_forward = 1$")
    assert conf.contains(r"^net.bridge.bridge-nf-call-iptables = 1$")
    assert conf.contains(r"^vm.max_map_count = 262144$")


def test_systemd_default_limits_applied(host):
    """systemd was re-executed: its defaults are what the role asked, capped by the container's hard limits."""
    hard_memlock = _limit(host, "Max locked memory")
    hard_nofile = _limit(host, "Max open files")
    want_memlock = "infinity" if hard_memlock == "unlimited" else hard_memlock
    want_nofile = "1048576" if hard_nofile == "unlimited" else str(min(1048576, int(hard_nofile)))
    out = host.check_output("systemctl show -p DefaultLimitMEMLOCK -p DefaultLimitNOFILE")
    assert f"DefaultLimitMEMLOCK={want_memlock}" in out
    assert f"DefaultLimitNOFILE={want_nofile}" in out


def test_login_limits_do_not_break_sessions(host):
    """pam_limits must be able to apply what limits.d asks, or logins fail: a fresh login session works."""
    conf = host.file("/etc/security/limits.d/90-gpuforge.conf").content_string
    assert re.search(r"^\* +hard +memlock +\S+$", conf, re.M)
    out = host.run("su - root -c 'ulimit -l'")
    assert out.rc == 0, out.stderr


def test_unattended_upgrades_policy(host):
    auto = host.file("/etc/apt/apt.conf.d/20auto-upgrades")
    assert auto.contains('^APT::Periodic::Unattended-Upgrade "1";$')
    assert auto.contains('"\\^linux-image-amd64\\$";')
    # apt itself must parse the files and see the blocklist
    dump = host.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist")
    assert "linux-image-amd64" in dump


def test_hold_packages_entry_point(host):
    assert "hold" in host.check_output("dpkg --get-selections less")
    block = host.file("/etc/apt/apt.conf.d/51gpuforge-molecule-test-blocklist")
    assert block.contains('"\\^less\\$";')


def test_systemd_healthy(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout
