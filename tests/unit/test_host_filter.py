"""gpuforge_packages_missing: when an apt install step can be skipped, judged from one read of dpkg's database."""

import gpuforge_host as host
import pytest

# common's read: dpkg-query --show --showformat='${Package} ${Version} ${db:Status-Abbrev}\n', as registered.
DPKG = {
    "changed": False, "rc": 0,
    "stdout_lines": [
        "chrony 4.3-2+deb12u1 ii ",
        "nvidia-smi 535.261.03-1 hi ",
        "libc6 2.36-9+deb12u10 ii ",
        "libc6 2.36-9+deb12u10 ii ",
        "socat 1.7.4.4-2 rc ",  # removed, its configuration kept: not installed
        "nvidia-persistenced 535.171.04-1~deb12u1 iU ",  # unpacked, not configured: not installed
    ],
}

# ansible.builtin.package_facts' packages fact, also accepted.
PACKAGE_FACTS = {
    "chrony": [{"name": "chrony", "version": "4.3-2+deb12u1", "arch": "amd64", "source": "apt"}],
    "nvidia-smi": [{"name": "nvidia-smi", "version": "535.261.03-1", "arch": "amd64", "source": "apt"}],
}


def test_installed_names_are_satisfied():
    assert host.packages_missing(["chrony", "libc6", "nvidia-smi"], DPKG) == []


def test_a_package_not_installed_is_missing():
    assert host.packages_missing(["chrony", "jq"], DPKG) == ["jq"]


def test_removed_or_half_installed_packages_are_missing():
    assert host.packages_missing(["socat", "nvidia-persistenced"], DPKG) == ["socat", "nvidia-persistenced"]


def test_exact_version_must_match():
    assert host.packages_missing(["nvidia-smi=535.261.03-1"], DPKG) == []
    assert host.packages_missing(["nvidia-smi=535.309.01-0+deb12u1"], DPKG) == ["nvidia-smi=535.309.01-0+deb12u1"]


def test_version_glob_matches_as_apt_does():
    assert host.packages_missing(["nvidia-smi=535.*"], DPKG) == []
    assert host.packages_missing(["nvidia-smi=580*"], DPKG) == ["nvidia-smi=580*"]


def test_architecture_qualifier_names_the_package():
    assert host.packages_missing(["libc6:amd64"], DPKG) == []


def test_a_single_name_is_taken_as_a_list():
    assert host.packages_missing("jq", DPKG) == ["jq"]


def test_the_package_facts_form_works_too():
    assert host.packages_missing(["chrony", "nvidia-smi=535.261.03-1", "jq"], PACKAGE_FACTS) == ["jq"]


def test_without_a_read_every_request_goes_to_apt():
    assert host.packages_missing(["chrony"], None) == ["chrony"]
    assert host.packages_missing(["chrony"], {}) == ["chrony"]
    assert host.packages_missing(["chrony"], {"skipped": True, "changed": False}) == ["chrony"]
    assert host.packages_missing(["chrony"], {"failed": True, "rc": 2, "stdout_lines": []}) == ["chrony"]


def test_installed_version_reads_a_dpkg_query_result():
    read = {"stdout_lines": ["nvidia-kernel-dkms 535.261.03-1 hi ", "nvidia-smi 535.261.03-1 ii ",
                             "old-driver 1.0 rc "], "rc": 0}
    assert host.installed_version(read, "nvidia-kernel-dkms") == "535.261.03-1"
    assert host.installed_version(read, "old-driver") == ""  # removed, config files left
    assert host.installed_version(read, "absent") == ""
    assert host.installed_version({"stdout": "", "rc": 1}, "nvidia-kernel-dkms") == ""  # not installed
    assert host.installed_version(None, "nvidia-kernel-dkms") == ""


@pytest.mark.parametrize("value,context,quoted", [
    ("--enforce-eager", "exec", '"--enforce-eager"'),
    ('{"temperature": 0.5}', "exec", '"{\\"temperature\\": 0.5}"'),
    ("50% of $HOME \\ done", "exec", '"50%% of $$HOME \\\\ done"'),
    ("VLLM_CPU_KVCACHE_SPACE=1 GiB 100%", "environment", '"VLLM_CPU_KVCACHE_SPACE=1 GiB 100%%"'),
    ('k$y"with\\things%', "envfile", '"k$y\\"with\\\\things%"'),
])
def test_systemd_quote_escapes_what_each_context_expands(value, context, quoted):
    assert host.systemd_quote(value, context) == quoted


def test_systemd_quote_refuses_newlines_and_unknown_contexts():
    with pytest.raises(ValueError, match="newline"):
        host.systemd_quote("a\nb")
    with pytest.raises(ValueError, match="context must be one of"):
        host.systemd_quote("a", "shell")


@pytest.mark.parametrize("address, want", [
    ("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), (None, "127.0.0.1"), ("::", "[::1]"),
    ("172.28.250.11", "172.28.250.11"), ("fd00::11", "[fd00::11]"), ("[fd00::11]", "[fd00::11]"),
    ("gpu-01.example", "gpu-01.example"),
])
def test_a_listen_address_as_a_url_host(address, want):
    assert host.url_host(address) == want
