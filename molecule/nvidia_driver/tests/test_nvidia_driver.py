"""What an operator checks after the nvidia_driver role on a host without a GPU (pytest-testinfra)."""

import re

import pytest

PACKAGES = ("nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "firmware-nvidia-gsp", "nvidia-persistenced")


def debian_major(host):
    return host.system_info.release.split(".")[0]


@pytest.fixture()
def wanted_version(host):
    """Debian 12 is pinned to 535.261.03-1 in converge.yml; Debian 13 takes its 550 branch."""
    return "535.261.03-1" if debian_major(host) == "12" else None


def test_driver_packages_installed_at_the_pinned_version(host, wanted_version):
    for pkg in PACKAGES:
        assert host.package(pkg).is_installed, pkg
    for pkg in ("nvidia-kernel-dkms", "nvidia-smi", "libcuda1"):
        version = host.package(pkg).version
        if wanted_version:
            assert version == wanted_version, (pkg, version)
        else:
            assert version.startswith("550."), (pkg, version)


def test_every_driver_package_is_pinned_by_preferences(host, wanted_version):
    prefs = host.file("/etc/apt/preferences.d/gpuforge-nvidia-driver")
    if not wanted_version:
        assert not prefs.exists
        return
    assert prefs.mode == 0o644
    assert prefs.contains("^Package: src:nvidia-graphics-drivers$")
    assert prefs.contains(f"^Pin: version {wanted_version}$")
    # apt itself resolves the pin: the candidate of a dependency is the pinned version, not the newest.
    policy = host.check_output("apt-cache policy libnvidia-ml1")
    assert re.search(rf"Candidate: {re.escape(wanted_version)}$", policy, re.M), policy


def test_driver_packages_held_and_blocked_from_unattended_upgrades(host):
    for pkg in PACKAGES:
        assert host.check_output(f"dpkg --get-selections {pkg}").split()[-1] == "hold", pkg
    block = host.file("/etc/apt/apt.conf.d/51gpuforge-nvidia-driver-blocklist")
    assert block.contains('"\\^nvidia-kernel-dkms\\$";')
    assert "nvidia-kernel-dkms" in host.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist")


def test_nouveau_blacklisted_inside_the_initramfs(host):
    conf = host.file("/etc/modprobe.d/blacklist-nouveau.conf")
    assert conf.mode == 0o644
    assert conf.contains("^blacklist nouveau$")
    assert conf.contains("^options nouveau modeset=0$")
    initrds = host.check_output("ls /boot/initrd.img-*").split()
    assert initrds
    for initrd in initrds:
        listing = host.check_output(f"lsinitramfs {initrd}")
        assert "etc/modprobe.d/blacklist-nouveau.conf" in listing.split(), initrd
        inside = host.check_output(f"unmkinitramfs {initrd} /tmp/initrd-check && "
                                   "cat $(find /tmp/initrd-check -path '*etc/modprobe.d/blacklist-nouveau.conf'); "
                                   "rm -rf /tmp/initrd-check")
        assert "blacklist nouveau" in inside


def test_contrib_non_free_sources_signed(host):
    sources = host.file("/etc/apt/sources.list.d/gpuforge-debian-nonfree.sources")
    assert sources.contains("^Components: contrib non-free non-free-firmware$")
    assert sources.contains("^Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg$")


def test_persistenced_off_without_a_gpu_and_systemd_healthy(host):
    """No GPU here: nvidia-persistenced stays off instead of failing, so systemd is not degraded."""
    assert host.package("nvidia-persistenced").is_installed
    assert not host.service("nvidia-persistenced").is_enabled
    assert host.run("systemctl is-failed nvidia-persistenced").stdout.strip() != "failed"
    assert host.run("systemctl is-system-running").stdout.strip() == "running"


def test_dkms_knows_the_module(host):
    # No kernel headers in a container, so DKMS registered the module without building it.
    assert "nvidia" in host.check_output("dkms status")
