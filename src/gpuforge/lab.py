"""The lab: systemd containers that stand in for bare-metal hosts (docs/architecture.md, "The lab").

Every object the lab creates carries the Docker label `gpuforge.lab=1`; `down` removes exactly those
containers and networks, the generated inventory, the lab's SSH key and its vault (secrets and password),
and nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import host, images, tinymodel
from .host import say

LABEL = "gpuforge.lab=1"
MGMT_NET = "gpuforge-lab"
FABRIC_NET = "gpuforge-fabric"
MGMT_SUBNET = ipaddress.ip_network("172.28.250.0/24")
FABRIC_SUBNET = ipaddress.ip_network("172.28.251.0/24")
# The NVIDIA driver the lab installs, by Debian release: the versions in Debian's non-free archive.
# The lab GPU hosts' replayed readings (Lab.install_replay): lab only.
REPLAY_DIR = Path(__file__).resolve().parent / "lab_replay"
# The recording it replays, from the repository's fixtures of real hardware.
REPLAY_RECORDING = "tests/unit/fixtures/nvidia-smi/h100-hgx-8gpu.xml"
REPLAY_PATH = "/opt/gpuforge-lab"
LAB_DRIVER_VERSIONS = {"12": "535.261.03-1", "13": "550.163.01-2"}

# Flags that run systemd as PID 1 without --privileged (docs/architecture.md, "The lab"). Resource limits stay
# Docker's: raising memlock above the engine's own hard limit needs CAP_SYS_RESOURCE, which some machines
# (this project's CI among them) cannot grant; the common role caps its limits to what a container has.
SYSTEMD_FLAGS = [
    "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "--security-opt", "seccomp=unconfined", "--stop-signal", "SIGRTMIN+3",
    "--shm-size", "1g",
]


class LabError(RuntimeError):
    pass


@dataclass
class LabHost:
    name: str
    kind: str  # "gpu" or "lb"
    index: int  # 1-based within its kind
    serving_group: str | None = None

    @property
    def container(self) -> str:
        return f"gpuforge-{self.name}"

    def _offset(self) -> int:
        return 10 + self.index if self.kind == "gpu" else 200 + self.index

    @property
    def mgmt_ip(self) -> str:
        return str(MGMT_SUBNET.network_address + self._offset())

    @property
    def fabric_ip(self) -> str:
        return str(FABRIC_SUBNET.network_address + self._offset())


@dataclass
class Topology:
    gpu_hosts: int = 4
    groups: int = 2
    lb_hosts: int = 1
    gpus_per_host: int = 2
    distro: str = "12"
    # GPU hosts in serving groups (the first ones); the rest get the host stack only. None: all of them.
    serving_hosts: int | None = None
    hosts: list[LabHost] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.distro not in images.DISTROS:
            raise LabError(f"--distro must be one of {sorted(images.DISTROS)}, got {self.distro!r}")
        if self.gpu_hosts < 1 or self.gpu_hosts > 80:
            raise LabError(f"--gpu-hosts must be between 1 and 80, got {self.gpu_hosts}")
        if self.lb_hosts < 0 or self.lb_hosts > 9:
            raise LabError(f"--lb-hosts must be between 0 and 9, got {self.lb_hosts}")
        serving = self.gpu_hosts if self.serving_hosts is None else self.serving_hosts
        if serving < 1 or serving > self.gpu_hosts:
            raise LabError(f"--serving-hosts must be between 1 and --gpu-hosts ({self.gpu_hosts}), got {serving}")
        if self.groups < 1 or serving % self.groups:
            raise LabError(
                f"the serving GPU hosts ({serving}) must split evenly into --groups ({self.groups}): "
                "every serving group has the same number of hosts")
        if self.gpus_per_host < 1:
            raise LabError(f"--gpus-per-host must be at least 1, got {self.gpus_per_host}")
        per_group = serving // self.groups
        self.hosts = [
            LabHost(f"gpu-{i:02d}", "gpu", i,
                    f"serving_{chr(ord('a') + (i - 1) // per_group)}" if i <= serving else None)
            for i in range(1, self.gpu_hosts + 1)
        ] + [LabHost(f"lb-{i:02d}", "lb", i) for i in range(1, self.lb_hosts + 1)]

    @property
    def serving_groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for h in self.hosts:
            if h.serving_group:
                out.setdefault(h.serving_group, []).append(h.name)
        return out


class Lab:
    def __init__(self, root: Path, topology: Topology | None = None) -> None:
        self.root = root
        self.topology = topology or Topology()
        self.state = root / ".lab"
        self.key = self.state / "ssh" / "id_ed25519"
        # The lab's secrets (vLLM API key, Ray token) live in an ansible-vault file beside the inventory,
        # encrypted with a password generated here (0600), as a real site keeps them in vault.
        self.vault_password = self.state / "vault-password"
        self.model_dir = self.state / "models" / tinymodel.NAME
        self.inventory = root / "inventories" / "lab" / "hosts.yml"
        # The lab's own certificate authority and the load balancers' certificate, made by `lab up`: the
        # endpoint serves TLS as in production, and the e2e clients trust this CA only.
        self.tls_dir = self.state / "tls"
        self.ca_cert = self.tls_dir / "ca.crt"

    # ---------------------------------------------------------------- docker helpers
    @staticmethod
    def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise LabError(f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()}")
        return proc

    def _containers(self) -> list[dict]:
        out = self._docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{json .}}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    @property
    def gateway(self) -> str:
        return str(MGMT_SUBNET.network_address + 1)

    @property
    def apt_proxy(self) -> str:
        return f"http://{self.gateway}:{host.APT_CACHE_PORT}"

    # ---------------------------------------------------------------- infrastructure
    def ensure_networks(self) -> None:
        for name, subnet in ((MGMT_NET, MGMT_SUBNET), (FABRIC_NET, FABRIC_SUBNET)):
            if self._docker("network", "inspect", name, check=False).returncode == 0:
                continue
            say(f"creating network {name} ({subnet})")
            self._docker("network", "create", "--driver", "bridge", "--label", LABEL,
                         "--subnet", str(subnet), "--gateway", str(subnet.network_address + 1), name)

    def _bridge_gateway(self) -> str | None:
        proc = self._docker("network", "inspect", "bridge", "--format",
                            "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}", check=False)
        fields = proc.stdout.split()
        if not fields:
            return None
        if len(fields) == 2:  # a gateway was configured explicitly
            return fields[0]
        # Docker's default bridge often records only its subnet; its gateway is the first address.
        return str(ipaddress.ip_network(fields[0], strict=False).network_address + 1)

    def infra(self, distros: list[str] | None = None) -> dict[str, str]:
        """Docker engine, networks, apt cache and base images: everything but the hosts."""
        host.ensure_docker()
        self.ensure_networks()
        binds = [self.gateway]
        bridge_gw = self._bridge_gateway()  # molecule's containers use Docker's default bridge
        if bridge_gw:
            binds.append(bridge_gw)
        port = host.ensure_apt_cache(binds)
        local_proxy = f"http://127.0.0.1:{port}"
        tags = {}
        for key in distros or sorted(images.DISTROS):
            tags[key] = images.ensure_image(images.DISTROS[key], local_proxy)
        host.warm_apt_cache(local_proxy, [images.DISTROS[key].suite for key in distros or sorted(images.DISTROS)])
        return tags

    def _ensure_key(self) -> None:
        host.apt_install("openssh-client")  # ssh-keygen here, ssh for Ansible and the readiness check
        if self.key.exists():
            return
        self.key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuforge-lab",
                        "-f", str(self.key)], check=True)

    @property
    def vault_file(self) -> Path:
        return self.inventory.parent / "group_vars" / "all" / "vault.yml"

    def ensure_secrets(self) -> None:
        """Generate the lab's API key and Ray token once; keep them while the lab exists."""
        if self.vault_password.exists() and self.vault_file.exists():
            return
        self.vault_password.parent.mkdir(parents=True, exist_ok=True)
        self.vault_password.touch(mode=0o600)
        self.vault_password.write_text(secrets.token_urlsafe(32) + "\n")
        plain = ("# Generated by `gpuforge lab up` (ansible-vault, password in .lab/vault-password).\n"
                 f"vllm_api_key: {secrets.token_hex(24)}\nray_auth_token: {secrets.token_hex(24)}\n")
        vault_cli = str(Path(sys.executable).parent / "ansible-vault")
        self.vault_file.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([vault_cli, "encrypt", "--vault-password-file", str(self.vault_password),
                        "--output", str(self.vault_file), "-"], input=plain, text=True, check=True,
                       capture_output=True)
        self.vault_file.chmod(0o600)

    def ensure_tls(self) -> None:
        """Make the lab's CA once, and the load balancers' certificate (their names and addresses) whenever
        those change. Keys are 0600 in a 0700 directory."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        lbs = [h for h in self.topology.hosts if h.kind == "lb"]
        names = sorted([x509.DNSName(h.name) for h in lbs], key=str) + \
            [x509.IPAddress(ipaddress.ip_address(h.mgmt_ip)) for h in lbs]
        crt_path, key_path = self.tls_dir / "lb.crt", self.tls_dir / "lb.key"
        if crt_path.exists() and key_path.exists() and self.ca_cert.exists():
            current = x509.load_pem_x509_certificate(crt_path.read_bytes())
            sans = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if set(map(str, sans)) == set(map(str, names)):
                return
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        self.tls_dir.chmod(0o700)

        def write_key(path: Path, key) -> None:
            path.touch(mode=0o600)
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))

        start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)  # clocks of the lab's hosts may lag a little
        ca_key_path = self.tls_dir / "ca.key"
        if ca_key_path.exists() and self.ca_cert.exists():
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
            ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        else:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpuforge lab CA")])
            ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                  .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                               content_commitment=False, key_encipherment=False,
                                               data_encipherment=False, key_agreement=False,
                                               encipher_only=False, decipher_only=False), critical=True)
                  .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                  .sign(ca_key, hashes.SHA256()))
            write_key(ca_key_path, ca_key)
            self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        key = ec.generate_private_key(ec.SECP256R1())
        crt = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, lbs[0].name if lbs else "lb")]))
               .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(start + dt.timedelta(days=825))
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
        write_key(key_path, key)
        crt_path.write_bytes(crt.public_bytes(serialization.Encoding.PEM))

    def secrets(self) -> dict:
        """The lab's decrypted secrets (tests use the API key)."""
        vault_cli = str(Path(sys.executable).parent / "ansible-vault")
        out = subprocess.run([vault_cli, "view", "--vault-password-file", str(self.vault_password),
                              str(self.vault_file)], capture_output=True, text=True, check=True).stdout
        return yaml.safe_load(out)

    # ---------------------------------------------------------------- lifecycle
    def up(self, build_all: bool = False) -> None:
        started = time.monotonic()
        tag = self.infra(None if build_all else [self.topology.distro])[self.topology.distro]
        self._ensure_key()
        wanted = {h.container: h for h in self.topology.hosts}
        existing = {c["Names"]: c for c in self._containers()}
        for name in existing:
            if name not in wanted:
                say(f"removing {name}: not in the requested topology")
                self._docker("rm", "-f", name)
        for h in self.topology.hosts:
            # --restart: a reboot inside the container (systemd's PID 1 exits) starts it again, as a server
            # comes back after a reboot; `lab down` removes containers with docker rm -f, which it does not affect.
            run_args = ["--hostname", h.name, "--label", LABEL, "--label", f"gpuforge.lab.kind={h.kind}",
                        "--restart", "unless-stopped",
                        "--network", MGMT_NET, "--ip", h.mgmt_ip, *SYSTEMD_FLAGS,
                        "-v", f"{self.key}.pub:/root/.ssh/authorized_keys:ro"]
            # A container is reused only when it was started from the same image with the same flags.
            config = hashlib.sha256(json.dumps([self._image_id(tag), run_args]).encode()).hexdigest()[:12]
            c = existing.get(h.container)
            if c and self._container_label(h.container, "gpuforge.lab.config") == config:
                if c["State"] != "running":
                    say(f"starting {h.name}")
                    self._docker("start", h.container)
                continue
            if c:
                say(f"recreating {h.name}: its image or settings changed")
                self._docker("rm", "-f", h.container)
            say(f"starting {h.name} ({h.mgmt_ip}, Debian {self.topology.distro})")
            self._docker("run", "-d", "--name", h.container, "--label", f"gpuforge.lab.config={config}",
                         *run_args, tag)
            self._docker("network", "connect", "--ip", h.fabric_ip, FABRIC_NET, h.container)
        self.install_replay()
        self.ensure_secrets()
        self.ensure_tls()
        tinymodel.write(self.model_dir)
        self.write_inventory()
        self.wait_ready()
        say(f"lab is up: {len(self.topology.hosts)} hosts in {time.monotonic() - started:.0f} s; "
            f"inventory {self.inventory.relative_to(self.root)}")

    def install_replay(self) -> None:
        """The lab's stand-ins for a GPU host's readings (lab only, never installed by a role): a replaying
        `nvidia-smi` with a recorded real output cut to gpu_count GPUs, a file standing in for
        /proc/driver/nvidia/version, and an empty kernel log, in /opt/gpuforge-lab/ of every GPU host.
        inventories/lab points the health checks and the metrics collector at them. Any fault left from an
        earlier run is cleared."""
        files = {
            "nvidia-smi": (REPLAY_DIR / "nvidia-smi").read_bytes(),
            "recorded.xml": (self.root / REPLAY_RECORDING).read_bytes(),
            "gpu_count": f"{self.topology.gpus_per_host}\n".encode(),
            "driver-version": b"gpuforge lab: stands in for /proc/driver/nvidia/version (no GPU here)\n",
            "kern.log": b"",
            "faults.json": b"{}\n",
        }
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            (Path(tmp) / "nvidia-smi").chmod(0o755)
            for h in self.topology.hosts:
                if h.kind == "gpu":
                    self._docker("exec", h.container, "mkdir", "-p", REPLAY_PATH)
                    self._docker("cp", f"{tmp}/.", f"{h.container}:{REPLAY_PATH}")

    def _image_id(self, tag: str) -> str:
        return self._docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()

    def _container_label(self, container: str, label: str) -> str:
        return self._docker("inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}',
                            container).stdout.strip()

    def ssh_command(self, h: LabHost, *cmd: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=3", f"root@{h.mgmt_ip}", *cmd]

    def wait_ready(self, timeout: float = 120) -> None:
        """Every host answers over SSH and systemd finished booting."""
        pending = list(self.topology.hosts)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            still = []
            for h in pending:
                proc = subprocess.run(self.ssh_command(h, "systemctl", "is-system-running", "--wait"),
                                      capture_output=True, text=True, timeout=60)
                state = proc.stdout.strip()
                if state not in ("running", "degraded"):
                    still.append(h)
                elif state == "degraded":
                    failed = subprocess.run(self.ssh_command(h, "systemctl", "--failed", "--plain",
                                                             "--no-legend"), capture_output=True, text=True)
                    say(f"warning: {h.name} booted degraded: {failed.stdout.strip()}")
            pending = still
            if pending:
                time.sleep(1)
        if pending:
            raise LabError("hosts not reachable over SSH with systemd up after "
                           f"{timeout:.0f} s: {', '.join(h.name for h in pending)}")

    def down(self, purge: bool = False) -> None:
        for c in self._containers():
            say(f"removing {c['Names']}")
            self._docker("rm", "-f", c["Names"])
        for net in (MGMT_NET, FABRIC_NET):
            proc = self._docker("network", "inspect", "--format", "{{json .Labels}}", net, check=False)
            if proc.returncode == 0 and "gpuforge.lab" in proc.stdout:
                say(f"removing network {net}")
                self._docker("network", "rm", net)
        for p in (self.inventory, self.vault_file, self.vault_password):
            if p.exists():
                p.unlink()
        for p in (self.key, self.key.with_suffix(".pub")):
            if p.exists():
                p.unlink()
        shutil.rmtree(self.tls_dir, ignore_errors=True)  # the lab's CA and certificates
        if purge:
            out = self._docker("images", "--filter", f"reference={images.IMAGE_REPO}",
                               "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
            for ref in out:
                say(f"removing image {ref}")
                self._docker("rmi", ref, check=False)
            host.stop_apt_cache()

    def status(self) -> list[dict]:
        rows = []
        for c in sorted(self._containers(), key=lambda c: c["Names"]):
            name = c["Names"]
            state = c["State"]
            systemd = "-"
            if state == "running":
                proc = self._docker("exec", name, "systemctl", "is-system-running", check=False)
                systemd = proc.stdout.strip() or "?"
            ip = self._docker("inspect", "--format",
                              "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name).stdout.split()
            rows.append({"container": name, "state": state, "systemd": systemd, "addresses": ip,
                         "image": c["Image"]})
        return rows

    # ---------------------------------------------------------------- inventory
    def inventory_data(self) -> dict:
        t = self.topology
        gpu = {h.name: {"ansible_host": h.mgmt_ip, "fabric_interface": "eth1", "fabric_ip": h.fabric_ip}
               for h in t.hosts if h.kind == "gpu"}
        lb = {h.name: {"ansible_host": h.mgmt_ip} for h in t.hosts if h.kind == "lb"}
        return {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.key),
                    "gpuforge_lab_gateway": self.gateway,
                    "gpuforge_lab_apt_proxy": self.apt_proxy,
                    "gpuforge_lab_model_dir": str(self.model_dir),
                },
                "children": {
                    # Lab hosts have no GPUs; they declare logical ones (Ray's GPU count). The driver is
                    # Debian's, pinned to the version of the hosts' release.
                    "gpu_nodes": {"hosts": gpu, "vars": {
                        "gpu_count": t.gpus_per_host,
                        "nvidia_driver_version": LAB_DRIVER_VERSIONS[t.distro],
                    }},
                    # The Kubernetes groups as a real site has them; kubernetes_enabled is false in the lab
                    # (inventories/lab/group_vars/all/main.yml says why), so playbooks/kubernetes.yml skips them.
                    "kube_control_plane": {"hosts": {next(iter(gpu)): None}},
                    "kube_nodes": {"children": {"gpu_nodes": None}},
                    "serving": {"children": {
                        g: {"hosts": {n: None for n in names}} for g, names in t.serving_groups.items()
                    }},
                    # The endpoint's certificate and key from files on the controller (`lab up` makes them;
                    # a real site keeps the key in vault).
                    "lb": {"hosts": lb, "vars": {
                        "serving_lb_tls_certificate":
                            f"{{{{ lookup('ansible.builtin.file', '{self.tls_dir / 'lb.crt'}') }}}}",
                        "serving_lb_tls_private_key":
                            f"{{{{ lookup('ansible.builtin.file', '{self.tls_dir / 'lb.key'}') }}}}",
                    }},
                },
            }
        }

    def write_inventory(self) -> None:
        self.inventory.parent.mkdir(parents=True, exist_ok=True)
        header = ("# Generated by `gpuforge lab up`; do not edit. Change the topology with its flags\n"
                  "# (gpuforge lab up --help). Shared settings live in group_vars/ beside this file.\n")
        self.inventory.write_text(header + yaml.safe_dump(self.inventory_data(), sort_keys=False))
