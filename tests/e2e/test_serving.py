"""Serving on the lab: a Ray cluster per serving group, vLLM (CPU build, gpuforge's tiny model) on each
group's head, HAProxy on lb-01 in front of both heads, over TLS with the lab's own CA. Runs after site.yml
provisioned the lab."""

import json
import re
import shlex
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, failed_checks, firing, gpuforge_health, health_gate, monitoring_host, ssh

from gpuforge.lab import Lab

MODEL = "gpuforge-tiny"  # vllm_served_model_name in inventories/lab/group_vars/serving.yml
PORT = 8000
CA = Lab(ROOT).ca_cert  # `lab up` makes the lab's CA and the load balancer's certificate


@pytest.fixture(scope="module")
def api_key(lab, first_run):
    rc, summary = first_run
    assert rc == 0, summary["failures"]
    return lab.secrets()["vllm_api_key"]


def lb_address(lab):
    return next(h.mgmt_ip for h in lab.topology.hosts if h.kind == "lb")


def lb_url(lab):
    """The endpoint clients use: TLS only."""
    return f"https://{lb_address(lab)}:{PORT}"


def context_for(url):
    return ssl.create_default_context(cafile=str(CA)) if url.startswith("https://") else None


def host(lab, name):
    return next(h for h in lab.topology.hosts if h.name == name)


def complete(url, key, prompt="Hello, the cluster", max_tokens=8, timeout=60):
    """POST /v1/completions; returns (HTTP status, parsed body or error text)."""
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context_for(url)) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def request(url, path, method="GET", key=None, body=None, timeout=60):
    """One request to the base URL; returns (HTTP status, parsed JSON body or text)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context_for(url)) as resp:
            status, text = resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def alive_nodes(lab, head):
    out = ssh(lab, head, "ray list nodes --format json --limit 1000 --filter state=ALIVE")
    assert out.returncode == 0, out.stderr[-2000:]
    # With nothing alive Ray prints "No resource in the cluster" (exit 0) instead of [].
    return json.loads(out.stdout) if out.stdout.lstrip().startswith("[") else []


def lb_server_states(lab):
    """{group: operational state} from HAProxy's runtime API (2 = up, 0 = down)."""
    lb = next(h.name for h in lab.topology.hosts if h.kind == "lb")
    out = ssh(lab, lb, "echo 'show servers state' | socat stdio /run/haproxy/admin.sock")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    header = next(ln for ln in lines if ln.startswith("# be_id")).lstrip("# ").split()
    rows = [dict(zip(header, ln.split(), strict=False)) for ln in lines if not ln.startswith("#") and " " in ln]
    return {r["srv_name"]: int(r["srv_op_state"]) for r in rows}


def test_completion_through_haproxy_with_the_api_key(lab, api_key):
    status, body = complete(lb_url(lab), api_key)
    assert status == 200, body
    assert body["model"] == MODEL
    assert body["usage"]["completion_tokens"] == 8, body["usage"]
    assert body["choices"][0]["text"], body
    print(f"\ncompletion through HAProxy: {body['choices'][0]['text']!r}")


def test_haproxy_passes_a_missing_or_wrong_key_to_vllm_which_refuses_it(lab, api_key):
    status, body = complete(lb_url(lab), None)
    assert status == 401, body
    status, body = complete(lb_url(lab), api_key[::-1])
    assert status == 401, body


@pytest.mark.parametrize("path,method", [("/invocations", "POST"), ("/tokenize", "POST"), ("/metrics", "GET"),
                                         ("/docs", "GET"), ("/v1/completions/../../invocations", "POST")])
def test_paths_outside_the_allowlist_are_refused_by_the_load_balancer(lab, api_key, path, method):
    """vLLM answers these without a key (its key guards only /v1); HAProxy answers 404 itself, key or not."""
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2} if method == "POST" else None
    for key in (None, api_key):
        status, answer = request(lb_url(lab), path, method, key=key, body=body)
        assert status == 404, (path, key is not None, answer)
        assert answer["error"]["type"] == "NotFoundError", answer  # HAProxy's answer, not vLLM's


def test_the_endpoint_speaks_tls_only_with_the_lab_certificate(lab, api_key):
    # Plain HTTP gets no HTTP answer: a client cannot send its key in clear by mistake.
    status, error = complete(f"http://{lb_address(lab)}:{PORT}", api_key)
    assert status == 0, error
    # A client that does not trust the lab's CA refuses the certificate.
    req = urllib.request.Request(f"{lb_url(lab)}/health")
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(req, timeout=30, context=ssl.create_default_context())


