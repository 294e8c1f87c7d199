"""What an operator would check after the nvidia_container_toolkit role (pytest-testinfra).

The lab cannot reach NVIDIA's repository, so the toolkit itself is not installed here: these tests prove that
Debian's containerd accepts the nvidia runtime the role configures, and that Docker's daemon.json is merged.
"""

import json
import re
import tomllib

RUNTIME = "/usr/bin/nvidia-container-runtime"
DROPIN = "/etc/containerd/conf.d/99-nvidia.toml"


def _containerd_version(host):
    out = host.check_output("containerd --version")
    return tuple(int(x) for x in re.search(r"\sv?(\d+)\.(\d+)\.\d", out).groups())


def _cri(host):
    """The CRI plugin's configuration as containerd itself reads it: config.toml merged with its imports."""
    dump = tomllib.loads(host.check_output("containerd config dump"))
    assert DROPIN in dump["imports"], dump["imports"]
    return dump["plugins"]["io.containerd.grpc.v1.cri"]


def test_containerd_running(host):
    containerd = host.service("containerd")
    assert containerd.is_running
    assert containerd.is_enabled


def test_main_config_imports_the_drop_ins(host):
    conf = host.file("/etc/containerd/config.toml")
    assert conf.mode == 0o644
    text = conf.content_string
    assert re.search(r"^version = 2$", text, re.M)
    assert re.search(r'^imports = \["/etc/containerd/conf.d/\*\.toml"\]$', text, re.M)
    # Debian's own settings stay in the file (the role adds a line, it does not rewrite it).
    assert 'bin_dir = "/usr/lib/cni"' in text


def test_drop_in_file(host):
    dropin = host.file(DROPIN)
    assert (dropin.user, dropin.group, dropin.mode) == ("root", "root", 0o600)
    assert "# Ansible managed" in dropin.content_string.splitlines()[:3]


def test_containerd_reads_the_nvidia_runtime(host):
    cri = _cri(host)
    nvidia = cri["containerd"]["runtimes"]["nvidia"]
    assert nvidia["runtime_type"] == "io.containerd.runc.v2"
    assert nvidia["options"]["BinaryName"] == RUNTIME
    assert nvidia["options"]["SystemdCgroup"] is True
    assert cri["containerd"]["default_runtime_name"] == "nvidia"


def test_drop_in_keeps_the_rest_of_the_cri_section(host):
    """containerd 1.x replaces a whole plugin section on import: runc and Debian's CNI path must survive it."""
    cri = _cri(host)
    assert cri["containerd"]["runtimes"]["runc"]["runtime_type"] == "io.containerd.runc.v2"
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"


def test_containerd_runs_its_current_configuration(host):
    """The restart handler ran: containerd became active after its files were last written."""
    started = int(host.check_output(
        "systemctl show --timestamp=unix --property=ActiveEnterTimestamp --value containerd").lstrip("@"))
    for path in ("/etc/containerd/config.toml", DROPIN):
        assert int(host.check_output(f"stat -c %Y {path}")) <= started, path


def test_cri_plugin_loaded(host):
    plugins = host.check_output("ctr plugins ls")
    assert re.search(r"^io\.containerd\.grpc\.v1\s+cri\s+\S+\s+ok\s*$", plugins, re.M), plugins


def test_cdi_enabled_where_containerd_supports_it(host):
    if _containerd_version(host) >= (1, 7):
        cri = _cri(host)
        assert cri["enable_cdi"] is True
        assert "/etc/cdi" in cri["cdi_spec_dirs"]
    else:  # 1.6 has no CDI: the role must not write a key it does not know
        assert "enable_cdi" not in host.file(DROPIN).content_string


def test_docker_daemon_json_merged(host):
    conf = host.file("/etc/docker/daemon.json")
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o644)
    daemon = json.loads(conf.content_string)
    assert daemon["runtimes"]["nvidia"] == {"path": RUNTIME, "args": []}
    assert daemon["default-runtime"] == "nvidia"
    # the site's own settings are kept
    assert daemon["log-opts"] == {"max-size": "50m"}
    assert daemon["runtimes"]["crun"] == {"path": "/usr/bin/crun"}


def test_no_cdi_spec_without_a_gpu(host):
    """The lab has no GPU: the role must not leave a CDI spec that describes none."""
    assert not host.file("/etc/cdi/nvidia.yaml").exists


def test_systemd_healthy(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout
