"""gpuforge_packages_missing: when an apt install step can be skipped, judged from package_facts' output."""

import gpuforge_host as host

# The shape ansible.builtin.package_facts gives with the apt manager.
INSTALLED = {
    "chrony": [{"name": "chrony", "version": "4.3-2+deb12u1", "arch": "amd64", "source": "apt"}],
    "nvidia-driver": [{"name": "nvidia-driver", "version": "535.247.01-1~deb12u1", "arch": "amd64",
                       "source": "apt"}],
    "libc6": [{"name": "libc6", "version": "2.36-9", "arch": "amd64", "source": "apt"},
              {"name": "libc6", "version": "2.36-9", "arch": "i386", "source": "apt"}],
}


def test_installed_names_are_satisfied():
    assert host.packages_missing(["chrony", "libc6"], INSTALLED) == []


def test_a_package_not_installed_is_missing():
    assert host.packages_missing(["chrony", "socat"], INSTALLED) == ["socat"]


def test_exact_version_must_match():
    assert host.packages_missing(["nvidia-driver=535.247.01-1~deb12u1"], INSTALLED) == []
    assert host.packages_missing(["nvidia-driver=550.163.01-1"], INSTALLED) == ["nvidia-driver=550.163.01-1"]


def test_version_glob_matches_as_apt_does():
    assert host.packages_missing(["nvidia-driver=535.*"], INSTALLED) == []
    assert host.packages_missing(["nvidia-driver=580*"], INSTALLED) == ["nvidia-driver=580*"]


def test_architecture_qualifier_names_the_package():
    assert host.packages_missing(["libc6:i386"], INSTALLED) == []


def test_a_single_name_is_taken_as_a_list():
    assert host.packages_missing("socat", INSTALLED) == ["socat"]


def test_without_the_fact_every_request_goes_to_apt():
    assert host.packages_missing(["chrony"], None) == ["chrony"]
    assert host.packages_missing(["chrony"], {}) == ["chrony"]


def test_the_registered_result_of_package_facts_works_too():
    assert host.packages_missing(["chrony", "socat"], {"changed": False, "ansible_facts": {"packages": INSTALLED}}) \
        == ["socat"]
    assert host.packages_missing(["chrony"], {"skipped": True, "changed": False}) == ["chrony"]