def test_the_openai_client_gets_completions_and_chat_over_tls(lab, api_key):
    """What a user runs: the OpenAI Python client, trusting the lab's CA, against the load balancer."""
    import httpx2
    import openai

    def client(key):
        return openai.OpenAI(base_url=f"{lb_url(lab)}/v1", api_key=key, max_retries=0, timeout=120,
                             http_client=httpx2.Client(verify=ssl.create_default_context(cafile=str(CA)),
                                                       trust_env=False))

    with client(api_key) as ok:
        completion = ok.completions.create(model=MODEL, prompt="Hello", max_tokens=4, extra_body={"ignore_eos": True})
        assert completion.usage.completion_tokens == 4 and completion.choices[0].text
        chat = ok.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4,
                                          extra_body={"ignore_eos": True})
        assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 4
        assert [m.id for m in ok.models.list()] == [MODEL]
    with client(api_key[::-1]) as wrong, pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=MODEL, prompt="Hello", max_tokens=1)


def test_the_health_path_is_answered_by_the_load_balancer(lab, api_key):
    assert request(lb_url(lab), "/health") == (200, "ok")


def test_chat_completions_and_models_through_the_load_balancer(lab, api_key):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "ignore_eos": True}
    status, answer = request(lb_url(lab), "/v1/chat/completions", "POST", key=api_key, body=body)
    assert status == 200, answer
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] == 4, answer["usage"]
    status, answer = request(lb_url(lab), "/v1/models", key=api_key)
    assert status == 200 and [m["id"] for m in answer["data"]] == [MODEL], answer
    assert request(lb_url(lab), "/v1/chat/completions", "POST", key=api_key[::-1], body=body)[0] == 401


def test_vllm_listens_on_the_address_the_load_balancer_reaches_not_on_every_interface(lab, api_key):
    for names in lab.topology.serving_groups.values():
        head = host(lab, names[0])
        out = ssh(lab, head.name, f"ss -ltnH 'sport = :{PORT}'")
        assert out.returncode == 0, out.stderr
        local = sorted({line.split()[3] for line in out.stdout.splitlines() if line.strip()})
        assert local == [f"{head.mgmt_ip}:{PORT}"], (head.name, out.stdout)


def test_vllm_on_each_head_runs_as_ray_with_its_key_out_of_sight_and_the_staged_model(lab, api_key):
    """The vllm_serve role's unit on each group's head: enabled and running as `ray`, the key only in a root-only
    file (not in the unit, not on any command line), every file it reads older than the running unit, and the
    model staged with the controller's bytes on every host of the group."""
    import hashlib

    files = ("config.json", "model.safetensors", "tokenizer.json")
    want = {name: hashlib.sha256((lab.model_dir / name).read_bytes()).hexdigest() for name in files}
    model = "/srv/models/gpuforge-tiny-llama"  # vllm_model in inventories/lab/group_vars/serving.yml
    env = "/etc/gpuforge/vllm/api-key.env"
    # The key comes on stdin and is searched for with grep -f on a pipe: it is on no command line here either.
    read = ("read -r k; systemctl is-active vllm; systemctl is-enabled vllm; systemctl show -p User --value vllm; "
            f"stat -c '%U %G %a' {env}; grep -v -e '^#' -e '^$' {env} | grep -c -x -F -f <(printf "
            "'VLLM_API_KEY=\"%s\"\\n' \"$k\"); grep -v -e '^#' -e '^$' " + env + " | wc -l; "
            "grep -c -F -f <(printf '%s\\n' \"$k\") /etc/systemd/system/vllm.service; "
            "ps -eo args | grep -c -F -f <(printf '%s\\n' \"$k\"); "
            "systemctl show --timestamp=unix -p ActiveEnterTimestamp --value vllm; "
            f"stat -c '%Y %n' /etc/systemd/system/vllm.service {env} /etc/gpuforge/ray/node.env "
            f"/etc/gpuforge/ray/auth_token /opt/gpuforge/venv/gpuforge-vllm.lock {model}")
    for group, names in lab.topology.serving_groups.items():
        head = names[0]
        out = subprocess.run(lab.ssh_command(host(lab, head), read), input=api_key + "\n", capture_output=True,
                             text=True, timeout=120)
        lines = out.stdout.splitlines()
        assert lines[:8] == ["active", "enabled", "ray", "root root 600", "1", "1", "0", "0"], (head, lines, out.stderr)
        started = int(lines[8].lstrip("@"))
        mtimes = [ln.split(" ", 1) for ln in lines[9:]]
        assert len(mtimes) == 6 and all(int(t) <= started for t, _ in mtimes), (head, started, mtimes)
        for name in names:
            sums = ssh(lab, name, f"cd {model} && sha256sum {' '.join(files)}")
            assert sums.returncode == 0, (name, sums.stderr)
            assert {f: h for h, f in (ln.split() for ln in sums.stdout.splitlines())} == want, (group, name)


