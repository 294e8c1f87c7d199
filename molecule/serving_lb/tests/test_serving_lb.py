"""What an operator would check on a load balancer after the serving_lb role (pytest-testinfra).

Molecule has no vLLM: converge points serving_a and serving_b at closed ports (127.0.0.1:18001 and :18002) and
puts serving_b in maintenance with the set_state entry point. Everything checked here is real: HAProxy's own
validation, its runtime API, what the frontend answers with no server up (and, to any path outside the
allowlist, without choosing a server), and the readiness check's request as HAProxy sends it.
"""

import json
import re
import time

import pytest

CONFIG = "/etc/haproxy/haproxy.cfg"
SOCKET = "/run/haproxy/admin.sock"
API_KEY = "molecule-key-$HOME-%[src]"
FMAINT = 0x01  # srv_admin_state bit: maintenance forced through the runtime API
OP_STOPPED = 0  # srv_op_state: down


def admin(host, command):
    out = host.run(f"echo '{command}' | socat stdio {SOCKET}")
    assert out.rc == 0, out.stderr
    return out.stdout


def servers_state(host):
    """{server: (address, port, op_state, admin_state)} of backend serving, from `show servers state`."""
    servers = {}
    for line in admin(host, "show servers state serving").splitlines():
        f = line.split()
        if len(f) > 18 and f[1] == "serving":
            servers[f[3]] = (f[4], int(f[18]), int(f[5]), int(f[6]))
    return servers


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def test_haproxy_running_and_enabled(host):
    service = host.service("haproxy")
    assert service.is_running
    assert service.is_enabled
    assert host.package("socat").is_installed


def test_haproxy_accepts_its_configuration(host):
    out = host.run(f"haproxy -c -f {CONFIG}")
    assert out.rc == 0, out.stdout + out.stderr


def test_configuration_is_private(host):
    """It carries the vLLM API key: readable by root and HAProxy's group only."""
    conf = host.file(CONFIG)
    assert (conf.user, conf.group, conf.mode) == ("root", "haproxy", 0o640)
    assert conf.contains("Ansible managed")


def test_readiness_check_is_a_completion(host):
    text = host.file(CONFIG).content_string
    assert "http-check send meth POST uri /v1/completions " in text
    assert "hdr Content-Type application/json" in text
    assert "http-check expect status 200" in text
    assert "default-server check inter 5s fastinter 2s downinter 5s rise 1 fall 2" in text
    assert "uri /health" not in text  # vLLM's /health answers before the engine can serve
    assert "balance leastconn" in text
    assert "option forwardfor" in text
    assert "timeout client 600s" in text and "timeout server 600s" in text


def test_listeners(host):
    assert host.socket("tcp://0.0.0.0:8000").is_listening
    assert host.socket("tcp://127.0.0.1:8404").is_listening  # statistics page, local only
    assert not host.socket("tcp://0.0.0.0:8404").is_listening
    sock = host.file(SOCKET)
    assert sock.is_socket
    assert (sock.user, sock.group, sock.mode) == ("root", "haproxy", 0o660)


def test_running_haproxy_has_the_current_configuration(host):
    """The reload handler ran: the HAProxy process serving now started after haproxy.cfg was last written."""
    uptime = int(re.search(r"^Uptime_sec: (\d+)$", admin(host, "show info"), re.M).group(1))
    now = int(host.check_output("date +%s"))
    assert int(host.check_output(f"stat -c %Y {CONFIG}")) <= now - uptime


def test_one_server_per_serving_group(host):
    servers = servers_state(host)
    assert set(servers) == {"serving_a", "serving_b"}
    assert servers["serving_a"][:2] == ("127.0.0.1", 18001)
    assert servers["serving_b"][:2] == ("127.0.0.1", 18002)


def test_servers_without_vllm_are_down(host):
    """Nothing listens on the heads' ports: the readiness check takes both servers out of rotation."""
    assert wait_for(lambda: servers_state(host)["serving_a"][2] == OP_STOPPED), servers_state(host)
    assert servers_state(host)["serving_b"][2] == OP_STOPPED
    status = {ln.split(",")[1]: ln.split(",")[17] for ln in admin(host, "show stat").splitlines()
              if ln.startswith("serving,")}
    assert status["serving_a"] == "DOWN"
    assert status["BACKEND"] == "DOWN"


