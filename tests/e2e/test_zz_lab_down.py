"""Runs last: `gpuforge lab down` removes what the lab created and nothing else."""

import subprocess
import sys

from conftest import ROOT


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def test_down_removes_the_lab_and_nothing_else(lab):
    bystander = "gpuforge-e2e-bystander"
    docker("rm", "-f", bystander, check=False)
    docker("network", "rm", bystander, check=False)
    docker("network", "create", bystander)
    docker("create", "--name", bystander, "--network", bystander, "gpuforge-lab:debian12")
    try:
        subprocess.run([sys.executable, "-m", "gpuforge.cli", "lab", "down"], check=True, cwd=ROOT)
        assert docker("ps", "-aq", "--filter", "label=gpuforge.lab=1").stdout.strip() == ""
        assert docker("network", "ls", "-q", "--filter", "label=gpuforge.lab=1").stdout.strip() == ""
        assert not (ROOT / "inventories/lab/hosts.yml").exists()
        assert not lab.key.exists()
        assert not lab.vault_file.exists() and not lab.vault_password.exists()
        assert not lab.tls_dir.exists()
        assert docker("container", "inspect", bystander, check=False).returncode == 0
        assert docker("network", "inspect", bystander, check=False).returncode == 0
        assert docker("image", "inspect", "gpuforge-lab:debian12", check=False).returncode == 0
    finally:
        docker("rm", "-f", bystander, check=False)
        docker("network", "rm", bystander, check=False)