# Run on a worker of the head's group (it has Ray, and the fabric reaches the head): each of the head's Ray
# endpoints without the token, with a wrong one, and with the right one (proving it answers at all).
RAY_PROBE = r"""
import json, os, subprocess, sys, urllib.error, urllib.request
head, token_path = sys.argv[1], sys.argv[2]
venv = "/opt/gpuforge/venv/bin/"
token = open(token_path).read().strip()
bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
without, wrong = {}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "w" * 48}
right = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_path}
def run(argv, env, timeout=90):
    p = subprocess.run(argv, env={**bare, **env}, capture_output=True, text=True, timeout=timeout)
    return [p.returncode, (p.stdout + p.stderr)[-3000:]]
def http(url, key):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + key} if key else {})
    try:
        return urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
# One try (about 5 s) where a refusal is expected. With the token, six (5 s, 10 s, ... 30 s: Ray's backoff): the
# head starts a server process for each client, which takes a while on a lab busy with other tests.
client = ("from ray.util.client import ray as c; c.connect('%s:10001', connection_retries=%d); "
          "print(c.get(c.put(7)))")
# The server process the head starts for a client can also exit while it starts on a lab this busy ("Starting
# Ray client server failed"): with the token, such a failure is tried again, up to three times; a refusal of the
# token is never retried.
refusals = ("InvalidAuthToken", "UNAUTHENTICATED", "Unauthenticated", "PERMISSION_DENIED")
out = {}
for name, env in (("without", without), ("wrong", wrong), ("right", right)):
    out["gcs_" + name] = run([venv + "ray", "status", "--address", head + ":6379"], env)
    for _ in range(3 if name == "right" else 1):
        result = run([venv + "python", "-c", client % (head, 6 if name == "right" else 0)], env, 240)
        if result[0] == 0 or any(word in result[1] for word in refusals):
            break
    out["client_" + name] = result
for name, key in (("without", None), ("wrong", "w" * 48), ("right", token)):
    out["agent_" + name] = http("http://%s:6383/api/job_agent/jobs/" % head, key)
print(json.dumps(out))
"""


