"""A one-node Ray cluster after the ray_cluster role (pytest-testinfra): the unit, token authentication,
the pinned Ray, the node's fabric environment, and the restart of a killed node."""

import json
import re
import time

RAY_VERSION = "2.60.0"


def alive_nodes(host):
    out = host.run("ray list nodes --format json --filter state=ALIVE")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def test_head_unit_runs_and_is_enabled(host):
    unit = host.service("ray-head")
    assert unit.is_running and unit.is_enabled
    assert not host.file("/etc/systemd/system/ray-worker.service").exists


def test_the_head_sees_itself_with_its_logical_gpus(host):
    nodes = alive_nodes(host)
    assert len(nodes) == 1
    node = nodes[0]
    assert node["is_head_node"] is True
    assert node["resources_total"]["GPU"] == 2.0
    # --node-ip-address is the fabric address (the container's own address in molecule).
    assert node["node_ip"] in host.run("hostname -I").stdout.split()


def test_pinned_ray_in_the_virtualenv(host):
    out = host.run("/opt/gpuforge/venv/bin/python -c 'import ray; print(ray.__version__)'")
    assert out.rc == 0 and out.stdout.strip() == RAY_VERSION
    lock = host.file("/opt/gpuforge/venv/gpuforge-ray.lock").content_string
    pins = [line.split() for line in lock.splitlines() if line and not line.startswith("#")]
    assert [f"ray=={RAY_VERSION}"] in [pin[:1] for pin in pins]
    # Every pin carries its sha256: the set was installed with --require-hashes.
    assert pins and all(len(pin) == 2 and re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", pin[1]) for pin in pins), pins


def test_token_file_is_private_and_required(host):
    token = host.file("/etc/gpuforge/ray/auth_token")
    assert (token.user, token.group, token.mode) == ("root", "ray", 0o640)
    # Ray's CLI without the token is refused by the cluster.
    out = host.run("env -u RAY_AUTH_TOKEN_PATH RAY_AUTH_MODE=token HOME=/nonexistent "
                   "timeout 60 /opt/gpuforge/venv/bin/ray list nodes --format json")
    assert out.rc != 0


def test_dashboard_only_on_localhost(host):
    listening = host.run("ss -Htln 'sport = :8265'").stdout.split()
    assert "127.0.0.1:8265" in listening
    assert "0.0.0.0:8265" not in listening and "*:8265" not in listening


def test_node_environment_names_the_fabric(host):
    """As the running Ray process has it: systemd read node.env (its values quoted) into its environment."""
    pid = host.check_output("systemctl show --property=MainPID --value ray-head")
    environ = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    env = dict(line.split("=", 1) for line in environ.splitlines() if "=" in line)
    assert set(env) >= {"VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"}
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"]
    assert env["VLLM_HOST_IP"] in host.run("hostname -I").stdout.split()


def test_the_unit_runs_with_its_current_files(host):
    # Every file Ray reads is older than the running unit: no change is left waiting for a restart.
    started = host.run("systemctl show --timestamp=unix --property=ActiveEnterTimestamp --value ray-head")
    assert started.rc == 0 and started.stdout.strip().startswith("@"), started.stdout
    started = int(started.stdout.strip().lstrip("@"))
    for path in ("/etc/systemd/system/ray-head.service", "/etc/gpuforge/ray/node.env",
                 "/etc/gpuforge/ray/auth_token", "/opt/gpuforge/venv/gpuforge-ray.lock"):
        assert int(host.file(path).mtime.timestamp()) <= started, path


def test_a_killed_node_is_restarted(host):
    before = alive_nodes(host)[0]["node_id"]
    host.run("systemctl kill --signal=KILL ray-head")
    deadline = time.monotonic() + 90
    nodes = []
    while time.monotonic() < deadline:
        time.sleep(3)
        out = host.run("ray list nodes --format json --filter state=ALIVE")
        # With nothing alive Ray prints "No resource in the cluster" (exit 0) instead of [].
        nodes = json.loads(out.stdout) if out.rc == 0 and out.stdout.lstrip().startswith("[") else []
        if nodes and nodes[0]["node_id"] != before:
            break
    assert nodes and nodes[0]["node_id"] != before, "ray-head was not restarted with a new node"
