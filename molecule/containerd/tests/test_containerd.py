"""What an operator would check after the containerd role (pytest-testinfra).

Debian's containerd stands in for Docker's containerd.io (out of the lab's reach); the nvidia runtime is added as on
a GPU host, without the toolkit installed (no GPU here either).
"""

import re
import tomllib

CONFIG = "/etc/containerd/config.toml"
DROPIN = "/etc/containerd/conf.d/99-nvidia.toml"


def _cri(host):
    """The CRI plugin's configuration as containerd itself reads it: config.toml merged with its imports."""
    dump = tomllib.loads(host.check_output("containerd config dump"))
    assert DROPIN in dump["imports"], dump["imports"]
    return dump["plugins"]["io.containerd.grpc.v1.cri"]


def test_containerd_running_and_held(host):
    containerd = host.service("containerd")
    assert containerd.is_running
    assert containerd.is_enabled
    assert host.check_output("dpkg-query -W -f '${Status}' containerd").startswith("hold ")


def test_config_written_for_the_kubelet(host):
    conf = host.file(CONFIG)
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o644)
    assert "# Ansible managed" in conf.content_string.splitlines()[:3]
    text = tomllib.loads(conf.content_string)
    assert text["version"] == 2
    assert text["imports"] == ["/etc/containerd/conf.d/*.toml"]


def test_runc_uses_the_systemd_cgroup_driver(host):
    cri = _cri(host)
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is True
    assert cri["containerd"]["default_runtime_name"] == "runc"


def test_sandbox_image_and_cni_paths(host):
    cri = _cri(host)
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
    assert cri["cni"]["bin_dir"] == "/opt/cni/bin"
    assert cri["cni"]["conf_dir"] == "/etc/cni/net.d"


def test_nvidia_runtime_offered_not_default(host):
    """RuntimeClass mode: nvidia is configured, runc stays the default (containerd_nvidia_default_runtime false)."""
    nvidia = _cri(host)["containerd"]["runtimes"]["nvidia"]
    assert nvidia["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert nvidia["options"]["SystemdCgroup"] is True


def test_drop_in_carries_this_roles_cri_settings(host):
    """containerd 1.x replaces the CRI section on import: the drop-in must repeat what config.toml says."""
    dropin = tomllib.loads(host.file(DROPIN).content_string)
    cri = dropin["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.10.1"
    assert cri["cni"]["bin_dir"] == "/opt/cni/bin"


def test_containerd_runs_its_current_configuration(host):
    """The restart handler ran: containerd became active after its files were last written."""
    started = int(host.check_output(
        "systemctl show --timestamp=unix --property=ActiveEnterTimestamp --value containerd").lstrip("@"))
    for path in (CONFIG, DROPIN):
        assert int(host.check_output(f"stat -c %Y {path}")) <= started, path


def test_cri_plugin_loaded(host):
    plugins = host.check_output("ctr plugins ls")
    assert re.search(r"^io\.containerd\.grpc\.v1\s+cri\s+\S+\s+ok\s*$", plugins, re.M), plugins


def test_systemd_healthy(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout
