"""Lab base images, built locally from Debian's packages (mmdebstrap | docker import): no registry needed.

An image is tagged with a hash of everything that goes into it (suite, packages, hook, the controller's CA
bundle), so `gpuforge lab up` rebuilds only when an input changed and is fast otherwise.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .host import apt_install, say

IMAGE_REPO = "gpuforge-lab"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Distro:
    key: str  # "12", "13"
    suite: str  # bookworm, trixie

    @property
    def tag_alias(self) -> str:
        return f"{IMAGE_REPO}:debian{self.key}"


DISTROS = {"12": Distro("12", "bookworm"), "13": Distro("13", "trixie")}

# What a freshly installed Debian server with SSH has, plus a kernel image so that initramfs work is real.
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "sudo",
    "ca-certificates", "iproute2", "iputils-ping", "procps", "kmod", "initramfs-tools",
    "linux-image-amd64", "less", "nftables",
]

# Runs inside mmdebstrap with the new root as $1. Reproduces what an installer leaves behind, minus
# per-host identity (SSH host keys, machine-id), which each container creates at its first boot.
CUSTOMIZE_HOOK = r"""#!/bin/sh
set -eu
root="$1"; suite="$2"; ca="$3"
rm -f "$root/etc/apt/apt.conf.d/99mmdebstrap" "$root/etc/apt/sources.list"
cat > "$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
# The controller's CA bundle: TLS-intercepting proxies are common on the way to package mirrors.
if [ -s "$ca" ]; then
  cp "$ca" "$root/usr/local/share/ca-certificates/gpuforge-controller.crt"
  chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
fi
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/gpuforge-ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate this host's SSH host keys (gpuforge lab)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
# A boot marker of the lab's own: a container restart keeps the kernel's boot_id, so reboot checks
# read /run/gpuforge-boot-id (tmpfs, new at every container start) instead.
cat > "$root/etc/systemd/system/gpuforge-boot-marker.service" <<'UNIT'
[Unit]
Description=Record a boot marker for this container boot (gpuforge lab)
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/uuid > /run/gpuforge-boot-id'

[Install]
WantedBy=sysinit.target
UNIT
chroot "$root" systemctl enable gpuforge-ssh-hostkeys.service gpuforge-boot-marker.service >/dev/null 2>&1
# Nothing in a container can use these; masking keeps `systemctl is-system-running` honest.
chroot "$root" systemctl mask systemd-udevd.service systemd-udevd-control.socket \
  systemd-udevd-kernel.socket getty@tty1.service console-getty.service >/dev/null 2>&1 || true
install -d -m 0700 "$root/root/.ssh"
# Clean apt's cache and lists here (mmdebstrap's own apt cleanup is skipped: it takes the lists lock and
# leaves the directory fresh), then date the lists directory back, so apt's "cache_valid_time" sees stale
# lists on first use, as on a server that has not run apt for a while.
rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
find "$root/var/lib/apt/lists" -mindepth 1 -maxdepth 1 -type f -delete
touch -d '2000-01-01 00:00:00' "$root/var/lib/apt/lists"
: > "$root/etc/machine-id"
"""

BUILDER_VERSION = "2"


def image_digest(distro: Distro) -> str:
    h = hashlib.sha256()
    h.update(BUILDER_VERSION.encode())
    h.update(distro.suite.encode())
    h.update(" ".join(PACKAGES).encode())
    h.update(CUSTOMIZE_HOOK.encode())
    if CA_BUNDLE.exists():
        h.update(CA_BUNDLE.read_bytes())
    return h.hexdigest()[:12]


def image_tag(distro: Distro) -> str:
    return f"{IMAGE_REPO}:debian{distro.key}-{image_digest(distro)}"


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def ensure_image(distro: Distro, apt_proxy: str | None) -> str:
    """Return the tag of an up-to-date image for `distro`, building it when needed.

    The tag `gpuforge-lab:debianNN` always points at the current build (molecule scenarios use it).
    """
    tag = image_tag(distro)
    if image_exists(tag):
        subprocess.run(["docker", "tag", tag, distro.tag_alias], check=True)
        return tag
    apt_install("mmdebstrap", "debian-archive-keyring")
    say(f"building {tag} from Debian {distro.suite} packages (about 2 minutes, once per machine)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpuforge-image-") as tmp:
        hook = Path(tmp) / "customize.sh"
        hook.write_text(CUSTOMIZE_HOOK)
        cmd = [
            "mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar", "--skip=cleanup/apt",
            "--components=main non-free-firmware",
            f"--include={','.join(PACKAGES)}",
            f'--customize-hook=sh {hook} "$1" {distro.suite} {CA_BUNDLE}',
        ]
        if apt_proxy:
            cmd.append(f'--aptopt=Acquire::http::Proxy "{apt_proxy}"')
        cmd += [distro.suite, "-", MIRROR]
        log_path = Path(tmp) / "mmdebstrap.log"
        with open(log_path, "wb") as log:
            build = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
            imp = subprocess.run(
                # No LABEL here: containers inherit image labels, and `lab down` removes by label.
                ["docker", "import", "--change", 'CMD ["/sbin/init"]', "-", tag],
                stdin=build.stdout, capture_output=True,
            )
            build.stdout.close()
            rc = build.wait()
        if rc != 0 or imp.returncode != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"building {tag} failed (mmdebstrap rc={rc}, docker import "
                               f"rc={imp.returncode}: {imp.stderr.decode().strip()}):\n{tail}")
    subprocess.run(["docker", "tag", tag, distro.tag_alias], check=True)
    say(f"built {tag} in {time.monotonic() - started:.0f} s")
    remove_stale_images(distro, keep=tag)
    return tag


def remove_stale_images(distro: Distro, keep: str) -> None:
    """Drop earlier builds of this distro's image (a container still using one keeps it alive)."""
    out = subprocess.run(["docker", "images", "--filter", f"reference={IMAGE_REPO}:debian{distro.key}-*",
                          "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True).stdout
    for ref in out.split():
        if ref != keep and subprocess.run(["docker", "rmi", ref], capture_output=True).returncode == 0:
            say(f"removed the earlier image {ref}")
