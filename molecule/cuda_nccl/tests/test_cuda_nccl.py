"""What an operator would check on a host after the cuda_nccl role (pytest-testinfra).

The lab installs Debian's own packages (cuda_nccl_source: distribution) and only the CUDA runtime library.
"""

import re

import pytest

# What each Debian release ships, as the role pins it (vars/Debian-12.yml, vars/Debian-13.yml).
# cudart: package, version, soname, the file the soname must resolve to, and what cudaRuntimeGetVersion
# answers on a host without the NVIDIA driver: CUDA 12 reports its own version (status 0, 12040); CUDA 11
# asks the driver first and answers cudaErrorInsufficientDriver (35) with version 0.
RELEASES = {
    "bookworm": {
        "cudart": ("libcudart11.0", "11.8.89~11.8.0-5~deb12u1", "libcudart.so.11.0", "libcudart.so.11.8.89",
                   ["35", "0"]),
        "nccl": None,
    },
    "trixie": {
        "cudart": ("libcudart12", "12.4.127~12.4.1-2", "libcudart.so.12", "libcudart.so.12.4.127", ["0", "12040"]),
        "nccl": ("libnccl2", "2.22.3-1-1", "libnccl.so.2", "libnccl.so.2.22.3", ["0", "22203"]),
    },
}

# Load the library the way a CUDA program does (by soname), call its version function, and print the
# file the dynamic loader actually mapped.
LOAD_AND_ASK = """\
import ctypes, os
lib = ctypes.CDLL({soname!r})
v = ctypes.c_int()
status = lib.{function}(ctypes.byref(v))
mapped = [line.split()[-1] for line in open('/proc/self/maps') if {soname!r}.split('.so')[0] + '.so' in line]
print(status, v.value, os.path.basename(os.path.realpath(mapped[0])))
"""


def load_and_ask(host, soname, function):
    return host.check_output("python3 -c %s", LOAD_AND_ASK.format(soname=soname, function=function)).split()


@pytest.fixture(scope="module")
def release(host):
    return RELEASES[host.system_info.codename]


def test_cuda_runtime_installed_at_the_pinned_version(host, release):
    name, version, *_ = release["cudart"]
    pkg = host.package(name)
    assert pkg.is_installed, name
    assert pkg.version == version


def test_cuda_runtime_loads_from_the_pinned_package(host, release):
    _, _, soname, real_file, answer = release["cudart"]
    assert load_and_ask(host, soname, "cudaRuntimeGetVersion") == answer + [real_file]


def test_toolkit_not_installed_in_the_lab(host):
    """cuda_nccl_cuda_kind: runtime keeps the 3 GB toolkit out."""
    assert not host.package("nvidia-cuda-toolkit").is_installed


def test_nccl_where_the_release_ships_it(host, release):
    if release["nccl"] is None:
        # bookworm has no NCCL: the role must have skipped it, not installed something else.
        assert not host.package("libnccl2").is_installed
        assert "libnccl.so" not in host.check_output("ldconfig -p")
        return
    name, version, soname, real_file, answer = release["nccl"]
    for pkg in (name, "libnccl-dev"):
        assert host.package(pkg).is_installed, pkg
        assert host.package(pkg).version == version, pkg
    # ncclGetVersion needs no GPU: ncclSuccess (0) and 2.22.3 as NCCL encodes it (22203)
    assert load_and_ask(host, soname, "ncclGetVersion") == answer + [real_file]


def test_contrib_and_non_free_enabled_through_common(host):
    """Debian's contrib/non-free come from common's debian_nonfree entry point (one file for every role)."""
    codename = host.system_info.codename
    sources = host.file("/etc/apt/sources.list.d/gpuforge-debian-nonfree.sources")
    assert sources.mode == 0o644
    text = sources.content_string
    assert re.search(r"^Components: contrib non-free non-free-firmware$", text, re.M)
    assert re.search(rf"^Suites: {codename} {codename}-updates$", text, re.M)
    assert re.search(r"^Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg$", text, re.M)
    # the distribution's own file is left alone
    assert "contrib" not in host.file("/etc/apt/sources.list.d/debian.sources").content_string
    # and apt uses it: the runtime's candidate comes from non-free
    assert "/non-free amd64 Packages" in host.check_output("apt-cache policy libcudart11.0 libcudart12")


def test_versions_pinned_by_apt_preferences(host, release):
    prefs = host.file("/etc/apt/preferences.d/gpuforge-cuda-nccl")
    assert prefs.mode == 0o644
    name, version, *_ = release["cudart"]
    cuda_pin = version.split(".")[0] + "." + version.split(".")[1]
    assert re.search(rf"^Package: {re.escape(name)}\nPin: version {re.escape(cuda_pin)}\.\*\nPin-Priority: 1001$",
                     prefs.content_string, re.M)
    policy = host.check_output("apt-cache policy %s", name)
    assert re.search(rf"^\s+\*\*\* {re.escape(version)} 1001$", policy, re.M), policy
    if release["nccl"]:
        nccl, nccl_version, *_ = release["nccl"]
        assert re.search(rf"^Package: libnccl2 libnccl-dev\nPin: version {re.escape(nccl_version)}\n",
                         prefs.content_string, re.M)
        assert re.search(rf"^\s+\*\*\* {re.escape(nccl_version)} 1001$",
                         host.check_output("apt-cache policy %s", nccl), re.M)
    else:
        assert "libnccl" not in prefs.content_string


def test_packages_held_and_out_of_unattended_upgrades(host, release):
    held = [release["cudart"][0]] + (["libnccl2", "libnccl-dev"] if release["nccl"] else [])
    block = host.file("/etc/apt/apt.conf.d/51gpuforge-cuda-nccl-blocklist").content_string
    for pkg in held:
        selection = host.check_output("dpkg --get-selections %s", pkg)
        assert re.fullmatch(rf"{re.escape(pkg)}(:amd64)?\s+hold", selection), selection
        assert f'"^{pkg}$";' in block
    assert host.run("apt-get -s upgrade").rc == 0


def test_nccl_conf_rendered_from_the_inventory(host):
    conf = host.file("/etc/nccl.conf")
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o644)
    settings = [line for line in conf.content_string.splitlines() if line and not line.startswith("#")]
    expected = [
        "NCCL_DEBUG=WARN",
        "NCCL_IB_HCA=mlx5_0,mlx5_1",
        "NCCL_IB_QPS_PER_CONNECTION=4",
        "NCCL_IB_TIMEOUT=22",
        "NCCL_SOCKET_IFNAME=eth0",  # no fabric_interface: the default route's interface
    ]
    if host.system_info.codename == "trixie":
        expected.insert(1, "NCCL_IB_GID_INDEX=3")  # RoCE in the converge; bookworm leaves the key out
    assert settings == expected


def test_nccl_conf_is_what_nccl_can_parse(host):
    """NCCL splits each line at the first '=' and takes the rest literally: comments must hold no '=',
    and settings no spaces or quotes."""
    for line in host.file("/etc/nccl.conf").content_string.splitlines():
        if line.startswith("#") or not line:
            assert "=" not in line, line
        else:
            assert re.fullmatch(r"NCCL_[A-Z0-9_]+=[^\s\"']+", line), line


def test_socket_interface_exists_on_the_host(host):
    ifname = re.search(r"^NCCL_SOCKET_IFNAME=(\S+)$", host.file("/etc/nccl.conf").content_string, re.M).group(1)
    assert host.interface(ifname).exists
