"""vLLM after the vllm_serve role (pytest-testinfra): the unit, the key kept out of sight, the staged
model, /dev/shm, and real completions with and without the key."""

import json

KEY = "molecule-vllm-key-0123456789abcdef"
MODEL = "gpuforge-tiny"


# The lab image has no curl: ask with the host's Python. Prints the body, a newline, the HTTP status.
CLIENT = """
import json, sys, urllib.request, urllib.error
key = sys.argv[1]
body = json.dumps({"model": "MODEL_NAME", "prompt": "Hello", "max_tokens": 4, "ignore_eos": True}).encode()
headers = {"Content-Type": "application/json"}
if key:
    headers["Authorization"] = "Bearer " + key
req = urllib.request.Request("http://" + sys.argv[2] + ":8000/v1/completions", data=body, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=60) as resp:
        print(resp.read().decode()); print(resp.status)
except urllib.error.HTTPError as exc:
    print(exc.read().decode()); print(exc.code)
""".replace("MODEL_NAME", MODEL)


def address(host):
    """The container's address: converge binds vLLM there, as a load balancer would reach it."""
    return host.check_output("hostname -I").split()[0]


def completion(host, key):
    out = host.run("python3 -c %s %s %s", CLIENT, key or "", address(host))
    assert out.rc == 0, out.stderr
    return out


def test_vllm_unit_runs_as_ray(host):
    unit = host.service("vllm")
    assert unit.is_running and unit.is_enabled
    user = host.run("systemctl show -p User --value vllm").stdout.strip()
    assert user == "ray"


def test_vllm_listens_on_its_address_only(host):
    assert host.socket(f"tcp://{address(host)}:8000").is_listening
    assert not host.socket("tcp://0.0.0.0:8000").is_listening
    assert not host.socket("tcp://127.0.0.1:8000").is_listening


def test_completion_with_the_key(host):
    out = completion(host, KEY)
    body, status = out.stdout.strip().rsplit("\n", 1)
    assert status == "200", out.stdout
    answer = json.loads(body)
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["choices"][0]["text"]


def test_no_key_or_a_wrong_key_is_refused(host):
    assert completion(host, None).stdout.strip().rsplit("\n", 1)[1] == "401"
    assert completion(host, KEY[::-1]).stdout.strip().rsplit("\n", 1)[1] == "401"


def test_the_key_is_only_in_a_root_only_file(host):
    keyfile = host.file("/etc/gpuforge/vllm/api-key.env")
    assert (keyfile.user, keyfile.group, keyfile.mode) == ("root", "root", 0o600)
    settings = [ln for ln in keyfile.content_string.splitlines() if ln and not ln.startswith("#")]
    assert settings == [f'VLLM_API_KEY="{KEY}"']  # quoted: systemd reads any key back unchanged
    assert KEY not in host.file("/etc/systemd/system/vllm.service").content_string
    assert KEY not in host.run("ps -eo args").stdout


def test_model_staged_with_the_same_bytes_as_the_controller(host):
    import hashlib
    import os

    source = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "gpuforge-tiny-llama")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        with open(os.path.join(source, name), "rb") as fh:
            want = hashlib.sha256(fh.read()).hexdigest()
        assert host.file(f"/srv/models/gpuforge-tiny-llama/{name}").sha256sum == want, name


def test_shared_memory_sized(host):
    size_kib = int(host.run("df -k --output=size /dev/shm | tail -1").stdout.strip())
    assert size_kib == 512 * 1024
    assert "size=512M" in host.file("/etc/fstab").content_string


def test_unit_serves_the_tiny_model_single_node(host):
    unit = host.run("systemctl show -p ExecStart --value vllm").stdout
    assert "--served-model-name gpuforge-tiny" in unit
    assert "--distributed-executor-backend" not in unit  # the CPU backend serves without Ray workers
    assert "--enforce-eager" in unit


def test_the_unit_runs_with_its_current_files(host):
    # Every file vLLM reads, and the model's directory, is older than the running unit.
    started = host.run("systemctl show --timestamp=unix --property=ActiveEnterTimestamp --value vllm")
    assert started.rc == 0 and started.stdout.strip().startswith("@"), started.stdout
    started = int(started.stdout.strip().lstrip("@"))
    for path in ("/etc/systemd/system/vllm.service", "/etc/gpuforge/vllm/api-key.env", "/etc/gpuforge/ray/node.env",
                 "/etc/gpuforge/ray/auth_token", "/opt/gpuforge/venv/gpuforge-vllm.lock",
                 "/srv/models/gpuforge-tiny-llama"):
        assert int(host.file(path).mtime.timestamp()) <= started, path