def test_ray_refuses_every_endpoint_without_the_token(lab, api_key):
    """Ray's token guards the GCS, the client port and the agent's HTTP API on the fabric, and the job API of the
    dashboard (on the head's loopback): without it or with a wrong one they refuse; with it they answer."""
    names = lab.topology.serving_groups["serving_a"]
    head, worker = host(lab, names[0]), names[1]
    probe = f"/opt/gpuforge/venv/bin/python -c {shlex.quote(RAY_PROBE)} {head.fabric_ip} /etc/gpuforge/ray/auth_token"
    out = subprocess.run(lab.ssh_command(host(lab, worker), probe), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    for refused in ("without", "wrong"):
        assert seen[f"gcs_{refused}"][0] != 0 and "InvalidAuthToken" in seen[f"gcs_{refused}"][1], seen
        assert seen[f"client_{refused}"][0] != 0, seen
    assert seen["agent_without"] == 401 and seen["agent_wrong"] == 403, seen  # no token; a token, not the cluster's
    assert seen["gcs_right"][0] == 0, seen
    if seen["client_right"][0] != 0:  # the head's own account of the client's server process, for the report
        logs = ssh(lab, head.name, "tail -n 30 /tmp/ray/session_latest/logs/ray_client_server*.err").stdout
        pytest.fail(f"the Ray client with the token failed: {seen['client_right']}\nhead's logs:\n{logs[-3000:]}")
    assert "7" in seen["client_right"][1], seen
    assert seen["agent_right"] == 405, seen  # past the token check: that path takes POST only
    jobs = ("import sys, urllib.error, urllib.request\n"
            "req = urllib.request.Request('http://127.0.0.1:8265/api/jobs/', headers={'Authorization': 'Bearer '"
            " + open('/etc/gpuforge/ray/auth_token').read().strip()} if sys.argv[1] == 'right' else {})\n"
            "try:\n    print(urllib.request.urlopen(req, timeout=30).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    codes = {k: ssh(lab, head.name, f"python3 -c {shlex.quote(jobs)} {k}").stdout.strip() for k in ("none", "right")}
    assert codes == {"none": "401", "right": "200"}, codes


def test_ray_status_on_each_head_shows_both_hosts_with_their_gpus(lab, api_key):
    gpus = lab.topology.gpus_per_host
    for group, names in lab.topology.serving_groups.items():
        head = names[0]
        nodes = alive_nodes(lab, head)
        assert sorted(n["node_ip"] for n in nodes) == sorted(host(lab, n).fabric_ip for n in names), (group, nodes)
        assert all(n["resources_total"].get("GPU") == gpus for n in nodes), (group, nodes)
        status = ssh(lab, head, "ray status")
        assert status.returncode == 0, status.stderr
        active = status.stdout.split("Active:")[1].split("Pending:")[0]
        assert len(re.findall(r"^\s*1 node_[0-9a-f]+", active, re.M)) == len(names), status.stdout
        assert re.search(rf"/{gpus * len(names)}\.0 GPU", status.stdout), status.stdout


def test_a_killed_ray_worker_rejoins_within_60_s(lab, api_key):
    names = next(iter(lab.topology.serving_groups.values()))
    head, worker = names[0], names[1]
    ip = host(lab, worker).fabric_ip
    before = {n["node_id"] for n in alive_nodes(lab, head) if n["node_ip"] == ip}
    assert before, f"{worker} is not in its Ray cluster before the test"
    out = ssh(lab, worker, "pkill -KILL -x raylet && echo killed")
    assert "killed" in out.stdout, out.stderr
    started = time.monotonic()
    rejoined = None
    while time.monotonic() - started < 90:
        now = [n for n in alive_nodes(lab, head) if n["node_ip"] == ip and n["node_id"] not in before]
        if now:
            rejoined = time.monotonic() - started
            break
        time.sleep(2)
    print(f"\n{worker}: raylet killed, rejoined the cluster after {rejoined} s")
    assert rejoined is not None and rejoined <= 60, f"{worker} did not rejoin within 60 s ({rejoined})"


def test_stopping_one_group_keeps_completions_answering_and_is_reported_and_alerted(lab, api_key, tmp_path):
    groups = lab.topology.serving_groups
    stopped_group, names = list(groups.items())[-1]
    head = names[0]
    address = lb_url(lab)
    out = ssh(lab, head, "systemctl stop vllm")
    assert out.returncode == 0, out.stderr
    try:
        # Long enough for HAProxy's health check to take the group out (interval 5 s, fall 2); until then
        # a request sent to the stopped head is redispatched to the other group.
        results = []
        for _ in range(15):
            results.append(complete(address, api_key, max_tokens=4))
            time.sleep(1)
        failed = [r for r in results if r[0] != 200]
        print(f"\n{stopped_group} stopped: {len(results)} completions, {len(failed)} failed")
        assert not failed, failed
        deadline = time.monotonic() + 30
        while lb_server_states(lab).get(stopped_group) != 0 and time.monotonic() < deadline:
            time.sleep(1)
        assert lb_server_states(lab)[stopped_group] == 0, "HAProxy still has the stopped group in rotation"
        # gpuforge health names the group's head and the load balancer, for that group only; Prometheus alerts.
        rc, results, seconds = gpuforge_health()
        print(f"gpuforge health with {stopped_group}'s vLLM stopped: exit {rc} in {seconds:.1f} s")
        assert rc == 1
        assert failed_checks(results) == [(head, "vllm_completion", stopped_group),
                                          (monitoring_host(lab), "lb_group", stopped_group)]
        print(f"  alerts: {firing(lab, 'VllmGroupDown', group=stopped_group)}, "
              f"{firing(lab, 'HaproxyGroupDown', server=stopped_group)}")
        refused = health_gate(stopped_group, tmp_path)
        assert sorted(m.split(":")[0] for m in refused) == sorted(names)
        assert all(f"{head}: vllm_completion [{stopped_group}]" in m for m in refused), refused
    finally:
        ssh(lab, head, "systemctl start vllm")
        # Back in rotation once HAProxy's readiness check (a real 1-token completion) passes again; the
        # controller itself cannot reach a head (the firewall lets only the load balancers in).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and lb_server_states(lab).get(stopped_group) != 2:
            time.sleep(3)
    assert lb_server_states(lab)[stopped_group] == 2, f"{stopped_group} did not come back into rotation"



def test_the_play_names_a_host_that_did_not_join(lab, api_key, tmp_path):
    """A worker whose Ray is down (and not in the play to be started): the head's wait fails naming it."""
    from conftest import ROOT

    from gpuforge.runner import run_playbook

    groups = list(lab.topology.serving_groups.values())
    head, worker = groups[-1][0], groups[-1][1]
    assert ssh(lab, worker, "systemctl stop ray-worker").returncode == 0
    try:
        rc, summary = run_playbook(ROOT, "playbooks/serving.yml", "inventories/lab", limit=head, tags="ray_cluster",
                                   extra_vars={"ray_cluster_wait_s": 20}, runs_dir=tmp_path)
        assert rc != 0
        msgs = [f["msg"] for f in summary["failures"]]
        assert any(f"does not see {worker} at {host(lab, worker).fabric_ip} alive" in m for m in msgs), msgs
    finally:
        ssh(lab, worker, "systemctl start ray-worker")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(n["node_ip"] == host(lab, worker).fabric_ip for n in alive_nodes(lab, head)):
            break
        time.sleep(3)
    assert any(n["node_ip"] == host(lab, worker).fabric_ip for n in alive_nodes(lab, head))
