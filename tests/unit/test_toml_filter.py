"""The TOML filters that write containerd's drop-in (plugins/filter/gpuforge_toml.py)."""

import tomllib

import gpuforge_toml as t
import pytest
from ansible.errors import AnsibleFilterError

CONTAINERD_1_7 = """\
version = 2
imports = ["/etc/containerd/conf.d/*.toml"]

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
"""


def test_round_trip_keeps_containerd_config_equal():
    data = t.from_toml(CONTAINERD_1_7)
    assert tomllib.loads(t.to_toml(data)) == data


def test_nvidia_runtime_merged_next_to_runc():
    data = t.from_toml(CONTAINERD_1_7)
    runtimes = data["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    runtimes["nvidia"] = {"runtime_type": "io.containerd.runc.v2",
                          "options": {"BinaryName": RUNTIME, "SystemdCgroup": True}}
    text = t.to_toml(data)
    assert '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]' in text
    back = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]
    assert set(back["containerd"]["runtimes"]) == {"runc", "nvidia"}
    assert back["cni"]["bin_dir"] == "/usr/lib/cni"


def test_strings_are_escaped_and_odd_keys_quoted():
    text = t.to_toml({"a b": {"path": 'C:\\x "q"\n', "n": 1.5, "ok": False, "list": [1, "two"]}})
    assert tomllib.loads(text) == {"a b": {"path": 'C:\\x "q"\n', "n": 1.5, "ok": False, "list": [1, "two"]}}
    assert '["a b"]' in text


def test_bad_input_is_a_clear_error():
    with pytest.raises(AnsibleFilterError, match="not valid TOML"):
        t.from_toml("version = = 2")
    with pytest.raises(AnsibleFilterError, match="needs a dictionary"):
        t.to_toml(["x"])
    with pytest.raises(AnsibleFilterError, match="cannot write"):
        t.to_toml({"x": object()})


RUNTIME = "/usr/bin/nvidia-container-runtime"


def test_toml_filters_round_trip():
    """The role writes containerd's TOML itself: what it writes must read back as the same data."""
    data = {
        "version": 2,
        "imports": ["/etc/containerd/conf.d/*.toml"],
        "plugins": {
            "io.containerd.grpc.v1.cri": {
                "enable_cdi": True,
                "sandbox_image": 'registry.k8s.io/pause:3.9 "quoted" \\ back\tslash',
                "cni": {"bin_dir": "/usr/lib/cni", "max_conf_num": 1},
                "containerd": {"runtimes": {"nvidia": {"options": {"BinaryName": RUNTIME, "SystemdCgroup": True}}}},
                "registry": {"mirrors": {"docker.io": {"endpoint": ["https://mirror.example:5000"]}}, "auths": {}},
                "x": [{"a": 1}, {"b": 2.5}],
            }
        },
    }
    assert tomllib.loads(t.to_toml(data)) == data
    assert t.from_toml(t.to_toml(data)) == data
