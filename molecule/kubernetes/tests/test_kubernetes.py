"""The kubernetes role's host preparation: swap off for good, and the pinned minor's repository, signed."""


def test_no_swap_active(host):
    assert host.run("swapon --show=NAME --noheadings").stdout.strip() == ""


def test_swap_line_in_fstab_commented_out(host):
    lines = [line for line in host.file("/etc/fstab").content_string.splitlines() if "/swapfile" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("# /swapfile none swap sw 0 0"), lines[0]
    assert "kubernetes role" in lines[0]


def test_repository_is_the_pinned_minor_signed_by_its_key(host):
    sources = host.file("/etc/apt/sources.list.d/kubernetes.sources")
    assert sources.exists and sources.mode == 0o644
    fields = dict(line.split(": ", 1) for line in sources.content_string.splitlines() if ": " in line)
    assert fields["Types"] == "deb"
    assert fields["URIs"] == "http://pkgs-k8s-mirror.invalid/core:/stable:/v1.34/deb/"
    assert fields["Suites"] == "/"
    assert "Components" not in fields  # a flat repository
    assert fields["Signed-By"] == "/usr/share/keyrings/gpuforge-molecule-mirror.gpg"
    assert host.file(fields["Signed-By"]).size > 0


def test_apt_reads_the_repository(host):
    # A malformed sources or preferences file makes apt-cache exit 100 ("E: Malformed entry ...").
    policy = host.run("apt-cache policy kubeadm")
    assert policy.rc == 0 and "E:" not in policy.stderr, policy.stderr


def test_packages_pinned_to_the_repository(host):
    pref = host.file("/etc/apt/preferences.d/gpuforge-kubernetes.pref").content_string
    assert "Package: kubelet kubeadm kubectl cri-tools kubernetes-cni" in pref
    assert 'Pin: origin "pkgs-k8s-mirror.invalid"' in pref
    assert "Pin-Priority: 1001" in pref
