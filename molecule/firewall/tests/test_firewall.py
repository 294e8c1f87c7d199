"""What an operator would check after the firewall role (pytest-testinfra): the rules are loaded and kept at
boot, and between the two instances a port the rules allow answers (refused when nothing listens: the packet
got through) while one they do not allow stays silent (dropped)."""

import json
import shlex
import time

import pytest
import testinfra

LB, HEAD = "gpuforge-molecule-debian12", "gpuforge-molecule-debian13"
PROBE = ("import socket, sys\n"
         "s = socket.socket(); s.settimeout(3)\n"
         "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
         "except ConnectionRefusedError:\n    print('refused')\n"
         "except OSError:\n    print('silent')\n")


def other(name):
    return testinfra.get_host(f"docker://{name}")


def address(host):
    return host.check_output("hostname -I").split()[0]


def probe(src, dst, port):
    out = src.run(f"python3 -c {shlex.quote(PROBE)} {address(dst)} {port}")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def test_the_table_is_loaded_with_a_default_deny_input_chain(host):
    rules = host.check_output("nft -j list table inet gpuforge")
    chains = [o["chain"] for o in json.loads(rules)["nftables"] if "chain" in o]
    assert [(c["name"], c["hook"], c["policy"]) for c in chains] == [("input", "input", "drop")]
    assert host.file("/etc/gpuforge/firewall/rules.nft").mode == 0o600
    assert host.file("/etc/gpuforge/firewall").mode == 0o700
    assert host.file("/etc/gpuforge").mode == 0o755  # other roles' files live beside it (Ray's token)


def test_the_rules_come_back_when_the_unit_starts_as_at_boot(host):
    assert host.service("gpuforge-firewall").is_enabled
    host.check_output("systemctl stop gpuforge-firewall")
    assert host.run("nft list table inet gpuforge").rc != 0  # stopping the unit removes the table
    host.check_output("systemctl start gpuforge-firewall")
    assert "policy drop" in host.check_output("nft list table inet gpuforge")


@pytest.mark.parametrize("src,dst,port,expected", [
    (LB, HEAD, 8000, "refused"),   # vLLM's port: the load balancer may reach it
    (LB, HEAD, 6379, "silent"),    # Ray's GCS: only the serving group's own hosts
    (LB, HEAD, 6384, "silent"),    # Ray's metrics: only monitoring hosts (none here)
    (LB, HEAD, 22, "silent"),      # SSH: only firewall_ssh_sources
    (HEAD, LB, 8000, "refused"),   # the endpoint's client port: anyone
    (HEAD, LB, 10001, "silent"),   # anything else on the load balancer
])
def test_only_the_allowed_ports_answer(host, src, dst, port, expected):
    if host.backend.get_hostname() != src:
        pytest.skip("probed from the other instance")
    assert probe(host, other(dst), port) == expected


def test_a_change_not_confirmed_is_rolled_back_by_the_host(host):
    """gpuforge-firewall try loads the candidate and arms the timer; unconfirmed, the previous rules return."""
    d = "/etc/gpuforge/firewall"
    host.check_output(f"cp {d}/candidate.nft /root/candidate.keep")
    try:
        host.check_output(f"sed -i 's/counter comment \"refused\"/tcp dport 4242 accept comment \"trial\"\\n&/' "
                          f"{d}/candidate.nft")
        out = host.run("gpuforge-firewall try 4")
        assert out.rc == 0, out.stderr
        assert "trial" in host.check_output("nft list table inet gpuforge")
        assert host.check_output("gpuforge-firewall status") == "rollback pending"
        assert host.run("gpuforge-firewall try 4").rc != 0  # one change at a time
        deadline = time.monotonic() + 30
        while "trial" in host.check_output("nft list table inet gpuforge") and time.monotonic() < deadline:
            time.sleep(1)
        assert "trial" not in host.check_output("nft list table inet gpuforge")
        assert "policy drop" in host.check_output("nft list table inet gpuforge")
        confirm = host.run("gpuforge-firewall confirm")
        assert confirm.rc != 0 and "nothing to confirm" in confirm.stderr
        assert "trial" not in host.file(f"{d}/rules.nft").content_string
    finally:
        host.check_output(f"cp /root/candidate.keep {d}/candidate.nft")


def test_a_confirmed_change_is_kept(host):
    out = host.run("gpuforge-firewall try 30 && gpuforge-firewall confirm")
    assert out.rc == 0, out.stderr
    assert host.check_output("gpuforge-firewall status") == "no rollback pending"
    assert host.file("/etc/gpuforge/firewall/rules.nft").content_string == \
        host.file("/etc/gpuforge/firewall/candidate.nft").content_string
