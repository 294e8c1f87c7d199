"""Controller-side prerequisites: the Docker engine, Debian's build tools and the apt cache proxy.

Each function is idempotent: it checks first and acts only when something is missing, printing what it does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

APT_CACHE_PORT = 3149
APT_CACHE_DIR = Path(os.environ.get("GPUFORGE_APT_CACHE_DIR", "/var/cache/gpuforge/apt-cacher-ng"))
APT_CACHE_STATE = Path(os.environ.get("GPUFORGE_APT_CACHE_STATE", "/var/lib/gpuforge/apt-cacher-ng"))
DOCKERD_LOG = Path("/var/log/gpuforge-dockerd.log")


class HostError(RuntimeError):
    """The controller lacks something the lab needs and gpuforge cannot install it."""


def say(msg: str) -> None:
    print(f"[gpuforge] {msg}", flush=True)


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    raise HostError("this step needs root: run as root or install sudo")


_apt_updated = False


def apt_install(*packages: str) -> None:
    """Install Debian/Ubuntu packages that are missing (dpkg -s decides)."""
    global _apt_updated
    missing = [
        p for p in packages
        if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0
    ]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise HostError(f"packages {missing} are missing and this machine has no apt-get; install them by hand")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        say("apt-get update")
        subprocess.run([*_sudo(), "apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        _apt_updated = True
    say(f"installing {' '.join(missing)}")
    subprocess.run(
        [*_sudo(), "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )


def docker_ok() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def ensure_docker() -> None:
    """A Docker engine that answers; Debian's docker.io installed and started when none runs."""
    if docker_ok():
        return
    if not shutil.which("dockerd"):
        apt_install("docker.io")
    if Path("/run/systemd/system").is_dir():
        say("starting docker.service")
        subprocess.run([*_sudo(), "systemctl", "start", "docker"], check=True)
    else:
        # No systemd as PID 1 (containers, CI sandboxes): run the daemon directly, detached.
        say(f"starting dockerd directly (no systemd); log: {DOCKERD_LOG}")
        log = open(DOCKERD_LOG, "ab")  # noqa: SIM115 - handed to the daemon for its lifetime
        subprocess.Popen([*_sudo(), "dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if docker_ok():
            say("Docker engine is up")
            return
        time.sleep(1)
    raise HostError(f"the Docker engine did not answer within 90 s; see {DOCKERD_LOG}")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


ACNG_CONF = """\
# Written by gpuforge: an apt cache for lab and molecule hosts. Requests keep their real host name
# (no Remap rules), so hosts use plain deb.debian.org sources with this as their HTTP proxy.
CacheDir: {cache}
LogDir: {state}/log
SupportDir: /usr/lib/apt-cacher-ng
Port: {port}
BindAddress: {bind}
ConnectProto: v4 v6
PidFile: {state}/run/pid
SocketPath: {state}/run/socket
ExThreshold: 4
"""


def ensure_apt_cache(bind_addresses: list[str]) -> str:
    """Run gpuforge's own apt-cacher-ng instance; return its port.

    A separate instance (port 3149, own config) leaves a system apt-cacher-ng alone and avoids its
    default Remap rules, which rewrite deb.debian.org to mirrors that a restricted network may not reach.
    """
    addresses = ["127.0.0.1", *bind_addresses]
    conf = APT_CACHE_STATE / "acng.conf"
    text = ACNG_CONF.format(cache=APT_CACHE_DIR, state=APT_CACHE_STATE, port=APT_CACHE_PORT,
                            bind=" ".join(addresses))
    current = conf.read_text() if conf.exists() else None
    if current == text and all(port_open(a, APT_CACHE_PORT) for a in addresses):
        return str(APT_CACHE_PORT)
    stop_apt_cache()  # running, but not on every address the hosts need, or with an older configuration
    apt_install("apt-cacher-ng")
    for d in (APT_CACHE_DIR, APT_CACHE_STATE / "log", APT_CACHE_STATE / "run"):
        d.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    say(f"starting the apt cache proxy on port {APT_CACHE_PORT} (cache: {APT_CACHE_DIR})")
    subprocess.run(["/usr/sbin/apt-cacher-ng", "-c", str(APT_CACHE_STATE)], check=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(port_open(a, APT_CACHE_PORT) for a in addresses):
            return str(APT_CACHE_PORT)
        time.sleep(0.5)
    raise HostError(f"apt-cacher-ng did not start; see {APT_CACHE_STATE}/log")


def warm_apt_cache(proxy: str, suites: list[str]) -> None:
    """Fetch the suites' release files through the apt cache, one request at a time.

    Hosts that start together ask apt-cacher-ng for the same InRelease at the same moment; concurrent
    replacements of a stale copy collide and one host's apt then waits without end (docs/lab.md, "Apt
    cache"). Refreshed here first, fewer of the hosts' requests find a stale copy; it does not prevent the
    collision (docs/lab.md says what was measured).
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    for suite in suites:
        for base, dist in (("debian", suite), ("debian", f"{suite}-updates"), ("debian-security", f"{suite}-security")):
            url = f"http://deb.debian.org/{base}/dists/{dist}/InRelease"
            try:
                with opener.open(url, timeout=120) as resp:
                    resp.read()
            except (OSError, urllib.error.URLError) as e:
                say(f"warning: could not refresh {url} through the apt cache ({e}); hosts will fetch it themselves")


def stop_apt_cache() -> None:
    pidfile = APT_CACHE_STATE / "run" / "pid"
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().strip())
            os.kill(pid, 15)
            say("stopped the apt cache proxy")
        except (ValueError, ProcessLookupError):
            return
        for _ in range(40):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.25)