def test_set_state_put_serving_b_in_maintenance(host):
    servers = servers_state(host)
    assert servers["serving_b"][3] & FMAINT
    assert not servers["serving_a"][3] & FMAINT
    status = {ln.split(",")[1]: ln.split(",")[17] for ln in admin(host, "show stat").splitlines()
              if ln.startswith("serving,")}
    assert status["serving_b"] == "MAINT"


CERT = "/root/molecule-endpoint.crt"  # converge's self-signed certificate for 127.0.0.1


def request(host, path, method="GET", scheme="https"):
    """(status, body) of one request to the endpoint, without a key, trusting converge's certificate only."""
    script = (
        "import json, ssl, sys, urllib.request, urllib.error\n"
        f"ctx = ssl.create_default_context(cafile=\"{CERT}\")\n"
        "req = urllib.request.Request(sys.argv[3] + \"://127.0.0.1:8000\" + sys.argv[1], method=sys.argv[2],\n"
        "                             data=b\"{}\" if sys.argv[2] == \"POST\" else None)\n"
        "try:\n"
        "    r = urllib.request.urlopen(req, timeout=30, context=ctx)\n"
        "    print(json.dumps([r.status, r.read().decode()]))\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(json.dumps([e.code, e.read().decode()]))\n"
        "except (urllib.error.URLError, OSError) as e:\n"
        "    print(json.dumps([0, str(e)]))\n")
    return tuple(json.loads(host.check_output(f"python3 -c '{script}' '{path}' {method} {scheme}")))


def test_the_endpoint_speaks_tls_only(host):
    """TLS with the converge's certificate (verified against it, hostname included); plain HTTP gets no
    HTTP answer at all, so a client cannot send its key in clear by mistake."""
    assert request(host, "/v1/models")[0] == 503
    status, error = request(host, "/v1/models", scheme="http")
    assert status == 0, error
    pem = host.file("/etc/haproxy/tls/endpoint.pem")
    assert (pem.user, pem.group, pem.mode) == ("root", "root", 0o600)
    assert host.file("/etc/haproxy/tls").mode == 0o700
    assert "BEGIN CERTIFICATE" in pem.content_string and "PRIVATE KEY" in pem.content_string


def test_frontend_answers_503_without_a_server(host):
    assert request(host, "/v1/models")[0] == 503
    assert request(host, "/v1/completions", "POST")[0] == 503


@pytest.mark.parametrize("path,method", [
    ("/invocations", "POST"), ("/tokenize", "POST"), ("/metrics", "GET"), ("/docs", "GET"), ("/", "GET"),
    ("/v1/completions/../../invocations", "POST"), ("/v1/models/", "GET"), ("/V1/models", "GET"),
])
def test_paths_outside_the_allowlist_get_404_from_haproxy(host, path, method):
    """404, not the 503 of an allowed path with no server up: HAProxy answered without choosing a server."""
    status, body = request(host, path, method)
    assert status == 404, (path, body)
    assert json.loads(body)["error"]["code"] == 404


def test_health_path_is_answered_by_haproxy_from_the_groups_in_rotation(host):
    assert request(host, "/health") == (503, "no serving group in rotation")


def test_statistics_page_answers(host):
    page = host.check_output(
        "python3 -c 'import urllib.request; "
        "print(urllib.request.urlopen(\"http://127.0.0.1:8404/;csv\", timeout=10).read().decode())'")
    assert "serving,serving_a," in page


def test_readiness_check_request_on_the_wire(host):
    """Listen on serving_a's port for one readiness check and read the request (answer nothing, so the
    server stays down): a POST of a 1-token completion carrying the API key, escaping undone."""
    script = """
import json, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18001)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); c.settimeout(5); data = b""
while b"\\r\\n\\r\\n" not in data:
    data += c.recv(65536)
head, body = data.split(b"\\r\\n\\r\\n", 1)
lines = head.decode().split("\\r\\n")
headers = dict((k.lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:]))
while len(body) < int(headers.get("content-length", 0)):
    body += c.recv(65536)
c.close()
print(json.dumps({"request": lines[0], "headers": headers, "body": body.decode()}))
"""
    out = host.run(f"timeout 40 python3 -c '{script}'")
    assert out.rc == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["request"] == "POST /v1/completions HTTP/1.0"
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(seen["body"]) == {"model": "gpuforge-tiny", "prompt": "ok", "max_tokens": 1}


def test_systemd_healthy(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout
